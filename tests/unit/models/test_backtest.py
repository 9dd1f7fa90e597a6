"""Backtest: a real-data run through the engine gives the contract's report with no invariant violation."""

from __future__ import annotations

from pathlib import Path

import orjson

from models.backtest import backtest_cli, run_backtest
from models.data import load_bars
from models.registry import load_bundle
from models.signal import invariant_violations
from risk.config import RiskConfig

CONTRACT_KEYS = {
    "symbol",
    "bars",
    "first_bar",
    "last_bar",
    "horizon_minutes",
    "models",
    "calibration_ece",
    "signals",
    "trades",
    "win_rate",
    "net_return",
    "sharpe",
    "max_drawdown",
    "liquidations",
    "fees_paid",
    "baselines",
    "invariant_violations",
}


def test_backtest_report_has_the_contract_keys(klines_dir: Path, quick_models: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    signals_out = tmp_path / "signals.jsonl"
    report = backtest_cli(
        klines_dir,
        "BTCUSDT",
        quick_models,
        out,
        signals_out,
        start="2024-06-01T00:00:00Z",
        end="2024-06-02T00:00:00Z",
        progress=False,
    )
    assert set(report) >= CONTRACT_KEYS
    assert orjson.loads(out.read_bytes())["bars"] == report["bars"] == 1440
    assert set(report["models"]) == {"lightgbm", "lstm", "transformer", "ensemble"}
    assert set(report["baselines"]["buy_and_hold"]) == {"net_return", "sharpe", "max_drawdown"}
    assert report["invariant_violations"] == 0
    lines = signals_out.read_bytes().splitlines()
    assert len(lines) == sum(report["signals"].values()) == 1440
    assert all((out.parent / name).is_file() for name in report["plots"])


def test_trading_backtest_keeps_every_invariant(klines_dir: Path, quick_models: Path) -> None:
    """Without costs the risk policy trades often: every long/short signal must still keep the invariants."""
    bundle = load_bundle(quick_models)
    frame = load_bars(klines_dir, "BTCUSDT", 1717200000000 - 6 * 3600_000, 1717200000000 + 2 * 86400_000)
    config = RiskConfig(taker_fee_rate=0.0, slippage_bps=0.0)
    sink = Path(str(quick_models)) / "trading_signals.jsonl"
    report, _ = run_backtest(bundle, frame, 1717200000000, risk_config=config, signals_out=sink)
    signals = [orjson.loads(line) for line in sink.read_bytes().splitlines()]
    entries = [s for s in signals if s["signal_type"] in ("long", "short")]
    assert len(entries) >= 5
    assert report["trades"] >= 3
    assert report["invariant_violations"] == 0
    assert all(invariant_violations(s, config) == [] for s in signals)
    assert report["liquidations"] == 0
