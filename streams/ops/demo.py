"""`make demo`: the whole system on a real day of ../shared/data, end to end, then a summary.

Trains quick models if none exist, starts a worker on fresh topics, replays one real day of several symbols
through Kafka, prints signals as a subscriber sees them, and summarises what happened. `--keep-running`
(`make up`) leaves the worker running on the default topics instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import psycopg

from streams.config import REPO_ROOT, Settings
from streams.ops.probe import metric
from streams.ops.worker_process import WorkerProcess
from streams.sink.db import database_url, init_schema

# two real days where both BTCUSDT (kline dumps) and ETHUSDT (OHLCV windows) have bars; the first day warms up
DEMO_DAYS = ("2024-10-14", "2024-10-16")
SYMBOLS = "BTCUSDT,ETHUSDT"


def ensure_models(data: Path, model_dir: Path) -> None:
    if (model_dir / "CURRENT").exists():
        print(f"models: using {model_dir / (model_dir / 'CURRENT').read_text().strip()}")
        return
    print("models: none yet, training quick models on real BTCUSDT bars (about a minute)")
    from models.training.train import train_cli

    train_cli(data, "BTCUSDT", model_dir, quick=True, horizon=15)


async def subscribe(settings: Settings, stop: asyncio.Event, seen: list[dict]) -> None:
    from aiokafka import AIOKafkaConsumer

    from streams.kafka_security import client_options

    consumer = AIOKafkaConsumer(
        settings.signals_topic, **client_options(settings), auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    s = orjson.loads(record.value)
                    seen.append(s)
                    if s["signal_type"] in ("long", "short"):
                        print(
                            f"  signal {s['timestamp']} {s['symbol']:8} {s['signal_type']:5} "
                            f"entry {s['entry_price']:.2f} lev {s['recommended_leverage']}x "
                            f"size {s['position_size_usdt']:.2f} USDT stop {s['stop_loss_price']:.2f} "
                            f"target {s['take_profit_price']:.2f} liq {s['liquidation_price']:.2f} "
                            f"conf {s['confidence_score']:.3f} risk {s['risk_level']}"
                        )
                    else:
                        print(f"  signal {s['timestamp']} {s['symbol']:8} {s['signal_type']}")
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlrisk-demo")
    parser.add_argument("--data", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--keep-running", action="store_true")
    args = parser.parse_args(argv)
    data = Path(args.data)
    base = Settings.from_env()
    ensure_models(data, base.model_dir)
    env = dict(os.environ)
    if not args.keep_running:
        env["MLRISK_TOPIC_PREFIX"] = f"demo{int(time.time())}-"
    # maker-like costs (0.02 % a side) and a lower edge margin let the rare confident bars through, so that the
    # demo shows the whole signal path; the defaults (0.04 %, 1.25x) make nearly every minute a hold
    env.setdefault("MLRISK_TAKER_FEE_RATE", "0.0002")
    env.setdefault("MLRISK_MIN_EDGE_TO_COST", "0.8")
    print(
        f"costs: taker fee {env['MLRISK_TAKER_FEE_RATE']} a side, edge must cover costs x"
        f"{env['MLRISK_MIN_EDGE_TO_COST']}"
    )
    settings = Settings.from_env(env)
    url = database_url(settings)
    init_schema(url)
    log_path = settings.home / "demo-worker.log"
    log_path.unlink(missing_ok=True)  # this run's log only
    worker = WorkerProcess(env, log_path)
    try:
        worker.start(timeout_s=120.0)
        print(f"worker: ready on :{settings.web_port} (topics prefixed {settings.topic_prefix!r})")
        replay = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams.ops.cli",
                "replay",
                "--quiet",
                "--data",
                str(data),
                "--source",
                "bars",
                "--symbols",
                SYMBOLS,
                "--start",
                DEMO_DAYS[0],
                "--end",
                DEMO_DAYS[1],
            ],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if replay.returncode != 0:
            raise SystemExit(f"replay failed: {replay.stderr.strip()}")
        print(replay.stdout.strip())
        seen: list[dict] = []
        assert worker.proc is not None
        asyncio.run(_follow(settings, seen, worker.proc))
        _summary(settings, url, seen)
        if args.keep_running:
            print("worker keeps running; Ctrl-C stops it")
            worker.proc.wait()
    finally:
        worker.stop()
    return 0


async def _follow(settings: Settings, seen: list[dict], worker: subprocess.Popen[bytes]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(subscribe(settings, stop, seen))
    last, stable_since = -1.0, time.monotonic()
    while time.monotonic() - stable_since < 8:
        await asyncio.sleep(1)
        decided = metric(settings.web_port, "mlrisk_signals_total")
        if decided != last:
            last, stable_since = decided, time.monotonic()
    await asyncio.sleep(2)
    stop.set()
    await task


def _summary(settings: Settings, url: str, seen: list[dict]) -> None:
    port = settings.web_port
    events = metric(port, "mlrisk_events_in_total")
    bars = metric(port, "mlrisk_bars_closed_total")
    decided = metric(port, "mlrisk_signals_total")
    with psycopg.connect(url) as conn:
        ids = [s["signal_id"] for s in seen]
        by_type: dict[str, int] = dict(
            conn.execute(
                "SELECT signal_type, count(*) FROM actionable_trade_signals WHERE signal_id = ANY(%s::uuid[]) "
                "GROUP BY signal_type",
                (ids,),
            ).fetchall()
        )
        executions: dict[str, int] = dict(
            conn.execute(
                "SELECT execution_status, count(*) FROM signal_execution_logs WHERE signal_id = ANY(%s::uuid[]) "
                "GROUP BY execution_status",
                (ids,),
            ).fetchall()
        )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ml-risk/performance", timeout=5) as resp:
        performance = orjson.loads(resp.read())
    latencies = np.array([s["latency_ms"] for s in seen]) if seen else np.array([0.0])
    print("\nsummary")
    print(f"  events in          {events:.0f}")
    print(f"  bars closed        {bars:.0f}")
    print(f"  decisions          {decided:.0f} (hold {decided - len(seen):.0f}, published {len(seen)})")
    print(f"  signals by type    {dict(Counter(s['signal_type'] for s in seen))} (database: {by_type})")
    print(f"  executions         {executions}")
    paper = performance["paper"]
    print(
        f"  paper PnL          {paper['pnl_usdt']:+.2f} USDT on {paper['trades']} trades, "
        f"fees {paper['fees_usdt']:.2f}, drawdown {paper['drawdown']:.2%}, liquidations {paper['liquidations']}"
    )
    print(
        f"  latency            p50 {np.percentile(latencies, 50):.1f} ms, p99 {np.percentile(latencies, 99):.1f} ms "
        "(event in → signal out, replay at full speed)"
    )
    print(
        f"  API                http://localhost:{port}/ml-risk/performance, /ml-risk/risk-analysis, "
        f"/ml-risk/market-regime?symbol=BTCUSDT, /openapi.json"
    )
    print(f"  metrics            http://localhost:{port}/metrics (Grafana: docker compose up, http://localhost:3000)")


if __name__ == "__main__":
    raise SystemExit(main())
