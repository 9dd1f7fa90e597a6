"""Report plots: reliability diagram, equity curve and drawdown, as PNG files beside a backtest report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.bars import DAY_MS
from models.evaluate import drawdown, reliability_table


def plot_report(
    path_prefix: Path,
    p_up: np.ndarray,
    forward_return: np.ndarray,
    time_ms: np.ndarray,
    equity: np.ndarray,
    baseline_equity: np.ndarray | None = None,
) -> list[Path]:
    """Reliability diagram, equity curve and drawdown as PNG files beside the report; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path_prefix = Path(path_prefix)
    path_prefix.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    ok = np.isfinite(p_up) & np.isfinite(forward_return) & (forward_return != 0)
    table = reliability_table(p_up[ok], (forward_return[ok] > 0).astype(np.float64))
    fig, ax = plt.subplots(figsize=(5, 5))
    if table:
        xs, ys, _ = zip(*table, strict=True)
        ax.plot(xs, ys, "o-", label="ensemble")
        lo, hi = min(xs + ys), max(xs + ys)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="perfect")
    ax.set_xlabel("mean predicted P(up)")
    ax.set_ylabel("observed share up")
    ax.set_title("Reliability (10 equal-mass bins)")
    ax.legend()
    written.append(path_prefix.with_name(path_prefix.name + "_reliability.png"))
    fig.savefig(written[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    days = (time_ms - time_ms[0]) / DAY_MS if time_ms.size else time_ms
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(days, equity, label="strategy")
    if baseline_equity is not None:
        ax.plot(days, baseline_equity, label="buy and hold", alpha=0.7)
    ax.set_xlabel("days")
    ax.set_ylabel("equity (USDT)")
    ax.legend()
    written.append(path_prefix.with_name(path_prefix.name + "_equity.png"))
    fig.savefig(written[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.fill_between(days, drawdown(equity) * 100, 0, color="tab:red", alpha=0.5)
    ax.set_xlabel("days")
    ax.set_ylabel("drawdown %")
    written.append(path_prefix.with_name(path_prefix.name + "_drawdown.png"))
    fig.savefig(written[-1], dpi=90, bbox_inches="tight")
    plt.close(fig)
    return written
