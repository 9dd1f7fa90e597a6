"""The feed's Prometheus metrics, prefix `mlrisk_feed_`, in the process registry of streams.metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from streams.metrics import REGISTRY

CONNECTIONS = Gauge("mlrisk_feed_connections", "Open websocket connections", registry=REGISTRY)
CONNECTS = Counter("mlrisk_feed_connects_total", "Websocket connections opened", registry=REGISTRY)
RECONNECTS = Counter(
    "mlrisk_feed_reconnects_total",
    "Websocket connections replaced, by cause (closed, error, silent, rotate, overflow)",
    ["cause"],
    registry=REGISTRY,
)
MESSAGES = Counter("mlrisk_feed_messages_total", "Messages received, by stream kind", ["stream"], registry=REGISTRY)
DUPLICATES = Counter(
    "mlrisk_feed_duplicates_total",
    "Messages not published because already published (overlaps)",
    ["stream"],
    registry=REGISTRY,
)
PUBLISHED = Counter("mlrisk_feed_published_total", "Messages handed to Kafka", registry=REGISTRY)
GAPS = Counter(
    "mlrisk_feed_gaps_total",
    "Sequence gaps found, by kind (trade, aggTrade, depth)",
    ["kind", "symbol"],
    registry=REGISTRY,
)
UNFILLED_GAPS = Counter(
    "mlrisk_feed_unfilled_gaps_total",
    "Trade gaps that could not be back-filled (published as gap events)",
    ["kind", "symbol"],
    registry=REGISTRY,
)
RESYNCS = Counter("mlrisk_feed_resyncs_total", "Order-book snapshots fetched", ["symbol"], registry=REGISTRY)
BACKFILLED = Counter(
    "mlrisk_feed_backfilled_trades_total",
    "Trades fetched from REST after a gap and published",
    ["kind", "symbol"],
    registry=REGISTRY,
)
EXCHANGE_LAG = Histogram(
    "mlrisk_feed_exchange_lag_seconds",
    "Receive time minus the exchange's event time",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    registry=REGISTRY,
)
BUFFER_FILL = Gauge(
    "mlrisk_feed_buffer_fill_ratio", "Share of the publish buffer holding unacknowledged messages", registry=REGISTRY
)
BUFFER_OVERFLOWS = Counter(
    "mlrisk_feed_buffer_overflows_total",
    "Times reading stopped too long for a full buffer (connections replaced)",
    registry=REGISTRY,
)
PUBLISH_FAILURES = Counter(
    "mlrisk_feed_publish_failures_total", "Messages Kafka did not acknowledge in time", registry=REGISTRY
)
REST_LIMITED = Counter(
    "mlrisk_feed_rest_limited_total", "REST answers 429/418 (rate limit, ban) obeyed", ["status"], registry=REGISTRY
)
REST_ERRORS = Counter("mlrisk_feed_rest_errors_total", "REST calls failed and retried", registry=REGISTRY)
