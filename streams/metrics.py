"""Prometheus metrics, prefix `mlrisk_`: one registry per process, served on /metrics."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_IN = Counter("mlrisk_events_in_total", "Accepted market events", ["kind", "symbol"], registry=REGISTRY)
EVENTS_REJECTED = Counter(
    "mlrisk_events_rejected_total", "Market events sent to the dead-letter topic", ["reason"], registry=REGISTRY
)
EVENTS_DROPPED = Counter(
    "mlrisk_events_dropped_total",
    "Valid events not used for bars (duplicate, late, ignored)",
    ["outcome", "symbol"],
    registry=REGISTRY,
)
BARS_CLOSED = Counter("mlrisk_bars_closed_total", "Closed 1-minute bars", ["symbol"], registry=REGISTRY)
SIGNALS_OUT = Counter(
    "mlrisk_signals_total", "Signals decided", ["symbol", "signal_type", "risk_level"], registry=REGISTRY
)
SIGNAL_STAGE_SECONDS = Counter(
    "mlrisk_signal_stage_seconds_total",
    "Time the signal stage spent on batches of bars (features, models, risk, signals, state), wall clock",
    registry=REGISTRY,
)
SIGNAL_STAGE_CPU_SECONDS = Counter(
    "mlrisk_signal_stage_cpu_seconds_total",
    "CPU time of the signal stage's own work on batches of bars (what other tasks and processes take excluded)",
    registry=REGISTRY,
)
YIELDED_SECONDS = Counter(
    "mlrisk_yielded_to_signal_stage_seconds_total",
    "Time that work which can wait (the sink's batches, the monitors' measurements) waited for the signal stage "
    "to have no bars in hand",
    registry=REGISTRY,
)
LATENCY = Histogram(
    "mlrisk_end_to_end_latency_seconds",
    "Event in (bar-closing event received) to signal out",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)
INFERENCE = Histogram(
    "mlrisk_inference_seconds",
    "Inference time per model and batch",
    ["model"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    registry=REGISTRY,
)
FEATURE_DRIFT = Gauge(
    "mlrisk_feature_drift_psi",
    "Population stability index of live features against training",
    ["model", "feature"],
    registry=REGISTRY,
)
PREDICTION_DRIFT = Gauge(
    "mlrisk_prediction_drift_psi",
    "Population stability index of live P(up) against validation",
    ["model"],
    registry=REGISTRY,
)
ROLLING_IC = Gauge(
    "mlrisk_model_rolling_ic", "Rolling out-of-sample rank IC per model (and ensemble)", ["model"], registry=REGISTRY
)
OUTCOMES_RESOLVED = Gauge(
    "mlrisk_model_outcomes_resolved", "Outcomes in the rolling IC and hit-rate window", registry=REGISTRY
)
HIT_RATE = Gauge(
    "mlrisk_model_hit_rate", "Rolling out-of-sample hit rate per model (and ensemble)", ["model"], registry=REGISTRY
)
MODEL_INFO = Gauge("mlrisk_model_info", "1 for the model version in service", ["version"], registry=REGISTRY)
MODEL_SWAPS = Counter("mlrisk_model_swaps_total", "Model versions switched to while running", registry=REGISTRY)
MODEL_LOAD_FAILURES = Counter(
    "mlrisk_model_load_failures_total", "Promoted versions that failed to load", registry=REGISTRY
)
RISK_SCORE = Gauge("mlrisk_risk_score", "Latest risk score per symbol", ["symbol"], registry=REGISTRY)
MODEL_WEIGHT = Gauge(
    "mlrisk_model_weight", "Ensemble weight per model and symbol", ["model", "symbol"], registry=REGISTRY
)
SINK_ROWS = Counter("mlrisk_sink_rows_total", "Rows written to the database", ["table"], registry=REGISTRY)
SINK_LAG = Gauge(
    "mlrisk_sink_lag_seconds", "Age of the oldest row waiting for the database", ["table"], registry=REGISTRY
)
SINK_ERRORS = Counter("mlrisk_sink_errors_total", "Failed database writes (retried)", ["table"], registry=REGISTRY)
DATABASE_UP = Gauge(
    "mlrisk_database_up", "1 while the database answers the sink, 0 while it does not", registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "mlrisk_consumer_lag_messages", "Messages behind the end of the topic", ["topic", "partition"], registry=REGISTRY
)
PAPER_EQUITY = Gauge("mlrisk_paper_equity_usdt", "Paper account equity", registry=REGISTRY)
DRAWDOWN = Gauge("mlrisk_drawdown_ratio", "Paper account drawdown from peak", registry=REGISTRY)
LIQUIDATIONS = Counter("mlrisk_liquidations_total", "Paper positions liquidated", ["symbol"], registry=REGISTRY)
TRADING_STATE = Gauge("mlrisk_trading_state", "Trading state: 0 active, 1 reducing, 2 halted", registry=REGISTRY)
EVENT_LOOP_LAG = Gauge(
    "mlrisk_event_loop_lag_seconds",
    "Longest delay of the event loop waking from a short sleep over the last 5 s",
    registry=REGISTRY,
)
ERRORS = Counter("mlrisk_errors_total", "Unexpected errors, by stage", ["stage"], registry=REGISTRY)


def render() -> bytes:
    """The Prometheus text exposition of every metric."""
    return generate_latest(REGISTRY)


# hostile input: what was refused, parked or quarantined, and what the API costs the event loop
DLQ_SEND_FAILURES = Counter(
    "mlrisk_dlq_send_failures_total",
    "Dead letters or re-keyed messages the broker refused, sent again as a record without the original bytes",
    ["topic"],
    registry=REGISTRY,
)
INTERNAL_REJECTED = Counter(
    "mlrisk_internal_rejected_total",
    "Messages on internal topics that failed validation (sent to their DLQ)",
    ["topic", "reason"],
    registry=REGISTRY,
)
SINK_QUARANTINED = Counter(
    "mlrisk_sink_quarantined_rows_total",
    "Rows the database refused as data errors, kept in sink_quarantine",
    ["table"],
    registry=REGISTRY,
)
API_REJECTED = Counter(
    "mlrisk_api_rejected_total", "HTTP requests answered with an error, by status", ["status"], registry=REGISTRY
)

_SYMBOL_LABELLED = (
    (
        EVENTS_IN,
        ("trade", "aggTrade", "tick", "kline", "bookTicker", "depthUpdate", "depthSnapshot", "markPriceUpdate"),
    ),
    (EVENTS_DROPPED, ("duplicate", "late", "ignored")),
)


def forget_symbol(symbol: str) -> None:
    """Drop an evicted symbol's ingest series, so that label sets stay as bounded as the symbols kept."""
    for counter, first_labels in _SYMBOL_LABELLED:
        for label in first_labels:
            with contextlib.suppress(KeyError):
                counter.remove(label, symbol)
    with contextlib.suppress(KeyError):
        BARS_CLOSED.remove(symbol)
