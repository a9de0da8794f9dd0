"""The Kafka Streams peer reads input values as the enforcer does (issue 20).

Thousands of Post and ObjectionEvent values, valid and damaged (truncated, bytes changed,
inserted or dropped, varints written longer, arrays in several blocks, bad UTF-8, blank or
long ids, other headers), go through the peer's decoder (``DecodeCheck`` in the jar) and
the enforcer's (``Codec.decode`` and ``check_post`` / ``check_objection``): each is a dead
letter for both or for neither, and for a valid post the peer's TrainingRecord is the
enforcer's, byte for byte. No broker.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.peer_streams import PROJECT
from streams.core.enforcement import training_record
from streams.core.policy import Policy
from streams.core.records import check_objection, check_post
from streams.serde.avro_compiled import encode_long
from streams.serde.codec import DecodeError
from streams.traffic.generator import TrafficGenerator
from tests.peers_support import needs_streams_peer, streams_jar
from tests.support import CODEC

pytestmark = needs_streams_peer

POLICY = Policy(
    version="v",
    countries=frozenset({"GB"}),
    visibilities=frozenset({"PUBLIC"}),
    platforms=frozenset({"FACEBOOK", "INSTAGRAM"}),
    adults_only=True,
)
ODD_STRINGS = [
    "",
    " ",
    "\u00a0",
    "\x1c",
    "\u3000 ",
    "x" * 1001,
    "é" * 501,
    "\U0001f600" * 251,
    "\U0001f600" * 250,
    "ok",
    "\ud7ff\ue000\U00010000",
]


def _string(s: str) -> bytes:
    data = s.encode("utf-8")
    return encode_long(len(data)) + data


def _post_fields(post: dict[str, Any]) -> list[bytes]:
    """A Post datum field by field (the order of the schema)."""
    platforms, visibilities = ["FACEBOOK", "INSTAGRAM"], ["PUBLIC", "FRIENDS", "PRIVATE"]
    text = post["text"]
    media = post["media_urls"]
    return [
        _string(post["post_id"]),
        _string(post["user_id"]),
        encode_long(platforms.index(post["platform"])),
        encode_long(visibilities.index(post["visibility"])),
        _string(post["author_country"]),
        b"\x01" if post["author_is_adult"] else b"\x00",
        encode_long(post["created_at"]),
        b"\x00" if text is None else b"\x02" + _string(text),
        (encode_long(len(media)) + b"".join(_string(m) for m in media) if media else b"") + b"\x00",
    ]


def _longer(varint: bytes) -> bytes:
    """The same varint written one byte longer (valid, not canonical)."""
    return varint[:-1] + bytes([varint[-1] | 0x80, 0x00])


def _cases(rnd: random.Random) -> list[tuple[str, bytes]]:
    gen = TrafficGenerator(500, seed=3, objector_share=1.0)
    header = CODEC.wire_prefix("Post")
    cases: list[tuple[str, bytes]] = []
    for _ in range(300):
        post = gen.post()
        post["text"] = rnd.choice([None, post["text"], "caf\u00e9 \U0001f600", ""])
        if rnd.random() < 0.3:
            field = rnd.choice(["post_id", "user_id", "author_country"])
            post[field] = rnd.choice([*ODD_STRINGS, "gb", "GBR", "G"])
        if rnd.random() < 0.2:
            post["media_urls"] = [rnd.choice(ODD_STRINGS) for _ in range(rnd.randint(0, 3))]
        fields = _post_fields(post)
        cases.append(("post", header + b"".join(fields)))
        # written otherwise but valid: a longer varint, an array in two blocks
        i = rnd.randrange(len(fields))
        longer = list(fields)
        longer[i] = _longer(fields[i][:1]) + fields[i][1:] if fields[i][0] < 0x80 else fields[i]
        cases.append(("post", header + b"".join(longer)))
        media = post["media_urls"]
        if len(media) >= 2:
            blocks = (
                encode_long(1)
                + _string(media[0])
                + encode_long(-(len(media) - 1))
                + encode_long(sum(len(_string(m)) for m in media[1:]))
                + b"".join(_string(m) for m in media[1:])
                + b"\x00"
            )
            cases.append(("post", header + b"".join(fields[:-1]) + blocks))
    for _ in range(200):
        event = gen.objection()
        if rnd.random() < 0.3:
            event[rnd.choice(["event_id", "user_id"])] = rnd.choice(ODD_STRINGS)
        cases.append(("objection", CODEC.encode("ObjectionEvent", event)))
    # damaged copies of the valid ones, and other headers
    damaged: list[tuple[str, bytes]] = []
    for kind, value in cases:
        data = bytearray(value)
        what = rnd.randrange(6)
        if what == 0:
            data = data[: rnd.randrange(len(data))]
        elif what == 1:
            data[rnd.randrange(10, len(data))] = rnd.randrange(256)
        elif what == 2:
            data.insert(rnd.randrange(10, len(data) + 1), rnd.randrange(256))
        elif what == 3:
            del data[rnd.randrange(10, len(data))]
        elif what == 4:
            data[rnd.randrange(10, len(data))] = rnd.choice([0x80, 0xC0, 0xED, 0xF4, 0xFF, 0x02])
        else:
            data += bytes([rnd.randrange(256)])
        damaged.append((kind, bytes(data)))
    other = CODEC.encode("ObjectionEvent", gen.objection())
    damaged += [
        ("post", b""),
        ("post", b"\xc3"),
        ("post", b"\xc3\x01" + bytes(8) + b"\x00"),
        ("post", b"\x00\x00\x00\x00\x07" + cases[0][1][10:]),
        ("post", other),
        ("objection", cases[0][1]),
        ("post", b'{"post_id": "json"}'),
    ]
    return cases + damaged


def _enforcer(kind: str, value: bytes) -> str:
    """What the enforcer makes of a value: "dlq", or "ok" and the TrainingRecord of a post."""
    try:
        if kind == "post":
            post = CODEC.decode(value, "Post")[1]
            check_post(post)
            return "ok " + CODEC.encode("TrainingRecord", training_record(post, POLICY, 0)).hex()
        check_objection(CODEC.decode(value, "ObjectionEvent")[1])
        return "ok"
    except DecodeError:
        return "dlq"


@pytest.fixture(scope="module")
def jar() -> Path:
    return streams_jar()


def test_the_peer_reads_inputs_as_the_enforcer_does(jar: Path) -> None:
    cases = _cases(random.Random(20))
    lines = "".join(f"{kind} {value.hex()}\n" for kind, value in cases)
    done = subprocess.run(
        [
            "java",
            "-cp",
            f"{jar}:{PROJECT / 'target' / 'lib'}/*",
            "org.objectionenforcer.peer.DecodeCheck",
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    peer = done.stdout.splitlines()
    assert len(peer) == len(cases)
    verdicts = [_enforcer(kind, value) for kind, value in cases]
    differ = [
        (kind, value.hex(), mine, theirs)
        for (kind, value), mine, theirs in zip(cases, verdicts, peer, strict=True)
        if mine != (theirs if theirs.startswith("ok") else "dlq")
    ]
    assert not differ, f"{len(differ)} of {len(cases)} read otherwise, e.g. {differ[:3]}"
    dead = sum(v == "dlq" for v in verdicts)
    assert 0.2 * len(cases) < dead < 0.8 * len(cases)  # both kinds well represented
