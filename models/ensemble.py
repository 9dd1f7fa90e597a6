"""Combine the member models' probabilities with weights earned by their recent, realised log-loss.

Per symbol, each member carries an exponentially-weighted sum of its log-losses over the predictions whose
outcome is known (`forget` sets the memory, about 1 / (1 − forget) predictions); the weights are the softmax
of −`learning_rate` × that sum. Before any outcome is known the sums stand at their steady state for the
member's validation log-loss, so the initial weights come from validation. Predictions wait in the state until
the bar `horizon` minutes later closes; a missing bar or an exactly-zero return resolves nothing.

Everything here is a pure step over small arrays: the same outcomes in the same order give the same weights.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.bars import MINUTE_MS

_EPS = 1e-12


@dataclass(frozen=True, slots=True)
class EnsembleConfig:
    """Members in a fixed order, their validation log-losses, and the weighting parameters."""

    members: tuple[str, ...]
    validation_logloss: tuple[float, ...]
    horizon_minutes: int
    forget: float = 1.0 - 1.0 / 1000.0
    # overlapping horizons make consecutive outcomes nearly the same event: count one per horizon
    learning_rate: float | None = None
    flat_band: float = 0.005  # |p_up − 0.5| below this is a "flat" prediction

    @property
    def eta(self) -> float:
        return self.learning_rate if self.learning_rate is not None else 1.0 / self.horizon_minutes

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "validation_logloss": list(self.validation_logloss),
            "horizon_minutes": self.horizon_minutes,
            "forget": self.forget,
            "learning_rate": self.learning_rate,
            "flat_band": self.flat_band,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleConfig:
        return cls(
            tuple(data["members"]),
            tuple(float(v) for v in data["validation_logloss"]),
            int(data["horizon_minutes"]),
            float(data["forget"]),
            data["learning_rate"],
            float(data["flat_band"]),
        )


@dataclass(slots=True)
class EnsembleState:
    """One symbol's loss memory and the predictions still waiting for their outcome."""

    loss_sums: list[float]
    resolved: int = 0
    # (open time of the bar that resolves it in ms, close at prediction, member probabilities)
    pending: list[tuple[int, float, list[float]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss_sums": self.loss_sums,
            "resolved": self.resolved,
            "pending": [[t, c, p] for t, c, p in self.pending],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnsembleState:
        return cls(
            [float(v) for v in data["loss_sums"]],
            int(data["resolved"]),
            [(int(t), float(c), [float(v) for v in p]) for t, c, p in data["pending"]],
        )


@dataclass(frozen=True, slots=True)
class EnsemblePrediction:
    """The ensemble's output for one bar, with every member's probability and weight."""

    p_up: float
    member_p_up: tuple[float, ...]
    weights: tuple[float, ...]
    disagreement: float  # 0..1: twice the weighted standard deviation of the members' probabilities
    confidence: float  # 0..1: |2·p_up − 1|, lowered by disagreement
    prediction: str  # up | down | flat

    def contributions(self, members: tuple[str, ...]) -> dict[str, dict[str, float]]:
        return {
            name: {"p_up": p, "weight": w} for name, p, w in zip(members, self.member_p_up, self.weights, strict=True)
        }


def new_state(config: EnsembleConfig) -> EnsembleState:
    """Loss sums at the steady state of each member's validation log-loss."""
    scale = 1.0 / (1.0 - config.forget)
    return EnsembleState([loss * scale for loss in config.validation_logloss])


def misfit(config: EnsembleConfig, state: EnsembleState) -> str | None:
    """What makes a stored ensemble memory impossible under `config` (None when it fits): one loss sum per member,
    each within what the updates can reach (0 to the largest log-loss over 1 − forget), and pending predictions
    of finite closes with one probability in 0..1 per member. A restored memory is checked before the weights and
    the resolution read it, which would otherwise fail on every bar of the symbol or turn its weights into NaN."""
    members = len(config.members)
    if len(state.loss_sums) != members:
        return f"holds {len(state.loss_sums)} loss sums for {members} members"
    largest = max(log_loss(0.0, True), log_loss(1.0, False), *config.validation_logloss)  # the clamps round apart
    bound = largest / (1.0 - config.forget) * (1.0 + 1e-9)
    if not all(0.0 <= s <= bound for s in state.loss_sums):
        return f"holds a loss sum outside 0..{bound:.0f}"
    for _, close, probs in state.pending:
        if not (math.isfinite(close) and len(probs) == members and all(0.0 <= p <= 1.0 for p in probs)):
            return "holds a pending prediction that does not fit the members"
    return None


def weights(config: EnsembleConfig, state: EnsembleState) -> np.ndarray:
    """Softmax of −eta × the members' loss sums."""
    return weights_many(config, [state])[0]


def weights_many(config: EnsembleConfig, states: Sequence[EnsembleState]) -> np.ndarray:
    """`weights` of many states at once, a row each (states, members): each row is computed on its own, the same
    whether alone or among others."""
    z = -config.eta * np.array([state.loss_sums for state in states], dtype=np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(p_up: float, up: bool) -> float:
    p = min(max(p_up, _EPS), 1.0 - _EPS)
    return -math.log(p if up else 1.0 - p)


def resolve(config: EnsembleConfig, state: EnsembleState, open_time_ms: int, close: float) -> None:
    """Settle the predictions that this bar resolves; drop those whose resolving bar never came."""
    keep: list[tuple[int, float, list[float]]] = []
    for due, reference, probs in state.pending:
        if due > open_time_ms:
            keep.append((due, reference, probs))
            continue
        if due < open_time_ms or close == reference:
            continue
        up = close > reference
        state.loss_sums = [config.forget * s + log_loss(p, up) for s, p in zip(state.loss_sums, probs, strict=True)]
        state.resolved += 1
    state.pending = keep


def remember(
    config: EnsembleConfig,
    state: EnsembleState,
    open_time_ms: int,
    close: float,
    member_p_up: tuple[float, ...],
) -> None:
    """Queue a prediction made at the close of the bar opening at `open_time_ms`."""
    due = open_time_ms + config.horizon_minutes * MINUTE_MS
    state.pending.append((due, close, list(member_p_up)))


def combine(config: EnsembleConfig, member_p_up: np.ndarray, member_weights: np.ndarray) -> list[EnsemblePrediction]:
    """Weighted linear pool per row: (n, members) probabilities and weights → n predictions."""
    probs = np.asarray(member_p_up, dtype=np.float64)
    w = np.asarray(member_weights, dtype=np.float64)
    p = np.sum(probs * w, axis=1)
    spread = np.sqrt(np.sum(w * (probs - p[:, None]) ** 2, axis=1))
    disagreement = np.minimum(1.0, 2.0 * spread)
    confidence = np.abs(2.0 * p - 1.0) * (1.0 - disagreement)
    out = []
    up, down = 0.5 + config.flat_band, 0.5 - config.flat_band
    # the arrays as Python floats once (the same values), rather than a NumPy scalar per field and row
    for pi, members, weights_i, disagreement_i, confidence_i in zip(
        p.tolist(), probs.tolist(), w.tolist(), disagreement.tolist(), confidence.tolist(), strict=True
    ):
        out.append(
            EnsemblePrediction(
                p_up=pi,
                member_p_up=tuple(members),
                weights=tuple(weights_i),
                disagreement=disagreement_i,
                confidence=confidence_i,
                prediction="up" if pi > up else "down" if pi < down else "flat",
            )
        )
    return out


def replay_weights(
    config: EnsembleConfig, open_time_ms: np.ndarray, member_p_up: np.ndarray, forward_return: np.ndarray
) -> np.ndarray:
    """The weights the live engine would have used at each row (rows in time order, one symbol).

    Row i's prediction is resolved by its forward return once a later row reaches its due time, exactly as the
    engine resolves it when the bar `horizon` minutes later closes (NaN or zero returns resolve nothing).
    """
    state = new_state(config)
    horizon_ms = config.horizon_minutes * MINUTE_MS
    out = np.empty(member_p_up.shape)
    queue: deque[tuple[int, int]] = deque()
    for i in range(member_p_up.shape[0]):
        t = int(open_time_ms[i])
        while queue and queue[0][0] <= t:
            _, j = queue.popleft()
            r = float(forward_return[j])
            if r == r and r != 0.0:
                up = r > 0.0
                state.loss_sums = [
                    config.forget * s + log_loss(float(p), up)
                    for s, p in zip(state.loss_sums, member_p_up[j], strict=True)
                ]
                state.resolved += 1
        out[i] = weights(config, state)
        queue.append((t + horizon_ms, i))
    return out
