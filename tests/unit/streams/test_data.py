"""Both bar layouts of the shared data load into the same shape; the 2025 microsecond files join up."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data import available_symbols, load_bars, read_bar_file, symbol_from_path


def test_millisecond_and_microsecond_files_join_without_a_gap(data_dir: Path) -> None:
    folder = data_dir / "binance-spot-klines-1m"
    december = read_bar_file(folder / "BTCUSDT-1m-2024-12.csv.gz")
    january = read_bar_file(folder / "BTCUSDT-1m-2025-01.csv.gz")
    assert january.open_time[0] == december.open_time[-1] + 60_000 == 1735689600000


def test_ohlcv_layout_has_no_invented_flow_columns(data_dir: Path) -> None:
    frame = read_bar_file(data_dir / "binance-spot-ohlcv-1m" / "ETHUSDT-1m-from-2024-05-01.csv.gz")
    assert len(frame) == 50_000 and frame.symbol == "ETHUSDT"
    assert frame.open_time[0] == 1714532400000  # 2024-05-01 03:00 UTC
    assert np.all(np.diff(frame.open_time) == 60_000)
    assert not frame.has_flow and np.isnan(frame.trades).all() and frame.bar(0).quote_volume is None


def test_load_bars_selects_symbol_and_range(data_dir: Path) -> None:
    frame = load_bars(data_dir, "BTCUSDT", 1711929600000, 1711929600000 + 3 * 60_000)  # 2024-04-01 00:00
    assert list(frame.open_time) == [1711929600000, 1711929660000, 1711929720000]
    assert set(available_symbols(data_dir)) >= {"BTCUSDT", "ETHUSDT"}
    assert symbol_from_path(Path("ETHUSDT-1m-from-2021-08-09.csv.gz")) == "ETHUSDT"
