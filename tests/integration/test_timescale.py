"""TimescaleDB on the real embedded server: the extension, hypertables and jobs that `mlrisk db init` sets up;
exactly-once writes into compressed chunks; the API and the continuous aggregates against the raw rows.

The signals are the engine's own, computed from real bars (the backtest's code path, as the sink receives them
from the stream) and moved in time so that they end two hours ago: their first two days are then old enough for
the compression policy and the last one is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.registry import load_bundle
from models.simulate import FillCosts
from risk.config import RiskConfig
from streams.config import REPO_ROOT
from streams.execution import PaperAccount, PaperBroker
from streams.sink.db import init_schema, scratch_database
from streams.sink.writer import SINK_BATCH, Sink, metrics_row

# the version ops/timescaledb/build.sh builds into the embedded server
BUILT = re.search(r'^version="([0-9.]+)"$', (REPO_ROOT / "ops" / "timescaledb" / "build.sh").read_text(), re.M)
HYPERTABLES = {
    "actionable_trade_signals": 1,
    "risk_adjusted_positions": 1,
    "signal_execution_logs": 7,
    "ml_risk_integration_metrics": 30,
    "ml_model_events": 90,
}  # chunk interval, days
COMPRESSED = (
    "actionable_trade_signals",
    "risk_adjusted_positions",
    "signal_execution_logs",
    "ml_risk_integration_metrics",
)
AGGREGATES = ("signals_hourly", "executions_daily", "service_metrics_hourly")
SYMBOLS = ("BTCUSDT", "ETHUSDT")
# three days of signals after a warm-up of five hours of real bars
START, END = "2024-10-13T19:00:00", "2024-10-17T00:00:00"
COSTS = {"MLRISK_TAKER_FEE_RATE": "0.0002", "MLRISK_MIN_EDGE_TO_COST": "0.5"}


def test_the_embedded_server_runs_timescaledb_with_hypertables_and_jobs(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert version is not None, "no TimescaleDB: did `make setup` (ops/timescaledb/build.sh) build it?"
        if not os.environ.get("DATABASE_URL"):
            assert BUILT is not None and version[0] == BUILT.group(1)
            assert conn.execute("SHOW timescaledb.telemetry_level").fetchone() == ("off",)
        intervals: dict[str, timedelta] = dict(
            conn.execute(
                "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_name NOT LIKE '\\_materialized\\_hypertable\\_%%'"
            ).fetchall()
        )
        assert intervals == {t: timedelta(days=d) for t, d in HYPERTABLES.items()}
        compressed = conn.execute(
            "SELECT h.hypertable_name, s.segmentby, s.orderby FROM timescaledb_information.hypertables h "
            "JOIN timescaledb_information.hypertable_compression_settings s ON s.hypertable = "
            "format('%I', h.hypertable_name)::regclass WHERE h.compression_enabled"
        ).fetchall()
        assert {t: (seg, order) for t, seg, order in compressed} == {
            **{t: ("symbol", '"timestamp" DESC') for t in COMPRESSED[:3]},
            "ml_risk_integration_metrics": ("service_name", '"timestamp" DESC'),
        }
        jobs = conn.execute(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs "
            "WHERE proc_name LIKE 'policy_%%' AND proc_name <> 'policy_telemetry' "
            "AND proc_name <> 'policy_job_stat_history_retention'"
        ).fetchall()
        by_kind: dict[str, dict[str, Any]] = {}
        for proc, table, config in jobs:
            by_kind.setdefault(proc, {})[table] = config
        assert {t: c["compress_after"] for t, c in by_kind["policy_compression"].items()} == dict.fromkeys(
            COMPRESSED, "7 days"
        )
        assert {t: c["drop_created_before"] for t, c in by_kind["policy_retention"].items()} == dict.fromkeys(
            COMPRESSED, "365 days"
        )
        assert set(by_kind["policy_refresh_continuous_aggregate"]) == set(AGGREGATES)
        assert set(by_kind) == {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"}
        realtime: dict[str, bool] = dict(
            conn.execute(
                "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
            ).fetchall()
        )
        assert realtime == dict.fromkeys(AGGREGATES, False)


def _shift(iso: str, by: timedelta) -> str:
    return (datetime.fromisoformat(iso.replace("Z", "+00:00")) + by).isoformat().replace("+00:00", "Z")


def _real_rows(
    model_dir: Path, data_dir: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[tuple[Any, ...]]]:
    """The engine's signals and the paper broker's execution logs on real bars of two symbols, moved to end two
    hours ago, and per ten minutes a service-metrics row made from those signals."""
    engine = SignalEngine(
        load_bundle(model_dir), RiskConfig.from_env({**os.environ, **COSTS, "MLRISK_PUBLISH_HOLD": "true"})
    )
    risk = RiskConfig.from_env({**os.environ, **COSTS})
    broker = PaperBroker(PaperAccount(risk.equity_usdt, risk.limits), FillCosts(risk.taker_fee_rate, risk.slippage_bps))
    signals: list[dict[str, Any]] = []
    executions: list[dict[str, Any]] = []
    for symbol in SYMBOLS:
        state = engine.new_state(symbol)
        for bar in load_bars(data_dir, symbol, parse_iso_ms(START), parse_iso_ms(END)).bars():
            executions.extend(broker.on_bar(bar))
            signal = engine.on_bar(state, bar)
            if signal is not None:
                signals.append(signal)
                executions.extend(broker.on_signal(signal))
    last = max(datetime.fromisoformat(s["timestamp"].replace("Z", "+00:00")) for s in signals)
    by = (datetime.now(UTC) - timedelta(hours=2) - last) // timedelta(minutes=1) * timedelta(minutes=1)
    for row in (*signals, *executions):
        row["timestamp"] = _shift(row["timestamp"], by)
    windows: dict[str, list[dict[str, Any]]] = {}
    for s in signals:
        windows.setdefault(s["timestamp"][:15] + "0:00Z", []).append(s)
    metrics = [
        metrics_row(
            {
                "timestamp": stamp,
                "service_name": "worker-test",
                "signals_generated": len(group),
                "signals_executed": sum(s["signal_type"] in ("long", "short") for s in group),
                "average_confidence": round(sum(s["confidence_score"] for s in group) / len(group), 4),
                "average_risk_score": round(sum(s["risk_score"] for s in group) / len(group), 2),
                "success_rate": None,
                "total_pnl": 0.0,
                "processing_time_ms": 1,
                "error_count": 0,
                "metadata": {},
            }
        )
        for stamp, group in sorted(windows.items())
    ]
    return signals, executions, metrics


async def _write(
    url: str, signals: list[dict[str, Any]], executions: list[dict[str, Any]], metrics: list[tuple[Any, ...]]
) -> None:
    """Through the sink, in the stream's batch size."""
    sink = Sink(url)
    await sink.open()
    try:
        for i in range(0, len(signals), SINK_BATCH):
            await sink.write_signals(signals[i : i + SINK_BATCH])
        await sink.write_executions(executions)
        await sink.write("ml_risk_integration_metrics", metrics)
    finally:
        await sink.close()


def _counts(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, int]]:
    """Rows and distinct idempotency keys per table."""
    keys = {
        "actionable_trade_signals": "signal_id",
        "risk_adjusted_positions": "signal_id",
        "signal_execution_logs": "(signal_id, execution_status)",
        "ml_risk_integration_metrics": "(service_name, timestamp)",
    }
    counts = {}
    for table, key in keys.items():
        row = conn.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()  # noqa: S608
        assert row is not None
        counts[table] = (row[0], row[1])
    return counts


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def _api(port: int, since: str) -> dict[str, Any]:
    """The database-backed answers: each symbol's signals since `since` (a page of the newest), performance's
    signal counts (the window's end is the wall clock here, so only its start is compared)."""
    answers: dict[str, Any] = {s: _get(port, f"/ml-risk/signals/{s}?limit=1000&since={since}") for s in SYMBOLS}
    performance = _get(port, "/ml-risk/performance")
    answers["performance"] = {
        "signals_by_type": performance["signals_by_type"],
        "by_type": performance["signals"]["by_type"],
        "from": performance["signals"]["from"],
    }
    return answers


@pytest.fixture
def timescale_database(database_url: str) -> Iterator[str]:
    """A database of its own on the shared server (no other test writes there), compression after one day."""
    with scratch_database(database_url) as url:
        assert init_schema(url, compress_after_days=1) is not None
        yield url


def _compress_by_the_policy(conn: psycopg.Connection[Any]) -> None:
    jobs = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'policy_compression'"
    ).fetchall()
    assert len(jobs) == len(COMPRESSED)
    for (job,) in jobs:
        conn.execute("CALL run_job(%s)", (job,))


def test_compressed_chunks_keep_writes_exactly_once_and_answers_unchanged(
    timescale_database: str, model_dir: Path, data_dir: Path, start_worker: Any, tmp_path: Path
) -> None:
    url = timescale_database
    signals, executions, metrics = _real_rows(model_dir, data_dir)
    assert len(signals) > 8000 and executions and len(metrics) > 400
    asyncio.run(_write(url, signals, executions, metrics))
    worker = start_worker(DATABASE_URL=url, MLRISK_MODEL_DIR=str(tmp_path / "no-models"))
    since = min(s["timestamp"] for s in signals)
    with psycopg.connect(url, autocommit=True) as conn:
        for view in AGGREGATES:
            conn.execute("CALL refresh_continuous_aggregate(%s, NULL, NULL)", (view,))
        before = _counts(conn)
        assert before["actionable_trade_signals"] == (len(signals), len(signals))
        answers = _api(worker.port, since)
        assert sum(answers["performance"]["signals_by_type"].values()) == len(signals)

        _compress_by_the_policy(conn)
        chunks = conn.execute(
            "SELECT hypertable_name, is_compressed, range_end < now() - interval '1 day' "
            "FROM timescaledb_information.chunks WHERE hypertable_name = 'actionable_trade_signals'"
        ).fetchall()
        assert sum(compressed for _, compressed, _ in chunks) >= 2
        assert all(compressed == old for _, compressed, old in chunks)  # exactly the chunks older than a day
        in_compressed = conn.execute(
            "SELECT count(*) FROM actionable_trade_signals WHERE timestamp < (SELECT max(range_end) FROM "
            "timescaledb_information.chunks WHERE hypertable_name = 'actionable_trade_signals' AND is_compressed)"
        ).fetchone()
        assert in_compressed is not None and in_compressed[0] > len(signals) / 3

        asyncio.run(_write(url, signals, executions, metrics))  # the same signals again, as a redelivery would
        assert _counts(conn) == before
        assert _api(worker.port, since) == answers

        # the unique check itself, on a row of a compressed chunk: a plain insert is refused, ON CONFLICT skips
        oldest = conn.execute(
            "SELECT signal_id, timestamp FROM actionable_trade_signals ORDER BY timestamp LIMIT 1"
        ).fetchone()
        assert oldest is not None
        copy = (
            "INSERT INTO actionable_trade_signals (timestamp, signal_id, symbol, signal_type, signal_strength, "
            "confidence_score, risk_level, market_regime) VALUES (%s, %s, 'BTCUSDT', 'hold', 'neutral', 0.5, "
            "'low', 'ranging')"
        )
        assert (
            conn.execute(copy + " ON CONFLICT (signal_id, timestamp) DO NOTHING", (oldest[1], oldest[0])).rowcount == 0
        )
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(copy, (oldest[1], oldest[0]))
        assert _counts(conn) == before


def test_continuous_aggregates_equal_the_aggregation_of_the_raw_rows(
    timescale_database: str, model_dir: Path, data_dir: Path
) -> None:
    url = timescale_database
    signals, executions, metrics = _real_rows(model_dir, data_dir)
    asyncio.run(_write(url, signals, executions, metrics))
    # NUMERIC arithmetic is exact decimal arithmetic: the aggregate and the raw query agree to the last digit
    raw = {
        "signals_hourly": "SELECT time_bucket('1 hour', timestamp) AS bucket, symbol, signal_type, count(*), "
        "sum(confidence_score), avg(confidence_score), count(risk_score), sum(risk_score), "
        "avg(risk_score) FROM actionable_trade_signals GROUP BY 1, 2, 3",
        "executions_daily": "SELECT time_bucket('1 day', timestamp) AS bucket, symbol, execution_status, count(*), "
        "sum((metadata->>'pnl_usdt')::NUMERIC), "
        "sum(COALESCE(metadata->>'fees_usdt', metadata->>'fee_usdt')::NUMERIC) "
        "FROM signal_execution_logs GROUP BY 1, 2, 3",
        "service_metrics_hourly": "SELECT time_bucket('1 hour', timestamp) AS bucket, service_name, count(*), "
        "sum(signals_generated), sum(signals_executed), avg(average_confidence), "
        "avg(average_risk_score), avg(processing_time_ms), sum(error_count), "
        "min(total_pnl), max(total_pnl) FROM ml_risk_integration_metrics GROUP BY 1, 2",
    }
    with psycopg.connect(url, autocommit=True) as conn:
        # half of it materialised by a refresh, the rest answered in real time, then all of it materialised
        half = conn.execute(
            "SELECT min(timestamp) + (max(timestamp) - min(timestamp)) / 2 FROM actionable_trade_signals"
        ).fetchone()
        assert half is not None
        for refresh_until in (half[0], None):
            for view in AGGREGATES:
                conn.execute("CALL refresh_continuous_aggregate(%s, NULL, %s::TIMESTAMPTZ)", (view, refresh_until))
            for view, query in raw.items():
                expected = sorted(conn.execute(query).fetchall())  # noqa: S608
                got = sorted(conn.execute(f"SELECT * FROM {view}").fetchall())  # noqa: S608
                assert got and got == expected, view
        by_type = conn.execute("SELECT signal_type, sum(signals) FROM signals_hourly GROUP BY 1").fetchall()
        assert sum(n for _, n in by_type) == len(signals)


def _grafana_sql(sql: str, range_s: int, timescale: bool) -> str:
    """A dashboard query as Grafana's PostgreSQL source sends it, its macros expanded (time_bucket with the
    source's TimescaleDB option, epoch arithmetic without), for a range of `range_s` seconds ending on
    2024-10-16 12:00 and two symbols."""

    def group(match: re.Match[str]) -> str:
        seconds = 3600 if match.group(2) == "1h" else 86400
        if timescale:
            return f"time_bucket('{seconds}s', {match.group(1)}) AS \"time\""
        return f'floor(extract(epoch from {match.group(1)})/{seconds})*{seconds} AS "time"'

    end = datetime(2024, 10, 16, 12, tzinfo=UTC)
    sql = re.sub(r"\$__timeGroupAlias\(([^,]+), (1h|1d)\)", group, sql)
    sql = re.sub(
        r"\$__timeFilter\(([^)]+)\)",
        rf"\1 BETWEEN '{(end - timedelta(seconds=range_s)).isoformat()}' AND '{end.isoformat()}'",
        sql,
    )
    sql = sql.replace("$__range_s", str(range_s)).replace("$symbol", "'BTCUSDT', 'ETHUSDT'")
    assert "$" not in sql, sql
    return sql


@pytest.mark.parametrize("timescale", [True, False], ids=["timescaledb", "plain"])
def test_the_dashboard_reads_the_aggregates_beyond_a_day_and_its_queries_run(
    database_url: str, timescale: bool
) -> None:
    dashboard = json.loads((REPO_ROOT / "ops" / "grafana" / "dashboards" / "mlrisk.json").read_text())
    queries = {p["title"]: t["rawSql"] for p in dashboard["panels"] for t in p["targets"] if "rawSql" in t}
    long_range = [q.split("UNION ALL")[0] for q in queries.values() if "$__range_s > 86400" in q]
    assert any("FROM signals_hourly" in q for q in long_range)
    assert any("FROM executions_daily" in q for q in long_range)
    assert any("FROM service_metrics_hourly" in q for q in queries.values())
    with scratch_database(database_url) as url:
        assert (init_schema(url, timescaledb=timescale) is not None) == timescale
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO actionable_trade_signals (timestamp, signal_id, symbol, signal_type, "
                "signal_strength, confidence_score, risk_level, market_regime) VALUES "
                "('2024-10-16T10:05:00Z', gen_random_uuid(), 'BTCUSDT', 'long', 'buy', 0.7, 'low', 'ranging')"
            )
            for title, sql in queries.items():
                for range_s in (6 * 3600, 7 * 86400):
                    rows = conn.execute(_grafana_sql(sql, range_s, timescale)).fetchall()  # noqa: S608
                    if title.startswith("Signals by type"):
                        assert [(r[1], r[2]) for r in rows] == [("long", 1)], (title, range_s)
