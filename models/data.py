"""Load 1-minute bars from files in either layout of the shared data folder.

- Binance's 12-column kline dumps (no header; open_time in ms, or µs from 2025 on), e.g. `BTCUSDT-1m-2024-08.csv.gz`;
- 6-column OHLCV with a header (`timestamp,open,high,low,close,volume`, UTC `YYYY-MM-DD HH:MM:SS`),
  e.g. `ETHUSDT-1m-from-2024-05-01.csv.gz`.

Files may be gzip'd or not; the symbol is taken from the file name.
"""

from __future__ import annotations

import gzip
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models.bars import MINUTE_MS, Bar

_SYMBOL_RE = re.compile(r"^([A-Z0-9]{3,20})[-_]1m", re.IGNORECASE)
BAR_SUFFIXES = (".csv", ".csv.gz")
FIELDS = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
)


@dataclass(slots=True)
class BarFrame:
    """Columnar 1-minute bars of one symbol, sorted by open_time, unique per minute.

    Missing minutes are absent rows (not filled); unknown columns are NaN.
    """

    symbol: str
    open_time: np.ndarray  # int64 epoch ms
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    quote_volume: np.ndarray
    trades: np.ndarray
    taker_buy_base: np.ndarray
    taker_buy_quote: np.ndarray

    def __len__(self) -> int:
        return int(self.open_time.shape[0])

    @property
    def has_flow(self) -> bool:
        """Whether trade counts and taker-buy volumes are known (not in the 6-column layout)."""
        return len(self) > 0 and not bool(np.isnan(self.trades).all())

    def slice(self, start: int, stop: int) -> BarFrame:
        return BarFrame(self.symbol, *(getattr(self, name)[start:stop] for name in FIELDS))

    def between(self, start_ms: int | None = None, end_ms: int | None = None) -> BarFrame:
        """Bars whose open_time lies in [start_ms, end_ms)."""
        lo = 0 if start_ms is None else int(np.searchsorted(self.open_time, start_ms, side="left"))
        hi = len(self) if end_ms is None else int(np.searchsorted(self.open_time, end_ms, side="left"))
        return self.slice(lo, hi)

    def bar(self, i: int) -> Bar:
        return Bar(
            symbol=self.symbol,
            open_time=int(self.open_time[i]),
            open=float(self.open[i]),
            high=float(self.high[i]),
            low=float(self.low[i]),
            close=float(self.close[i]),
            volume=float(self.volume[i]),
            quote_volume=_opt(self.quote_volume[i]),
            trades=None if np.isnan(self.trades[i]) else int(self.trades[i]),
            taker_buy_base=_opt(self.taker_buy_base[i]),
            taker_buy_quote=_opt(self.taker_buy_quote[i]),
        )

    def bars(self) -> Iterator[Bar]:
        for i in range(len(self)):
            yield self.bar(i)

    @classmethod
    def from_bars(cls, symbol: str, bars: list[Bar]) -> BarFrame:
        def col(name: str) -> np.ndarray:
            return np.array([np.nan if getattr(b, name) is None else getattr(b, name) for b in bars], dtype=np.float64)

        return cls(
            symbol,
            np.array([b.open_time for b in bars], dtype=np.int64),
            *(col(name) for name in FIELDS[1:]),
        )


def _opt(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def symbol_from_path(path: Path) -> str:
    """`BTCUSDT-1m-2024-08.csv.gz` → `BTCUSDT`; `ETHUSDT-1m-from-2024-05-01.csv.gz` → `ETHUSDT`."""
    match = _SYMBOL_RE.match(path.name)
    if not match:
        raise ValueError(f"cannot tell the symbol from the file name {path.name!r} (expected SYMBOL-1m-...)")
    return match.group(1).upper()


def bar_files(data_dir: Path | str, symbol: str | None = None) -> list[Path]:
    """Every 1-minute bar file under `data_dir` (recursively), optionally for one symbol, in name order."""
    root = Path(data_dir)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"no such data folder: {root}")
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or not path.name.endswith(BAR_SUFFIXES):
            continue
        try:
            file_symbol = symbol_from_path(path)
        except ValueError:
            continue
        if symbol is None or file_symbol == symbol.upper():
            files.append(path)
    return files


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115


def read_bar_file(path: Path | str) -> BarFrame:
    """Read one file of either layout into a BarFrame (sorted, duplicates dropped)."""
    path = Path(path)
    symbol = symbol_from_path(path)
    with _open_text(path) as handle:
        text = handle.read()
    first_line = text[: text.find("\n")] if "\n" in text else text
    if first_line.lower().startswith("timestamp"):
        return _parse_ohlcv(symbol, text)
    if first_line and not first_line[0].isdigit():
        text = text[len(first_line) + 1 :]  # a header line in a kline dump
    return _parse_klines(symbol, text)


def _parse_klines(symbol: str, text: str) -> BarFrame:
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[0] == 0:
        return _empty(symbol)
    if table.shape[1] < 11:
        raise ValueError(f"{symbol}: kline rows need 12 columns, found {table.shape[1]}")
    raw_open = table[:, 0].astype(np.int64)
    # ms up to 2024, µs from 2025: normalise by magnitude, row by row (a folder may mix both)
    open_time = np.where(raw_open >= 10**14, raw_open // 1000, raw_open)
    return _finish(
        symbol,
        open_time,
        table[:, 1],
        table[:, 2],
        table[:, 3],
        table[:, 4],
        table[:, 5],
        table[:, 7],
        table[:, 8],
        table[:, 9],
        table[:, 10],
    )


def _parse_ohlcv(symbol: str, text: str) -> BarFrame:
    lines = text.splitlines()[1:]
    lines = [line for line in lines if line.strip()]
    if not lines:
        return _empty(symbol)
    stamps = [line[: line.index(",")] for line in lines]
    open_time = (
        np.array([datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() for s in stamps], dtype=np.float64) * 1000
    ).astype(np.int64)
    values = np.loadtxt(
        io.StringIO("\n".join(line[line.index(",") + 1 :] for line in lines)), delimiter=",", dtype=np.float64, ndmin=2
    )
    nan = np.full(len(lines), np.nan)
    return _finish(
        symbol,
        open_time,
        values[:, 0],
        values[:, 1],
        values[:, 2],
        values[:, 3],
        values[:, 4],
        nan,
        nan.copy(),
        nan.copy(),
        nan.copy(),
    )


def _finish(symbol: str, open_time: np.ndarray, *columns: np.ndarray) -> BarFrame:
    if np.any(open_time % MINUTE_MS):
        raise ValueError(f"{symbol}: open times not on minute boundaries")
    order = np.argsort(open_time, kind="stable")
    open_time = open_time[order]
    keep = np.ones(open_time.shape[0], dtype=bool)
    keep[1:] = open_time[1:] != open_time[:-1]
    return BarFrame(symbol, open_time[keep], *(np.ascontiguousarray(c[order][keep]) for c in columns))


def _empty(symbol: str) -> BarFrame:
    empty = np.empty(0)
    return BarFrame(symbol, np.empty(0, dtype=np.int64), *(empty.copy() for _ in FIELDS[1:]))


def concat(frames: list[BarFrame]) -> BarFrame:
    """Join frames of one symbol: sorted by time, the first occurrence of a minute wins."""
    if not frames:
        raise ValueError("nothing to join")
    symbol = frames[0].symbol
    if any(f.symbol != symbol for f in frames):
        raise ValueError("frames of different symbols")
    return _finish(
        symbol,
        np.concatenate([f.open_time for f in frames]),
        *(np.concatenate([getattr(f, name) for f in frames]) for name in FIELDS[1:]),
    )


def load_bars(
    data_dir: Path | str,
    symbol: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
) -> BarFrame:
    """All bars of `symbol` under `data_dir` (either layout), optionally limited to [start_ms, end_ms)."""
    files = bar_files(data_dir, symbol)
    if not files:
        raise FileNotFoundError(f"no 1-minute bar files for {symbol} under {data_dir}")
    frames = []
    for path in files:
        span = _name_span_ms(path)
        if span is not None and (
            (end_ms is not None and span[0] >= end_ms) or (start_ms is not None and span[1] <= start_ms)
        ):
            continue
        frame = read_bar_file(path)
        if len(frame) == 0:
            continue
        if end_ms is not None and frame.open_time[0] >= end_ms:
            continue
        if start_ms is not None and frame.open_time[-1] < start_ms:
            continue
        frames.append(frame)
    if not frames:
        return _empty(symbol.upper())
    return concat(frames).between(start_ms, end_ms)


_MONTH_RE = re.compile(r"-1m-(\d{4})-(\d{2})\.csv")
_FROM_RE = re.compile(r"-1m-from-(\d{4}-\d{2}-\d{2})\.csv")
_WINDOW_SLACK_MS = 40 * 86_400_000  # an OHLCV window holds 50,000 minutes (under 35 days)


def _name_span_ms(path: Path) -> tuple[int, int] | None:
    """The time span a file's name promises (a month, or a window from a day), to skip files cheaply."""
    month = _MONTH_RE.search(path.name)
    if month:
        year, mon = int(month.group(1)), int(month.group(2))
        start = datetime(year, mon, 1, tzinfo=UTC)
        end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=UTC)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    window = _FROM_RE.search(path.name)
    if window:
        start_ms = int(datetime.fromisoformat(window.group(1)).replace(tzinfo=UTC).timestamp() * 1000)
        return start_ms, start_ms + _WINDOW_SLACK_MS
    return None


def available_symbols(data_dir: Path | str) -> list[str]:
    return sorted({symbol_from_path(p) for p in bar_files(data_dir)})
