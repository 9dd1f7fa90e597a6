"""The one small interface every model implements, so that training, the ensemble and serving treat them alike."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ProbabilityModel(Protocol):
    """A model that gives a calibrated probability that the forward return over the horizon is positive.

    Inputs are windows of feature rows, shape (n, window, n_features), float32, oldest row first; the last row
    is the bar being scored. A model with `window == 1` (LightGBM) reads only the last row.
    """

    name: str
    window: int

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> None:
        """Fit on training windows, early-stop and calibrate on validation windows (labels 0/1)."""

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Calibrated P(up), shape (n,), each value clipped inside (0, 1)."""

    def save(self, directory: Path) -> None:
        """Write everything needed to predict into `directory`."""
