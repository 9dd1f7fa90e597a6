"""The training target: the direction of the forward log return over a fixed horizon.

The forward return of bar t is log(close at the bar that opens exactly `horizon` minutes later / close of t).
When that bar is missing or halted there is no label (a gap is not a return). An exactly-zero return has no
direction: its label is NaN too, so that no model learns to spot quiet minutes instead of direction;
evaluation reports direction on non-zero returns and IC on every return.
"""

from __future__ import annotations

import numpy as np

from models.bars import MINUTE_MS
from models.data import BarFrame
from models.features import halted_mask

DEFAULT_HORIZON_MINUTES = 15


def forward_log_return(frame: BarFrame, horizon_minutes: int = DEFAULT_HORIZON_MINUTES) -> np.ndarray:
    """log(close[t + h] / close[t]) per bar; NaN when either bar is missing or halted."""
    if horizon_minutes < 1:
        raise ValueError("horizon_minutes must be at least 1")
    n = len(frame)
    out = np.full(n, np.nan)
    if n == 0:
        return out
    target_time = frame.open_time + horizon_minutes * MINUTE_MS
    j = np.searchsorted(frame.open_time, target_time, side="left")
    j_clipped = np.minimum(j, n - 1)
    halted = halted_mask(frame)
    found = (j < n) & (frame.open_time[j_clipped] == target_time) & ~halted[j_clipped] & ~halted
    out[found] = np.log(frame.close[j_clipped[found]] / frame.close[found])
    return out


def direction_label(forward_return: np.ndarray) -> np.ndarray:
    """1.0 where the forward return is positive, 0.0 where negative, NaN where zero or unknown."""
    label = np.full(forward_return.shape, np.nan)
    label[forward_return > 0] = 1.0
    label[forward_return < 0] = 0.0
    return label
