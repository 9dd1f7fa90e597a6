"""Monitoring for real: a real Prometheus (ops/prometheus/prometheus.sh, the project's rules) scrapes a real worker
replaying a real day, with its own PostgreSQL server so that the outage below disturbs no other test.

The day is 2023-03-10 (the SVB crisis) served by quick models trained on the latest bars of the data: a regime
shift that drifts the features. Prometheus scrapes and evaluates every second here; the rules' `for:` are kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from models.bars import parse_iso_ms
from models.data import load_bars
from streams.sink import pgserver
from tests.integration.conftest import REPO_ROOT, WorkerProcess, free_port, produce, replay
from tests.promql import metric_names

PROMETHEUS_SH = REPO_ROOT / "ops" / "prometheus" / "prometheus.sh"
DASHBOARD = REPO_ROOT / "ops" / "grafana" / "dashboards" / "mlrisk.json"
RULES = REPO_ROOT / "ops" / "prometheus" / "alerts.yml"
DAY, NEXT_DAY, DAY_AFTER = "2023-03-10", "2023-03-11", "2023-03-12"
SYMBOL = "BTCUSDT"
# costs low enough that the day's confident bars become trades, so that executions exist (as in test_pipeline)
COSTS = {"MLRISK_TAKER_FEE_RATE": "0.0002", "MLRISK_MIN_EDGE_TO_COST": "0.5", "MLRISK_PUBLISH_HOLD": "true"}
HOSTILE = [b"{not json", b'{"symbol": "BTCUSDT", "ts": -5, "price": 1, "qty": 1}', b"\x00\xff", b"[]"]
PROMETHEUS_OWN = {"up"}  # series Prometheus writes itself for each target


@dataclass
class Monitored:
    worker: WorkerProcess
    prometheus_port: int
    database_url: str
    db_env: dict[str, str]
    env: dict[str, str]

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.prometheus_port}/api/v1/{path}{query}", timeout=10
        ) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"mlrisk {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout.strip()


def _wait_for(check: Callable[[], Any], timeout_s: float, what: str, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _scalar(mon: Monitored, expr: str) -> float | None:
    result = mon.api("query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def monitored(kafka: str, model_dir: Path, data_dir: Path) -> Iterator[Monitored]:
    # not under pytest's base folder: a pytest started meanwhile elsewhere on the machine prunes older ones, and the
    # servers' data must outlive the module
    tmp = Path(tempfile.mkdtemp(prefix="mlrisk-monitoring-"))
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    # a PostgreSQL server of this module's own: stopping it below leaves the shared one alone
    db_env = {**base, "MLRISK_HOME": str(tmp / "pg"), "MLRISK_PG_PORT": str(free_port())}
    _cli(db_env, "db", "init")
    database_url = _cli(db_env, "db", "url").splitlines()[-1]
    env = {
        **base,
        **COSTS,
        "MLRISK_TOPIC_PREFIX": f"mon{int(time.time() * 1000)}-",
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_HOME": str(tmp / "worker"),
        "MLRISK_PARTITIONS": "2",
        "MLRISK_MODEL_DIR": str(model_dir),
        "DATABASE_URL": database_url,
        "MLRISK_LOG_LEVEL": "warn",
    }
    prometheus_port = free_port()
    prom_env = {
        **base,
        "MLRISK_HOME": str(tmp / "prom"),
        "MLRISK_PROMETHEUS_PORT": str(prometheus_port),
        "MLRISK_PROMETHEUS_TARGETS": f"127.0.0.1:{env['MLRISK_WEB_PORT']}",
        "MLRISK_PROMETHEUS_SCRAPE_INTERVAL": "1s",
        "MLRISK_PROMETHEUS_EVAL_INTERVAL": "1s",
    }
    worker = WorkerProcess(env, tmp / "worker.log")
    try:
        subprocess.run([str(PROMETHEUS_SH), "start"], env=prom_env, check=True, capture_output=True)
        worker.start()
        mon = Monitored(worker, prometheus_port, database_url, db_env, env)
        asyncio.run(produce(env["MLRISK_TOPIC_PREFIX"] + "market-data", [(b"BTCUSDT", raw) for raw in HOSTILE]))
        replay(
            env,
            "--data",
            str(data_dir / "binance-spot-klines-1m"),
            "--source",
            "bars",
            "--symbols",
            SYMBOL,
            "--start",
            DAY,
            "--end",
            NEXT_DAY,
        )
        minutes = len(load_bars(data_dir / "binance-spot-klines-1m", SYMBOL, parse_iso_ms(DAY), parse_iso_ms(NEXT_DAY)))
        _wait_for(lambda: _processed(mon, minutes), 180, "the day's signals in the database, as Prometheus sees it")
        yield mon
    finally:
        worker.stop()
        subprocess.run([str(PROMETHEUS_SH), "stop"], env=prom_env, capture_output=True)
        pgserver.stop(Path(db_env["MLRISK_HOME"]), mode="immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def _processed(mon: Monitored, minutes: int) -> bool:
    """The day's bars all closed and decided, and every decision written (the bars topic drained, the sink caught
    up)."""
    bars = _scalar(mon, f'sum(mlrisk_bars_closed_total{{symbol="{SYMBOL}"}})') or 0
    backlog = _scalar(mon, 'sum(mlrisk_consumer_lag_messages{topic=~".*-bars"})')
    signals = _scalar(mon, "sum(mlrisk_signals_total)") or 0
    written = _scalar(mon, 'sum(mlrisk_sink_rows_total{table="actionable_trade_signals"})') or 0
    return bars == minutes and backlog == 0 and 0 < signals == written


def _panels() -> list[dict[str, Any]]:
    return json.loads(DASHBOARD.read_text())["panels"]


def _promql_targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels() if p["datasource"]["type"] == "prometheus" for t in p["targets"]]


def _sql_targets() -> list[tuple[str, str]]:
    return [
        (p["title"], t["rawSql"]) for p in _panels() if p["datasource"]["type"] != "prometheus" for t in p["targets"]
    ]


def _fill_promql(expr: str, symbol: str) -> str:
    return expr.replace("$symbol", symbol)


def _fill_sql(sql: str, symbol: str, start: datetime, end: datetime) -> str:
    """Grafana's PostgreSQL macros and the template variable, as Grafana expands them for one symbol."""

    def time_group(match: re.Match[str]) -> str:
        column, interval = (part.strip().strip("'") for part in match.group(1).split(","))
        seconds = {"m": 60, "h": 3600, "d": 86400}[interval[-1]] * int(interval[:-1])
        return f'floor(extract(epoch from {column})/{seconds})*{seconds} AS "time"'

    sql = re.sub(r"\$__timeGroupAlias\(([^)]*)\)", time_group, sql)
    sql = re.sub(
        r"\$__timeFilter\(([^)]*)\)",
        lambda m: f"{m.group(1)} BETWEEN '{start.isoformat()}' AND '{end.isoformat()}'",
        sql,
    )
    sql = sql.replace("$__range_s", str(int((end - start).total_seconds())))
    sql = sql.replace("$symbol", f"'{symbol}'")
    assert "$" not in sql, f"a macro or variable this test does not expand: {sql}"
    return sql


def _exported_names(port: int) -> set[str]:
    """Series names the worker's /metrics declares, with the suffixes each type's samples carry."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def _rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r.get("alert") or r["record"], r["expr"]) for g in groups for r in g["rules"]]


def test_rules_and_panels_name_only_metrics_the_worker_exports(monitored: Monitored) -> None:
    exported = _exported_names(monitored.worker.port) | PROMETHEUS_OWN
    assert {"mlrisk_bars_closed_total", "mlrisk_database_up", "mlrisk_event_loop_lag_seconds"} <= exported
    named = [*_rule_exprs(), *((title, _fill_promql(expr, SYMBOL)) for title, expr in _promql_targets())]
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in named if metric_names(expr) - exported}
    assert unknown == {}
    assert all(metric_names(expr) for _, expr in named), "an expression that names no metric"


def test_every_promql_panel_returns_data_through_prometheus(monitored: Monitored) -> None:
    symbols = monitored.api("label/symbol/values", **{"match[]": "mlrisk_bars_closed_total"})
    assert SYMBOL in symbols  # the dashboard's $symbol variable, filled the way Grafana fills it
    empty = []
    for title, expr in _promql_targets():
        result = monitored.api("query", query=_fill_promql(expr, SYMBOL))["result"]
        if not result:
            empty.append((title, expr))
    assert empty == []


def test_feature_drift_alert_fires_on_the_regime_shift(monitored: Monitored) -> None:
    served = monitored.api("query", query="mlrisk_model_info == 1")["result"][0]["metric"]["version"]
    firing = _wait_for(
        lambda: [a for a in monitored.alerts("MlriskFeatureDrift") if a["state"] == "firing"],
        30,
        "the feature drift alert",
    )
    assert [a["labels"]["model"] for a in firing] == [served]


def _refused(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.OperationalError:
        return True
    return False


def _stop_database(mon: Monitored) -> None:
    """Stop the module's server at once, as a crash or a cut network would, and see that it no longer answers."""
    home = Path(mon.db_env["MLRISK_HOME"])
    pgserver.stop(home, mode="immediate")
    log = home / "postgres" / "server.log"
    _wait_for(
        lambda: _refused(mon.database_url),
        15,
        f"the database to stop; its log ends: {log.read_text()[-1500:] if log.exists() else '(none)'}",
    )


def test_database_outage_alert_goes_pending_then_firing_and_resolves(monitored: Monitored, data_dir: Path) -> None:
    assert monitored.alerts("MlriskDatabaseDown") == []
    # the next day arrives while the database is away: its rows wait in Kafka
    feeding = threading.Thread(
        target=replay,
        args=(
            monitored.env,
            "--data",
            str(data_dir / "binance-spot-klines-1m"),
            "--source",
            "bars",
            "--symbols",
            SYMBOL,
            "--start",
            NEXT_DAY,
            "--end",
            DAY_AFTER,
        ),
    )
    feeding.start()
    _stop_database(monitored)
    try:
        pending = _wait_for(
            lambda: [a for a in monitored.alerts("MlriskDatabaseDown") if a["state"] == "pending"],
            30,
            f"the database alert pending {monitored.api('query', query='mlrisk_database_up')}",
        )
        assert pending[0]["labels"]["severity"] == "critical"
        since = datetime.fromisoformat(pending[0]["activeAt"].replace("Z", "+00:00"))
        firing = _wait_for(
            lambda: [a for a in monitored.alerts("MlriskDatabaseDown") if a["state"] == "firing"],
            90,
            "the database alert firing",
            every_s=0.5,
        )
        # firing only once the rule's `for: 1m` has passed since it went pending (1 s evaluations)
        held_s = (datetime.now(UTC) - since).total_seconds()
        assert 60 <= held_s <= 75, held_s
        assert firing[0]["activeAt"] == pending[0]["activeAt"]
    finally:
        _cli(monitored.db_env, "db", "start")
        feeding.join(timeout=120)
    _wait_for(lambda: monitored.alerts("MlriskDatabaseDown") == [], 30, "the database alert to resolve")
    # and the rows that waited reach the database
    with psycopg.connect(monitored.database_url) as conn:
        _wait_for(
            lambda: (
                conn.execute(
                    "SELECT count(*) FROM actionable_trade_signals WHERE timestamp >= %s", (NEXT_DAY,)
                ).fetchone()[0]
                > 0
            ),  # type: ignore[index]
            60,
            "the next day's signals in the database",
        )


def test_every_sql_panel_returns_rows_from_the_database(monitored: Monitored) -> None:
    """Last in the module, when the worker has run long enough to write its per-minute service rows. Over
    everything so far (from the replayed day to now: the aggregates' branch where a panel has one), and
    over the replayed day alone (their raw-row branch: `$__range_s` of a day)."""
    day = datetime.fromisoformat(DAY).replace(tzinfo=UTC)
    targets = _sql_targets()
    assert targets
    with psycopg.connect(monitored.database_url, autocommit=True) as conn:
        # the per-minute service row: written a minute after the worker started
        _wait_for(
            lambda: conn.execute("SELECT count(*) FROM ml_risk_integration_metrics").fetchone()[0],  # type: ignore[index]
            60,
            "the worker's per-minute service row",
        )
        for title, sql in targets:
            everything = _fill_sql(sql, SYMBOL, day, datetime.now(UTC))
            assert conn.execute(everything).fetchall(), title
            if "$__range_s" in sql:
                one_day = _fill_sql(sql, SYMBOL, day, datetime.fromisoformat(NEXT_DAY).replace(tzinfo=UTC))
                assert conn.execute(one_day).fetchall(), f"{title}, one day"
