"""Whether and how the gate uses the C fast path (``gate/native.py``): made once, when
the extension is built and the schemas allow splicing; with fencing, one per
partition's producer. It decides the common posts of a batch and hands every other
record to ``Processor.process_one``; its counts are added to the gate's metrics here."""

from __future__ import annotations

import logging
from typing import Any

from streams.gate import native

log = logging.getLogger("streams.enforcer")


class FastPath:
    """The processor's fast path, made on first use."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self.gate: Any = None  # native.make_fast_gate: None until made, False if not used
        self._fencing = bool(getattr(processor.outputs, "transactional", False))
        self._keys = native.decision_keys()

    def gate_for(self, partition: int | None) -> Any:
        """The fast path to decide a batch of ``partition`` with, or False (every record
        goes through ``Processor.process_one``)."""
        fast = self.gate if self.gate is not None else self.make()
        if fast and self._fencing:
            fast = self._for_partition(partition)
        return fast

    def run(self, fast: Any, messages: Any, timestamp_scale: float) -> None:
        """Decide a batch with ``fast`` and count what it decided."""
        decided, decisions, buckets, latency_sum, latency_n = fast.run(messages, timestamp_scale)
        if decided:
            metrics = self.processor.metrics
            counts = metrics.decisions
            for key, count in zip(self._keys, decisions, strict=True):
                if count:
                    counts[key] += count
            metrics.add_latencies(buckets, latency_sum, latency_n)

    def make(self) -> Any:
        """The native fast path (``gate/native.py``), or False: posts are decided in
        Python."""
        self.gate = False
        posts = self.processor.posts
        if not native.available():
            log.info("posts are decided in Python: the native fast path is not available")
        elif posts.pick_fields is None or not posts.make_splices():
            log.info("posts are decided in Python: the schemas do not allow splicing")
        else:
            try:
                self.gate = native.make_fast_gate(self.processor)
                log.info("posts are decided by the native fast path")
            except native.Unsupported as exc:
                log.info("posts are decided in Python: %s", exc)
        return self.gate

    def _for_partition(self, partition: int | None) -> Any:
        """With fencing: the fast path writing through ``partition``'s producer (made once
        per producer), or False (records one at a time, each routed by its partition)."""
        outputs = self.processor.outputs
        if partition is None or not outputs.use(partition):
            return False
        part = outputs.partitions[partition]
        if part.fast is None:
            part.fast = native.make_fast_gate(_WithOutputs(self.processor, part))
            fixed_now = getattr(self.gate, "fixed_now", None)  # tests' clock
            if fixed_now is not None:
                part.fast.fixed_now = fixed_now
        return part.fast

    def failed(self, message: Any, exc: BaseException) -> None:
        """A post the fast path decided could not be written (its offset is processed):
        to the DLQ, as ``Processor.gate`` does with a post it cannot decide."""
        log.error(
            "cannot decide post at %s[%d]@%d",
            message.topic,
            message.partition,
            message.offset,
            exc_info=exc,
        )
        self.processor.emitter.dead_letter(message, f"internal error: {type(exc).__name__}")


class _WithOutputs:
    """A processor as ``native.make_fast_gate`` sees it, with one partition's producer
    (fencing) as its outputs."""

    def __init__(self, processor: Any, outputs: Any) -> None:
        self._processor = processor
        self.outputs = outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)
