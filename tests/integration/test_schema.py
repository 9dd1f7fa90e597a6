"""`mlrisk db init` on the real server: every table and column of the contract, and safe to run twice."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from streams.config import REPO_ROOT
from streams.sink.db import scratch_database

EXPECTED: dict[str, dict[str, tuple[str, Any]]] = {
    "actionable_trade_signals": {
        "timestamp": ("timestamp with time zone", None),
        "id": ("bigint", None),
        "signal_id": ("uuid", None),
        "symbol": ("character varying", 20),
        "signal_type": ("character varying", None),
        "signal_strength": ("character varying", None),
        "confidence_score": ("numeric", (5, 4)),
        "risk_level": ("character varying", None),
        "market_regime": ("character varying", None),
        "recommended_leverage": ("integer", None),
        "position_size_usdt": ("numeric", (15, 2)),
        "stop_loss_price": ("numeric", (15, 6)),
        "take_profit_price": ("numeric", (15, 6)),
        "risk_reward_ratio": ("numeric", (8, 4)),
        "ml_confidence": ("numeric", (5, 4)),
        "ml_prediction": ("character varying", 20),
        "model_contributions": ("jsonb", None),
        "risk_score": ("numeric", (5, 2)),
        "liquidation_risk": ("numeric", (5, 2)),
        "portfolio_impact": ("numeric", (8, 6)),
        "volatility_score": ("numeric", (5, 4)),
        "liquidity_score": ("numeric", (5, 4)),
        "market_depth_analysis": ("jsonb", None),
        "metadata": ("jsonb", None),
    },
    "ml_risk_integration_metrics": {
        "timestamp": ("timestamp with time zone", None),
        "id": ("bigint", None),
        "service_name": ("character varying", 50),
        "signals_generated": ("integer", None),
        "signals_executed": ("integer", None),
        "average_confidence": ("numeric", (5, 4)),
        "average_risk_score": ("numeric", (5, 2)),
        "success_rate": ("numeric", (5, 4)),
        "total_pnl": ("numeric", (15, 2)),
        "processing_time_ms": ("integer", None),
        "error_count": ("integer", None),
        "metadata": ("jsonb", None),
    },
    "signal_execution_logs": {
        "timestamp": ("timestamp with time zone", None),
        "id": ("bigint", None),
        "signal_id": ("uuid", None),
        "symbol": ("character varying", 20),
        "execution_status": ("character varying", 20),
        "execution_price": ("numeric", (15, 6)),
        "execution_size": ("numeric", (15, 2)),
        "execution_leverage": ("integer", None),
        "actual_stop_loss": ("numeric", (15, 6)),
        "actual_take_profit": ("numeric", (15, 6)),
        "execution_time_ms": ("integer", None),
        "error_message": ("text", None),
        "metadata": ("jsonb", None),
    },
    "risk_adjusted_positions": {
        "timestamp": ("timestamp with time zone", None),
        "id": ("bigint", None),
        "signal_id": ("uuid", None),
        "symbol": ("character varying", 20),
        "signal_type": ("character varying", None),
        "base_position_size": ("numeric", (15, 2)),
        "risk_adjusted_size": ("numeric", (15, 2)),
        "leverage_multiplier": ("numeric", (8, 4)),
        "stop_loss_adjustment": ("numeric", (8, 4)),
        "take_profit_adjustment": ("numeric", (8, 4)),
        "risk_factors": ("jsonb", None),
        "confidence_boost": ("numeric", (5, 4)),
        "market_regime": ("character varying", None),
        "volatility_score": ("numeric", (5, 4)),
        "liquidity_score": ("numeric", (5, 4)),
        "metadata": ("jsonb", None),
    },
    # beyond the contract: the model lifecycle's events
    "ml_model_events": {
        "timestamp": ("timestamp with time zone", None),
        "event_type": ("character varying", 20),
        "model_version": ("character varying", 100),
        "source": ("character varying", 50),
        "details": ("jsonb", None),
    },
}


# the aggregates the API and Grafana read: continuous aggregates on TimescaleDB, plain views without it
AGGREGATES = {
    "signals_hourly": [
        "bucket",
        "symbol",
        "signal_type",
        "signals",
        "confidence_sum",
        "mean_confidence",
        "risk_scored",
        "risk_score_sum",
        "mean_risk_score",
    ],
    "executions_daily": ["bucket", "symbol", "execution_status", "executions", "pnl_usdt", "fees_usdt"],
    "service_metrics_hourly": [
        "bucket",
        "service_name",
        "samples",
        "signals_generated",
        "signals_executed",
        "mean_confidence",
        "mean_risk_score",
        "mean_processing_time_ms",
        "errors",
        "min_total_pnl",
        "max_total_pnl",
    ],
}


def _db_init(database_url: str, *options: str) -> str:
    env = {**os.environ, "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "db", "init", *options],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


@pytest.fixture(params=["timescaledb", "plain"])
def schema_database(request: pytest.FixtureRequest, database_url: str) -> Iterator[tuple[str, bool]]:
    """The test database with TimescaleDB, and a fresh one on the same server kept plain (`db init --plain`)."""
    if request.param == "timescaledb":
        yield database_url, True
    else:
        with scratch_database(database_url) as url:
            yield url, False


def test_db_init_twice_gives_every_contract_column_with_its_type(schema_database: tuple[str, bool]) -> None:
    database_url, timescale = schema_database
    options = () if timescale else ("--plain",)
    _db_init(database_url, *options)
    printed = _db_init(database_url, *options)
    assert "schema applied" in printed
    assert ("on TimescaleDB 2." in printed) == timescale and ("on plain PostgreSQL" in printed) != timescale
    with psycopg.connect(database_url) as conn:
        extension = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
        assert (extension is not None) == timescale
        for view, view_columns in AGGREGATES.items():
            found_columns = [
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                    "ORDER BY ordinal_position",
                    (view,),
                ).fetchall()
            ]
            assert found_columns == view_columns, view
        for table, columns in EXPECTED.items():
            rows = conn.execute(
                "SELECT column_name, data_type, character_maximum_length, numeric_precision, numeric_scale "
                "FROM information_schema.columns WHERE table_name = %s",
                (table,),
            ).fetchall()
            found = {name: (dtype, length, (precision, scale)) for name, dtype, length, precision, scale in rows}
            assert set(found) == set(columns), table
            for name, (dtype, size) in columns.items():
                got_type, got_length, got_numeric = found[name]
                assert got_type == dtype, (table, name)
                if dtype == "numeric":
                    assert got_numeric == size, (table, name)
                elif size is not None:
                    assert got_length == size, (table, name)
            primary = conn.execute(
                "SELECT array_agg(a.attname ORDER BY k.ord) FROM pg_index i "
                "CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) "
                "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                "WHERE i.indrelid = %s::regclass AND i.indisprimary",
                (table,),
            ).fetchone()
            key = (
                ["timestamp", "event_type", "model_version", "source"]
                if table == "ml_model_events"
                else ["timestamp", "id"]
            )
            assert primary is not None and primary[0] == key, table


def test_signal_rows_are_idempotent_on_signal_id(database_url: str) -> None:
    _db_init(database_url)
    insert = (
        "INSERT INTO actionable_trade_signals (timestamp, signal_id, symbol, signal_type, signal_strength, "
        "confidence_score, risk_level, market_regime) VALUES ('2024-05-01T00:00:00Z', %s, 'BTCUSDT', 'long', "
        "'buy', 0.6, 'low', 'ranging') ON CONFLICT (signal_id, timestamp) DO NOTHING"
    )
    signal_id = "7d0e7d4e-3a1c-4b51-9a70-3d4d2c1f0a11"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM actionable_trade_signals WHERE signal_id = %s", (signal_id,))
        conn.execute(insert, (signal_id,))
        conn.execute(insert, (signal_id,))
        count = conn.execute(
            "SELECT count(*) FROM actionable_trade_signals WHERE signal_id = %s", (signal_id,)
        ).fetchone()
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexdef FROM pg_indexes WHERE tablename = 'actionable_trade_signals'"
            ).fetchall()
        }
    assert count == (1,)
    assert any('(symbol, "timestamp" DESC)' in i for i in indexes)
    assert any("(signal_type)" in i for i in indexes) and any("(confidence_score)" in i for i in indexes)


def test_schema_file_creates_hypertables_only_where_timescaledb_exists() -> None:
    sql = (REPO_ROOT / "schema.sql").read_text()
    assert "pg_available_extensions WHERE name = 'timescaledb'" in sql
    assert sql.count("CREATE TABLE IF NOT EXISTS") == 6  # the five of the audit trail and the sink's quarantine
