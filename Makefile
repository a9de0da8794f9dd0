# Objection enforcer: every target does its own set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PEER_VENV := .venv-peer
PEER_STAMP := $(PEER_VENV)/.installed
KAFKA := deploy/kafka/local-kafka
PYTEST_ARGS ?=

.PHONY: demo test unit bench chaos failover lint setup broker-jars clean

## make demo: set up, start a local broker, the topics, a worker and synthetic traffic
demo: setup
	$(VENV)/bin/enforcer demo $(DEMO_ARGS)

## make test: set up, lint and type-check (make lint), the C fast path's tests under ASan
## and UBSan (make sanitize), then the whole test suite against a real Kafka broker
test: setup lint $(PEER_STAMP) sanitize
	$(PY) -m pytest $(PYTEST_ARGS)

## make unit: only the tests that need no broker
unit: setup
	$(PY) -m pytest -m "not integration" $(PYTEST_ARGS)

## make bench: the benchmark (bench/matrix.py: the enforcer, Kafka Streams, the Quix peer and
## the ceiling, 5 interleaved repetitions each, equal outputs checked, latency with no
## exclusion; about 30 minutes), results in bench/results/matrix-<timestamp>.json;
## BENCH_ARGS="--quick" for a smoke run, "--posts N --reps R --skip latency" etc.
bench: setup $(PEER_STAMP) peer-streams
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[bench]"
	$(PY) -m bench.matrix --peer-python $(PEER_VENV)/bin/python $(BENCH_ARGS)

## make failover: seconds from SIGKILL of one of two workers (1,000,000 users' consent and
## 1,000,000 live posts) until its partitions decide posts on the other, without and with a
## standby replica (20-40 minutes with Faust's restore, most of it starting two workers
## over the state; FAILOVER_ARGS="--modes cold" for one); bench/results/failover-<timestamp>.json
failover: setup
	$(PY) -m bench.failover $(FAILOVER_ARGS)

## make chaos: 3 workers on a 3-node cluster under faults (about 12 minutes), results in
## tests/chaos/results/<timestamp>.json; CHAOS_ARGS="--schedule short --duration 90" etc.
chaos: setup
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# The Quix Streams peer of the benchmark, in its own environment (it pins an older
# confluent-kafka); it imports the enforcer's codec and policy modules. Every package
# pinned exactly: bench/peer-quix-requirements.txt.
$(PEER_STAMP): pyproject.toml bench/peer-quix-requirements.txt
	test -x $(PEER_VENV)/bin/python || $(PYTHON) -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q --upgrade pip
	$(PEER_VENV)/bin/pip install -q -r bench/peer-quix-requirements.txt
	$(PEER_VENV)/bin/pip install -q --no-deps -e .
	touch $(PEER_STAMP)

## make peer-streams: the Kafka Streams peer of the benchmark (bench/peer-streams/README.md),
## built with Maven once per change of its sources (first build: about a minute of downloads)
.PHONY: peer-streams
peer-streams: setup
	$(PY) -m bench.peer_streams build

## make lint: ruff (lint and formatting) and mypy (pyproject.toml: strict on the core and
## serialization), in seconds
lint: setup
	$(VENV)/bin/ruff check streams tests bench
	$(VENV)/bin/ruff format --check streams tests bench
	$(VENV)/bin/mypy

setup: $(STAMP) broker-jars

# deploy/build.sh: the same install steps as the container image's (deploy/docker/Dockerfile)
$(STAMP): pyproject.toml constraints.txt setup.py streams/gate/_native.c deploy/build.sh
	sh deploy/build.sh $(PYTHON) $(VENV) -e ".[dev]"
	touch $(STAMP)

broker-jars:
	$(KAFKA) fetch >/dev/null

clean:
	rm -rf $(VENV) $(PEER_VENV) enforcer-data .pytest_cache

## make sanitize: the fast path's C built with AddressSanitizer and UndefinedBehaviorSanitizer
## into build/sanitize/ (the installed extension is untouched), and the fast path's and the
## Avro tests run against it (about 2 minutes on 2 cores)
.PHONY: sanitize
SANITIZE_SO := build/sanitize/_native.so
sanitize: $(STAMP)
	mkdir -p $(dir $(SANITIZE_SO))
	$(CC) -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -fno-sanitize-recover=undefined -Wall -Wextra -Wno-unused-parameter \
	  -Wno-missing-field-initializers -Wno-cast-function-type \
	  -I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
	  streams/gate/_native.c -o $(SANITIZE_SO)
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so)" ASAN_OPTIONS=detect_leaks=0 \
	  UBSAN_OPTIONS=print_stacktrace=1 PYTHONMALLOC=malloc \
	  $(PY) -c 'import importlib.util as u, sys, streams.gate; \
	    s = u.spec_from_file_location("streams.gate._native", sys.argv[1]); \
	    m = u.module_from_spec(s); s.loader.exec_module(m); \
	    sys.modules[s.name] = streams.gate._native = m; import streams.gate.native, pytest; \
	    assert streams.gate.native._native is m, "not the sanitized build"; \
	    print("streams.gate._native:", m.__file__, flush=True); sys.exit(pytest.main(sys.argv[2:]))' \
	  $(SANITIZE_SO) -q -p no:cacheprovider --capture=sys $(PYTEST_ARGS) \
	  tests/unit/test_native.py tests/unit/test_avro_adversarial.py tests/unit/test_avro_compiled.py
