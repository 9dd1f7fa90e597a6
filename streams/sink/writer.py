"""The database sink: signals, risk-adjusted positions, execution logs and service metrics, written in batches.

Each batch is COPYed into a per-connection staging table and moved with one INSERT ... SELECT ... ON CONFLICT DO
NOTHING on the table's idempotency key, in one transaction, so a redelivered message writes nothing twice.
A failed write is retried with backoff until it succeeds: the stream's batch is
acknowledged (and its offsets committed) only after its rows are durable, and while the database is away the
agent waits, which holds back consumption — backpressure instead of loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from streams import metrics
from streams.backoff import Backoff
from streams.health import Progress, healthy, stalled
from streams.runtime import Pause

log = logging.getLogger("mlrisk.sink")
_T = TypeVar("_T")
_R = TypeVar("_R")

SINK_BATCH = 2_000  # rows per transaction: large enough that per-statement costs vanish
QUARANTINE_MAX_CHARS = 65_536  # of a refused row's text
PIECE = 64  # rows formatted between two pauses of a write that yields to the signal stage (a few ms)

SIGNAL_COLUMNS = (
    "timestamp",
    "signal_id",
    "symbol",
    "signal_type",
    "signal_strength",
    "confidence_score",
    "risk_level",
    "market_regime",
    "recommended_leverage",
    "position_size_usdt",
    "stop_loss_price",
    "take_profit_price",
    "risk_reward_ratio",
    "ml_confidence",
    "ml_prediction",
    "model_contributions",
    "risk_score",
    "liquidation_risk",
    "portfolio_impact",
    "volatility_score",
    "liquidity_score",
    "market_depth_analysis",
    "metadata",
)
POSITION_COLUMNS = (
    "timestamp",
    "signal_id",
    "symbol",
    "signal_type",
    "base_position_size",
    "risk_adjusted_size",
    "leverage_multiplier",
    "stop_loss_adjustment",
    "take_profit_adjustment",
    "risk_factors",
    "confidence_boost",
    "market_regime",
    "volatility_score",
    "liquidity_score",
    "metadata",
)
EXECUTION_COLUMNS = (
    "timestamp",
    "signal_id",
    "symbol",
    "execution_status",
    "execution_price",
    "execution_size",
    "execution_leverage",
    "actual_stop_loss",
    "actual_take_profit",
    "execution_time_ms",
    "error_message",
    "metadata",
)
METRICS_COLUMNS = (
    "timestamp",
    "service_name",
    "signals_generated",
    "signals_executed",
    "average_confidence",
    "average_risk_score",
    "success_rate",
    "total_pnl",
    "processing_time_ms",
    "error_count",
    "metadata",
)
EVENT_COLUMNS = ("timestamp", "event_type", "model_version", "source", "details")
CONFLICT_KEYS = {
    "actionable_trade_signals": "(signal_id, timestamp)",
    "risk_adjusted_positions": "(signal_id, timestamp)",
    "signal_execution_logs": "(signal_id, execution_status, timestamp)",
    "ml_risk_integration_metrics": "(service_name, timestamp)",
    "ml_model_events": "(timestamp, event_type, model_version, source)",
}
COLUMNS = {
    "actionable_trade_signals": SIGNAL_COLUMNS,
    "risk_adjusted_positions": POSITION_COLUMNS,
    "signal_execution_logs": EXECUTION_COLUMNS,
    "ml_risk_integration_metrics": METRICS_COLUMNS,
    "ml_model_events": EVENT_COLUMNS,
}
SIGNAL_FIELDS_IN_METADATA = (
    "entry_price",
    "quantity",
    "liquidation_price",
    "bar_close_time",
    "model_version",
    "latency_ms",
    "schema_version",
)


def json_value(value: Any) -> str | None:
    """A JSONB value as its text (the server parses it on the way in), serialised with orjson: several times
    faster than the standard library, NaN as null, numpy scalars as numbers."""
    if value is None:
        return None
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


def signal_row(signal: dict[str, Any]) -> tuple[Any, ...]:
    meta = dict(signal.get("metadata") or {})
    depth = meta.pop("market_depth_analysis", None)
    meta.pop("risk_adjusted_positions", None)
    for name in SIGNAL_FIELDS_IN_METADATA:
        meta[name] = signal.get(name)
    values = {
        "model_contributions": json_value(signal.get("model_contributions")),
        "market_depth_analysis": json_value(depth),
        "metadata": json_value(meta),
    }
    return tuple(values[c] if c in values else signal[c] for c in SIGNAL_COLUMNS)


def position_row(signal: dict[str, Any]) -> tuple[Any, ...]:
    adjusted = dict((signal.get("metadata") or {}).get("risk_adjusted_positions") or {})
    factors = adjusted.pop("risk_factors", None)
    values = {
        **adjusted,
        "timestamp": signal["timestamp"],
        "signal_id": signal["signal_id"],
        "symbol": signal["symbol"],
        "signal_type": signal["signal_type"],
        "risk_factors": json_value(factors),
        "market_regime": signal["market_regime"],
        "volatility_score": signal["volatility_score"],
        "liquidity_score": signal["liquidity_score"],
        "metadata": json_value({"model_version": signal.get("model_version")}),
    }
    return tuple(values.get(c) for c in POSITION_COLUMNS)


def execution_row(execution: dict[str, Any]) -> tuple[Any, ...]:
    values = {**execution, "metadata": json_value(execution.get("metadata"))}
    return tuple(values.get(c) for c in EXECUTION_COLUMNS)


def metrics_row(row: dict[str, Any]) -> tuple[Any, ...]:
    values = {**row, "metadata": json_value(row.get("metadata"))}
    return tuple(values.get(c) for c in METRICS_COLUMNS)


def event_row(
    event_type: str, model_version: str, source: str, details: dict[str, Any], timestamp: str | None = None
) -> tuple[Any, ...]:
    """A row of ml_model_events (timestamp: ISO8601, now when omitted)."""
    stamp = timestamp or datetime.now(UTC).isoformat(timespec="milliseconds")
    return (stamp, event_type, model_version, source[:50], json_value(details))


async def in_pieces(items: Sequence[_T], convert: Callable[[_T], _R], pause: Pause | None) -> list[_R]:
    """`convert` over the items, with `pause` awaited before every `PIECE` of them."""
    if pause is None:
        return [convert(item) for item in items]
    out: list[_R] = []
    for start in range(0, len(items), PIECE):
        await pause()
        out += [convert(item) for item in items[start : start + PIECE]]
    return out


def insert_sql(table: str, rows: int) -> str:
    columns = COLUMNS[table]
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)} "
        f"ON CONFLICT {CONFLICT_KEYS[table]} DO NOTHING"
    )


async def copy_rows(
    conn: psycopg.AsyncConnection[Any], table: str, rows: Sequence[tuple[Any, ...]], pause: Pause | None = None
) -> None:
    """COPY the rows into a staging table that empties itself at commit, then insert what is new; with `pause`,
    awaited before every `PIECE` rows are formatted."""
    columns = ", ".join(COLUMNS[table])
    staging = f"staging_{table}"
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staging} ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        async with conn.cursor() as cursor, cursor.copy(f"COPY {staging} ({columns}) FROM STDIN") as copy:
            for i, row in enumerate(rows):
                if pause is not None and i % PIECE == 0:
                    await pause()
                await copy.write_row(row)
        await conn.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} "  # noqa: S608 (names are constants)
            f"ON CONFLICT {CONFLICT_KEYS[table]} DO NOTHING"
        )


class Sink:
    """Batched, idempotent, retrying writes through a small async connection pool."""

    def __init__(self, url: str, max_retry_delay_s: float = 5.0) -> None:
        self.url = url
        # reconnect_timeout: a reconnection attempt gives up after 10 s and the next request starts a fresh one;
        # the pool's default backs off to minutes, which a worker then waited after the database came back
        self.pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=4,
            open=False,
            timeout=10.0,
            reconnect_timeout=10.0,
            kwargs={"autocommit": True, "connect_timeout": 3},
        )
        # the API reads through its own connections, so that its queries never wait behind the sink's writes
        self.read_pool = AsyncConnectionPool(
            url, min_size=0, max_size=2, open=False, timeout=5.0, kwargs={"autocommit": True, "connect_timeout": 3}
        )
        self.max_retry_delay_s = max_retry_delay_s
        self.healthy = False
        self.rows_written = 0
        self.progress = Progress()  # durable writes, or failing since

    async def open(self) -> None:
        """Open the pool without waiting for the server, then check it answers (retrying in the background)."""
        await self.pool.open(wait=False)
        await self.read_pool.open(wait=False)
        backoff = Backoff(most_s=self.max_retry_delay_s)
        while not self.healthy:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute("SELECT 1")
                self._answered(True)
            except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
                self.progress.failed(f"connecting: {error}")
                metrics.SINK_ERRORS.labels("connect").inc()
                await backoff.wait(log, "the database does not answer (%s)", error)

    async def close(self) -> None:
        await self.read_pool.close()
        await self.pool.close()

    def _answered(self, ok: bool) -> None:
        self.healthy = ok
        metrics.DATABASE_UP.set(1 if ok else 0)

    async def probe(self, timeout_s: float = 3.0) -> None:
        """Ask the database whether it answers, so that health and `mlrisk_database_up` follow it while idle."""
        try:
            async with self.pool.connection(timeout=timeout_s) as conn:
                await conn.execute("SELECT 1")
        except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError):
            self._answered(False)
        else:
            self._answered(True)

    def health(self, now: float, stall_s: float) -> dict[str, Any]:
        """Stalled while the database does not answer, or while writes have failed for `stall_s`."""
        detail = {"rows_written": self.rows_written, "last_write_s_ago": round(self.progress.idle_s(now), 1)}
        if not self.healthy:
            return stalled(
                "the database does not answer" + (f": {self.progress.failure}" if self.progress.failure else ""),
                **detail,
            )
        if self.progress.failing_s(now) > stall_s:
            return stalled(
                f"writes have failed for {self.progress.failing_s(now):.0f} s: {self.progress.failure}", **detail
            )
        return healthy(**detail)

    async def write(
        self, table: str, rows: Sequence[tuple[Any, ...]], oldest_ms: float | None = None, pause: Pause | None = None
    ) -> None:
        """Write the rows in one transaction (COPY to staging, then one INSERT); retry until the database takes
        them. `pause` is awaited between pieces of the work (see `streams.runtime.Activity`)."""
        if not rows:
            return
        backoff = Backoff(most_s=self.max_retry_delay_s)
        while True:
            try:
                async with self.pool.connection() as conn:
                    await copy_rows(conn, table, rows, pause)
                self._answered(True)
                self.rows_written += len(rows)
                self.progress.moved()
                metrics.SINK_ROWS.labels(table).inc(len(rows))
                metrics.SINK_LAG.labels(table).set(0.0 if oldest_ms is None else time.time() - oldest_ms / 1000)
                return
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as error:
                # a row the database refuses (a price beyond the column's precision, an id that is not a UUID) or
                # psycopg cannot send (a value of no column type): no retry cures it, so the batch is split until
                # the refused rows stand alone, and they are kept aside while the rest is written. A server-side
                # programming error (a table missing) is no row's fault and goes up.
                if isinstance(error, psycopg.ProgrammingError) and error.sqlstate is not None:
                    raise
                metrics.SINK_ERRORS.labels(table).inc()
                if len(rows) == 1:
                    await self.quarantine(table, rows[0], error)
                    return
                middle = len(rows) // 2
                await self.write(table, rows[:middle], oldest_ms, pause)
                await self.write(table, rows[middle:], oldest_ms, pause)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as error:
                # psycopg_pool raises PoolTimeout (an OperationalError) while the server is away
                self._answered(False)
                self.progress.failed(f"{table}: {error}")
                metrics.SINK_ERRORS.labels(table).inc()
                if oldest_ms is not None:
                    metrics.SINK_LAG.labels(table).set(time.time() - oldest_ms / 1000)
                await backoff.wait(log, "database write to %s failed (%s)", table, error)

    async def quarantine(self, table: str, row: tuple[Any, ...], error: Exception) -> None:
        """Keep a refused row in `sink_quarantine`, as JSON text (text takes whatever the row holds, bar NUL),
        counted in `mlrisk_sink_quarantined_rows_total`; wait for the database like any write."""
        text = orjson.dumps(list(row), default=str).decode().replace("\\u0000", "")[:QUARANTINE_MAX_CHARS]
        reason = str(error).replace("\x00", "")[:1_000]
        log.error(
            "the database refused a row of %s (%s); kept in sink_quarantine", table, (reason.splitlines() or [""])[0]
        )
        backoff = Backoff(most_s=self.max_retry_delay_s)
        while True:
            try:
                async with self.pool.connection() as conn:
                    await conn.execute(
                        "INSERT INTO sink_quarantine (table_name, error, row_data) VALUES (%s, %s, %s)",
                        (table, reason, text),
                    )
                metrics.SINK_QUARANTINED.labels(table).inc()
                return
            except (psycopg.OperationalError, psycopg.InterfaceError, TimeoutError) as failure:
                self._answered(False)
                await backoff.wait(log, "quarantining a row of %s failed (%s)", table, failure)

    async def write_signals(
        self, signals: Sequence[dict[str, Any]], received_ms: float | None = None, pause: Pause | None = None
    ) -> None:
        rows = await in_pieces(signals, signal_row, pause)
        await self.write("actionable_trade_signals", rows, received_ms, pause)
        positions = await in_pieces([s for s in signals if s["signal_type"] != "hold"], position_row, pause)
        await self.write("risk_adjusted_positions", positions, received_ms, pause)

    async def write_executions(
        self, executions: Sequence[dict[str, Any]], received_ms: float | None = None, pause: Pause | None = None
    ) -> None:
        rows = await in_pieces(executions, execution_row, pause)
        await self.write("signal_execution_logs", rows, received_ms, pause)

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read for the API, on the read pool (never on the connections the sink writes with)."""
        async with self.read_pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()
