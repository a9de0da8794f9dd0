"""Live posts: what the gate does with a post forwarded by the re-keying stage.

A checked post of the current schema is decided from its bytes: its TrainingRecord and
Decision are spliced from them (``Codec.splicer``), the same bytes the decoding path
writes (``Posts.decide_spliced``, which the C fast path, ``gate/native.py``, matches
byte for byte). Any other post is decoded and decided by ``core/enforcement.on_post``
(``Posts.decide``), its effects written by ``gate/emit.py``."""

from __future__ import annotations

import logging
from operator import itemgetter
from typing import Any

from streams.core.consent import ConsentState, decode_state, stored_objects
from streams.core.enforcement import (
    DECISION_FIELDS,
    TRAINING_FIELDS,
    Source,
    decision_values,
    on_post,
    post_outcome,
    training_values,
)
from streams.core.policy import Outcome, Policy
from streams.core.records import POST_FIELDS
from streams.gate import clock
from streams.gate.emit import Emitter
from streams.serde.codec import DECISION, POST, TRAINING_RECORD, Codec
from streams.settings import Settings
from streams.state.ledger import Ledger, TableState

log = logging.getLogger("streams.enforcer")


def consent_state(consent: TableState, partition: int, user_id: str) -> ConsentState:
    """A user's consent state, from the consent table's partition."""
    return decode_state(consent.get(partition, user_id.encode("utf-8")))


class Posts:
    """Decides live posts."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        codec: Codec,
        consent: TableState,
        ledger: Ledger,
        emitter: Emitter,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.codec = codec
        self.consent = consent
        self.ledger = ledger
        self.emitter = emitter
        # the fields the rules read (POST_FIELDS) from a scanned post's values, as one
        # tuple; None: posts are decoded
        self.pick_fields = _picker(codec.field_names(POST), POST_FIELDS)
        self.splices: Any = None  # make_splices: None until made, False if not possible

    def decide_spliced(
        self, fields: tuple, starts: tuple[int, ...], source: Source, message: Any
    ) -> bool:
        """Decide a checked post of the current schema without building records: its
        outputs are spliced from its bytes (``Codec.splicer``; ``fields`` are its
        ``POST_FIELDS``, ``starts`` where its fields start), the same bytes ``decide``
        writes. Returns False, having written nothing, when ``decide`` must decide it
        (a live post that is no longer eligible, or no splicers for the current
        schemas)."""
        splices = self.splices or self.make_splices()
        if not splices:
            return False
        post_id, user_id, platform, visibility, country, adult = fields
        partition, policy = message.partition, self.policy
        # consent_state, without its three calls for the nine users in ten who have no
        # state (2.4% of this thread's instructions per post)
        objected = stored_objects(self.consent.get(partition, user_id.encode("utf-8")), platform)
        reason = policy.reason_of(visibility, adult, country, platform, objected)
        outcome = post_outcome(
            reason, lambda: self.ledger.is_live(partition, user_id, post_id), False
        )
        if outcome is Outcome.RETRACTED:
            return False
        now = clock.now_ms()
        s, data = self.settings, message.value
        assert outcome is not None  # live traffic always gets a decision
        values = decision_values(outcome, reason, policy, now, source, None)
        decision = splices[1](data, starts, *values)
        if outcome is Outcome.PUBLISHED:
            training = splices[0](data, starts, *training_values(policy, now))
            # in the ledger before it is published, so that it is always retractable
            self.ledger.add(partition, user_id, post_id, platform)
            records: tuple[tuple[str, Any], ...] = (
                (s.training_topic, training),
                (s.decisions_topic, decision),
            )
        else:
            records = ((s.decisions_topic, decision),)
        self.emitter.produce(post_id.encode(), records, message)
        self.emitter.metrics.decisions[values[:2]] += 1  # (outcome, reason)
        self.emitter.decided(message, now)
        return True

    def make_splices(self) -> Any:
        """The TrainingRecord and Decision splicers ``decide_spliced`` needs, or False
        (posts are decoded from then on) when the schemas do not allow splicing."""
        s = self.settings
        training = self.codec.splicer(POST, TRAINING_RECORD, s.training_topic)
        decision = self.codec.splicer(POST, DECISION, s.decisions_topic)
        # they are called with the values of these fields, in this order
        given = ((training, TRAINING_FIELDS), (decision, DECISION_FIELDS))
        if all(splice is not None and _parameters(splice) == f for splice, f in given):
            self.splices = (training, decision)
        else:
            log.info("posts are decoded and outputs encoded: the schemas do not allow splicing")
            self.splices = False
        return self.splices

    def decide(self, post: dict[str, Any], source: Source, message: Any) -> None:
        """Decide a decoded post (``core/enforcement.on_post``) and write its effects."""
        partition, user_id = message.partition, post["user_id"]
        state = consent_state(self.consent, partition, user_id)
        now = clock.now_ms()
        live = self.ledger.is_live(partition, user_id, post["post_id"])
        self.emitter.emit(
            on_post(self.policy, post, state, live, now, source), user_id, partition, message
        )
        self.emitter.decided(message, now)


def _picker(names: tuple[str, ...], wanted: tuple[str, ...]) -> Any:
    """A function picking the values of ``wanted`` (a tuple) from values in the order of
    ``names``, or None if one is missing."""
    if not set(wanted) <= set(names):
        return None
    return itemgetter(*(names.index(name) for name in wanted))


def _parameters(splice: Any) -> tuple[str, ...]:
    """The field names a splicer (a partial of a generated function) takes."""
    code = splice.func.__code__
    return code.co_varnames[len(splice.args) + 2 : code.co_argcount]
