"""TimescaleDB figures for `mlrisk bench`, each against its baseline in the same run and database server:

- the sink into a hypertable against the same table plain (rows/s, batched and row by row), with the write
  pattern of a few hundred symbols (300 signals a minute), both fresh and empty, written in turns;
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
WARM_ROWS = 50
QUERY_SYMBOLS = 10  # 30 days of one signal a minute for 10 symbols: 432,000 rows
QUERY_REPEATS = 5
# the same figures as the API's query, from the raw rows: what /ml-risk/performance read before the aggregate
RAW_PERFORMANCE_SQL = (
    "SELECT signal_type, count(*), avg(confidence_score), avg(risk_score) FROM actionable_trade_signals "
    "WHERE timestamp >= %s AND timestamp < %s GROUP BY signal_type ORDER BY signal_type"
)


@contextlib.contextmanager
def _scratch_table(url: str, hypertable: bool) -> Iterator[str]:
    """A schema with an empty copy of actionable_trade_signals (keys and indexes included), as a hypertable with
    the schema's chunk interval or plain; yields a URL whose search path finds it first; dropped afterwards."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.actionable_trade_signals (LIKE public.actionable_trade_signals INCLUDING ALL)"
        )
        if hypertable:
            conn.execute(
                "SELECT create_hypertable(%s, by_range('timestamp', %s))",
                (f"{schema}.actionable_trade_signals", _chunk_interval(conn)),
            )
    options = urllib.parse.urlencode({"options": f"-c search_path={schema},public"}, quote_via=urllib.parse.quote)
    try:
        yield url + ("&" if "?" in url else "?") + options
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def _chunk_interval(conn: psycopg.Connection[Any]) -> timedelta:
    row = conn.execute(
        "SELECT time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_schema = 'public' AND hypertable_name = 'actionable_trade_signals'"
    ).fetchone()
    if row is None:
        raise RuntimeError("actionable_trade_signals is not a hypertable: is TimescaleDB installed?")
    return row[0]


def _signals(template: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """`n` signals, 300 symbols a minute, from 2024-10-14 on."""
    base = datetime(2024, 10, 14, tzinfo=UTC)
    return [
        {
            **template,
            "signal_id": str(uuid.uuid4()),
            "symbol": f"S{i % SYMBOLS_WRITING:03d}USDT",
            "bar_close_time": int((base + timedelta(minutes=i // SYMBOLS_WRITING + 1)).timestamp() * 1000) - 1,
            "timestamp": (base + timedelta(minutes=i // SYMBOLS_WRITING)).isoformat().replace("+00:00", "Z"),
        }
        for i in range(n)
    ]


def sink_hypertable_vs_plain(url: str, template: dict[str, Any], rows: int) -> dict[str, float]:
    """Rows/s through the sink (batched) and one INSERT per row, into a hypertable and into a plain table. The two
    are written in turns (a batch or a row to one, then the same to the other, the first of the pair alternating),
    so that the load of a shared machine falls on both alike; each kind's time is the sum of its own writes."""
    from streams.sink.writer import SINK_BATCH, Sink, insert_sql, signal_row

    async def batched(plain: str, hyper: str, batch: list[dict[str, Any]]) -> tuple[float, float]:
        sinks = (Sink(plain), Sink(hyper))
        for sink in sinks:
            await sink.open()
        spent = [0.0, 0.0]
        for turn, i in enumerate(range(0, len(batch), SINK_BATCH)):
            chunk = batch[i : i + SINK_BATCH]
            for k in (0, 1) if turn % 2 == 0 else (1, 0):
                start = time.perf_counter()
                await sinks[k].write("actionable_trade_signals", [signal_row(s) for s in chunk])
                if turn > 0:  # the first batch makes the connections, staging tables and the day's chunk
                    spent[k] += time.perf_counter() - start
        for sink in sinks:
            await sink.close()
        timed = len(batch) - SINK_BATCH
        return timed / spent[0], timed / spent[1]

    async def row_by_row(plain: str, hyper: str, batch: list[dict[str, Any]]) -> tuple[float, float]:
        sql = insert_sql("actionable_trade_signals", 1)
        async with (
            await psycopg.AsyncConnection.connect(plain, autocommit=True) as first,
            await psycopg.AsyncConnection.connect(hyper, autocommit=True) as second,
        ):
            connections = (first, second)
            spent = [0.0, 0.0]
            for turn, signal in enumerate(batch):
                row = signal_row(signal)
                for k in (0, 1) if turn % 2 == 0 else (1, 0):
                    start = time.perf_counter()
                    await connections[k].execute(sql, row)
                    if turn >= WARM_ROWS:  # the first rows prepare the statement and make the day's chunk
                        spent[k] += time.perf_counter() - start
        timed = len(batch) - WARM_ROWS
        return timed / spent[0], timed / spent[1]

    report: dict[str, float] = {}
    for way, measure, n in (
        ("batched", batched, rows + SINK_BATCH),
        ("row_by_row", row_by_row, max(1000, rows // 10) + WARM_ROWS),
    ):
        with _scratch_table(url, False) as plain, _scratch_table(url, True) as hyper:
            report[f"plain_{way}"], report[f"hypertable_{way}"] = asyncio.run(
                measure(plain, hyper, _signals(template, n))
            )
        report[f"{way}_ratio"] = report[f"hypertable_{way}"] / report[f"plain_{way}"]
    return report


def performance_query_aggregate_vs_raw(url: str) -> dict[str, float]:
    """Milliseconds of the 30-day signal counts from the aggregate (the API's query) and from the raw rows, in a
    scratch database holding 30 days of signals with the aggregate refreshed (as its policy keeps it); the median
    of `QUERY_REPEATS` runs after one warm-up each. The two answers are checked equal first."""
    from streams.sink.db import init_schema, scratch_database
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
                "AS t, generate_series(1, %s) AS s",
                (start, end, QUERY_SYMBOLS),
            )  # the API's 30 days
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
    return {
        "rows": float(stored[0]) if stored else 0.0,
        "raw_ms": raw_ms,
        "aggregate_ms": aggregate_ms,
        "speedup": raw_ms / aggregate_ms,
    }
