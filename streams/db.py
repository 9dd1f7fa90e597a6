"""The database: where it is (DATABASE_URL or the embedded server) and the schema."""

from __future__ import annotations

import psycopg

from streams import pgserver
from streams.config import REPO_ROOT, Settings

SCHEMA_PATH = REPO_ROOT / "schema.sql"
TABLES = ("actionable_trade_signals", "ml_risk_integration_metrics", "signal_execution_logs", "risk_adjusted_positions")


def database_url(settings: Settings, start_embedded: bool = True) -> str:
    """DATABASE_URL when set; otherwise the embedded server under the home folder (started if needed)."""
    if settings.database_url:
        return settings.database_url
    if start_embedded:
        return pgserver.start(settings.home)
    return pgserver.url()


def init_schema(url: str, retention_days: int = 365) -> bool:
    """Apply schema.sql (idempotent). Returns whether TimescaleDB hypertables are in use."""
    sql = SCHEMA_PATH.read_text()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('mlrisk.retention_days', %s, false)", (str(retention_days),))
        conn.execute(sql)  # noqa: S608
        row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None
