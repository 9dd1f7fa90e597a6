"""TimescaleDB figures for `mlrisk bench`, each against its baseline in the same run and database server:

- the sink into a hypertable against the same table plain (rows/s, batched and row by row), with the write
  pattern of a few hundred symbols (300 signals a minute), each round in a fresh, empty table;
- /ml-risk/performance's 30-day signal counts from the hourly continuous aggregate (the API's own query)
  against the same figures aggregated from the raw rows, over 30 days of stored signals.

The rows are synthetic (the sink bench's template signal, 300 or 10 symbols, one signal per symbol and minute, 97 %
of them holds as in the engine's real output, where a long, short or close is rare): the cost of writing and of
scanning depends on how many rows there are and how they are laid out in time, not on the market data behind them.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

SYMBOLS_WRITING = 300
ROUNDS = 3
QUERY_SYMBOLS = 10  # 30 days of one signal a minute for 10 symbols: 432,000 rows
QUERY_REPEATS = 5
# the same figures as the API's query, from the raw rows: what /ml-risk/performance read before the aggregate
RAW_PERFORMANCE_SQL = (
    "SELECT signal_type, count(*), avg(confidence_score), avg(risk_score) FROM actionable_trade_signals "
    "WHERE timestamp >= %s AND timestamp < %s GROUP BY signal_type ORDER BY signal_type")


@contextlib.contextmanager
def _scratch_table(url: str, hypertable: bool) -> Iterator[str]:
    """A schema with an empty copy of actionable_trade_signals (keys and indexes included), as a hypertable with
    the schema's chunk interval or plain; yields a URL whose search path finds it first; dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.actionable_trade_signals "
                     "(LIKE public.actionable_trade_signals INCLUDING ALL)")
        if hypertable:
            conn.execute("SELECT create_hypertable(%s, by_range('timestamp', %s))",
                         (f"{schema}.actionable_trade_signals", _chunk_interval(conn)))
    options = urllib.parse.urlencode({"options": f"-c search_path={schema},public"}, quote_via=urllib.parse.quote)
    try:
        yield url + ("&" if "?" in url else "?") + options
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _chunk_interval(conn: psycopg.Connection[Any]) -> timedelta:
    row = conn.execute("SELECT time_interval FROM timescaledb_information.dimensions "
                       "WHERE hypertable_schema = 'public' AND hypertable_name = 'actionable_trade_signals'"
                       ).fetchone()
    if row is None:
        raise RuntimeError("actionable_trade_signals is not a hypertable: is TimescaleDB installed?")
    return row[0]


def _signals(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """`n` signals, 300 symbols a minute, from 2024-10-14 on."""
    base = datetime(2024, 10, 14, tzinfo=UTC)
    return [{**template, "signal_id": str(uuid.uuid4()), "symbol": f"S{i % SYMBOLS_WRITING:03d}USDT",
             "bar_close_time": int((base + timedelta(minutes=i // SYMBOLS_WRITING + 1)).timestamp() * 1000) - 1,
             "timestamp": (base + timedelta(minutes=i // SYMBOLS_WRITING)).isoformat().replace("+00:00", "Z")}
            for i in range(n)]


def sink_hypertable_vs_plain(url: str, template: dict[str, Any], rows: int) -> dict[str, float]:
    """Rows/s through the sink (batched) and one INSERT per row, into a hypertable and into a plain table,
    alternating over `ROUNDS` rounds; the median of each."""
    from streams.sink import SINK_BATCH, Sink, insert_sql, signal_row

    async def batched(scoped: str, batch: list[dict[str, Any]]) -> float:
        sink = Sink(scoped)
        await sink.open()
        start = time.perf_counter()
        for i in range(0, len(batch), SINK_BATCH):
            await sink.write("actionable_trade_signals", [signal_row(s) for s in batch[i:i + SINK_BATCH]])
        elapsed = time.perf_counter() - start
        await sink.close()
        return len(batch) / elapsed

    async def row_by_row(scoped: str, batch: list[dict[str, Any]]) -> float:
        async with await psycopg.AsyncConnection.connect(scoped, autocommit=True) as conn:
            sql = insert_sql("actionable_trade_signals", 1)
            start = time.perf_counter()
            for s in batch:
                await conn.execute(sql, signal_row(s))
            return len(batch) / (time.perf_counter() - start)

    figures: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        for kind in ("plain", "hypertable"):
            with _scratch_table(url, kind == "hypertable") as scoped:
                figures.setdefault(f"{kind}_batched", []).append(asyncio.run(batched(scoped, _signals(template,
                                                                                                       rows))))
            with _scratch_table(url, kind == "hypertable") as scoped:
                figures.setdefault(f"{kind}_row_by_row", []).append(
                    asyncio.run(row_by_row(scoped, _signals(template, max(1000, rows // 10)))))
    report = {name: statistics.median(values) for name, values in figures.items()}
    report["batched_ratio"] = report["hypertable_batched"] / report["plain_batched"]
    report["row_by_row_ratio"] = report["hypertable_row_by_row"] / report["plain_row_by_row"]
    return report


def performance_query_aggregate_vs_raw(url: str) -> dict[str, float]:
    """Milliseconds of the 30-day signal counts from the aggregate (the API's query) and from the raw rows, in a
    scratch database holding 30 days of signals with the aggregate refreshed (as its policy keeps it); the median
    of `QUERY_REPEATS` runs after one warm-up each. The two answers are checked equal first."""
    from streams.db import init_schema, scratch_database
    from streams.web import PERFORMANCE_SQL, performance_window

    end = datetime(2024, 11, 1, tzinfo=UTC)
    start, split, _ = performance_window([], now=end)
    with scratch_database(url) as scratch:
        if init_schema(scratch) is None:
            raise RuntimeError("no TimescaleDB on this server: the aggregate has nothing to be compared with")
        with psycopg.connect(scratch, autocommit=True) as conn:
            conn.execute("SELECT setseed(0.5)")
            conn.execute(
                "INSERT INTO actionable_trade_signals (timestamp, signal_id, symbol, signal_type, signal_strength, "
                "confidence_score, risk_level, market_regime, risk_score) "
                "SELECT t, gen_random_uuid(), 'S' || s || 'USDT', "
                "CASE WHEN random() < 0.97 THEN 'hold' "
                "ELSE (ARRAY['long', 'short', 'close'])[1 + floor(random() * 3)::INT] END, 'hold', "
                "round(random()::NUMERIC, 4), 'low', 'ranging', round((random() * 100)::NUMERIC, 2) "
                "FROM generate_series(%s::TIMESTAMPTZ, %s::TIMESTAMPTZ - interval '1 minute', interval '1 minute') "
                "AS t, generate_series(1, %s) AS s", (start, end, QUERY_SYMBOLS))  # the API's 30 days
            conn.execute("CALL refresh_continuous_aggregate('signals_hourly', NULL, NULL)")
            conn.execute("VACUUM ANALYZE actionable_trade_signals")
            stored = conn.execute("SELECT count(*) FROM actionable_trade_signals").fetchone()
            raw_params, aggregate_params = (start, end), (start, split, split, end)
            raw = conn.execute(RAW_PERFORMANCE_SQL, raw_params).fetchall()
            aggregate = conn.execute(PERFORMANCE_SQL, aggregate_params).fetchall()
            if [(t, n) for t, n, _, _ in raw] != [(t, n) for t, n, _, _ in aggregate]:
                raise RuntimeError(f"the aggregate's counts differ from the raw rows': {aggregate} vs {raw}")

            def median_ms(sql: str, params: tuple[Any, ...]) -> float:
                conn.execute(sql, params).fetchall()
                times = []
                for _ in range(QUERY_REPEATS):
                    began = time.perf_counter()
                    conn.execute(sql, params).fetchall()
                    times.append((time.perf_counter() - began) * 1000)
                return statistics.median(times)

            raw_ms = median_ms(RAW_PERFORMANCE_SQL, raw_params)
            aggregate_ms = median_ms(PERFORMANCE_SQL, aggregate_params)
    return {"rows": float(stored[0]) if stored else 0.0, "raw_ms": raw_ms, "aggregate_ms": aggregate_ms,
            "speedup": raw_ms / aggregate_ms}
