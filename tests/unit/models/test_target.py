"""Target: the bar exactly h minutes later; gaps, halts and zero moves give no label."""

from __future__ import annotations

import numpy as np

from models.bars import MINUTE_MS, Bar
from models.data import BarFrame
from models.target import direction_label, forward_log_return


def bar(minute: int, close: float, volume: float = 1.0) -> Bar:
    high = close if volume == 0 else close + 1
    low = close if volume == 0 else close - 1
    return Bar("X", minute * MINUTE_MS, close, high, low, close, volume)


def test_forward_return_uses_the_bar_exactly_h_minutes_later() -> None:
    closes = [100.0, 101.0, 99.0, 102.0, 98.0, 97.0]
    frame = BarFrame.from_bars("X", [bar(i, c) for i, c in enumerate(closes)])
    fwd = forward_log_return(frame, horizon_minutes=3)
    np.testing.assert_array_equal(fwd[:3], np.log(np.array(closes[3:]) / np.array(closes[:3])))
    assert np.isnan(fwd[3:]).all()


def test_gap_halt_and_zero_returns_are_unlabelled() -> None:
    frame = BarFrame.from_bars(
        "X",
        [bar(0, 100), bar(1, 101), bar(2, 99), bar(3, 100), bar(5, 103), bar(6, 103, volume=0), bar(7, 100)],
    )
    fwd = forward_log_return(frame, horizon_minutes=2)
    expected = [
        np.log(99 / 100),
        np.log(100 / 101),
        np.nan,
        np.log(103 / 100),
        np.log(100 / 103),
        np.nan,
        np.nan,
    ]
    np.testing.assert_array_equal(fwd, np.array(expected))
    assert np.isnan(fwd[2]), "minute 4 is missing: no label for minute 2"
    assert np.isnan(fwd[5]), "a halted bar has no return"
    label = direction_label(np.array([0.01, -0.02, 0.0, np.nan]))
    np.testing.assert_array_equal(label, np.array([1.0, 0.0, np.nan, np.nan]))
