# Objection enforcer: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed
KAFKA := deploy/kafka/local-kafka
PYTEST_ARGS ?=

.PHONY: demo test unit bench chaos lint setup broker-jars clean

## make demo: set up, start a local broker, the topics, a worker and synthetic traffic
demo: setup
	$(VENV)/bin/enforcer demo $(DEMO_ARGS)

## make test: set up, then the whole test suite against a real Kafka broker
test: setup $(PEER_STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## make unit: only the tests that need no broker
unit: setup
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

## make bench: the benchmark (throughput, latency, memory), results in bench/results/
bench: setup $(PEER_STAMP)
	$(VENV)/bin/pip install -q -e ".[bench]"
	$(PY) -m bench.run --peer-python $(PEER_VENV)/bin/python $(BENCH_ARGS)

## make chaos: 3 workers on a 3-node cluster under faults (about 12 minutes), results in
## tests/chaos/results/<timestamp>.json; CHAOS_ARGS="--schedule short --duration 90" etc.
chaos: setup
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# The Quix Streams peer of the benchmark, in its own environment (it pins an older
# confluent-kafka); it imports the enforcer's codec and policy modules.
$(PEER_STAMP): pyproject.toml
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q --upgrade pip
	$(PEER_VENV)/bin/pip install -q "quixstreams==3.28.1" "fastavro>=1.13.1" "aiokafka>=0.14.0"
	$(PEER_VENV)/bin/pip install -q --no-deps -e .
	touch $(PEER_STAMP)

lint: setup
	$(VENV)/bin/ruff check streams tests bench

setup: $(STAMP) broker-jars

$(STAMP): pyproject.toml setup.py streams/_native.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

broker-jars:
	$(KAFKA) fetch >/dev/null

clean:
	rm -rf $(VENV) $(PEER_VENV) enforcer-data .pytest_cache
