"""A schema registry that fails is not a reason to dead-letter valid records (issue 16):
the worker waits for it, not ready meanwhile, and stops (exit 70) with nothing
committed past the record if it stays away. Against the real broker, with a real HTTP
stub of the Confluent schema registry API and inputs in the Confluent wire format."""

from __future__ import annotations

import json
import re
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streams.serde.codec import DECISION, OBJECTION, POST, Codec
from tests.enforcer_env import Deployment, metric
from tests.support import CODEC, objection, post

POST_ID, OBJECTION_ID = 1, 2  # the ids the stub serves the input schemas under


class RegistryStub:
    """The Confluent schema registry's ``GET /schemas/ids/{id}`` and ``POST
    /subjects/{subject}/versions``, on 127.0.0.1, in a thread. ``plan[id]``: the statuses
    of the next GET requests for that id (then ``after``); ``down``: 503 for
    everything. Counts GET requests and failures per id."""

    def __init__(self) -> None:
        self.schemas = {
            POST_ID: CODEC.current[POST].text,
            OBJECTION_ID: CODEC.current[OBJECTION].text,
        }
        self.plan: dict[int, list[int]] = defaultdict(list)
        self.after = 200
        self.down = False
        self.requests: dict[int, int] = defaultdict(int)
        self.failures: dict[int, int] = defaultdict(int)
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                match = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
                if match is None:
                    return self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
                schema_id = int(match.group(1))
                with stub.lock:
                    stub.requests[schema_id] += 1
                    planned = stub.plan[schema_id]
                    status = 503 if stub.down else planned.pop(0) if planned else stub.after
                    if status != 200:
                        stub.failures[schema_id] += 1
                if status != 200:
                    return self._answer(status, {"error_code": 50301, "message": "Unavailable"})
                if schema_id not in stub.schemas:
                    return self._answer(404, {"error_code": 40403, "message": "Schema not found"})
                self._answer(200, {"schema": stub.schemas[schema_id]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if stub.down:
                    return self._answer(503, {"error_code": 50301, "message": "Unavailable"})
                with stub.lock:
                    known = {text: i for i, text in stub.schemas.items()}
                    schema_id = known.get(body["schema"], max(stub.schemas) + 1)
                    stub.schemas[schema_id] = body["schema"]
                self._answer(200, {"id": schema_id})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def get_schema(self, schema_id: int) -> Schema:
        """What a registry client returns (for decoding outputs here, not counted)."""
        if schema_id not in self.schemas:
            raise SchemaRegistryError(404, 40403, "Schema not found")
        return Schema(self.schemas[schema_id], "AVRO")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def framed(schema_id: int, name: str, datum: dict) -> bytes:
    """A record in the Confluent wire format: 00, the 4-byte schema id, the Avro datum."""
    return b"\x00" + struct.pack(">I", schema_id) + CODEC.encode(name, datum)[10:]


@pytest.fixture
def registry() -> Iterator[RegistryStub]:
    stub = RegistryStub()
    yield stub
    stub.close()


@pytest.fixture
def env(kafka: str, names, tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(kafka, names, tmp_path).create_topics()
    yield deployment
    deployment.close()


# Records of the two input topics may be forwarded in either order: the post is sent
# once the objection is applied, so that it must be BLOCKED (not published, then
# retracted).
def send_objection(env: Deployment, user: str) -> None:
    value = framed(OBJECTION_ID, OBJECTION, objection("e1", user))
    env.sender().raw(env.names.objections, value, b"e1").flush()


def send_post(env: Deployment, user: str) -> None:
    env.sender().raw(env.names.posts, framed(POST_ID, POST, post("p1", user)), b"p1").flush()


def wait_until(worker: Any, name: str, labels: str, timeout: float) -> int:
    """Wait until a metric is at least 1; returns how often /ready answered 503 meanwhile."""
    not_ready = 0
    deadline = time.monotonic() + timeout
    while metric(worker, name, labels) < 1:
        assert worker.alive(), worker.log()
        assert time.monotonic() < deadline, f"{name}{labels} not reached:\n{worker.log()}"
        not_ready += worker.http("/ready")[0] == 503
        time.sleep(0.1)
    return not_ready


def wait_post_decided(env: Deployment, registry: RegistryStub, timeout: float) -> dict:
    """The post's decision (outputs are in the Confluent wire format too); nothing in
    the DLQ."""
    outputs = Codec(registry)
    decisions = env.reader(env.names.decisions).wait_count(1, timeout)
    [decision] = [outputs.decode(r.raw, DECISION)[1] for r in decisions]
    assert env.reader(env.names.dlq).settle() == [], "a valid record went to the DLQ"
    return decision


def test_records_wait_for_a_failing_registry_and_are_applied(
    env: Deployment, registry: RegistryStub
) -> None:
    """Each input schema id fails 8 times, is answered once (the re-keying stage), fails
    8 times more (the gate), then is answered: the objection is applied, the post after
    it blocked, nothing dead-lettered; the worker is not ready while a record waits."""
    for schema_id in (POST_ID, OBJECTION_ID):
        registry.plan[schema_id] = [503] * 8 + [200] + [503] * 8
    worker = env.worker("--schema-registry-url", registry.url)
    send_objection(env, "u1")
    not_ready = wait_until(worker, "enforcer_objection_events_total", '{action="OBJECT"}', 90)
    send_post(env, "u1")
    blocked = '{outcome="BLOCKED",reason="OBJECTED"}'
    not_ready += wait_until(worker, "enforcer_decisions_total", blocked, 90)
    decision = wait_post_decided(env, registry, 30)
    assert (decision["post_id"], decision["outcome"], decision["reason"]) == (
        "p1",
        "BLOCKED",
        "OBJECTED",
    )
    # both stages met the failures and waited, not ready meanwhile
    assert registry.failures == {POST_ID: 16, OBJECTION_ID: 16}
    assert metric(worker, "enforcer_schema_registry_errors_total") == 32
    assert not_ready > 0
    log = worker.full_log()
    assert re.search(r"\[rekey\] .*objections\[\d+\]@0: schema registry unavailable", log)
    assert re.search(r"partition \d+: offset \d+ waits for the schema registry", log)
    assert worker.http("/ready")[0] == 200
    assert worker.stop() == 0


@pytest.mark.parametrize("stage", ["rekey", "gate"])
def test_the_worker_stops_when_the_registry_stays_away_and_loses_nothing(
    env: Deployment, registry: RegistryStub, stage: str
) -> None:
    """The registry stops answering after the worker started (for every request, which
    stops the re-keying stage; or after answering the stage once per id, which stops the
    gate): the worker exits with 70 after --registry-timeout; restarted once the registry
    answers, it applies the objection (nothing was committed past it) and blocks a
    later post of the user; nothing is dead-lettered."""
    flags = ("--schema-registry-url", registry.url, "--registry-timeout", "5")
    worker = env.worker(*flags)
    if stage == "rekey":
        registry.down = True
    else:
        for schema_id in (POST_ID, OBJECTION_ID):
            registry.plan[schema_id] = [200]
        registry.after = 503
    send_objection(env, "u1")
    assert worker.proc.wait(90) == 70, worker.log()
    log = worker.full_log()
    if stage == "rekey":
        assert "no answer for --registry-timeout 5 s" in log
        assert "the re-keying stage exited (70)" in log
    else:
        assert "has waited for the schema registry for" in log

    registry.down, registry.after = False, 200
    worker = env.worker(*flags)
    wait_until(worker, "enforcer_objection_events_total", '{action="OBJECT"}', 90)
    send_post(env, "u1")
    decision = wait_post_decided(env, registry, 90)
    assert (decision["post_id"], decision["outcome"], decision["reason"]) == (
        "p1",
        "BLOCKED",
        "OBJECTED",
    )
    assert worker.stop() == 0
