"""Calibrators that turn a network's logit into a probability, fitted on validation data only.

Pure numpy, so that the serving process applies exactly the arithmetic that training fitted, without torch.
Both calibrators clip their output: a calibrator fitted on one period can push a few probabilities to extremes
on another (see the field notes), and a downstream policy must never read a near-certain 0 or 1 from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

DEFAULT_CLIP = (0.02, 0.98)


class Calibrator(Protocol):
    """Maps raw logits to calibrated, clipped probabilities."""

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated P(up) in float64, clipped to the calibrator's bounds."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters; `calibrator_from_dict` restores the calibrator."""


@dataclass(frozen=True, slots=True)
class PlattCalibrator:
    """p = sigmoid(slope * logit + intercept), the two parameters fitted by maximum likelihood."""

    slope: float
    intercept: float
    clip_low: float = DEFAULT_CLIP[0]
    clip_high: float = DEFAULT_CLIP[1]

    @classmethod
    def fit(cls, logits: np.ndarray, labels: np.ndarray, clip: tuple[float, float] = DEFAULT_CLIP) -> PlattCalibrator:
        """Newton's method on the log-likelihood of (slope, intercept); starts from the identity map."""
        z = np.asarray(logits, dtype=np.float64).ravel()
        y = np.asarray(labels, dtype=np.float64).ravel()
        _check_fit_inputs(z, y)
        design = np.column_stack([z, np.ones_like(z)])
        params = np.array([1.0, 0.0])
        # a tiny ridge keeps the Hessian invertible when the logits are (nearly) constant
        ridge = 1e-9 * len(z) * np.eye(2)
        for _ in range(100):
            p = _sigmoid(design @ params)
            gradient = design.T @ (p - y)
            hessian = (design * (p * (1.0 - p))[:, None]).T @ design + ridge
            step = np.linalg.solve(hessian, gradient)
            params = params - step
            if np.max(np.abs(step)) < 1e-12:
                break
        return cls(float(params[0]), float(params[1]), float(clip[0]), float(clip[1]))

    def apply(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        return _clip(_sigmoid(self.slope * z + self.intercept), self.clip_low, self.clip_high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "platt",
            "slope": self.slope,
            "intercept": self.intercept,
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
        }


@dataclass(frozen=True, slots=True)
class IsotonicCalibrator:
    """A non-decreasing map from logit to probability: pool-adjacent-violators blocks, linear between them."""

    knots_logit: tuple[float, ...]
    knots_probability: tuple[float, ...]
    clip_low: float = DEFAULT_CLIP[0]
    clip_high: float = DEFAULT_CLIP[1]

    @classmethod
    def fit(
        cls, logits: np.ndarray, labels: np.ndarray, clip: tuple[float, float] = DEFAULT_CLIP
    ) -> IsotonicCalibrator:
        """Pool adjacent violators over the logits sorted ascending; one knot per pooled block."""
        z = np.asarray(logits, dtype=np.float64).ravel()
        y = np.asarray(labels, dtype=np.float64).ravel()
        _check_fit_inputs(z, y)
        order = np.argsort(z, kind="stable")
        z, y = z[order], y[order]
        # blocks of (sum of labels, count, sum of logits), merged while they violate monotonicity
        sums: list[float] = []
        counts: list[float] = []
        logit_sums: list[float] = []
        for value, label in zip(z.tolist(), y.tolist(), strict=True):
            sums.append(label)
            counts.append(1.0)
            logit_sums.append(value)
            while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
                label_sum, count, logit_sum = sums.pop(), counts.pop(), logit_sums.pop()
                sums[-1] += label_sum
                counts[-1] += count
                logit_sums[-1] += logit_sum
        knots_logit = tuple(s / c for s, c in zip(logit_sums, counts, strict=True))
        knots_probability = tuple(s / c for s, c in zip(sums, counts, strict=True))
        return cls(knots_logit, knots_probability, float(clip[0]), float(clip[1]))

    def apply(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        p = np.interp(z, np.asarray(self.knots_logit), np.asarray(self.knots_probability))
        return _clip(p, self.clip_low, self.clip_high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "isotonic",
            "knots_logit": list(self.knots_logit),
            "knots_probability": list(self.knots_probability),
            "clip_low": self.clip_low,
            "clip_high": self.clip_high,
        }


def fit_calibrator(
    method: str, logits: np.ndarray, labels: np.ndarray, clip: tuple[float, float] = DEFAULT_CLIP
) -> Calibrator:
    """Fit a calibrator of `method` ("platt" or "isotonic") on validation logits and labels."""
    if method == "platt":
        return PlattCalibrator.fit(logits, labels, clip)
    if method == "isotonic":
        return IsotonicCalibrator.fit(logits, labels, clip)
    raise ValueError(f"unknown calibration method {method!r} (expected 'platt' or 'isotonic')")


def calibrator_from_dict(params: dict[str, Any]) -> Calibrator:
    """Restore a calibrator written by its `to_dict`."""
    method = params["method"]
    clip_low, clip_high = float(params["clip_low"]), float(params["clip_high"])
    if method == "platt":
        return PlattCalibrator(float(params["slope"]), float(params["intercept"]), clip_low, clip_high)
    if method == "isotonic":
        return IsotonicCalibrator(
            tuple(float(v) for v in params["knots_logit"]),
            tuple(float(v) for v in params["knots_probability"]),
            clip_low,
            clip_high,
        )
    raise ValueError(f"unknown calibration method {method!r}")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # the tanh form never overflows and costs three element-wise steps, which matters at one row per call
    return 0.5 + 0.5 * np.tanh(0.5 * z)


def _clip(p: np.ndarray, low: float, high: float) -> np.ndarray:
    # np.clip has a far larger fixed cost than maximum/minimum on the tiny arrays of live scoring
    return np.minimum(np.maximum(p, low), high)


def _check_fit_inputs(logits: np.ndarray, labels: np.ndarray) -> None:
    if logits.shape != labels.shape or logits.size == 0:
        raise ValueError(f"need as many labels as logits, at least one: {logits.shape} vs {labels.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("calibration logits must be finite")
    if not np.all((labels == 0.0) | (labels == 1.0)):
        raise ValueError("calibration labels must be 0 or 1")
