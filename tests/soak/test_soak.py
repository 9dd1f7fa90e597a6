"""Soak: real klines replayed at a steady rate for a long time, with a random fault every few minutes.

Faults, in a seeded random order: kill -9 of the worker, SIGTERM of the worker, a broker restart, a database
restart, a model swap. The worker runs against a broker and a database server of its own, so that the faults touch
nothing else. At the end:
- every bar of the replay has exactly one decision in the database (publish_hold: holds are decisions too), none
  missing and none decided twice under another id;
- the decisions up to the first model swap equal the backtest engine's on the same bars, field by field (after a
  swap the ensemble's memory restarts at a batch boundary that no offline run can place);
- the worker's resident memory and open file descriptors stay flat (reported per worker process).

`make soak` runs it for 30 minutes (MLRISK_SOAK_S=1800, a fault every MLRISK_SOAK_FAULT_EVERY_S=180 s, at
MLRISK_SOAK_RATE events/s) and prints its figures.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
import psycopg
import pytest

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.registry import CURRENT_FILE, current_version, load_bundle
from risk.config import RiskConfig
from streams.ops.replay import ReplayMessage, collect, merged
from tests.integration.conftest import REPO_ROOT, PrivateBroker, WorkerProcess, free_port

DURATION_S = float(os.environ.get("MLRISK_SOAK_S", "1800"))
FAULT_EVERY_S = float(os.environ.get("MLRISK_SOAK_FAULT_EVERY_S", "180"))
RATE = float(os.environ.get("MLRISK_SOAK_RATE", "300"))  # closed klines a second: decisions a second
SEED = int(os.environ.get("MLRISK_SOAK_SEED", "7"))
SYMBOLS = ("BTCUSDT", "ETHUSDT")
START = "2023-01-01T00:00:00"
FAULTS = ("kill -9", "SIGTERM", "broker restart", "database restart", "model swap")
COSTS = {"MLRISK_TAKER_FEE_RATE": "0.0002", "MLRISK_MIN_EDGE_TO_COST": "0.5", "MLRISK_PUBLISH_HOLD": "true"}
STOP_TIMEOUT_S = 10
DATA = REPO_ROOT.parent / "shared" / "data"


def _db(env: dict[str, str], action: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "db", action],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )


def _embedded_url(env: dict[str, str]) -> str:
    """The URL (with its generated password) of the embedded server that `env` names."""
    code = (
        "from streams.config import Settings; from streams.sink.db import database_url; "
        "print(database_url(Settings.from_env(), start_embedded=False))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


def _messages(count: int) -> list[ReplayMessage]:
    out: list[ReplayMessage] = []
    for message in merged(collect(DATA, list(SYMBOLS), parse_iso_ms(START), None, "bars")):
        out.append(message)
        if len(out) >= count:
            break
    return out


class Publisher(threading.Thread):
    """Publishes the messages at RATE per second, retrying through broker outages (a retried send may land twice:
    the worker drops the duplicate kline)."""

    def __init__(self, messages: list[ReplayMessage], servers: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.messages, self.servers, self.topic = messages, servers, topic
        self.sent = 0
        self.retries = 0

    def run(self) -> None:
        asyncio.run(self._publish())

    async def _publish(self) -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.servers, acks="all", enable_idempotence=True, linger_ms=5, request_timeout_ms=10_000
        )
        await producer.start()
        started = time.monotonic()
        try:
            for i, message in enumerate(self.messages):
                delay = i / RATE - (time.monotonic() - started)
                if delay > 0:
                    await asyncio.sleep(delay)
                while True:
                    try:
                        await producer.send_and_wait(
                            self.topic, message.value, key=message.symbol.encode()
                        ) if i % 500 == 0 else await producer.send(
                            self.topic, message.value, key=message.symbol.encode()
                        )
                        break
                    except Exception:  # the broker away: wait and send again
                        self.retries += 1
                        await asyncio.sleep(1.0)
                self.sent = i + 1
            await producer.flush()
        finally:
            await producer.stop()


def _sample(worker: WorkerProcess, samples: dict[int, list[tuple[float, float, int]]]) -> None:
    if worker.proc is None or worker.proc.poll() is not None:
        return
    try:
        process = psutil.Process(worker.proc.pid)
        samples.setdefault(worker.proc.pid, []).append(
            (time.monotonic(), process.memory_info().rss / 1e6, process.num_fds())
        )
    except psutil.Error:
        pass


def _decisions(url: str) -> list[tuple[Any, ...]]:
    """(signal_id, symbol, bar_close_time, model_version, signal_type, leverage, size) of every decision stored."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT signal_id::text, symbol, (metadata->>'bar_close_time')::bigint, metadata->>'model_version', "
            "signal_type, recommended_leverage, position_size_usdt FROM actionable_trade_signals"
        ).fetchall()


@pytest.mark.timeout(int(DURATION_S) + 1800)  # the run, then the drain and the backtest of what it replayed
def test_soak_with_random_faults_keeps_every_decision_exactly_once(model_dir: Path, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    messages = _messages(int(RATE * DURATION_S))
    broker = PrivateBroker(tmp_path / "broker-home")
    broker.start()
    db_env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    db_env.update(MLRISK_HOME=str(tmp_path / "db-home"), MLRISK_PG_PORT=str(free_port()))
    _db(db_env, "init")
    models = tmp_path / "models"
    version = current_version(model_dir)
    shutil.copytree(model_dir / version, models / version)
    (models / CURRENT_FILE).write_text(version + "\n")
    prefix = f"soak{int(time.time())}-"
    env = {
        **db_env,
        **COSTS,
        "MLRISK_KAFKA_BROKERS": broker.url,
        "MLRISK_TOPIC_PREFIX": prefix,
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_PARTITIONS": "2",
        "MLRISK_MODEL_DIR": str(models),
        "MLRISK_MODEL_POLL_S": "2",
        "MLRISK_STOP_TIMEOUT_S": str(STOP_TIMEOUT_S),
        "MLRISK_LOG_LEVEL": "warn",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = [WorkerProcess(env, logs / "worker-0.log").start()]
    publisher = Publisher(messages, f"localhost:{broker.port}", prefix + "market-data")
    samples: dict[int, list[tuple[float, float, int]]] = {}
    faults: list[dict[str, Any]] = []
    url = _embedded_url(db_env)
    try:
        publisher.start()
        started = time.monotonic()
        next_fault = started + FAULT_EVERY_S
        while publisher.is_alive() or time.monotonic() < started + DURATION_S:
            _sample(workers[-1], samples)
            if time.monotonic() >= next_fault and publisher.is_alive():
                kind = rng.choice(FAULTS)
                record: dict[str, Any] = {
                    "at_s": round(time.monotonic() - started),
                    "fault": kind,
                    "published": publisher.sent,
                    "decided": len(_decisions(url)),
                }
                current = workers[-1]
                if kind in ("kill -9", "SIGTERM"):
                    assert current.proc is not None
                    began = time.monotonic()
                    current.proc.send_signal(signal.SIGKILL if kind == "kill -9" else signal.SIGTERM)
                    current.proc.wait(timeout=STOP_TIMEOUT_S + 30)
                    record["stopped_in_s"] = round(time.monotonic() - began, 1)
                    workers.append(WorkerProcess(env, logs / f"worker-{len(workers)}.log").start())
                elif kind == "broker restart":
                    broker.kill()
                    time.sleep(5)
                    broker.start()
                elif kind == "database restart":
                    _db(db_env, "stop")
                    time.sleep(10)
                    _db(db_env, "init")
                else:
                    swapped = f"swap-{len(faults)}"
                    shutil.copytree(models / version, models / swapped)
                    (models / CURRENT_FILE).write_text(swapped + "\n")
                faults.append(record)
                print("soak fault", record, flush=True)
                next_fault += FAULT_EVERY_S
            time.sleep(2)
        # drain: until the decisions stop growing
        last, steady_since = -1, time.monotonic()
        while time.monotonic() - steady_since < 45:
            _sample(workers[-1], samples)
            count = len(_decisions(url))
            if count != last:
                last, steady_since = count, time.monotonic()
            time.sleep(3)
    finally:
        for worker in workers:
            worker.stop()
        broker.kill()

    decisions = _decisions(url)
    _db(db_env, "stop")
    engine = SignalEngine(load_bundle(models, version), RiskConfig.from_env(env))
    expected: dict[tuple[str, int], dict[str, Any]] = {}
    states = {symbol: engine.new_state(symbol) for symbol in SYMBOLS}
    last_ms = {s: max((orjson.loads(m.value)["k"]["t"] for m in messages if m.symbol == s), default=0) for s in SYMBOLS}
    for symbol in SYMBOLS:
        for bar in load_bars(DATA, symbol, parse_iso_ms(START), last_ms[symbol] + 60_000).bars():
            signal_dict = engine.on_bar(states[symbol], bar)
            if signal_dict is not None:
                expected[(symbol, signal_dict["bar_close_time"])] = signal_dict
    by_bar: dict[tuple[str, int], list[str]] = {}
    for signal_id, symbol, close_time, *_ in decisions:
        by_bar.setdefault((symbol, close_time), []).append(signal_id)
    twice = {k: v for k, v in by_bar.items() if len(v) > 1}
    missing = set(expected) - set(by_bar)
    flat = {
        str(pid): (round(max(r for _, r, _ in s) - s[0][1], 1), max(f for _, _, f in s) - s[0][2])
        for pid, s in samples.items()
        if len(s) >= 3
    }
    print(
        "soak figures",
        orjson.dumps(
            {
                "duration_s": DURATION_S,
                "rate": RATE,
                "published": publisher.sent,
                "publish_retries": publisher.retries,
                "faults": faults,
                "decisions": len(decisions),
                "expected": len(expected),
                "missing": len(missing),
                "decided_twice": len(twice),
                "rss_mb_growth_and_fd_growth_per_worker": flat,
                "rss_mb_max": max((r for s in samples.values() for _, r, _ in s), default=0),
            }
        ).decode(),
        flush=True,
    )
    assert faults and all(0 < f["published"] < len(messages) for f in faults), "faults struck while data flowed"
    assert not twice, f"{len(twice)} bars decided twice, e.g. {next(iter(twice.items()))}"
    assert not missing, f"{len(missing)} bars without a decision, e.g. {sorted(missing)[:3]}"
    compared = 0
    for signal_id, symbol, close_time, model_version, signal_type, leverage, size in decisions:
        if model_version != version:  # decided after a swap: the ensemble's memory restarted mid-stream
            continue
        offline = expected[(symbol, close_time)]
        assert (signal_id, signal_type, leverage) == (
            offline["signal_id"],
            offline["signal_type"],
            offline["recommended_leverage"],
        )
        assert (size is None) == (offline["position_size_usdt"] is None)
        if size is not None:
            assert abs(float(size) - offline["position_size_usdt"]) <= 0.005
        compared += 1
    assert compared > 0
    for pid, (rss_growth, fd_growth) in flat.items():
        assert rss_growth < 150 and fd_growth < 50, f"worker {pid}: RSS +{rss_growth} MB, fds +{fd_growth}"
