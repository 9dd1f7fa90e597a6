"""Features: live equals batch on real data, nothing looks ahead, gaps and halts are missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.bars import MINUTE_MS, Bar
from models.data import BarFrame, load_bars
from models.features import (
    FEATURE_NAMES,
    GAP_RESET_MS,
    WARMUP_BARS,
    FeatureState,
    batch_features,
    batch_market,
)

MARCH_2023 = (1677628800000, 1680307200000)  # holds the 2023-03-24 halt: 72 flat minutes, then 80 missing


def stream(
    frame: BarFrame, state: FeatureState | None = None, start: int = 0, stop: int | None = None
) -> tuple[np.ndarray, FeatureState]:
    state = state or FeatureState(frame.symbol)
    out = np.full((len(frame), len(FEATURE_NAMES)), np.nan)
    for i in range(start, len(frame) if stop is None else stop):
        row = state.update(frame.bar(i))
        if row is not None:
            out[i] = row
    return out, state


def test_streaming_equals_batch_on_a_real_month_with_a_halt_and_a_gap(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", *MARCH_2023)
    assert np.any(np.diff(frame.open_time) > GAP_RESET_MS), "the month should contain the long gap"
    batch = batch_features(frame)
    live, state = stream(frame)
    np.testing.assert_array_equal(np.isnan(batch), np.isnan(live))
    np.testing.assert_allclose(live, batch, rtol=1e-9, atol=1e-9)
    halted = (frame.volume == 0) & (frame.high == frame.low)
    assert halted.sum() >= 72
    assert np.isnan(batch[halted]).all()
    # after the halt the state restarts: the first WARMUP_BARS-1 bars after it have no features
    after = int(np.flatnonzero(np.diff(frame.open_time) > GAP_RESET_MS)[0]) + 1
    assert np.isnan(batch[after : after + WARMUP_BARS - 1]).all()
    assert np.isfinite(batch[after + WARMUP_BARS - 1]).all()
    # and the market fields for risk come from the same state
    market = batch_market(frame)
    assert state.market is not None
    assert abs(state.market.atr - market["atr"][-1]) <= 1e-9 * market["atr"][-1]
    assert abs(state.market.adx - market["adx"][-1]) <= 1e-9
    assert -1.0 <= state.market.trend <= 1.0
    assert 0.0 <= state.market.vol_percentile <= 1.0


def test_a_short_gap_is_bridged_by_the_previous_bar() -> None:
    bars = [
        Bar("X", i * MINUTE_MS, 100 + i * 0.01, 100.5 + i * 0.01, 99.5 + i * 0.01, 100 + i * 0.01, 1.0 + i % 7)
        for i in range(WARMUP_BARS + 50)
    ]
    gapped = bars[: WARMUP_BARS + 10] + bars[WARMUP_BARS + 15 :]  # 5 missing minutes
    frame = BarFrame.from_bars("X", gapped)
    batch = batch_features(frame)
    live, _ = stream(frame)
    np.testing.assert_allclose(live, batch, rtol=1e-9, atol=1e-9)
    first_after = WARMUP_BARS + 10
    assert np.isfinite(batch[first_after, :17]).all(), "a 5-minute gap must not reset the state"
    expected = np.log(gapped[first_after].close / gapped[first_after - 1].close)
    # numpy's vectorised log and the C library's may differ in the last bit (they do on AVX-512)
    assert batch[first_after, FEATURE_NAMES.index("ret_1")] == pytest.approx(expected, rel=1e-12)


def test_six_column_layout_gives_nan_for_flow_features_and_matches_streaming(ohlcv_dir: Path) -> None:
    frame = load_bars(ohlcv_dir, "ETHUSDT").slice(0, 3000)
    assert not frame.has_flow
    batch = batch_features(frame)
    live, _ = stream(frame)
    np.testing.assert_allclose(live, batch, rtol=1e-9, atol=1e-9)
    ready = ~np.isnan(batch).all(axis=1)
    assert ready.sum() > 2000
    for name in ("trades_z", "imbalance_z", "imbalance_15_z"):
        assert np.isnan(batch[ready, FEATURE_NAMES.index(name)]).all(), name
    others = [j for j, n in enumerate(FEATURE_NAMES) if n not in ("trades_z", "imbalance_z", "imbalance_15_z")]
    assert np.isfinite(batch[np.ix_(ready, others)]).all()


def test_altering_future_bars_changes_no_past_feature(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", 1706745600000, 1706745600000 + 2 * 86400000)
    cut = 2000
    original = batch_features(frame)
    altered = frame.slice(0, len(frame))
    for name in ("open", "high", "low", "close"):
        column = getattr(altered, name).copy()
        column[cut:] *= 1.37
        setattr(altered, name, column)
    altered.volume = np.concatenate([altered.volume[:cut], altered.volume[cut:][::-1]])
    changed = batch_features(altered)
    np.testing.assert_array_equal(original[:cut], changed[:cut])
    assert not np.allclose(original[cut + 300 :], changed[cut + 300 :], equal_nan=True)
    truncated = batch_features(frame.slice(0, cut))
    np.testing.assert_array_equal(truncated, original[:cut])


def test_state_restored_from_bytes_continues_identically(klines_dir: Path) -> None:
    frame = load_bars(klines_dir, "BTCUSDT", 1706745600000, 1706745600000 + 86400000)
    full, _ = stream(frame)
    _, state = stream(frame, stop=700)
    blob = state.to_bytes()
    assert len(blob) < 100_000
    restored = FeatureState.from_bytes(blob)
    assert restored.to_bytes() == blob
    resumed, _ = stream(frame, state=restored, start=700)
    np.testing.assert_array_equal(resumed[700:], full[700:])


def test_halted_and_stale_bars_leave_the_state_unchanged() -> None:
    bars = [Bar("X", i * MINUTE_MS, 100.0, 100.2, 99.8, 100.0 + (i % 5) * 0.05, 2.0) for i in range(400)]
    state = FeatureState("X")
    for bar in bars:
        state.update(bar)
    before = state.to_bytes()
    assert state.update(Bar("X", 400 * MINUTE_MS, 100.0, 100.0, 100.0, 100.0, 0.0)) is None
    assert state.update(bars[-3]) is None
    assert state.to_bytes() == before
