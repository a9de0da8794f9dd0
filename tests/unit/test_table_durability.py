"""The tables' RocksDB partitions run without a write-ahead log (the changelog makes
them durable): after a kill, the offset Faust persisted must never have survived the
table writes made before it, or recovery would skip changelog records the table lost."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from faust.stores.rocksdb import Store

from streams.state.ledger import ChangelogBackedOptions
from tests.support import ROOT

WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from types import SimpleNamespace
    from faust.stores.rocksdb import Store
    from streams.state.ledger import ChangelogBackedOptions, TableState

    class Outputs:
        def track_changelog(self, topic): pass
        def produce(self, *args): pass

    db = ChangelogBackedOptions().open(Path(sys.argv[1]))
    store = SimpleNamespace(_dbs={0: db}, _db_for_partition=lambda p: db)
    state = TableState(SimpleNamespace(data=store), "changelog", Outputs())
    for i in range(1000):
        state.put(0, b"key-%d" % i, b"value")       # the gate's writes
    db.put(Store.offset_key, b"999")                 # as Store.set_persisted_offset
    os.kill(os.getpid(), 9)
    """
)


def test_a_killed_worker_never_keeps_an_offset_without_the_writes_before_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "partition-0"
    run = subprocess.run([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, timeout=60)
    assert run.returncode == -9
    db = ChangelogBackedOptions().open(path)
    offset = db.get(Store.offset_key)
    kept = sum(db.get(b"key-%d" % i) is not None for i in range(1000))
    # without a write-ahead log both are lost together (nothing was flushed yet)
    assert offset is None or kept == 1000, (offset, kept)
    assert offset is None and kept == 0
