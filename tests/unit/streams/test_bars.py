"""Bars: the stream's aggregation reproduces the exchange's klines and the files, every field and minute."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest

from models.bars import Bar
from models.data import read_bar_file
from streams.ingest.bars import DUPLICATE, IGNORED, LATE, BarBuilder, SymbolBars
from streams.ingest.events import Kline, Trade, parse_event
from streams.ops.replay import kline_message

NOW_MS = 1_800_000_000_000


def _numpy_klines(path: Path) -> np.ndarray:
    """The CSV read independently of the project's loader: 12 numeric columns, ms timestamps."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    table[:, 0] = np.where(table[:, 0] >= 1e14, table[:, 0] // 1000, table[:, 0])
    return table


def _stream_bars(events: list, builder: BarBuilder | None = None) -> tuple[list[Bar], list[str]]:
    builder = builder or BarBuilder(allowed_lateness_ms=3_000)
    states: dict[str, SymbolBars] = {}
    bars: list[Bar] = []
    outcomes: list[str] = []
    for event in events:
        state = states.setdefault(event.symbol, SymbolBars(event.symbol))
        outcome, closed = builder.on_trade(state, event) if isinstance(event, Trade) else builder.on_kline(state, event)
        outcomes.append(outcome)
        bars.extend(closed)
    for state in states.values():
        bars.extend(builder.close_all(state))
    return bars, outcomes


def test_kline_replay_of_a_real_month_reproduces_the_csv(data_dir: Path) -> None:
    # March 2023 holds the trading halt: 72 flat zero-volume minutes, then 80 missing ones
    path = data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2023-03.csv.gz"
    frame = read_bar_file(path)
    events = [parse_event(kline_message(frame, i), NOW_MS) for i in range(len(frame))]
    bars, _ = _stream_bars(events)
    expected = _numpy_klines(path)
    assert len(bars) == expected.shape[0] == 31 * 1440 - 80
    got = np.array(
        [
            [
                b.open_time,
                b.open,
                b.high,
                b.low,
                b.close,
                b.volume,
                b.quote_volume,
                b.trades,
                b.taker_buy_base,
                b.taker_buy_quote,
            ]
            for b in bars
        ]
    )
    np.testing.assert_array_equal(got[:, 0], expected[:, 0])
    np.testing.assert_array_equal(got[:, 1:], expected[:, [1, 2, 3, 4, 5, 7, 8, 9, 10]])
    assert np.count_nonzero(np.diff(got[:, 0]) > 60_000) == 1  # the one gap of the month


def _capture_trades(*paths: Path) -> list[Trade]:
    trades = []
    for path in paths:
        with gzip.open(path, "rb") as handle:
            for line in handle:
                payload = line.split(b" ", 1)[1]
                if b'"e":"trade"' in payload:
                    event = parse_event(payload, NOW_MS)
                    assert isinstance(event, Trade)
                    trades.append(event)
    return trades


@pytest.mark.parametrize(
    ("captures", "kline_file", "first_minute", "minutes"),
    [
        (["btcusdt_20230405.dat.gz"], "BTCUSDT-1m-2023-04.csv.gz", 1680652800000, 6),  # 00:00-00:05
        (["btcusdt_20240808.gz", "btcusdt_20240809.gz"], "BTCUSDT-1m-2024-08.csv.gz", 1723161300000, 10),  # 23:55-00:04
    ],
)
def test_bars_from_recorded_spot_trades_equal_binance_klines(
    data_dir: Path, captures: list[str], kline_file: str, first_minute: int, minutes: int
) -> None:
    trades = _capture_trades(*(data_dir / "binance-spot-ws" / name for name in captures))
    bars, _ = _stream_bars(trades)
    by_minute = {b.open_time: b for b in bars}
    klines = _numpy_klines(data_dir / "binance-spot-klines-1m" / kline_file)
    rows = {int(r[0]): r for r in klines}
    for open_time in range(first_minute, first_minute + minutes * 60_000, 60_000):
        bar, row = by_minute[open_time], rows[open_time]
        assert (bar.open, bar.high, bar.low, bar.close) == (row[1], row[2], row[3], row[4])
        assert bar.trades == int(row[8])
        assert bar.volume == pytest.approx(row[5], rel=1e-12)
        assert bar.quote_volume == pytest.approx(row[7], rel=1e-12)
        assert bar.taker_buy_base == pytest.approx(row[9], rel=1e-12)
        assert bar.taker_buy_quote == pytest.approx(row[10], rel=1e-12)


@pytest.fixture(scope="module")
def futures_trades(data_dir: Path) -> list[Trade]:
    return _capture_trades(data_dir / "binance-futures-ws" / "btcusdt_20240808.gz")


def test_duplicates_are_dropped_and_change_no_bar(futures_trades: list[Trade]) -> None:
    clean, _ = _stream_bars(futures_trades)
    rng = random.Random(7)
    noisy: list[Trade] = []
    for trade in futures_trades:
        noisy.append(trade)
        if rng.random() < 0.1:
            noisy.append(trade)  # redelivered right after
    bars, outcomes = _stream_bars(noisy)
    assert bars == clean
    assert outcomes.count(DUPLICATE) == len(noisy) - len(futures_trades)


def test_events_out_of_order_across_streams_within_lateness_keep_the_bars(futures_trades: list[Trade]) -> None:
    """Trades arrive in id order, but their event time interleaves with other streams; bars only look at T."""
    clean, _ = _stream_bars(futures_trades)
    # a receiver that sees each trade up to 2 s late in event time must still close the same bars
    delayed = [
        Trade(t.symbol, t.event_time_ms + 2_000, t.trade_time_ms, t.trade_id, t.price, t.quantity, t.taker_side, t.kind)
        for t in futures_trades
    ]
    assert _stream_bars(delayed)[0] == [
        Bar(
            b.symbol,
            b.open_time,
            b.open,
            b.high,
            b.low,
            b.close,
            b.volume,
            b.quote_volume,
            b.trades,
            b.taker_buy_base,
            b.taker_buy_quote,
        )
        for b in clean
    ]


def test_a_trade_later_than_the_allowed_lateness_is_dropped(futures_trades: list[Trade]) -> None:
    builder = BarBuilder(allowed_lateness_ms=3_000)
    state = SymbolBars("BTCUSDT")
    closed: list[Bar] = []
    for trade in futures_trades[:5000]:
        closed.extend(builder.on_trade(state, trade)[1])
    assert closed, "the first minutes must have closed"
    first = closed[0]
    straggler = Trade(
        "BTCUSDT",
        state.watermark_ms + 1,
        first.open_time + 10,
        futures_trades[4999].trade_id + 1,
        first.close * 1.01,
        1.0,
        "buy",
        "trade",
    )
    outcome, _ = builder.on_trade(state, straggler)
    assert outcome == LATE
    rest = builder.close_all(state)
    assert all(b.open_time != first.open_time for b in rest)
    assert all(b.high < first.close * 1.01 for b in rest)


def test_state_round_trip_mid_stream_continues_identically(futures_trades: list[Trade]) -> None:
    builder = BarBuilder(3_000)
    straight, _ = _stream_bars(futures_trades, builder)
    state = SymbolBars("BTCUSDT")
    bars: list[Bar] = []
    half = len(futures_trades) // 2
    for trade in futures_trades[:half]:
        bars.extend(builder.on_trade(state, trade)[1])
    state = SymbolBars.from_dict(state.to_dict())
    for trade in futures_trades[half - 100 :]:  # a redelivered tail, as after a restart
        bars.extend(builder.on_trade(state, trade)[1])
    bars.extend(builder.close_all(state))
    assert bars == straight


def test_insurance_fund_fill_does_not_move_the_bar(data_dir: Path) -> None:
    trades = _capture_trades(data_dir / "binance-futures-ws" / "btcusdt_20230405.dat.gz")
    bars, _ = _stream_bars(trades)
    assert max(b.high for b in bars) < 28_722.50 * 0.99  # the 2 % outlier is not a market price


def test_kline_source_ignores_unfinished_and_repeated_klines(data_dir: Path) -> None:
    frame = read_bar_file(data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2024-08.csv.gz").slice(0, 10)
    events = [parse_event(kline_message(frame, i), NOW_MS) for i in range(10)]
    unfinished = parse_event(kline_message(frame, 5).replace(b'"x":true', b'"x":false'), NOW_MS)
    assert isinstance(unfinished, Kline) and not unfinished.closed
    repeated = events[:5] + [unfinished] + events[3:]  # minutes 3 and 4 arrive twice
    bars, outcomes = _stream_bars(repeated)
    assert [b.open_time for b in bars] == [int(t) for t in frame.open_time]
    assert outcomes.count(DUPLICATE) == 2
    assert outcomes[5] == IGNORED


def test_klines_fill_minutes_until_trades_take_over(data_dir: Path, futures_trades: list[Trade]) -> None:
    """History from klines warms a symbol up; from the first trade on, trades build the bars."""
    first_trade_minute = futures_trades[0].trade_time_ms - futures_trades[0].trade_time_ms % 60_000
    frame = read_bar_file(data_dir / "binance-spot-klines-1m" / "BTCUSDT-1m-2024-08.csv.gz")
    history = frame.between(first_trade_minute - 30 * 60_000, first_trade_minute)
    klines = [parse_event(kline_message(history, i), NOW_MS) for i in range(len(history))]
    bars, outcomes = _stream_bars([*klines, *futures_trades])
    assert [b.open_time for b in bars[:30]] == [int(t) for t in history.open_time]
    trade_bars, _ = _stream_bars(futures_trades)
    assert bars[30:] == trade_bars
    # a closed kline for a minute that trades are building is ignored: trades win
    state = SymbolBars("BTCUSDT")
    builder = BarBuilder(3_000)
    builder.on_trade(state, futures_trades[0])
    late_kline = parse_event(kline_message(frame.between(first_trade_minute, first_trade_minute + 60_000), 0), NOW_MS)
    assert builder.on_kline(state, late_kline) == (IGNORED, [])
