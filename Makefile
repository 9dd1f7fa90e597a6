# mlrisk: the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin
export MLRISK_HOME ?= $(CURDIR)/.mlrisk
DATA ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: setup services-up services-down kafka-up kafka-down db-up db-down monitor monitor-down demo up test test-unit \
        test-integration soak lint bench train backtest feed clean

$(BIN)/mlrisk: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	$(UV) sync --frozen --all-extras
	@touch $@

setup: $(BIN)/mlrisk  ## install Python dependencies, the Kafka broker's jars and TimescaleDB (built once)
	@ops/kafka/kafka.sh fetch
	@PYTHON=$(PYTHON) ops/timescaledb/build.sh
	@ops/prometheus/prometheus.sh install  # as root with apt; otherwise it says how

kafka-up: setup
	@ops/kafka/kafka.sh start
kafka-down:
	@ops/kafka/kafka.sh stop
db-up: setup
	@$(BIN)/mlrisk db init
db-down:
	@$(BIN)/mlrisk db stop
monitor: setup  ## Prometheus on 127.0.0.1:19090 (MLRISK_PROMETHEUS_PORT) scraping the worker, with the alert rules
	@ops/prometheus/prometheus.sh start
monitor-down:
	@ops/prometheus/prometheus.sh stop

services-up: kafka-up db-up  ## a real Kafka broker on :9092 and PostgreSQL (embedded unless DATABASE_URL is set)
services-down: kafka-down db-down monitor-down

demo: services-up  ## run the whole system on a real day of ../shared/data and print a summary
	$(BIN)/python -m streams.ops.demo --data $(DATA)

up: services-up monitor  ## keep everything running: the worker in the foreground
	$(BIN)/python -m streams.ops.demo --data $(DATA) --keep-running

test: services-up  ## every test, against the real broker and database
	$(BIN)/pytest -q tests

soak: services-up  ## 30 minutes of real replay with a random fault every 3 minutes; prints its figures
	MLRISK_SOAK_S=$${MLRISK_SOAK_S:-1800} $(BIN)/pytest -q -s tests/soak

test-unit: setup
	$(BIN)/pytest -q tests/unit

test-integration: services-up
	$(BIN)/pytest -q tests/integration

lint: setup
	$(BIN)/ruff check streams models risk tests bench
	$(BIN)/ruff format --check streams models risk tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	ops/prometheus/prometheus.sh check

VENUE ?= binance-usdm
SYMBOLS ?= BTCUSDT,ETHUSDT
STREAMS ?= trade,bookTicker,depth,markPrice
feed: kafka-up  ## live Binance data to market-data: make feed VENUE=binance-spot SYMBOLS=BTCUSDT STREAMS=trade,depth
	$(BIN)/mlrisk feed --venue $(VENUE) --symbols $(SYMBOLS) --streams $(STREAMS)

bench: services-up  ## throughput, latency, sink and inference figures against a same-run baseline
	$(BIN)/mlrisk bench --out bench.json

train: setup
	$(BIN)/mlrisk train --data $(DATA) --symbol BTCUSDT --out artifacts/models

clean: services-down
	rm -rf .mlrisk artifacts
