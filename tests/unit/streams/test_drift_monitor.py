"""The worker's drift monitor on real features: a shifted market raises a drift event, a familiar one does not."""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist

import numpy as np

from models.bars import parse_iso_ms
from models.data import load_bars
from models.features import batch_features
from models.training.train import REFERENCE_QUANTILES, training_reference
from streams.signals.stage import DriftMonitor


def _rows(data_dir: Path, start: str, end: str) -> np.ndarray:
    features = batch_features(load_bars(data_dir, "BTCUSDT", parse_iso_ms(start), parse_iso_ms(end)))
    return features[np.isfinite(features).any(axis=1)].astype(np.float32)


def _monitor(data_dir: Path) -> DriftMonitor:
    train = _rows(data_dir, "2024-09-01", "2024-11-01")
    # the predictions' reference: P(up) ~ N(0.5, 0.0125), about as a calibrated model spreads them
    predictions = {
        "quantiles": list(REFERENCE_QUANTILES),
        "values": [0.5 + 0.0125 * float(NormalDist().inv_cdf(q)) for q in REFERENCE_QUANTILES],
    }
    return DriftMonitor(training_reference(train), "v1", predictions)


def _started(monitor: DriftMonitor) -> set[str]:
    return {name for event in monitor.events for name in event["started"]}


def test_a_shifted_market_raises_a_drift_event_and_a_familiar_one_fewer(data_dir: Path) -> None:
    calm, shifted = _monitor(data_dir), _monitor(data_dir)
    rng = np.random.default_rng(5)
    for row in _rows(data_dir, "2024-11-01", "2024-11-03"):
        calm.add(row, 0.5 + 0.0125 * rng.standard_normal())
    for row in _rows(data_dir, "2023-03-10", "2023-03-12"):
        shifted.add(row, 0.5 + 0.0125 * rng.standard_normal())
    assert len(_started(shifted)) >= 3, shifted.report()
    assert len(_started(calm)) < len(_started(shifted))
    assert all(event["kind"] == "drift" and event["threshold"] == 0.25 for event in shifted.events)


def test_predictions_piled_on_one_side_are_prediction_drift(data_dir: Path) -> None:
    monitor = _monitor(data_dir)
    rows = _rows(data_dir, "2024-11-01", "2024-11-02")
    rng = np.random.default_rng(11)
    for row in rows[:600]:
        monitor.add(row, 0.5 + 0.0125 * rng.standard_normal())
    assert "prediction" not in monitor.drifted
    assert monitor.prediction_psi is not None and monitor.prediction_psi < 0.1
    for row in rows[600:]:
        monitor.add(row, 0.53 + 0.0125 * rng.standard_normal())  # the model turned bullish on everything
    assert "prediction" in monitor.drifted
    assert monitor.prediction_psi is not None and monitor.prediction_psi > 0.25
    assert "prediction" in _started(monitor)


def test_live_rolling_ic_ranks_ties_as_promotion_does(klines_dir: Path) -> None:
    """The live decay alarm and the promotion rule read one Spearman (ties share their mean rank): before, the
    tracker ranked ties by position and disagreed with the promotion's IC on the same outcomes."""
    from scipy.stats import spearmanr

    from models.evaluate import spearman
    from streams.signals.stage import PerformanceTracker

    bars = list(load_bars(klines_dir, "BTCUSDT", parse_iso_ms("2024-03-01"), parse_iso_ms("2024-03-02")).bars())
    tracker = PerformanceTracker(horizon_minutes=1, window=5_000, every=10**9)
    for i, bar in enumerate(bars):
        p_up = 0.5 + 0.01 * (i % 3 - 1)  # three distinct scores: almost every row is a tie
        tracker.record(
            "BTCUSDT", bar, {"model_contributions": {"lightgbm": {"p_up": p_up}}, "metadata": {"p_up": p_up}}
        )
    returns = np.array([r for r, _ in tracker.resolved])
    scores = np.array([p["ensemble"] for _, p in tracker.resolved])
    moved = returns != 0
    live = tracker.report()["ensemble"]["ic"]
    assert live == spearman(scores[moved], returns[moved])
    assert abs(live - spearmanr(scores[moved], returns[moved]).statistic) < 1e-12
