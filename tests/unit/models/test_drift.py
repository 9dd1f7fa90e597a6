"""Drift on real data: a period like the training one is stable, a very different one is flagged."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.data import load_bars
from models.drift import PSI_DRIFT, feature_psi, psi
from models.features import FEATURE_NAMES, batch_features
from models.training.train import REFERENCE_QUANTILES, training_reference


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


def test_psi_of_a_sample_from_the_reference_population_is_small_and_a_shift_is_large() -> None:
    rng = np.random.default_rng(3)
    reference = rng.standard_normal(100_000)
    levels = REFERENCE_QUANTILES
    values = np.quantile(reference, levels)
    assert psi(levels, values, rng.standard_normal(20_000)) < 0.01
    assert psi(levels, values, rng.standard_normal(20_000) * 3 + 1) > 1.0


def test_march_2023_drifts_from_a_late_2024_reference(data_dir: Path) -> None:
    train = load_bars(data_dir, "BTCUSDT", _ms("2024-09-01"), _ms("2024-11-01"))
    same = load_bars(data_dir, "BTCUSDT", _ms("2024-11-01"), _ms("2024-11-08"))
    shifted = load_bars(data_dir, "BTCUSDT", _ms("2023-03-08"), _ms("2023-03-15"))
    features = batch_features(train)
    reference = training_reference(features[np.isfinite(features).any(axis=1)])
    calm = feature_psi(reference, FEATURE_NAMES, batch_features(same))
    crisis = feature_psi(reference, FEATURE_NAMES, batch_features(shifted))
    drifted_calm = [n for n, v in calm.items() if v > PSI_DRIFT]
    drifted_crisis = [n for n, v in crisis.items() if v > PSI_DRIFT]
    assert len(drifted_crisis) >= 3, crisis
    assert len(drifted_calm) < len(drifted_crisis)
    assert np.median(list(crisis.values())) > np.median(list(calm.values()))
