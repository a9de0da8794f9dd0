"""The gate's own CPU per post, in process, without Kafka: ``Processor.process`` over
30 batches of 2,000 posts (5,000 users, unit tests' in-memory tables and recording
producer, ``tests/unit/test_splice._gate``), the native fast path and the Python path
(``ENFORCER_NATIVE=0``), 5 trials each; prints microseconds of CPU (process time) per
post as JSON. Run it from a worktree of each commit compared, copied to the worktree's
root (``python gate_split_micro.py``), alternating commits (issue 15's gate split A/B:
bench/results/gate-split-micro-*.json)."""

import gc
import json
import os
import time

from streams.core.policy import load_policy
from streams.core.records import KIND_POST
from streams.serde.codec import POST
from tests.unit.test_splice import CODEC, POST_RECORD, _gate, _message

policy = load_policy()
N, BATCH, ROUNDS = 2000, 2000, 30


def batches(start):
    out = []
    for b in range(ROUNDS):
        batch = []
        for i in range(BATCH):
            off = start + b * BATCH + i
            user = f"u{off % 5000}"
            rec = {**POST_RECORD, "user_id": user, "post_id": f"p{off}"}
            batch.append(_message(KIND_POST, CODEC.encode(POST, rec), off, user))
        out.append(batch)
    return out


res = {}
for path in ("native", "python"):
    times = []
    for _trial in range(5):
        processor, out = _gate(True, policy)
        if path == "python":
            os.environ["ENFORCER_NATIVE"] = "0"
        else:
            os.environ.pop("ENFORCER_NATIVE", None)
        processor.offsets.start(0, 0)
        bs = batches(0)
        gc.collect()
        t0 = time.process_time()
        for b in bs:
            processor.process(b, 0.001, 0)
            out.records.clear()
        times.append((time.process_time() - t0) / (ROUNDS * BATCH) * 1e6)
    res[path] = times
print(json.dumps(res))
