"""The gate's writer: every record an input makes goes out here, through the one output
producer (``kafka/outputs.py``), with its counters (``gate/metrics.py``).

``Emitter.emit`` carries out ``Effects`` (``core/enforcement.py``): encode every record,
add published posts to the ledger first (a published post is always retractable),
produce, then hold the ledger's removals until the tombstones are acknowledged
(``Ledger.settle``, at the next checkpoint). An output that cannot be produced after
the first side effect stops the worker (``output_failed``) before its input's offset
is committed. Dead letters (``gate/dlq.py``) and replay answers go out here too."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from streams.core.enforcement import Effects
from streams.gate.dlq import dlq_record
from streams.gate.metrics import Metrics
from streams.kafka.outputs import OutputProducer
from streams.serde.codec import CONSENT_RECEIPT, DECISION, RETRACTION, TRAINING_RECORD, Codec
from streams.settings import Settings
from streams.state.ledger import Ledger

log = logging.getLogger("streams.enforcer")


class Emitter:
    """Writes the outputs of the gate's inputs and counts them."""

    def __init__(
        self,
        settings: Settings,
        codec: Codec,
        ledger: Ledger,
        outputs: OutputProducer,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.ledger = ledger
        self.outputs = outputs
        self.metrics = metrics
        # seconds per unit of the current batch's record timestamps (Faust messages have
        # seconds, aiokafka records milliseconds): set by ``Processor.process``
        self.timestamp_scale = 1.0

    def emit(self, fx: Effects, user_id: str, partition: int, message: Any) -> None:
        """Carry out the effects of ``message``: encode every record, add published posts
        to the ledger (a published post is always retractable), produce the records
        (a failure then stops the worker: ``output_failed``), and hold the ledger's
        removals until the tombstones are acknowledged (``Ledger.settle``)."""
        if fx.empty:
            return
        s, enc = self.settings, self.codec.encode
        records: list[tuple[str, bytes, bytes | None]] = [
            (s.training_topic, r["post_id"].encode(), enc(TRAINING_RECORD, r, s.training_topic))
            for r in fx.publish
        ]
        records += [(s.training_topic, post_id.encode(), None) for post_id in fx.tombstones]
        records += [
            (s.retractions_topic, r["user_id"].encode(), enc(RETRACTION, r, s.retractions_topic))
            for r in fx.retractions
        ]
        records += [
            (s.decisions_topic, r["post_id"].encode(), enc(DECISION, r, s.decisions_topic))
            for r in fx.decisions
        ]
        if fx.receipt is not None:  # an objection event's: after its retractions
            r = fx.receipt
            records.append(
                (s.receipts_topic, r["user_id"].encode(), enc(CONSENT_RECEIPT, r, s.receipts_topic))
            )
        for post_id, platform in fx.ledger_add.items():
            self.ledger.add(partition, user_id, post_id, platform)
        try:
            for topic, key, value in records:
                self.outputs.produce(topic, key, value)
        except Exception as exc:
            self.output_failed(message, exc)
        for record in fx.decisions:
            self.metrics.decisions[(record["outcome"], record["reason"])] += 1
        if fx.tombstones:
            self.metrics.retractions += len(fx.retractions)
            self.metrics.retracted_posts += len(fx.tombstones)
        for post_id in fx.ledger_remove:
            self.ledger.remove(partition, user_id, post_id)

    def produce(self, key: bytes, records: tuple[tuple[str, Any], ...], message: Any) -> None:
        """Produce ready-made ``(topic, value)`` records of ``message`` under one key (a
        post decided from its bytes, its ledger entry written before)."""
        try:
            for topic, value in records:
                self.outputs.produce(topic, key, value)
        except Exception as exc:
            self.output_failed(message, exc)

    def output_failed(self, message: Any, exc: BaseException) -> None:
        """An output record of an input could not be produced after its first side
        effect (the ledger entry of a post about to be published): the input must be
        processed again, so the worker stops before its offset is committed."""
        log.critical(
            "cannot write the outputs of %s[%d]@%d; exiting so that it is processed again",
            message.topic,
            message.partition,
            message.offset,
            exc_info=exc,
        )
        logging.shutdown()
        os._exit(70)

    def dead_letter(self, message: Any, reason: str) -> None:
        """Send a record to the DLQ with the contract's headers (``gate/dlq.py``)."""
        topic, key, value, headers = dlq_record(message, reason, self.settings.max_record_bytes)
        self.metrics.dlq[topic] += 1
        log.warning("DLQ %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason)
        self.outputs.produce(self.settings.dlq_topic, key, value, headers=headers)

    def replay_answer(self, replay_id: str, answer: dict[str, Any]) -> None:
        """Answer the replay command on ``<app-id>-replay-results``."""
        self.outputs.produce(
            self.settings.replay_results_topic, replay_id.encode(), json.dumps(answer).encode()
        )

    def decided(self, message: Any, now_ms: int) -> None:
        """Count how long ``message`` took from its record time to its decision."""
        if message.timestamp:
            sent = message.timestamp * self.timestamp_scale
            self.metrics.observe_latency(max(0.0, now_ms / 1000.0 - sent))

    def retracted(self, message: Any, now_ms: int) -> None:
        """Count how long an objection that retracted posts took from its record time."""
        if message.timestamp:
            sent = message.timestamp * self.timestamp_scale
            self.metrics.retraction_latency.observe(max(0.0, now_ms / 1000.0 - sent))
