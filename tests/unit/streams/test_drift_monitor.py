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


def _add(monitor: DriftMonitor, row: np.ndarray, p_up: float) -> None:
    """A row in, then the measurement where due: the tightest schedule the worker's timer can run."""
    monitor.add(row, p_up)
    monitor.measure_if_due()


def _started(monitor: DriftMonitor) -> set[str]:
    return {name for event in monitor.events for name in event["started"]}


def test_a_shifted_market_raises_a_drift_event_and_a_familiar_one_fewer(data_dir: Path) -> None:
    calm, shifted = _monitor(data_dir), _monitor(data_dir)
    rng = np.random.default_rng(5)
    for row in _rows(data_dir, "2024-11-01", "2024-11-03"):
        _add(calm, row, 0.5 + 0.0125 * rng.standard_normal())
    for row in _rows(data_dir, "2023-03-10", "2023-03-12"):
        _add(shifted, row, 0.5 + 0.0125 * rng.standard_normal())
    assert len(_started(shifted)) >= 3, shifted.report()
    assert len(_started(calm)) < len(_started(shifted))
    assert all(event["kind"] == "drift" and event["threshold"] == 0.25 for event in shifted.events)


def test_rows_are_measured_when_the_caller_asks_once_enough_have_come(data_dir: Path) -> None:
    """Adding a row never measures (no bar waits for a measurement); the caller's measurement reads the whole
    window at once, and asking again before `every` more rows have come measures nothing."""
    monitor = _monitor(data_dir)
    rows = _rows(data_dir, "2023-03-10", "2023-03-12")[:600]
    for row in rows[:-1]:
        monitor.add(row, 0.5)
    assert monitor.events == [] and monitor.latest == {} and monitor.prediction_psi is None
    monitor.add(rows[-1], 0.5)
    monitor.measure_if_due()
    assert len(_started(monitor)) >= 3, monitor.report()
    measured, events = dict(monitor.latest), list(monitor.events)
    monitor.add(rows[0], 0.5)  # one row more: not yet due
    monitor.measure_if_due()
    assert monitor.latest == measured and monitor.events == events
    for row in rows[1 : monitor.every]:
        monitor.add(row, 0.5)
    monitor.measure_if_due()  # `every` rows since: measured again, on the window as it now is
    assert monitor.latest != measured


def test_predictions_piled_on_one_side_are_prediction_drift(data_dir: Path) -> None:
    monitor = _monitor(data_dir)
    rows = _rows(data_dir, "2024-11-01", "2024-11-02")
    rng = np.random.default_rng(11)
    for row in rows[:600]:
        _add(monitor, row, 0.5 + 0.0125 * rng.standard_normal())
    assert "prediction" not in monitor.drifted
    assert monitor.prediction_psi is not None and monitor.prediction_psi < 0.1
    for row in rows[600:]:
        _add(monitor, row, 0.53 + 0.0125 * rng.standard_normal())  # the model turned bullish on everything
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


def test_decay_is_an_event_when_the_caller_measures_an_ensemble_that_ranks_backwards(klines_dir: Path) -> None:
    """Scores that rank each next return backwards (on real bars) decay the ensemble's rolling IC below zero: the
    event comes from the caller's measurement, once `every` outcomes have resolved, and never from a record."""
    from streams.signals.stage import DECAY_IC, DECAY_MIN_RESOLVED, PerformanceTracker

    bars = list(load_bars(klines_dir, "BTCUSDT", parse_iso_ms("2024-03-01"), parse_iso_ms("2024-03-02")).bars())
    tracker = PerformanceTracker(horizon_minutes=1, window=2_000, every=60)
    for bar, following in zip(bars[: DECAY_MIN_RESOLVED + 100], bars[1:], strict=False):
        p_up = 0.5 - 0.1 * float(np.sign(following.close - bar.close))  # up next: a low score
        tracker.record("BTCUSDT", bar, {"model_contributions": {"lgbm": {"p_up": p_up}}, "metadata": {"p_up": p_up}})
    assert tracker.events == [] and not tracker.decayed
    tracker.measure_if_due()
    (event,) = tracker.events
    assert event["kind"] == "decay" and event["decayed"] and event["ic"] < DECAY_IC
    assert event["resolved"] >= DECAY_MIN_RESOLVED
    tracker.measure_if_due()  # nothing new resolved: nothing measured again
    assert len(tracker.events) == 1
