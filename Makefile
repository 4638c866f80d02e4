# The two commands of the README. Both create .venv and install what they need.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install kafka clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (Python 3.11+) on PATH"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Apache Kafka's jars for the embedded broker, fetched once with Maven into a cache folder
# outside the clone (~/.cache/checkout-saga/kafka-<version>); instant once there. Without
# Java 17 it says so and the embedded stack falls back to tansu.
kafka: $(STAMP)
	$(BIN)/python -m checkout_saga.embedded.kafka_broker

install: $(STAMP) kafka

demo: $(STAMP) kafka
	$(BIN)/checkout-saga demo

# Two pytest workers, each with its own session stack; a test file stays on one worker (its
# module fixtures are set up once). On Apache Kafka the suite waits more than it computes:
# one worker kept 2 cores 40% busy (560 s), two take 353 s (2026-12-03).
TEST_WORKERS ?= 2
test: $(STAMP) kafka
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) .checkout-saga
