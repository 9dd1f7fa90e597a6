"""Leakage: purge gaps between periods, labels never in features, fitting never sees test rows."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from models.bars import DAY_MS, MINUTE_MS
from models.data import load_bars
from models.lightgbm_model import LightGBMParams
from models.training.train import TrainConfig, build_dataset, make_fold, period_rows, train_fold

HORIZON = 15
START = 1714521600000  # 2024-05-01


def small_config() -> TrainConfig:
    return replace(
        TrainConfig.quick_config(HORIZON, days=12),
        neural=False,
        lightgbm=LightGBMParams(max_rounds=40, early_stopping_rounds=10, min_data_in_leaf=300),
    )


def test_purge_gap_separates_train_validation_and_test(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", START, START + 12 * DAY_MS)
    ds = build_dataset(frame, HORIZON)
    purge = HORIZON * MINUTE_MS
    fold = make_fold("f", START + 10 * DAY_MS, START + 12 * DAY_MS, 2, None, START, purge)
    rows = ds.ready_rows[np.isfinite(ds.label[ds.ready_rows])]
    train = period_rows(ds, rows, fold.train, purge)
    val = period_rows(ds, rows, fold.val, purge)
    test_start = fold.test[0] if fold.test else 0
    # the last training label is read from a bar before the first validation row; likewise validation → test
    assert ds.open_time[train].max() + purge < ds.open_time[val].min()
    assert ds.open_time[val].max() + purge < test_start
    assert fold.val[0] - fold.train[1] >= purge and test_start - fold.val[1] >= purge


def test_labels_are_not_features(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", START, START + 2 * DAY_MS)
    ds = build_dataset(frame, HORIZON)
    # reversing the future (which flips every label after the cut) leaves the features before it untouched
    cut = 2000
    flipped = frame.slice(0, len(frame))
    flipped.close = np.concatenate([frame.close[:cut], frame.close[cut:][::-1]])
    ds2 = build_dataset(flipped, HORIZON)
    np.testing.assert_array_equal(ds.features[:cut], ds2.features[:cut])
    assert not np.array_equal(ds.label[cut - HORIZON : cut], ds2.label[cut - HORIZON : cut], equal_nan=True)


def test_models_and_calibration_never_see_test_rows(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", START, START + 12 * DAY_MS)
    config = small_config()
    purge = HORIZON * MINUTE_MS
    fold = make_fold("f", START + 10 * DAY_MS, START + 12 * DAY_MS, 2, None, START, purge)
    ds = build_dataset(frame, HORIZON)
    first = train_fold(ds, fold, config)
    # scramble everything in the test period: features, returns and labels
    ds.label = ds.label.copy()
    ds.forward_return = ds.forward_return.copy()
    ds.features = ds.features.copy()
    test = ds.open_time >= fold.test[0]  # type: ignore[index]
    rng = np.random.default_rng(0)
    ds.label[test] = rng.permutation(ds.label[test])
    ds.features[test] = rng.permutation(ds.features[test])
    second = train_fold(ds, fold, config)
    assert first.validation_logloss == second.validation_logloss
    probe = ds.windows(ds.ready_rows[:500][ds.window_ok(ds.ready_rows[:500], 1)], 1)
    np.testing.assert_array_equal(first.members[0].predict_proba(probe), second.members[0].predict_proba(probe))
