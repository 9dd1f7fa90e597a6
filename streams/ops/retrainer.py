"""`mlrisk retrain` and `mlrisk rollback`: the model lifecycle's commands, and the retrainer service's loop.

Retraining itself is `models.training.lifecycle.retrain` (pure of services); this module records each decision in
ml_model_events and, in `--watch` mode, decides when to retrain: on drift or decay events that workers recorded
since the last decision, or on a schedule. Workers follow the registry's CURRENT pointer and swap on their own.
"""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from models.registry import rollback
from models.training.lifecycle import Decision, retrain
from streams.config import Settings
from streams.sink.db import database_url
from streams.sink.writer import EVENT_COLUMNS, event_row, insert_sql

log = logging.getLogger("mlrisk.retrainer")

SOURCE = f"retrainer@{socket.gethostname()}"[:50]


def record_event(
    settings: Settings, event_type: str, model_version: str, details: dict[str, Any], attempts: int = 5
) -> bool:
    """Insert one ml_model_events row, retrying a database outage; False (and a warning) when it stays away."""
    row = event_row(event_type, model_version, SOURCE, details)
    delay = 0.5
    for attempt in range(attempts):
        try:
            with psycopg.connect(database_url(settings), autocommit=True, connect_timeout=5) as conn:
                conn.execute(insert_sql("ml_model_events", 1), row)
            return True
        except psycopg.OperationalError as error:
            if attempt == attempts - 1:
                log.warning("could not record the %s event (%s); it stays in decisions.jsonl", event_type, error)
                return False
            time.sleep(delay)
            delay *= 2
        except psycopg.Error as error:  # e.g. a schema older than ml_model_events: `mlrisk db init` adds it
            log.warning("could not record the %s event (%s); run `mlrisk db init`", event_type, error)
            return False
    return False


def drift_events_since(settings: Settings, since: datetime) -> list[dict[str, Any]]:
    """Drift and decay events that workers recorded after `since`."""
    with psycopg.connect(database_url(settings), connect_timeout=5) as conn:
        rows = conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM ml_model_events "  # noqa: S608
            "WHERE event_type IN ('drift', 'decay') AND timestamp > %s ORDER BY timestamp",
            (since,),
        ).fetchall()
    return [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]


def retrain_once(
    settings: Settings,
    data_dir: Path,
    symbol: str,
    *,
    quick: bool,
    end_ms: int | None,
    holdout_days: float,
    margin: float,
    trigger: str,
    progress: bool = False,
) -> Decision:
    decision = retrain(
        data_dir,
        symbol,
        settings.model_dir,
        end_ms=end_ms,
        holdout_days=holdout_days,
        quick=quick,
        margin=margin,
        progress=progress,
    )
    details = {**decision.to_dict(), "trigger": trigger}
    record_event(settings, "promotion" if decision.promoted else "rejection", decision.challenger, details)
    return decision


def rollback_once(settings: Settings) -> tuple[str, str]:
    current, previous = rollback(settings.model_dir)
    record_event(settings, "rollback", previous, {"from": current, "to": previous})
    return current, previous


def watch(
    settings: Settings,
    data_dir: Path,
    symbol: str,
    *,
    quick: bool,
    holdout_days: float,
    margin: float,
    schedule_s: float,
    poll_s: float,
    end_ms: int | None = None,
    max_runs: int | None = None,
) -> None:
    """Retrain when workers recorded drift or decay since the last run, or every `schedule_s` seconds
    (`end_ms`: train on bars before it instead of all; `max_runs`: stop after that many retrainings)."""
    last_run = datetime.now(UTC)
    last_run_clock = time.monotonic()
    runs = 0
    while max_runs is None or runs < max_runs:
        time.sleep(poll_s)
        try:
            events = drift_events_since(settings, last_run)
        except psycopg.OperationalError as error:
            log.warning("database unavailable (%s): drift triggers wait, the schedule still applies", error)
            events = []
        due = time.monotonic() - last_run_clock >= schedule_s
        if not events and not due:
            continue
        trigger = f"{len(events)} drift/decay event(s)" if events else "schedule"
        log.info("retraining (%s)", trigger)
        last_run, last_run_clock = datetime.now(UTC), time.monotonic()
        decision = retrain_once(
            settings,
            data_dir,
            symbol,
            quick=quick,
            end_ms=end_ms,
            holdout_days=holdout_days,
            margin=margin,
            trigger=trigger,
        )
        log.info(
            "%s: %s (%s)", decision.challenger, "promoted" if decision.promoted else "not promoted", decision.reason
        )
        runs += 1
