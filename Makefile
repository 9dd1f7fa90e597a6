# mlrisk: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
export MLRISK_HOME ?= $(CURDIR)/.mlrisk
DATA ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: setup services-up services-down kafka-up kafka-down db-up db-down demo up test test-unit \
        test-integration lint bench train backtest clean

$(BIN)/mlrisk: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-extras
	@touch $@

setup: $(BIN)/mlrisk  ## install Python dependencies, the Kafka broker's jars and TimescaleDB (built once)
	@ops/kafka/kafka.sh fetch
	@PYTHON=$(PYTHON) ops/timescaledb/build.sh

kafka-up: setup
	@ops/kafka/kafka.sh start
kafka-down:
	@ops/kafka/kafka.sh stop
db-up: setup
	@$(BIN)/mlrisk db init
db-down:
	@$(BIN)/mlrisk db stop

services-up: kafka-up db-up  ## a real Kafka broker on :9092 and PostgreSQL (embedded unless DATABASE_URL is set)
services-down: kafka-down db-down

demo: services-up  ## run the whole system on a real day of ../shared/data and print a summary
	$(BIN)/python -m streams.demo --data $(DATA)

up: services-up  ## keep everything running: the worker in the foreground
	$(BIN)/python -m streams.demo --data $(DATA) --keep-running

test: services-up  ## every test, against the real broker and database
	$(BIN)/pytest -q tests

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-integration: services-up
	$(BIN)/pytest -q tests/integration

lint: setup
	$(BIN)/ruff check streams models risk tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: services-up  ## throughput, latency, sink and inference figures against a same-run baseline
	$(BIN)/mlrisk bench --out bench.json

train: setup
	$(BIN)/mlrisk train --data $(DATA) --symbol BTCUSDT --out artifacts/models

clean: services-down
	rm -rf .mlrisk artifacts
