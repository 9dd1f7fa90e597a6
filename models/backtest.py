"""Bar-by-bar backtest through the live engine (same features, models, risk and virtual-position code).

Bars before the requested start only warm the state up; every figure covers the requested span. Equity is the
symbol's paper account marked at each bar's close; Sharpe is annualised from daily returns (365 days: crypto
trades every day). Buy-and-hold buys one account's worth at the first close, pays the taker fee twice.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from models.bars import DAY_MS, MINUTE_MS, iso_utc, parse_iso_ms
from models.data import BarFrame, load_bars
from models.engine import SignalEngine
from models.evaluate import drawdown, expected_calibration_error, spearman
from models.features import WARMUP_BARS
from models.registry import ModelBundle, load_bundle
from models.signal import invariant_violations
from models.target import forward_log_return
from risk.config import RiskConfig


def performance(equity: np.ndarray, time_ms: np.ndarray) -> dict[str, float]:
    """net_return, Sharpe (annualised from end-of-day equity) and max drawdown (a positive fraction)."""
    if equity.size == 0:
        return {"net_return": 0.0, "sharpe": 0.0, "max_drawdown": 0.0}
    day = time_ms // DAY_MS
    last_of_day = np.flatnonzero(np.diff(day, append=day[-1] + 1))
    daily = np.concatenate([[equity[0]], equity[last_of_day]])
    returns = np.diff(daily) / daily[:-1]
    std = float(returns.std(ddof=1)) if returns.size > 1 else 0.0
    sharpe = float(returns.mean() / std * math.sqrt(365.0)) if std > 0 else 0.0
    return {
        "net_return": float(equity[-1] / equity[0] - 1.0),
        "sharpe": sharpe,
        "max_drawdown": float(max(0.0, -drawdown(equity).min())),
    }


def run_backtest(
    bundle: ModelBundle,
    frame: BarFrame,
    start_ms: int | None = None,
    risk_config: RiskConfig | None = None,
    signals_out: Path | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Replay `frame` bar by bar; figures over bars opening at or after `start_ms` (earlier bars warm up).

    Returns the report and the series behind it (time, equity, buy-and-hold equity, ensemble p_up, forward
    return).
    """
    engine = SignalEngine(bundle, risk_config)
    config = engine.risk_config
    state = engine.new_state(frame.symbol)
    fwd = forward_log_return(frame, bundle.horizon_minutes)
    first = 0 if start_ms is None else int(np.searchsorted(frame.open_time, start_ms))
    n_span = len(frame) - first
    equity = np.empty(n_span)
    counts: Counter[str] = Counter()
    member_names = engine.members
    scored_rows: list[int] = []
    scored_p: list[list[float]] = []
    violations = 0
    start_trades = start_wins = start_liquidations = 0
    start_fees = 0.0
    if signals_out is not None:
        Path(signals_out).parent.mkdir(parents=True, exist_ok=True)
    sink = None if signals_out is None else open(signals_out, "wb")  # noqa: SIM115 - closed in finally
    task = None
    bar_progress = None
    if progress:
        from rich.progress import Progress

        bar_progress = Progress()
        bar_progress.start()
        task = bar_progress.add_task(f"backtest {frame.symbol}", total=len(frame))
    try:
        for i in range(len(frame)):
            bar = frame.bar(i)
            if i == first:
                start_trades, start_fees = state.book.trades, state.book.fees_paid_usdt
                start_liquidations, start_wins = state.book.liquidations, state.book.wins
            signal = engine.on_bar(state, bar)
            if i >= first:
                equity[i - first] = engine.equity(state, bar.close)
                if signal is not None:
                    counts[signal["signal_type"]] += 1
                    violations += bool(invariant_violations(signal, config))
                    contributions = signal["model_contributions"]
                    scored_rows.append(i)
                    scored_p.append([contributions[m]["p_up"] for m in member_names] + [signal["metadata"]["p_up"]])
                    if sink is not None:
                        sink.write(orjson.dumps(signal) + b"\n")
            if bar_progress is not None and task is not None and i % 1000 == 0:
                bar_progress.update(task, completed=i)
    finally:
        if sink is not None:
            sink.close()
        if bar_progress is not None:
            bar_progress.stop()
    if n_span <= 0:
        raise ValueError("no bars in the requested span")
    span_time = frame.open_time[first:] + MINUTE_MS
    close = frame.close[first:]
    capital = config.equity_usdt
    bh_qty = capital * (1 - config.taker_fee_rate) / close[0]
    bh_equity = bh_qty * close * (1 - config.taker_fee_rate)
    rows = np.array(scored_rows, dtype=np.int64)
    probs = np.array(scored_p).reshape(len(scored_rows), len(member_names) + 1)
    realised = fwd[rows] if rows.size else np.empty(0)
    models: dict[str, dict[str, float]] = {}
    for j, name in enumerate([*member_names, "ensemble"]):
        ok = np.isfinite(realised)
        moved = ok & (realised != 0)
        models[name] = {
            "ic": _finite(spearman(probs[:, j], realised)) if rows.size else 0.0,
            "accuracy": float(np.mean((probs[ok, j] > 0.5) == (realised[ok] > 0))) if ok.any() else 0.0,
            "hit_rate": float(np.mean((probs[moved, j] > 0.5) == (realised[moved] > 0))) if moved.any() else 0.0,
        }
    moved = np.isfinite(realised) & (realised != 0)
    trades = state.book.trades - int(start_trades)
    report = {
        "symbol": frame.symbol,
        "model_version": bundle.version,
        "bars": int(n_span),
        "first_bar": iso_utc(int(frame.open_time[first])),
        "last_bar": iso_utc(int(frame.open_time[-1])),
        "horizon_minutes": bundle.horizon_minutes,
        "models": models,
        "calibration_ece": _finite(expected_calibration_error(probs[moved, -1], (realised[moved] > 0) * 1.0))
        if moved.any()
        else 0.0,
        "signals": {kind: int(counts.get(kind, 0)) for kind in ("long", "short", "close", "hold")},
        "trades": trades,
        "win_rate": (state.book.wins - start_wins) / trades if trades else 0.0,
        **performance(equity, span_time),
        "liquidations": state.book.liquidations - start_liquidations,
        "fees_paid": float(state.book.fees_paid_usdt - start_fees),
        "baselines": {"buy_and_hold": performance(bh_equity, span_time)},
        "invariant_violations": int(violations),
        "costs": {"taker_fee_rate": engine.costs.taker_fee_rate, "slippage_bps": engine.costs.slippage_bps},
        "starting_equity_usdt": capital,
    }
    series = {
        "time_ms": span_time,
        "equity": equity,
        "buy_and_hold": bh_equity,
        "p_up": probs[:, -1] if rows.size else np.empty(0),
        "forward_return": realised,
    }
    return report, series


def _finite(value: float) -> float:
    return float(value) if math.isfinite(value) else 0.0


def backtest_cli(
    data_dir: Path | str,
    symbol: str,
    models_dir: Path | str,
    out: Path | str,
    signals_out: Path | str | None = None,
    start: str | None = None,
    end: str | None = None,
    progress: bool = True,
    risk_config: RiskConfig | None = None,
) -> dict[str, Any]:
    """`mlrisk backtest`: write report.json with PNG plots beside it, optionally every signal as JSONL."""
    bundle = load_bundle(models_dir)
    start_ms, end_ms = parse_iso_ms(start), parse_iso_ms(end)
    warmup_ms = (WARMUP_BARS + bundle.window + 60) * MINUTE_MS
    frame = load_bars(data_dir, symbol, None if start_ms is None else start_ms - warmup_ms, end_ms)
    report, series = run_backtest(
        bundle,
        frame,
        start_ms,
        risk_config,
        signals_out=None if signals_out is None else Path(signals_out),
        progress=progress,
    )
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from models.training.plots import plot_report  # matplotlib: only the command that writes files needs it

    plots = plot_report(
        out_path.with_suffix(""),
        series["p_up"],
        series["forward_return"],
        series["time_ms"],
        series["equity"],
        series["buy_and_hold"],
    )
    report["plots"] = [p.name for p in plots]
    out_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report
