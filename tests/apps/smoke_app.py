"""A minimal Faust app with a RocksDB table, for the plumbing smoke test.

Counts records per key into a table; on a record with value ``dump`` it writes the
table (as the agent sees it) to the file named by SMOKE_DUMP. Configured by
environment: SMOKE_BROKER, SMOKE_APP, SMOKE_TOPIC, SMOKE_DATADIR, SMOKE_DUMP, and
SMOKE_LOGLEVEL (default info: Faust's recovery progress is in the log the test shows
when the app does not answer in time).
"""

import json
import os
from pathlib import Path

import faust

RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
app = faust.App(
    os.environ["SMOKE_APP"],
    broker=f"kafka://{os.environ['SMOKE_BROKER']}",
    store="rocksdb://",
    datadir=os.environ["SMOKE_DATADIR"],
    web_enabled=False,
    topic_partitions=1,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    # a restarted app must not wait Faust's default 60 s for a member that did not leave
    broker_session_timeout=10,
    broker_heartbeat_interval=1,
)
topic = app.topic(os.environ["SMOKE_TOPIC"], partitions=1, **RAW)
changelog = app.topic(
    f"{os.environ['SMOKE_APP']}-counts-changelog",
    partitions=1,
    compacting=True,
    deleting=False,
    acks=False,
    internal=True,
    **RAW,
)
counts = app.Table(
    "counts", partitions=1, default=None, schema=faust.Schema(**RAW), changelog_topic=changelog
)
counts.key_serializer = counts.value_serializer = "raw"
seen: set[bytes] = set()


@app.agent(topic)
async def count(stream):
    async for event in stream.events():
        key, value = event.key, event.value
        if value == b"dump":
            state = {k.decode(): int(counts.get(k) or b"0") for k in sorted(seen | {b"a", b"b"})}
            path = Path(os.environ["SMOKE_DUMP"])
            path.with_suffix(".tmp").write_text(json.dumps(state))
            path.with_suffix(".tmp").replace(path)
            continue
        seen.add(key)
        counts[key] = str(int(counts.get(key) or b"0") + 1).encode()


if __name__ == "__main__":
    faust.Worker(
        app, loglevel=os.environ.get("SMOKE_LOGLEVEL", "info"), quiet=True, redirect_stdouts=False
    ).execute_from_commandline()
