"""The live pipeline against the real broker and database: parity with the backtest, invariants on the topic,
the API, a kill -9, a database outage and two workers sharing the partitions."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from signal import SIGTERM
from typing import Any

import orjson
import psycopg
import pytest

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.features import WARMUP_BARS
from models.registry import load_bundle
from risk.config import RiskConfig
from tests.integration.conftest import REPO_ROOT, WorkerProcess, free_port, read_topic, replay

START, END = "2024-10-14T00:00:00", "2024-10-16T00:00:00"
SYMBOLS = ("BTCUSDT", "ETHUSDT")
# costs low enough that the rare confident bars become signals, and every decision published (holds too)
COSTS = {"MLRISK_TAKER_FEE_RATE": "0.0002", "MLRISK_MIN_EDGE_TO_COST": "0.5", "MLRISK_PUBLISH_HOLD": "true"}
BTC_BRACKETS = [  # the contract's table: (cap USDT, max leverage, maintenance margin rate)
    (50e3, 125, 0.004),
    (600e3, 100, 0.005),
    (3e6, 75, 0.0065),
    (12e6, 50, 0.01),
    (70e6, 25, 0.02),
    (100e6, 20, 0.025),
    (230e6, 10, 0.05),
    (480e6, 5, 0.125),
    (600e6, 4, 0.15),
    (800e6, 3, 0.25),
    (1.2e9, 2, 0.5),
]


def offline_signals(model_dir: Path, data_dir: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every decision the engine makes on the same bars, by signal_id (the backtest's code path)."""
    engine = SignalEngine(load_bundle(model_dir), RiskConfig.from_env(env))
    signals = {}
    for symbol in SYMBOLS:
        state = engine.new_state(symbol)
        for bar in load_bars(data_dir, symbol, parse_iso_ms(START), parse_iso_ms(END)).bars():
            signal = engine.on_bar(state, bar)
            if signal is not None:
                signals[signal["signal_id"]] = signal
    return signals


def _env(base: dict[str, str], model_dir: Path, **extra: str) -> dict[str, str]:
    return {**base, **COSTS, "MLRISK_MODEL_DIR": str(model_dir), **extra}


def _replay_days(env: dict[str, str], data_dir: Path) -> None:
    replay(
        env, "--data", str(data_dir), "--source", "bars", "--symbols", ",".join(SYMBOLS), "--start", START, "--end", END
    )


def _same_decision(live: dict[str, Any], expected: dict[str, Any]) -> None:
    assert live["signal_type"] == expected["signal_type"]
    assert live["recommended_leverage"] == expected["recommended_leverage"]
    for field in (
        "position_size_usdt",
        "stop_loss_price",
        "take_profit_price",
        "liquidation_price",
        "quantity",
        "confidence_score",
        "risk_score",
    ):
        if expected[field] is None:
            assert live[field] is None, field
        else:
            assert math.isclose(live[field], expected[field], rel_tol=0, abs_tol=1e-9), field


@pytest.fixture(scope="module")
def live_run(
    kafka: str, database_url: str, model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """One worker, two real days of two symbols replayed; what the `signals` topic carried."""
    tmp = tmp_path_factory.mktemp("live")
    env = _env(
        dict(os.environ),
        model_dir,
        MLRISK_TOPIC_PREFIX=f"live{int(time.time() * 1000)}-",
        MLRISK_WEB_PORT=str(free_port()),
        MLRISK_HOME=str(tmp / "home"),
        MLRISK_PARTITIONS="2",
        DATABASE_URL=database_url,
    )
    worker = WorkerProcess(env, tmp / "worker.log").start()
    expected = offline_signals(model_dir, data_dir, env)
    _replay_days(env, data_dir)
    messages = read_topic(env["MLRISK_TOPIC_PREFIX"] + "signals", len(expected), timeout_s=300)
    yield env, worker, [orjson.loads(m.value) for m in messages], expected
    worker.stop()


def test_replay_through_kafka_gives_the_engines_signals(live_run: Any) -> None:
    _, _, live, expected = live_run
    assert len(live) == len(expected) > 2000
    by_id = {s["signal_id"]: s for s in live}
    assert set(by_id) == set(expected)
    for signal_id, signal in expected.items():
        _same_decision(by_id[signal_id], signal)
    assert sum(s["signal_type"] in ("long", "short") for s in live) >= 1


def test_backtest_command_agrees_with_the_live_signals(
    live_run: Any, model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    env, _, live, _ = live_run
    by_id = {s["signal_id"]: s for s in live if s["symbol"] == "BTCUSDT"}
    first_live = min(s["bar_close_time"] for s in by_id.values())
    # the backtest warms up on bars before --start: give it exactly the bars the worker saw
    bundle = load_bundle(model_dir)
    warmup_ms = (WARMUP_BARS + bundle.window + 60) * 60_000
    start = datetime.fromtimestamp((parse_iso_ms(START) + warmup_ms) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    data_only = tmp_path / "bars"
    data_only.mkdir()
    frame = load_bars(data_dir, "BTCUSDT", parse_iso_ms(START), parse_iso_ms(END))
    with open(data_only / "BTCUSDT-1m-window.csv", "w") as handle:
        for i in range(len(frame)):
            b = frame.bar(i)
            handle.write(
                f"{b.open_time},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume!r},{b.close_time},"
                f"{b.quote_volume!r},{b.trades},{b.taker_buy_base!r},{b.taker_buy_quote!r},0\n"
            )
    signals_out = tmp_path / "signals.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.ops.cli",
            "backtest",
            "--data",
            str(data_only),
            "--symbol",
            "BTCUSDT",
            "--models",
            str(model_dir),
            "--out",
            str(tmp_path / "report.json"),
            "--signals-out",
            str(signals_out),
            "--start",
            start,
        ],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    backtest = [orjson.loads(line) for line in signals_out.read_text().splitlines()]
    assert backtest, "the backtest wrote no signals"
    compared = 0
    for signal in backtest:
        if signal["bar_close_time"] >= first_live:
            _same_decision(by_id[signal["signal_id"]], signal)
            compared += 1
    assert compared > 1000
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["invariant_violations"] == 0 and report["liquidations"] == 0


def _liquidation(side: str, entry: float, quantity: float, leverage: int) -> float:
    """The contract's isolated-margin formula on the BTCUSDT brackets, written out independently."""
    notional = entry * quantity
    floor, cum, prev_mmr = 0.0, 0.0, 0.0
    for cap, _, mmr in BTC_BRACKETS:
        cum += floor * (mmr - prev_mmr)
        if notional <= cap:
            break
        floor, prev_mmr = cap, mmr
    s = 1.0 if side == "long" else -1.0
    wallet = quantity * entry / leverage
    return max(0.0, (wallet + cum - s * quantity * entry) / (quantity * mmr - s * quantity))


def test_every_long_and_short_on_the_topic_keeps_the_contract_invariants(live_run: Any) -> None:
    _, _, live, _ = live_run
    trades = [s for s in live if s["signal_type"] in ("long", "short")]
    assert trades
    for s in trades:
        entry, sl, tp, liq = s["entry_price"], s["stop_loss_price"], s["take_profit_price"], s["liquidation_price"]
        if s["signal_type"] == "long":
            assert liq < sl < entry < tp
            assert sl - liq >= 0.005 * entry
        else:
            assert tp < entry < sl < liq
            assert liq - sl >= 0.005 * entry
        lev = s["recommended_leverage"]
        assert isinstance(lev, int) and 1 <= lev <= 125
        assert math.isclose(s["risk_reward_ratio"], abs(tp - entry) / abs(entry - sl), rel_tol=1e-9)
        assert 0 <= s["risk_score"] <= 100 and 0 <= s["liquidation_risk"] <= 100
        assert 0 <= s["confidence_score"] <= 1
        assert all(isinstance(s[k], (int, float)) for k in ("entry_price", "position_size_usdt", "quantity"))
        if s["symbol"] == "BTCUSDT":
            notional = entry * s["quantity"]
            assert lev <= next(max_lev for cap, max_lev, _ in BTC_BRACKETS if notional <= cap)
            assert math.isclose(liq, _liquidation(s["signal_type"], entry, s["quantity"], lev), rel_tol=1e-6)
    holds = [s for s in live if s["signal_type"] == "hold"]
    assert all(s["recommended_leverage"] is None and s["stop_loss_price"] is None for s in holds)


def _wait_for_rows(url: str, ids: set[str], timeout_s: float = 180) -> list[tuple[str, int]]:
    deadline = time.monotonic() + timeout_s
    rows: list[tuple[str, int]] = []
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT signal_id::text, count(*) FROM actionable_trade_signals WHERE signal_id = ANY(%s::uuid[]) "
                "GROUP BY signal_id",
                (list(ids),),
            ).fetchall()
        if len(rows) >= len(ids):
            break
        time.sleep(2)
    return rows


def test_the_database_holds_each_published_signal_once(live_run: Any, database_url: str) -> None:
    _, _, live, _ = live_run
    rows = _wait_for_rows(database_url, {s["signal_id"] for s in live})
    assert len(rows) == len(live) and all(count == 1 for _, count in rows)


def _get(port: int, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_api_endpoints_and_bad_requests(live_run: Any, data_dir: Path) -> None:
    env, worker, live, _ = live_run
    port = worker.port
    status, body = _get(port, "/ml-risk/generate-signal", b'{"symbol": "BTC/USDT"}')
    assert status == 200 and body["symbol"] == "BTCUSDT"
    assert body["bar_close_time"] == max(s["bar_close_time"] for s in live if s["symbol"] == "BTCUSDT")
    assert _get(port, "/ml-risk/generate-signal", b'{"symbol": "DOGEUSDT"}')[0] == 404
    assert _get(port, "/ml-risk/generate-signal", b'{"symbol": ')[0] == 400
    assert _get(port, "/ml-risk/generate-signal", b'{"nosymbol": 1}')[0] == 400
    frame = load_bars(data_dir, "ETHUSDT", parse_iso_ms(START), parse_iso_ms(START) + 400 * 60_000)
    bars = [
        {"open_time": b.open_time, "open": b.open, "high": b.high, "low": b.low, "close": b.close, "volume": b.volume}
        for b in frame.bars()
    ]
    status, body = _get(port, "/ml-risk/generate-signal", orjson.dumps({"symbol": "ETHUSDT", "bars": bars}))
    assert status == 200 and body["bar_close_time"] == bars[-1]["open_time"] + 59_999
    status, body = _get(port, "/ml-risk/generate-signal", orjson.dumps({"symbol": "ETHUSDT", "bars": bars[:20]}))
    assert status == 422 and "too few bars" in body["error"]
    bad_bar = [{**bars[0], "high": "abc"}]
    assert _get(port, "/ml-risk/generate-signal", orjson.dumps({"symbol": "ETHUSDT", "bars": bad_bar}))[0] == 422

    status, body = _get(port, "/ml-risk/signals/BTCUSDT?limit=5")
    assert status == 200 and len(body["signals"]) == 5
    times = [s["timestamp"] for s in body["signals"]]
    assert times == sorted(times, reverse=True)
    status, body = _get(port, "/ml-risk/signals/btc-usdt?limit=3&since=2024-10-15T23:00:00Z")
    assert status == 200 and all(s["timestamp"] >= "2024-10-15T23:00:00" for s in body["signals"])
    for bad in ("limit=0", "limit=abc", "limit=100000", "since=yesterday"):
        status, body = _get(port, f"/ml-risk/signals/BTCUSDT?{bad}")
        assert status == 400 and body["error"]

    status, body = _get(port, "/ml-risk/performance")
    assert status == 200 and "paper" in body and body["signals_by_type"]
    status, body = _get(port, "/ml-risk/risk-analysis")
    assert status == 200 and body["trading_state"] in ("ACTIVE", "REDUCING", "HALTED")
    assert set(body["symbols"]) == set(SYMBOLS)
    status, body = _get(port, "/ml-risk/market-regime?symbol=ETHUSDT")
    assert status == 200 and body["market_regime"] in (
        "trending_up",
        "trending_down",
        "ranging",
        "volatile",
        "liquidation_event",
    )
    assert _get(port, "/ml-risk/market-regime?symbol=XRPUSDT")[0] == 404
    assert _get(port, "/ml-risk/market-regime")[0] == 400
    status, body = _get(port, "/health")
    assert status == 200 and body["status"] == "ok" and body["stalled"] == []
    assert all(body["checks"][name]["ok"] for name in ("kafka", "ingest", "signals", "sink", "models", "event_loop"))
    status, body = _get(port, "/openapi.json")
    assert status == 200 and "/ml-risk/generate-signal" in body["paths"]


def _fault_mid_replay(env: dict[str, str], data_dir: Path, expected: int, fault: Any) -> list[Any]:
    """Replay, watch the signals topic, and strike with `fault` once a quarter of the decisions are out.

    The fault must land while work is in flight: some decisions out, not all of them. A fault that struck before
    the first or after the last would prove nothing, so that fails the test instead of passing it vacuously."""
    seen: list[Any] = []
    watcher = threading.Thread(
        target=read_topic,
        args=(env["MLRISK_TOPIC_PREFIX"] + "signals", expected),
        kwargs={"timeout_s": 400, "into": seen},
    )
    watcher.start()
    _replay_days(env, data_dir)
    deadline = time.monotonic() + 300
    while len(seen) < expected // 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    at_fault = len(seen)
    fault()
    assert 0 < at_fault < expected, f"the fault struck with {at_fault} of {expected} decisions out: not in flight"
    watcher.join()
    return seen


def test_kill_9_mid_replay_leaves_every_signal_in_the_database_once(
    start_worker: Any, worker_env: dict[str, str], model_dir: Path, data_dir: Path, database_url: str
) -> None:
    env = _env(worker_env, model_dir)
    worker = start_worker(**_env({}, model_dir))
    expected = offline_signals(model_dir, data_dir, env)

    def crash() -> None:
        worker.stop(kill=True)
        start_worker(**_env({}, model_dir))

    _fault_mid_replay(env, data_dir, len(expected), crash)
    rows = _wait_for_rows(database_url, set(expected))
    assert len(rows) == len(expected)
    assert all(count == 1 for _, count in rows)


def test_sigterm_mid_batch_stops_within_the_timeout_and_the_restart_loses_nothing(
    start_worker: Any, worker_env: dict[str, str], model_dir: Path, data_dir: Path, database_url: str
) -> None:
    """SIGTERM in the middle of the stream: the worker exits within MLRISK_STOP_TIMEOUT_S, and its successor
    resumes from the committed offsets so that every decision is in the database exactly once."""
    env = _env(worker_env, model_dir, MLRISK_STOP_TIMEOUT_S="8")
    worker = start_worker(**_env({}, model_dir, MLRISK_STOP_TIMEOUT_S="8"))
    expected = offline_signals(model_dir, data_dir, env)
    stopped_in: list[float] = []

    def terminate() -> None:
        assert worker.proc is not None
        started = time.monotonic()
        worker.proc.send_signal(SIGTERM)
        worker.proc.wait(timeout=30)
        stopped_in.append(time.monotonic() - started)
        start_worker(**_env({}, model_dir))

    _fault_mid_replay(env, data_dir, len(expected), terminate)
    assert stopped_in[0] <= 8 + 3, f"stopped in {stopped_in[0]:.1f} s"
    assert worker.proc is not None and worker.proc.returncode in (0, 3)
    rows = _wait_for_rows(database_url, set(expected))
    assert len(rows) == len(expected)
    assert all(count == 1 for _, count in rows)


def test_database_outage_of_30s_loses_and_duplicates_nothing(
    start_worker: Any, worker_env: dict[str, str], model_dir: Path, data_dir: Path, database_url: str
) -> None:
    from streams.config import Settings
    from streams.sink import pgserver

    if os.environ.get("DATABASE_URL"):
        pytest.skip("the database is external (DATABASE_URL): this test stops the embedded server")
    env = _env(worker_env, model_dir)
    start_worker(**_env({}, model_dir))
    expected = offline_signals(model_dir, data_dir, env)
    home = Settings.from_env({}).home

    def outage() -> None:
        pgserver.stop(home, mode="immediate")
        time.sleep(30)
        pgserver.start(home)

    _fault_mid_replay(env, data_dir, len(expected), outage)
    rows = _wait_for_rows(database_url, set(expected), timeout_s=240)
    assert len(rows) == len(expected)
    assert all(count == 1 for _, count in rows)


def _replayed_as_offline(env: dict[str, str], model_dir: Path, data_dir: Path) -> dict[str, dict[str, Any]]:
    """Replay the days to the running workers: the signals topic carries each of the engine's decisions once, the
    same; the engine's decisions by id."""
    expected = offline_signals(model_dir, data_dir, env)
    _replay_days(env, data_dir)
    live = [
        orjson.loads(m.value) for m in read_topic(env["MLRISK_TOPIC_PREFIX"] + "signals", len(expected), timeout_s=300)
    ]
    by_id = {s["signal_id"]: s for s in live}
    assert len(live) == len(by_id) == len(expected)
    for signal_id, signal in expected.items():
        _same_decision(by_id[signal_id], signal)
    return expected


def test_two_workers_in_one_group_produce_the_signals_of_one(
    start_worker: Any, worker_env: dict[str, str], model_dir: Path, data_dir: Path
) -> None:
    env = _env(worker_env, model_dir)
    first = start_worker(**_env({}, model_dir))
    second = start_worker(**_env({}, model_dir), MLRISK_WEB_PORT=str(free_port()))
    second.wait_ready()
    expected = _replayed_as_offline(env, model_dir, data_dir)
    assert first.proc is not None and first.proc.poll() is None
    # each symbol's state lives on one worker; either worker answers for it (the other passes the request on)
    last = {}
    for signal in expected.values():
        if signal["bar_close_time"] > last.get(signal["symbol"], {}).get("bar_close_time", 0):
            last[signal["symbol"]] = signal
    for symbol, newest in last.items():
        answers = [_get(worker.port, f"/ml-risk/market-regime?symbol={symbol}") for worker in (first, second)]
        assert [status for status, _ in answers] == [200, 200], answers
        assert answers[0][1] == answers[1][1]
        assert answers[0][1]["market_regime"] == newest["market_regime"]
        posted = [
            _get(worker.port, "/ml-risk/generate-signal", orjson.dumps({"symbol": symbol}))
            for worker in (first, second)
        ]
        assert [status for status, _ in posted] == [200, 200], posted
        assert posted[0][1]["signal_id"] == posted[1][1]["signal_id"] == newest["signal_id"]


def test_stages_in_processes_of_their_own_give_the_signals_and_rows_of_one_worker(
    start_worker: Any, worker_env: dict[str, str], model_dir: Path, data_dir: Path, database_url: str
) -> None:
    """MLRISK_WORKER_STAGES: the signal stage in one process, ingest and the sink in another (its own sink group):
    the same signals as the engine's, each in the database once; each process serves only its stages."""
    env = _env(worker_env, model_dir)
    deciding = start_worker(**_env({}, model_dir), MLRISK_WORKER_STAGES="signals")
    edges = start_worker(**_env({}, model_dir), MLRISK_WORKER_STAGES="ingest,sink", MLRISK_WEB_PORT=str(free_port()))
    expected = _replayed_as_offline(env, model_dir, data_dir)
    rows = _wait_for_rows(database_url, set(expected), timeout_s=240)
    assert len(rows) == len(expected) and all(count == 1 for _, count in rows)
    checks = {name: set(_get(w.port, "/health")[1]["checks"]) for name, w in (("deciding", deciding), ("edges", edges))}
    assert checks["deciding"] == {"kafka", "signals", "models", "sink", "event_loop"}
    assert checks["edges"] == {"kafka", "ingest", "sink", "event_loop"}
    symbol = SYMBOLS[0]
    assert _get(deciding.port, f"/ml-risk/market-regime?symbol={symbol}")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as refused:  # no API where there is no signal stage
        urllib.request.urlopen(f"http://127.0.0.1:{edges.port}/ml-risk/market-regime?symbol={symbol}", timeout=30)
    assert refused.value.code == 404
