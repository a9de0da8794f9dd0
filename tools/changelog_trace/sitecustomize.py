# Debug trace of what Faust's table recovery does with changelog records, for a worker
# (not used by the enforcer; not installed). How the 2026-12-03 standby defects were
# found (docs/operations.md, "Several workers under faults"):
#
#   DBG_CHANGELOG=1 DBG_OUT=/tmp/trace.log PYTHONPATH=tools/changelog_trace \
#       .venv/bin/python -m tests.chaos --keep --seed 5
#
# Python imports this ``sitecustomize`` at start in every process (workers included);
# once Faust's recovery module is imported it wraps, logging one line each: seeks
# (SEEK), batches aiokafka returned (FETCHED), records queued for and taken by the
# recovery loop where not contiguous (ENQ, DEQ), records applied where the offset jumps
# (JUMP), batches written to RocksDB (APPLY), table partitions opened and revoked,
# flow-control clears. A seek followed by FETCHED from the target and a first ENQ far
# past it is a dropped batch. The wrappers touch names the start-up self-check verifies
# (streams/faust_compat.py), so each keeps a reference to what it must.
# debug instrumentation for changelog holes (worker processes only)
import os, sys, time
if os.environ.get("DBG_CHANGELOG") == "1":
    def _log(*a):
        with open(os.environ.get("DBG_OUT", "/tmp/inv/dbg.log"), "a") as f:
            f.write(f"{time.strftime('%T')}.{int(time.time()*1000)%1000:03d} [{os.getpid()}] " + " ".join(map(str, a)) + "\n")
    import importlib.abc
    class _Hook(importlib.abc.MetaPathFinder):
        done = False
        def find_spec(self, name, path, target=None):
            if name == "faust.tables.recovery" and not _Hook.done:
                _Hook.done = True
                import importlib
                sys.meta_path.remove(self)
                mod = importlib.import_module(name)
                _patch(mod)
                sys.meta_path.insert(0, self)
                return importlib.util.find_spec(name)
            return None
    def _patch(rec):
        from faust.tables import base
        last = {}
        orig = base.Collection.on_changelog_event
        async def on_changelog_event(self, event):
            tp, off = event.message.tp, event.message.offset
            prev = last.get(tp)
            if prev is None and off > 5 or prev is not None and off - prev > 20:
                _log("JUMP", tp.topic[-18:], tp.partition, prev, "->", off)
            if prev is not None and off < prev:
                _log("BACK", tp.topic[-18:], tp.partition, prev, "->", off)
            last[tp] = off
            _ = self._on_changelog_event
            return await orig(self, event)
        base.Collection.on_changelog_event = on_changelog_event
        from faust.transport import consumer as c
        o_full = c.Consumer.on_buffer_full
        def on_buffer_full(self, tp):
            _log("BUFFER_FULL", tp, self.app.in_recovery); return o_full(self, tp)
        c.Consumer.on_buffer_full = on_buffer_full
        from faust.transport.drivers import aiokafka as ak
        o_sw = ak.AIOKafkaConsumerThread._seek_wait
        async def _seek_wait(self, consumer, partitions):
            _log("SEEK", {(tp.topic[-18:], tp.partition): o for tp, o in partitions.items()})
            for tp in partitions: last.pop(tp, None)
            return await o_sw(self, consumer, partitions)
        ak.AIOKafkaConsumerThread._seek_wait = _seek_wait
        from mode.utils import queues
        o_clear = queues.FlowControlEvent.clear
        def clear(self):
            _log("FLOW_CLEAR", [q.qsize() for q in self._queues]); return o_clear(self)
        queues.FlowControlEvent.clear = clear
        o_qc = queues.FlowControlQueue.clear
        def qclear(self):
            if self.qsize(): _log("QUEUE_CLEAR", self.qsize())
            return o_qc(self)
        queues.FlowControlQueue.clear = qclear
    sys.meta_path.insert(0, _Hook())
if os.environ.get("DBG_CHANGELOG") == "1":
    _orig_patch = _patch
    def _patch(rec):  # noqa: F811
        _orig_patch(rec)
        from faust.stores import rocksdb as r
        o_open = r.Store._open_for_partition
        def _open_for_partition(self, partition):
            _log("OPEN", self.table_name if hasattr(self, "table_name") else "", partition)
            return o_open(self, partition)
        r.Store._open_for_partition = _open_for_partition
        o_rev = r.Store.revoke_partitions
        def revoke_partitions(self, table, tps):
            _log("REVOKE_STORE", sorted((tp.topic[-18:], tp.partition) for tp in tps))
            _ = self._dbs
            return o_rev(self, table, tps)
        r.Store.revoke_partitions = revoke_partitions
        o_apply = r.Store.apply_changelog_batch
        def apply_changelog_batch(self, batch, to_key, to_value):
            b = list(batch)
            if b:
                tps = {}
                for e in b:
                    tp = e.message.tp; lo, hi = tps.get(tp, (e.message.offset, e.message.offset))
                    tps[tp] = (min(lo, e.message.offset), max(hi, e.message.offset))
                _log("APPLY", {(tp.topic[-18:], tp.partition): v for tp, v in tps.items()})
            return o_apply(self, b, to_key, to_value)
        r.Store.apply_changelog_batch = apply_changelog_batch
    sys.meta_path[:] = [m for m in sys.meta_path if not isinstance(m, _Hook)]
    _Hook.done = False
    sys.meta_path.insert(0, _Hook())
if os.environ.get("DBG_CHANGELOG") == "1":
    _orig_patch2 = _patch
    def _patch(rec):  # noqa: F811
        _orig_patch2(rec)
        from faust.transport.drivers import aiokafka as ak
        o_fr = ak.AIOKafkaConsumerThread._fetch_records
        async def _fetch_records(self, consumer, active_partitions, timeout=None, max_records=None):
            r = await o_fr(self, consumer, active_partitions, timeout=timeout, max_records=max_records)
            for tp, b in (r or {}).items():
                if "changelog" in tp.topic and b:
                    _log("FETCHED", tp.topic[-18:], tp.partition, b[0].offset, b[-1].offset, len(b))
            return r
        ak.AIOKafkaConsumerThread._fetch_records = _fetch_records
        from mode.utils import queues
        prevq = {}
        o_get = queues.FlowControlQueue.get
        async def get(self):
            ev = await o_get(self)
            m = getattr(ev, "message", None)
            if m is not None and "changelog" in m.topic:
                tp = m.tp; p = prevq.get(tp)
                if p is None or m.offset != p + 1:
                    _log("DEQ", tp.topic[-18:], tp.partition, p, "->", m.offset)
                prevq[tp] = m.offset
            return ev
        queues.FlowControlQueue.get = get
        o_put = queues.FlowControlQueue.force_put_nowait if hasattr(queues.FlowControlQueue, "force_put_nowait") else None
        prevp = {}
        def force_put_nowait(self, ev):
            m = getattr(ev, "message", None)
            if m is not None and "changelog" in m.topic:
                tp = m.tp; p = prevp.get(tp)
                if p is None or m.offset != p + 1:
                    _log("ENQ", tp.topic[-18:], tp.partition, p, "->", m.offset)
                prevp[tp] = m.offset
            return o_put(self, ev)
        if o_put: queues.FlowControlQueue.force_put_nowait = force_put_nowait
    sys.meta_path[:] = [m for m in sys.meta_path if not isinstance(m, _Hook)]
    _Hook.done = False
    sys.meta_path.insert(0, _Hook())
