"""The gate's per-post fast path in C (``_native.c``), set up from the schemas, the
policy and the gate's state; optional.

It decides the common post (current schema in its canonical encoding, packed source
header, a user of the partition it arrived on, not over ``Processor.max_post_bytes``,
next expected offset, published or blocked) with the same reads, writes, bytes and
failure handling as ``Posts.decide_spliced`` (``gate/posts.py``), without the
interpreter's cost per post; it hands every other record, before any side effect, to
``Processor.process_one``. Whether it is used: ``gate/fastpath.py``. The rules stay
here in Python: the fast path reads the reason from a table filled by calling
``Policy.reason_of`` for every combination of the fields they read, and asks
``core/consent.py`` whether a user with consent state objects. The gate decides every post
in Python when the extension was not built or ``ENFORCER_NATIVE=0`` is set
(``available``), or when ``make_fast_gate`` raises ``Unsupported`` (schemas not of the
shape it handles). No Kafka.
"""

from __future__ import annotations

import os
from string import ascii_uppercase
from typing import Any

from streams.core.consent import stored_objects
from streams.core.enforcement import DECISION_FIELDS, TRAINING_FIELDS
from streams.core.policy import Outcome, Reason
from streams.core.records import POST_FIELD_KINDS, POST_FIELDS
from streams.gate.metrics import LATENCY_BUCKETS
from streams.serde.avro_compiled import _kind, _named_enums, definition, encode_long, splice_plan
from streams.serde.codec import DECISION, POST, TRAINING_RECORD

try:  # built by `pip install` where a C compiler is present (setup.py)
    from streams.gate import _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None

# field kinds, as _native.c numbers them
_KINDS = {
    "null": 0,
    "boolean": 1,
    "int": 2,
    "long": 3,
    "float": 4,
    "double": 5,
    "string": 6,
    "bytes": 7,
    "enum": 8,
    "array": 9,
    "union": 10,
}
# the kind of each Post field the fast path reads (records.POST_LAYOUT)
PICKED_KINDS = POST_FIELD_KINDS
COUNTRIES = tuple(a + b for a in ascii_uppercase for b in ascii_uppercase)  # as _native.c
REASONS = tuple(Reason)


class Unsupported(Exception):
    """The schemas are not the shape the fast path handles; the message says why."""


def available() -> bool:
    """True when the C extension is built and not disabled (``ENFORCER_NATIVE=0``)."""
    return _native is not None and os.environ.get("ENFORCER_NATIVE", "1") != "0"


def _simple(node: Any, named: dict) -> tuple[int, int]:
    """A non-union, non-array type as (kind, symbol count if an enum)."""
    kind = _kind(node, named)
    if kind is None or kind in ("union", "array"):
        raise Unsupported(f"unsupported type {node!r}")
    if kind == "enum":
        return _KINDS[kind], len(definition(node, named)["symbols"])
    return _KINDS[kind], 0


def _symbols(node: Any, named: dict) -> tuple[str, ...]:
    return tuple(definition(node, named)["symbols"])


def field_program(schema: dict) -> tuple[tuple[int, int, int, int], ...]:
    """Each field of a flat record schema as ``(kind, arg, inner, inner_arg)``."""
    named = _named_enums(schema["fields"], {})
    program = []
    for f in schema["fields"]:
        node = f["type"]
        kind = _kind(node, named)
        if kind == "union":
            null = 0 if node[0] == "null" else 1
            inner, inner_arg = _simple(node[1 - null], named)
            program.append((_KINDS["union"], null, inner, inner_arg))
        elif kind == "array":
            inner, inner_arg = _simple(node["items"], named)
            if inner == _KINDS["null"]:
                raise Unsupported("an array of nulls")
            program.append((_KINDS["array"], 0, inner, inner_arg))
        else:
            simple, arg = _simple(node, named)
            program.append((simple, arg, 0, 0))
    return tuple(program)


def _given(plan: Any, names: tuple[str, ...], what: str) -> dict[str, Any]:
    if plan is None:
        raise Unsupported(f"the {what} is not spliced from the post")
    _, given = plan
    if tuple(f["name"] for f in given) != names:
        raise Unsupported(f"the {what} has other fields than {names}")
    return {f["name"]: f["type"] for f in given}


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return encode_long(len(data)) + data


def make_fast_gate(processor: Any) -> Any:
    """The fast path for a ``Processor``; raises ``Unsupported`` when the schemas (or
    the codec's wire format) do not allow it."""
    if _native is None:
        raise Unsupported("the C extension streams.gate._native is not built")
    codec, policy, settings = processor.codec, processor.policy, processor.settings
    post_prefix = codec.scan_prefix(POST)
    if post_prefix is None:
        raise Unsupported("the current Post schema has no scanner")
    post = codec.schema(POST)
    named = _named_enums(post["fields"], {})
    names = [f["name"] for f in post["fields"]]
    program = field_program(post)
    picks = []
    for name, kind in zip(POST_FIELDS, PICKED_KINDS, strict=True):
        if name not in names:
            raise Unsupported(f"Post has no field {name}")
        index = names.index(name)
        if _kind(post["fields"][index]["type"], named) != kind:
            raise Unsupported(f"Post's {name} is not a {kind}")
        picks.append(index)
    platforms = _symbols(post["fields"][picks[2]]["type"], named)
    visibilities = _symbols(post["fields"][picks[3]]["type"], named)

    # the rules: Policy.reason_of for every combination of what they read
    table = bytearray()
    for platform in platforms:
        for visibility in visibilities:
            for adult in (False, True):
                for country in COUNTRIES:
                    for objects in (False, True):
                        reason = policy.reason_of(visibility, adult, country, platform, objects)
                        table.append(REASONS.index(reason))

    training = codec.schema(TRAINING_RECORD)
    t_plan = splice_plan(post, training)
    t_types = _given(t_plan, TRAINING_FIELDS, "TrainingRecord")
    t_named = _named_enums(training["fields"], {})
    if [_kind(t_types[n], t_named) for n in TRAINING_FIELDS] != ["string", "long"]:
        raise Unsupported("TrainingRecord's given fields are not (string, long)")

    decision = codec.schema(DECISION)
    d_plan = splice_plan(post, decision)
    d_types = _given(d_plan, DECISION_FIELDS, "Decision")
    d_named = _named_enums(decision["fields"], {})
    kinds = [_kind(d_types[n], d_named) for n in DECISION_FIELDS]
    expected = ["enum", "enum", "string", "long", "string", "int", "long", "union", "union"]
    replay, cause = d_types["replay_id"], d_types["cause"]
    if kinds != expected or "string" not in replay or "null" not in cause:
        raise Unsupported("Decision's given fields are not the ones the fast path writes")
    outcomes = _symbols(d_types["outcome"], d_named)
    reasons = _symbols(d_types["reason"], d_named)
    if not {Outcome.PUBLISHED, Outcome.BLOCKED} <= set(outcomes) or set(REASONS) - set(reasons):
        raise Unsupported("Decision's enums lack an outcome or a reason")
    version = _string(policy.version)

    def middle(outcome: Outcome, reason: Reason) -> bytes:
        return encode_long(outcomes.index(outcome)) + encode_long(reasons.index(reason)) + version

    published = tuple(middle(Outcome.PUBLISHED, r) for r in REASONS)
    blocked = tuple(middle(Outcome.BLOCKED, r) for r in REASONS)
    # replay_id and cause are null for a post's decision: the tail is their union indexes
    tail = encode_long(replay.index("null")) + encode_long(cause.index("null"))

    outputs, ledger = processor.outputs, processor.ledger
    picked_kinds = tuple(_KINDS[kind] for kind in PICKED_KINDS)
    parts = (
        (
            post_prefix,
            program,
            tuple(picks),
            picked_kinds,
            platforms,
            tuple(p.encode() for p in platforms),
        ),
        (bytes(table), REASONS.index(Reason.ELIGIBLE), len(REASONS)),
        (codec.wire_prefix(TRAINING_RECORD, settings.training_topic), t_plan[0], version),
        (
            codec.wire_prefix(DECISION, settings.decisions_topic),
            d_plan[0],
            published,
            blocked,
            tail,
        ),
        (settings.training_topic, settings.decisions_topic, ledger.state.changelog_topic),
        (
            processor.consent._open,
            ledger.state._open,
            ledger._held,
            processor.offsets.expected,
            processor.positions.repositioning,
        ),
        (
            outputs.raw_produce,
            outputs.produce_when_room,
            stored_objects,
            processor.process_one,
            processor.fast_path.failed,
            processor.emitter.output_failed,
        ),
        LATENCY_BUCKETS,
        (settings.partitions, processor.max_post_bytes),
    )
    try:
        return _native.FastGate(*parts)
    except ValueError as exc:  # _native.c refused the set-up: posts are decided in Python
        raise Unsupported(f"the C fast path refused its set-up: {exc}") from None


def decision_keys() -> tuple[tuple[str, str], ...]:
    """The ``Metrics.decisions`` key of each count ``FastGate.run`` returns: published
    by reason, then blocked by reason."""
    return tuple((Outcome.PUBLISHED.value, r.value) for r in REASONS) + tuple(
        (Outcome.BLOCKED.value, r.value) for r in REASONS
    )
