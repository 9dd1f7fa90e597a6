"""The window of /ml-risk/performance's signal counts: 30 days up to the stream's clock, from an hour boundary;
the newest hour (and the one filling) from the raw rows."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.web import performance_window


def test_the_window_ends_at_the_newest_signal_of_a_replay_and_starts_on_the_hour() -> None:
    signals = [{"bar_close_time": 1_729_123_199_999}, {"bar_close_time": 1_729_036_799_999}]  # 2024-10-16/15 23:59
    start, split, end = performance_window(signals, now=datetime(2026, 11, 30, 21, 0, tzinfo=UTC))
    assert end == datetime(2024, 10, 17, 0, 0, tzinfo=UTC)
    assert (start, split) == (datetime(2024, 9, 17, 0, 0, tzinfo=UTC), datetime(2024, 10, 16, 23, 0, tzinfo=UTC))


def test_without_signals_the_window_ends_now() -> None:
    now = datetime(2026, 11, 30, 21, 47, 12, tzinfo=UTC)
    assert performance_window([], now=now) == (
        datetime(2026, 10, 31, 21, 0, tzinfo=UTC),
        datetime(2026, 11, 30, 20, 0, tzinfo=UTC),
        now,
    )
