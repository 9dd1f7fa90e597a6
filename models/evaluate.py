"""Out-of-sample figures for P(up): IC, hit rate, log-loss, calibration, and the report plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.bars import DAY_MS


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's correlation needs."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.shape[0])
    sorted_x = x[order]
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [x.shape[0]]])
    mean_rank = (starts + ends - 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / denom) if denom > 0 else 0.0


def spearman(score: np.ndarray, realised: np.ndarray) -> float:
    """Spearman rank correlation over the rows where both are finite."""
    ok = np.isfinite(score) & np.isfinite(realised)
    if ok.sum() < 3:
        return float("nan")
    return pearson(_ranks(score[ok]), _ranks(realised[ok]))


def expected_calibration_error(p_up: np.ndarray, up: np.ndarray, bins: int = 10) -> float:
    """ECE over `bins` equal-mass (quantile) bins: Σ (bin share) × |mean p − observed frequency|."""
    ok = np.isfinite(p_up) & np.isfinite(up)
    p, y = p_up[ok], up[ok]
    if p.size == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    total = 0.0
    for chunk in np.array_split(order, bins):
        if chunk.size:
            total += chunk.size * abs(float(p[chunk].mean()) - float(y[chunk].mean()))
    return total / p.size


def reliability_table(p_up: np.ndarray, up: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed frequency, count) per equal-mass bin."""
    ok = np.isfinite(p_up) & np.isfinite(up)
    p, y = p_up[ok], up[ok]
    order = np.argsort(p, kind="mergesort")
    return [(float(p[c].mean()), float(y[c].mean()), int(c.size)) for c in np.array_split(order, bins) if c.size]


def log_loss(p_up: np.ndarray, up: np.ndarray) -> float:
    ok = np.isfinite(p_up) & np.isfinite(up)
    p = np.clip(p_up[ok], 1e-12, 1 - 1e-12)
    y = up[ok]
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))) if p.size else float("nan")


def daily_ic(p_up: np.ndarray, forward_return: np.ndarray, open_time_ms: np.ndarray) -> np.ndarray:
    """Spearman IC per UTC day (days with fewer than 100 scored rows are skipped)."""
    day = open_time_ms // DAY_MS
    out = []
    for d in np.unique(day):
        sel = day == d
        if sel.sum() >= 100:
            out.append(spearman(p_up[sel], forward_return[sel]))
    return np.array(out)


def score_metrics(
    p_up: np.ndarray, forward_return: np.ndarray, open_time_ms: np.ndarray | None = None
) -> dict[str, float]:
    """IC and direction figures of P(up) against realised forward log returns (NaN returns ignored).

    `ic` is Spearman (the contract's IC); `pearson_ic` the linear one; `accuracy` counts a zero return as "not
    up"; `hit_rate`, `log_loss` and `ece` use non-zero returns only (the direction label).
    """
    ok = np.isfinite(p_up) & np.isfinite(forward_return)
    p, r = p_up[ok], forward_return[ok]
    moved = r != 0
    up = (r > 0).astype(np.float64)
    label = np.where(moved, up, np.nan)
    out = {
        "rows": int(p.size),
        "ic": spearman(p, r),
        "pearson_ic": pearson(p, r) if p.size > 2 else float("nan"),
        "accuracy": float(np.mean((p > 0.5) == (r > 0))) if p.size else float("nan"),
        "hit_rate": float(np.mean((p[moved] > 0.5) == (r[moved] > 0))) if moved.any() else float("nan"),
        "majority_rate": float(max(up[moved].mean(), 1 - up[moved].mean())) if moved.any() else float("nan"),
        "log_loss": log_loss(p, label),
        "ece": expected_calibration_error(p, label),
        "p_up_p01": float(np.percentile(p, 1)) if p.size else float("nan"),
        "p_up_p99": float(np.percentile(p, 99)) if p.size else float("nan"),
    }
    if open_time_ms is not None:
        days = daily_ic(p, r, open_time_ms[ok])
        out["ic_daily_mean"] = float(np.mean(days)) if days.size else float("nan")
        out["ic_daily_positive_share"] = float(np.mean(days > 0)) if days.size else float("nan")
    return out


def drawdown(equity: np.ndarray) -> np.ndarray:
    """Fractional drawdown from the running peak (≤ 0)."""
    peak = np.maximum.accumulate(equity)
    return equity / peak - 1.0


def bench_inference(bundle: Any) -> dict[str, dict[str, float]]:
    """Median µs per row of each member's predict_proba at batch 1 and batch 64 (LightGBM on one thread)."""
    from models.onnx_serving import bench_sequence_model

    n_features = len(bundle.metadata["features"])
    return {member.name: bench_sequence_model(member, member.window, n_features) for member in bundle.members}
