"""The database: where it is (DATABASE_URL or the embedded server) and the schema."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import psycopg
from psycopg.conninfo import make_conninfo

from streams.config import REPO_ROOT, Settings
from streams.sink import pgserver

SCHEMA_PATH = REPO_ROOT / "schema.sql"
TABLES = ("actionable_trade_signals", "ml_risk_integration_metrics", "signal_execution_logs", "risk_adjusted_positions")


def database_url(settings: Settings, start_embedded: bool = True) -> str:
    """DATABASE_URL when set; otherwise the embedded server under the home folder (started if needed)."""
    if settings.database_url:
        return settings.database_url
    if start_embedded:
        return pgserver.start(settings.home)
    return pgserver.url(settings.home)


def init_schema(
    url: str, retention_days: int = 365, compress_after_days: int = 7, timescaledb: bool = True
) -> str | None:
    """Apply schema.sql (idempotent) and return the TimescaleDB version in use, or None on plain PostgreSQL.

    `retention_days`: chunks created longer ago are dropped; `compress_after_days`: chunks whose data is older are
    compressed (0 turns either policy off); `timescaledb=False` keeps a database without the extension plain.
    """
    sql = SCHEMA_PATH.read_text()
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in (
            ("retention_days", retention_days),
            ("compress_after_days", compress_after_days),
            ("timescaledb", "on" if timescaledb else "off"),
        ):
            conn.execute("SELECT set_config(%s, %s, false)", (f"mlrisk.{name}", str(value)))
        conn.execute(sql)  # noqa: S608
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return None if row is None else str(row[0])


@contextlib.contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A fresh database on the same server (its URL), dropped afterwards: for tests and benchmarks that need a
    whole database to themselves, or one without TimescaleDB next to one with it."""
    name = f"mlrisk_scratch_{uuid.uuid4().hex[:12]}"
    admin = make_conninfo(server_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
