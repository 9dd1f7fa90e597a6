"""The model lifecycle end to end, on the real broker and database: drift → retrain → promotion → hot swap.

A champion trained on the latest bars of the data (winter 2024/25) serves a replay of March 2023 (the SVB
crisis): its features drift, the worker records it, a retrainer waiting for drift trains a challenger (quick
mode) on the bars before the replayed days, finds it better on the most recent days and promotes it, and the
worker switches to it while the next day is being replayed.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import psycopg

from models.registry import current_version
from models.training.train import train_cli
from tests.integration.conftest import REPO_ROOT, read_topic, replay

DAYS = ("2023-03-10", "2023-03-11", "2023-03-12")
RETRAIN_END = "2023-03-13"  # the retrainer's "now": challenger trained before 03-10, both compared on 03-10..12
MEMBERS = {"lightgbm", "lstm", "transformer"}


def _csv_minutes(data_dir: Path) -> list[int]:
    with gzip.open(data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2023-03.csv.gz", "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", usecols=0)
    start = 1678406400000  # 2023-03-10 00:00 UTC
    return [int(t) for t in table if start <= t < start + 2 * 86_400_000]


def _events(url: str, version: str, kind: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT timestamp, details FROM ml_model_events WHERE model_version = %s AND event_type = %s",
            (version, kind),
        ).fetchall()


def _wait_for(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}")


def test_drift_retrain_promotion_and_swap_mid_replay(data_dir, start_worker, worker_env, database_url, tmp_path):
    klines = data_dir / "binance-spot-klines-1m"
    models = tmp_path / "models"
    train_cli(klines, "BTCUSDT", models, quick=True, progress=False)  # the latest 60 days of the data
    champion = current_version(models)
    env = {**worker_env, "MLRISK_MODEL_DIR": str(models), "MLRISK_MODEL_POLL_S": "1", "MLRISK_PUBLISH_HOLD": "1"}
    start_worker(**{k: env[k] for k in ("MLRISK_MODEL_DIR", "MLRISK_MODEL_POLL_S", "MLRISK_PUBLISH_HOLD")})
    retrainer_log = open(tmp_path / "retrainer.log", "wb")  # noqa: SIM115
    retrainer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streams.ops.cli",
            "retrain",
            "--watch",
            "--once",
            "--quick",
            "--data",
            str(klines),
            "--end",
            RETRAIN_END,
            "--holdout-days",
            "3",
            "--poll-seconds",
            "1",
            "--schedule-hours",
            "1000",
            "--margin",
            "0",
        ],  # any gain promotes here: the margin's rule is tested on its own (unit tests)
        cwd=REPO_ROOT,
        env=env,
        stdout=retrainer_log,
        stderr=subprocess.STDOUT,
    )
    prefix = env["MLRISK_TOPIC_PREFIX"]
    try:
        replay(env, "--data", str(klines), "--symbols", "BTCUSDT", "--start", DAYS[0], "--end", DAYS[1])
        drift = _wait_for(lambda: _events(database_url, champion, "drift"), 120, "the champion's drift event")
        assert any(len(d["started"]) >= 3 for _, d in drift), drift
        # the next day arrives at 1000x real time (about 90 s) while the retrainer works
        slow = threading.Thread(
            target=replay,
            args=(
                env,
                "--data",
                str(klines),
                "--symbols",
                "BTCUSDT",
                "--start",
                DAYS[1],
                "--end",
                DAYS[2],
                "--speed",
                "1000",
            ),
        )
        slow.start()
        assert retrainer.wait(timeout=240) == 0, (tmp_path / "retrainer.log").read_text()[-3000:]
        challenger = current_version(models)
        assert challenger != champion, "the challenger was not promoted"
        decision = orjson.loads((models / "decisions.jsonl").read_bytes().splitlines()[-1])
        assert decision["promoted"] and decision["challenger"] == challenger and decision["champion"] == champion
        assert (
            decision["figures"]["challenger"]["ensemble"]["log_loss"]
            < decision["figures"]["champion"]["ensemble"]["log_loss"]
        )
        slow.join(timeout=240)
        assert _events(database_url, challenger, "promotion")
        _wait_for(lambda: _events(database_url, challenger, "swap"), 60, "the worker's swap event")
    finally:
        retrainer.kill()
        retrainer_log.close()

    minutes = _csv_minutes(data_dir)
    bars = [orjson.loads(m.value) for m in read_topic(prefix + "bars", len(minutes), timeout_s=120)]
    published = [b["open_time"] for b in bars]
    assert sorted(published) == minutes, "a bar was lost or published twice"
    signals = [orjson.loads(m.value) for m in read_topic(prefix + "signals", None, timeout_s=120)]
    by_bar: dict[int, list[dict]] = {}
    for signal in signals:
        by_bar.setdefault(signal["bar_close_time"], []).append(signal)
    assert all(len(copies) == 1 for copies in by_bar.values()), "a bar was decided twice"
    decided = sorted(by_bar)
    closes = [t + 59_999 for t in minutes]
    assert decided == [t for t in closes if t >= decided[0]], "a bar after the warm-up got no signal"
    versions = [by_bar[t][0]["model_version"] for t in decided]
    switch = versions.index(challenger)
    assert set(versions[:switch]) == {champion} and set(versions[switch:]) == {challenger}
    assert decided[switch] >= closes[len(minutes) // 2], "the switch happened during the second day's replay"
    assert switch < len(versions) - 60, "the challenger served the rest of the replay"
    # every signal comes from a whole version: all three members scored it
    assert all(set(s["model_contributions"]) == MEMBERS for s in signals)
