"""Bar features, computed two ways from one definition: bar by bar (live) and over a BarFrame (training).

Every feature is one of three kinds, and each kind has a single definition that both paths call:

- per-bar quantities from the bar and the previous available bar (`_bar_inputs`);
- recursive quantities (Wilder ATR/RSI/ADX, MACD's EMAs), advanced by `_recursive_step`, which the batch path
  runs in a plain loop and the live path runs once per bar;
- windowed quantities (rolling z-scores, volatility, highs/lows, VWAP, percentiles): the `_k_*` kernels take a
  2-D array of windows (rows, k); the batch path passes every window at once, the live path one row from its
  ring buffer.

Gaps: halted minutes (flat, zero volume) are treated as missing. A missing stretch of at most `GAP_RESET_MS`
is bridged (returns use the previous available bar, windows count available bars); after a longer gap the
state resets and warms up again, because indicators spanning hours of silence describe no market. Rows are NaN
until `WARMUP_BARS` bars of the current segment have been seen (`FeatureState.update` returns None then).

Columns that the source does not carry (trade count and taker-buy volume in the 6-column layout) give NaN
features; nothing is invented for them. LightGBM reads NaN as missing.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.lib.stride_tricks import sliding_window_view

from models.bars import MINUTE_MS, Bar
from models.data import BarFrame

FEATURE_NAMES: tuple[str, ...] = (
    "ret_1",
    "ret_5",
    "ret_15",
    "ret_60",
    "ret_240",
    "ret_15_z",
    "ret_60_z",
    "rv_15",
    "rv_60",
    "rv_ratio_15_60",
    "vol_percentile",
    "atr_pct",
    "rsi_14",
    "macd_hist_atr",
    "bb_pos_20",
    "adx_14",
    "di_balance",
    "volume_z",
    "trades_z",
    "imbalance_z",
    "imbalance_15_z",
    "vwap_dist_60_z",
    "tod_sin",
    "tod_cos",
    "dist_high_60",
    "dist_low_60",
    "dist_high_240",
    "dist_low_240",
    "hl_range_15",
)
N_FEATURES = len(FEATURE_NAMES)
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}  # a feature's column in the rows

GAP_RESET_MS = 30 * MINUTE_MS  # a longer silence resets the state
LONG_WINDOW = 240  # bars of history for z-scores, percentiles and long returns
VOL_WINDOW = 60  # bars for sigma_1m (the risk library's volatility)
WARMUP_BARS = VOL_WINDOW + LONG_WINDOW + 20  # sigma needs 61 bars, its percentile 240 sigmas; EMAs settle
WILDER_PERIOD = 14
SIGMA_FLOOR = 1e-6  # per sqrt(minute): keeps volatility-normalised features finite in a frozen market
_STD_EPS = 1e-12
_TIE_TOL = 1e-12  # percentile ranks compare with a relative tolerance so rounding never flips a tie


def feature_hash() -> str:
    """A short hash of the feature list and parameters: models trained on other features refuse to load."""
    spec = orjson.dumps(
        {
            "names": FEATURE_NAMES,
            "gap_reset_ms": GAP_RESET_MS,
            "long": LONG_WINDOW,
            "vol": VOL_WINDOW,
            "warmup": WARMUP_BARS,
            "wilder": WILDER_PERIOD,
        }
    )
    return hashlib.sha256(spec).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class MarketFeatures:
    """What the risk library reads per bar (risk.MarketSnapshot's measured fields), from the same state."""

    close_time_ms: int
    price: float
    atr: float
    sigma_1m: float
    vol_percentile: float
    adx: float
    trend: float
    return_1m: float
    volume_z: float
    trades_z: float


#
# ----------------------------------------------------------------------------------------------------
# windowed kernels: (rows, k) windows, oldest first → (rows,)


def _k_mean(w: np.ndarray) -> np.ndarray:
    return np.mean(w, axis=-1)


def _k_std(w: np.ndarray) -> np.ndarray:
    return np.std(w, axis=-1)


def _k_max(w: np.ndarray) -> np.ndarray:
    return np.max(w, axis=-1)


def _k_min(w: np.ndarray) -> np.ndarray:
    return np.min(w, axis=-1)


def _k_zscore_last(w: np.ndarray) -> np.ndarray:
    """z-score of the newest value against its window; 0 when the window does not vary."""
    mean = np.mean(w, axis=-1)
    std = np.std(w, axis=-1)
    flat = std <= _STD_EPS * (np.abs(mean) + _STD_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (w[..., -1] - mean) / std
    return np.where(flat, 0.0, z)


def _k_zscore_tail15(w: np.ndarray) -> np.ndarray:
    """z-score of the mean of the newest 15 values against the whole window (a slower order-flow tilt)."""
    mean = np.mean(w, axis=-1)
    std = np.std(w, axis=-1)
    flat = std <= _STD_EPS * (np.abs(mean) + _STD_EPS)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.mean(w[..., -15:], axis=-1) - mean) / std
    return np.where(flat, 0.0, z)


def _k_rank_last(w: np.ndarray) -> np.ndarray:
    """Share of the window at or below the newest value (0..1)."""
    last = w[..., -1:]
    return np.mean(w <= last + _TIE_TOL * np.abs(last), axis=-1)


def _k_sum(w: np.ndarray) -> np.ndarray:
    return np.sum(w, axis=-1)


def _rolling(x: np.ndarray, k: int, kernel: Callable[[np.ndarray], np.ndarray], chunk: int = 16384) -> np.ndarray:
    """kernel over every window of k values ending at each index; NaN before the first full window."""
    m = x.shape[0]
    out = np.full(m, np.nan)
    if m < k:
        return out
    windows = sliding_window_view(x, k)
    for start in range(0, windows.shape[0], chunk):
        out[k - 1 + start : k - 1 + start + chunk] = kernel(windows[start : start + chunk])
    return out


#
# ----------------------------------------------------------------------------------------------------
# per-bar inputs and recursive quantities (scalar code, shared by both paths)

# positions in a bar's inputs (`_bar_inputs`)
_N_INPUTS = 11
_IN_R1, _IN_TR, _IN_GAIN, _IN_LOSS, _IN_PDM, _IN_MDM, _IN_LOGV, _IN_LOGN, _IN_IMB, _IN_PV, _IN_HL = range(_N_INPUTS)


def _bar_inputs(
    close: float,
    high: float,
    low: float,
    volume: float,
    quote_volume: float,
    trades: float,
    taker_buy: float,
    prev_close: float,
    prev_high: float,
    prev_low: float,
) -> tuple[float, ...]:
    """(r1, tr, gain, loss, +dm, -dm, log volume, log trades, imbalance, price×volume, hl range) of one bar, in the
    order of the `_IN_*` positions.

    The previous bar's values are NaN at a segment's first bar.
    """
    r1 = math.log(close / prev_close)
    tr = max(high, prev_close) - min(low, prev_close)
    change = close - prev_close
    up = high - prev_high
    down = prev_low - low
    pdm = up if up > down and up > 0.0 else 0.0
    mdm = down if down > up and down > 0.0 else 0.0
    log_volume = math.log1p(volume)
    log_trades = math.log1p(trades)  # NaN stays NaN when the source has no trade count
    imbalance = taker_buy / volume - 0.5 if volume > 0.0 else 0.0
    if quote_volume == quote_volume and volume > 0.0:
        price_volume = quote_volume
    else:
        price_volume = (high + low + close) / 3.0 * volume
    hl = math.log(high / low)
    return (
        r1,
        tr,
        max(change, 0.0),
        max(-change, 0.0),
        pdm,
        mdm,
        log_volume,
        log_trades,
        imbalance,
        price_volume,
        hl,
    )


_EMA_FAST = 2.0 / 13.0
_EMA_SLOW = 2.0 / 27.0
_EMA_SIGNAL = 2.0 / 10.0
_WILDER = 1.0 / WILDER_PERIOD


def _dx(atr: float, spdm: float, smdm: float) -> tuple[float, float, float]:
    pdi = 100.0 * spdm / atr if atr > 0.0 else 0.0
    mdi = 100.0 * smdm / atr if atr > 0.0 else 0.0
    total = pdi + mdi
    dx = 100.0 * abs(pdi - mdi) / total if total > 0.0 else 0.0
    return pdi, mdi, dx


def _recursive_step(
    s: list[float] | None, tr: float, gain: float, loss: float, close: float, pdm: float, mdm: float
) -> list[float]:
    """Advance the recursive indicators by one bar; seeded by a segment's second bar (its first return)."""
    if s is None:
        _, _, dx = _dx(tr, pdm, mdm)
        return [tr, gain, loss, close, close, 0.0, pdm, mdm, dx]
    atr = s[0] + (tr - s[0]) * _WILDER
    avg_gain = s[1] + (gain - s[1]) * _WILDER
    avg_loss = s[2] + (loss - s[2]) * _WILDER
    ema_fast = s[3] + (close - s[3]) * _EMA_FAST
    ema_slow = s[4] + (close - s[4]) * _EMA_SLOW
    signal = s[5] + ((ema_fast - ema_slow) - s[5]) * _EMA_SIGNAL
    spdm = s[6] + (pdm - s[6]) * _WILDER
    smdm = s[7] + (mdm - s[7]) * _WILDER
    _, _, dx = _dx(atr, spdm, smdm)
    adx = s[8] + (dx - s[8]) * _WILDER
    return [atr, avg_gain, avg_loss, ema_fast, ema_slow, signal, spdm, smdm, adx]


def _recursive_outputs(s: list[float]) -> tuple[float, float, float, float, float]:
    """(atr, rsi, macd histogram, adx, di balance in -1..1) from the recursive state."""
    atr, avg_gain, avg_loss, ema_fast, ema_slow, signal, spdm, smdm, adx = s
    total = avg_gain + avg_loss
    rsi = 100.0 * avg_gain / total if total > 0.0 else 50.0
    pdi, mdi, _ = _dx(atr, spdm, smdm)
    di_total = pdi + mdi
    di_balance = (pdi - mdi) / di_total if di_total > 0.0 else 0.0
    return atr, rsi, (ema_fast - ema_slow) - signal, adx, di_balance


def _time_of_day(open_time_ms: int) -> tuple[float, float]:
    """sin/cos of the minute of the day at which the bar closes."""
    minute = ((open_time_ms // MINUTE_MS) + 1) % 1440
    angle = 2.0 * math.pi * minute / 1440.0
    return math.sin(angle), math.cos(angle)


def trend_strength(adx: float, di_balance: float) -> float:
    """Signed trend strength in -1..1: directional balance, scaled down while ADX is below 25."""
    return di_balance * min(1.0, adx / 25.0)


#
# ----------------------------------------------------------------------------------------------------
# assembling a row (shared): windowed values arrive already computed


def _assemble(
    out: np.ndarray,
    close: np.ndarray,
    ret: dict[int, np.ndarray],
    rv15: np.ndarray,
    rv60: np.ndarray,
    vol_pct: np.ndarray,
    rec: np.ndarray,
    bb_mean: np.ndarray,
    bb_std: np.ndarray,
    volume_z: np.ndarray,
    trades_z: np.ndarray,
    imb_z: np.ndarray,
    imb15_z: np.ndarray,
    vwap60: np.ndarray,
    tod: np.ndarray,
    high60: np.ndarray,
    low60: np.ndarray,
    high240: np.ndarray,
    low240: np.ndarray,
    hl15: np.ndarray,
) -> None:
    """Fill feature rows from their ingredients; element-wise, so one row or many give the same numbers."""
    sigma = np.maximum(rv60, SIGMA_FLOOR)
    atr, rsi, macd_hist, adx, di_balance = rec[:, 0], rec[:, 1], rec[:, 2], rec[:, 3], rec[:, 4]
    out[:, _COLUMN["ret_1"]] = ret[1]
    out[:, _COLUMN["ret_5"]] = ret[5]
    out[:, _COLUMN["ret_15"]] = ret[15]
    out[:, _COLUMN["ret_60"]] = ret[60]
    out[:, _COLUMN["ret_240"]] = ret[240]
    out[:, _COLUMN["ret_15_z"]] = ret[15] / (sigma * math.sqrt(15.0))
    out[:, _COLUMN["ret_60_z"]] = ret[60] / (sigma * math.sqrt(60.0))
    out[:, _COLUMN["rv_15"]] = rv15
    out[:, _COLUMN["rv_60"]] = rv60
    out[:, _COLUMN["rv_ratio_15_60"]] = np.maximum(rv15, SIGMA_FLOOR) / sigma
    out[:, _COLUMN["vol_percentile"]] = vol_pct
    out[:, _COLUMN["atr_pct"]] = atr / close
    out[:, _COLUMN["rsi_14"]] = rsi
    out[:, _COLUMN["macd_hist_atr"]] = macd_hist / np.maximum(atr, close * 1e-9)
    with np.errstate(divide="ignore", invalid="ignore"):
        bb = (close - bb_mean) / (2.0 * bb_std)
    out[:, _COLUMN["bb_pos_20"]] = np.where(bb_std <= _STD_EPS * close, 0.0, bb)
    out[:, _COLUMN["adx_14"]] = adx
    out[:, _COLUMN["di_balance"]] = di_balance
    out[:, _COLUMN["volume_z"]] = volume_z
    out[:, _COLUMN["trades_z"]] = trades_z
    out[:, _COLUMN["imbalance_z"]] = imb_z
    out[:, _COLUMN["imbalance_15_z"]] = imb15_z
    out[:, _COLUMN["vwap_dist_60_z"]] = np.log(close / vwap60) / (sigma * math.sqrt(60.0))
    out[:, _COLUMN["tod_sin"]] = tod[:, 0]
    out[:, _COLUMN["tod_cos"]] = tod[:, 1]
    out[:, _COLUMN["dist_high_60"]] = np.log(high60 / close)
    out[:, _COLUMN["dist_low_60"]] = np.log(close / low60)
    out[:, _COLUMN["dist_high_240"]] = np.log(high240 / close)
    out[:, _COLUMN["dist_low_240"]] = np.log(close / low240)
    out[:, _COLUMN["hl_range_15"]] = hl15 / sigma


#
# ----------------------------------------------------------------------------------------------------
# batch path


def halted_mask(frame: BarFrame) -> np.ndarray:
    """Flat, zero-volume minutes: treated as missing."""
    return (frame.volume == 0) & (frame.high == frame.low)


def segments(frame: BarFrame) -> list[np.ndarray]:
    """Row indices of continuous segments: halted rows dropped, split after gaps > GAP_RESET_MS."""
    idx = np.flatnonzero(~halted_mask(frame))
    if idx.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(frame.open_time[idx]) > GAP_RESET_MS) + 1
    return list(np.split(idx, breaks))


def batch_features(frame: BarFrame) -> np.ndarray:
    """Feature rows for every bar, shape (n, N_FEATURES); rows not ready (warm-up, halted) are NaN."""
    out = np.full((len(frame), N_FEATURES), np.nan)
    for seg in segments(frame):
        if seg.size >= WARMUP_BARS:
            rows = _segment_features(frame, seg)
            out[seg[WARMUP_BARS - 1 :]] = rows[WARMUP_BARS - 1 :]
    return out


def batch_market(frame: BarFrame) -> dict[str, np.ndarray]:
    """The MarketFeatures fields for every bar (NaN where not ready), as columns."""
    feats = batch_features(frame)
    atr = feats[:, 11] * frame.close
    adx = feats[:, 15]
    return {
        "price": frame.close.copy(),
        "atr": atr,
        "sigma_1m": feats[:, 8],
        "vol_percentile": feats[:, 10],
        "adx": adx,
        "trend": feats[:, 16] * np.minimum(1.0, adx / 25.0),
        "return_1m": feats[:, 0],
        "volume_z": feats[:, 17],
        "trades_z": feats[:, 18],
    }


def _segment_features(frame: BarFrame, seg: np.ndarray) -> np.ndarray:
    m = seg.size
    close = frame.close[seg]
    high = frame.high[seg]
    low = frame.low[seg]
    volume = frame.volume[seg]
    quote = frame.quote_volume[seg]
    trades = frame.trades[seg]
    taker = frame.taker_buy_base[seg]
    inputs = np.full((m, _N_INPUTS), np.nan)
    rec = np.full((m, 5), np.nan)
    state: list[float] | None = None
    for i in range(m):
        j = i - 1
        row = _bar_inputs(
            float(close[i]),
            float(high[i]),
            float(low[i]),
            float(volume[i]),
            float(quote[i]),
            float(trades[i]),
            float(taker[i]),
            float(close[j]) if j >= 0 else math.nan,
            float(high[j]) if j >= 0 else math.nan,
            float(low[j]) if j >= 0 else math.nan,
        )
        inputs[i] = row
        if i >= 1:
            state = _recursive_step(
                state, row[_IN_TR], row[_IN_GAIN], row[_IN_LOSS], float(close[i]), row[_IN_PDM], row[_IN_MDM]
            )
            rec[i] = _recursive_outputs(state)
    r1, logv, logn, imb, pv, hl = (
        inputs[:, _IN_R1],
        inputs[:, _IN_LOGV],
        inputs[:, _IN_LOGN],
        inputs[:, _IN_IMB],
        inputs[:, _IN_PV],
        inputs[:, _IN_HL],
    )
    log_close = np.log(close)
    ret = {1: r1}
    for k in (5, 15, 60, 240):
        r = np.full(m, np.nan)
        r[k:] = log_close[k:] - log_close[:-k]
        ret[k] = r
    rv60 = _rolling(r1, VOL_WINDOW, _k_std)
    vwap60 = _rolling(pv, VOL_WINDOW, _k_sum) / _rolling(volume, VOL_WINDOW, _k_sum)
    tod = np.array([_time_of_day(int(t)) for t in frame.open_time[seg]])
    out = np.full((m, N_FEATURES), np.nan)
    _assemble(
        out,
        close,
        ret,
        _rolling(r1, 15, _k_std),
        rv60,
        _rolling(rv60, LONG_WINDOW, _k_rank_last),
        rec,
        _rolling(close, 20, _k_mean),
        _rolling(close, 20, _k_std),
        _rolling(logv, LONG_WINDOW, _k_zscore_last),
        _rolling(logn, LONG_WINDOW, _k_zscore_last),
        _rolling(imb, LONG_WINDOW, _k_zscore_last),
        _rolling(imb, LONG_WINDOW, _k_zscore_tail15),
        vwap60,
        tod,
        _rolling(high, 60, _k_max),
        _rolling(low, 60, _k_min),
        _rolling(high, LONG_WINDOW, _k_max),
        _rolling(low, LONG_WINDOW, _k_min),
        _rolling(hl, 15, _k_mean),
    )
    return out


#
# ----------------------------------------------------------------------------------------------------
# live path


class _Ring:
    """History kept twice over, so the newest k values are always one contiguous, oldest-first slice."""

    __slots__ = ("size", "buf", "pos")

    def __init__(self, size: int) -> None:
        self.size = size
        self.buf = np.full(2 * size, np.nan)
        self.pos = 0

    def push(self, value: float) -> None:
        self.buf[self.pos] = value
        self.buf[self.pos + self.size] = value
        self.pos = (self.pos + 1) % self.size

    def last(self, k: int) -> np.ndarray:
        end = self.pos + self.size
        return self.buf[end - k : end]


_RINGS: dict[str, int] = {
    "close": LONG_WINDOW + 1,
    "high": LONG_WINDOW,
    "low": LONG_WINDOW,
    "r1": VOL_WINDOW,
    "rv60": LONG_WINDOW,
    "logv": LONG_WINDOW,
    "logn": LONG_WINDOW,
    "imb": LONG_WINDOW,
    "pv": VOL_WINDOW,
    "volume": VOL_WINDOW,
    "hl": 15,
}


RING_VALUES = sum(_RINGS.values())
_NATIVE_F8 = np.dtype(np.float64) == np.dtype("<f8")  # the rings' values are written little-endian
RECURSIVE_VALUES = 9  # the recursive indicators' state (`_recursive_step`)


class FeatureState:
    """Per-symbol state of the live feature path: ring buffers, recursive indicators, the last bar."""

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.last_open_time: int | None = None
        self.market: MarketFeatures | None = None
        self._reset()

    def _reset(self) -> None:
        self.count = 0  # bars seen in the current segment
        self.prev: tuple[float, float, float] = (math.nan, math.nan, math.nan)
        self.recursive: list[float] | None = None
        self.rings = {name: _Ring(size) for name, size in _RINGS.items()}

    @property
    def ready(self) -> bool:
        return self.count >= WARMUP_BARS

    def update(self, bar: Bar) -> np.ndarray | None:
        """Take one closed bar; return its feature row (float64, N_FEATURES), or None while warming up.

        Halted bars and bars not newer than the last one change nothing and return None.
        """
        return update_many([self], [bar])[0]

    def _advance(self, bar: Bar) -> float | None:
        """The scalar part of `update`: inputs, recursive indicators and ring buffers (all but rv60); the
        bar's 1-minute return, or None for a halted or stale bar (which changes nothing)."""
        if bar.halted or (self.last_open_time is not None and bar.open_time <= self.last_open_time):
            return None
        if self.last_open_time is not None and bar.open_time - self.last_open_time > GAP_RESET_MS:
            self._reset()
        self.last_open_time = bar.open_time
        nan = math.nan
        prev_close, prev_high, prev_low = self.prev
        row = _bar_inputs(
            bar.close,
            bar.high,
            bar.low,
            bar.volume,
            nan if bar.quote_volume is None else bar.quote_volume,
            nan if bar.trades is None else float(bar.trades),
            nan if bar.taker_buy_base is None else bar.taker_buy_base,
            prev_close,
            prev_high,
            prev_low,
        )
        if self.count >= 1:
            self.recursive = _recursive_step(
                self.recursive, row[_IN_TR], row[_IN_GAIN], row[_IN_LOSS], bar.close, row[_IN_PDM], row[_IN_MDM]
            )
        self.prev = (bar.close, bar.high, bar.low)
        self.count += 1
        rings = self.rings
        rings["close"].push(bar.close)
        rings["high"].push(bar.high)
        rings["low"].push(bar.low)
        rings["r1"].push(row[_IN_R1])
        rings["logv"].push(row[_IN_LOGV])
        rings["logn"].push(row[_IN_LOGN])
        rings["imb"].push(row[_IN_IMB])
        rings["pv"].push(row[_IN_PV])
        rings["volume"].push(bar.volume)
        rings["hl"].push(row[_IN_HL])
        return row[_IN_R1]

    def header(self) -> dict[str, Any]:
        """Everything but the rings, JSON-ready and exact (floats as raw float64 bytes)."""
        return {
            "symbol": self.symbol,
            "last_open_time": self.last_open_time,
            "count": self.count,
            "prev": pack_float_values(self.prev),
            "recursive": None if self.recursive is None else pack_float_values(self.recursive),
            "market": None if self.market is None else _market_to_list(self.market),
        }

    def ring_values(self) -> np.ndarray:
        """Every ring's newest values, oldest first, in `_RINGS` order (RING_VALUES float64 values)."""
        return np.concatenate(self.ring_slices())

    def ring_slices(self) -> list[np.ndarray]:
        """`ring_values` as one little-endian float64 view a ring, without copying them into one array: a
        state's bytes join them as they are (`SymbolState.to_bytes`)."""
        slices = [r.buf[r.pos : r.pos + r.size] for r in self.rings.values()]
        return slices if _NATIVE_F8 else [s.astype("<f8") for s in slices]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that restores the state exactly: `header` and the rings as one packed string."""
        return {**self.header(), "rings": pack_floats(self.ring_values())}

    @classmethod
    def from_parts(cls, data: dict[str, Any], values: np.ndarray) -> FeatureState:
        """Restore a state from its `header` and `ring_values` (checked: a forged state must fail here, not in
        the kernels of a batch)."""
        state = cls(data["symbol"])
        state.last_open_time = data["last_open_time"]
        state.count = int(data["count"])
        prev = unpack_floats(data["prev"])
        if len(prev) != 3:
            raise ValueError(f"a feature state's prev holds {len(prev)} values, not 3")
        state.prev = (float(prev[0]), float(prev[1]), float(prev[2]))
        if data["recursive"] is not None:
            recursive = [float(v) for v in unpack_floats(data["recursive"])]
            if len(recursive) != RECURSIVE_VALUES:
                raise ValueError(f"a feature state's recursive part holds {len(recursive)} values")
            state.recursive = recursive
        if len(values) != RING_VALUES:
            raise ValueError(f"a feature state's rings hold {len(values)} values, not {RING_VALUES}")
        start = 0
        for ring in state.rings.values():
            newest = values[start : start + ring.size]
            ring.buf = np.concatenate([newest, newest])
            ring.pos = 0
            start += ring.size
        state.market = None if data["market"] is None else _market_from_list(data["market"])
        return state

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureState:
        """Restore a state written by `to_dict` (or in the earlier layout: each ring's doubled buffer and
        position)."""
        rings = data["rings"]
        if isinstance(rings, str):
            return cls.from_parts(data, unpack_floats(rings))
        values = []
        for name, size in _RINGS.items():
            buf, pos = rings[name]
            doubled, pos = unpack_floats(buf), int(pos)
            if len(doubled) != 2 * size or not 0 <= pos < size:
                raise ValueError(f"a feature state's ring {name} does not fit its size")
            values.append(doubled[pos : pos + size])
        return cls.from_parts(data, np.concatenate(values))

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, blob: bytes) -> FeatureState:
        return cls.from_dict(orjson.loads(blob))


def update_many(states: Sequence[FeatureState], bars: Sequence[Bar]) -> list[np.ndarray | None]:
    """`FeatureState.update` for many symbols at once, one bar each (distinct states).

    The scalar steps run per symbol; every windowed kernel runs once over the stacked windows of all of them.
    The kernels reduce each row on its own, so a symbol's row is the same whether it is computed alone or
    among others (`update` is this function for one symbol).
    """
    rows: list[np.ndarray | None] = [None] * len(states)
    moved = [
        (i, r1)
        for i, (state, bar) in enumerate(zip(states, bars, strict=True))
        if (r1 := state._advance(bar)) is not None
    ]
    if not moved:
        return rows
    rv60 = _k_std(_stack([states[i] for i, _ in moved], "r1", VOL_WINDOW))
    ready: list[tuple[int, float, float]] = []
    for (i, r1), sigma in zip(moved, rv60.tolist(), strict=True):
        state = states[i]
        state.rings["rv60"].push(sigma)
        if state.ready and state.recursive is not None:
            ready.append((i, r1, sigma))
        else:
            state.market = None
    if ready:
        block = _rows(
            [states[i] for i, _, _ in ready],
            [bars[i] for i, _, _ in ready],
            [r1 for _, r1, _ in ready],
            [sigma for _, _, sigma in ready],
        )
        for (i, _, _), features in zip(ready, block, strict=True):
            states[i].market = _market(bars[i], features)
            rows[i] = features
    return rows


def _stack(states: Sequence[FeatureState], name: str, k: int) -> np.ndarray:
    """The newest k values of one ring of every state, as a (states, k) array."""
    return np.stack([state.rings[name].last(k) for state in states])


def _rows(
    states: Sequence[FeatureState], bars: Sequence[Bar], r1: Sequence[float], rv60: Sequence[float]
) -> np.ndarray:
    """Feature rows (states, N_FEATURES) of ready states whose bar was just pushed."""
    log_close = np.log(_stack(states, "close", LONG_WINDOW + 1))
    ret = {1: np.array(r1)}
    for k in (5, 15, 60, 240):
        ret[k] = log_close[:, -1] - log_close[:, -1 - k]
    out = np.full((len(states), N_FEATURES), np.nan)
    imbalance = _stack(states, "imb", LONG_WINDOW)
    close = _stack(states, "close", 20)
    _assemble(
        out,
        np.array([bar.close for bar in bars]),
        ret,
        _k_std(_stack(states, "r1", 15)),
        np.array(rv60),
        _k_rank_last(_stack(states, "rv60", LONG_WINDOW)),
        np.array([_recursive_outputs(state.recursive or []) for state in states]),
        _k_mean(close),
        _k_std(close),
        _k_zscore_last(_stack(states, "logv", LONG_WINDOW)),
        _k_zscore_last(_stack(states, "logn", LONG_WINDOW)),
        _k_zscore_last(imbalance),
        _k_zscore_tail15(imbalance),
        _k_sum(_stack(states, "pv", VOL_WINDOW)) / _k_sum(_stack(states, "volume", VOL_WINDOW)),
        np.array([_time_of_day(bar.open_time) for bar in bars]),
        _k_max(_stack(states, "high", 60)),
        _k_min(_stack(states, "low", 60)),
        _k_max(_stack(states, "high", LONG_WINDOW)),
        _k_min(_stack(states, "low", LONG_WINDOW)),
        _k_mean(_stack(states, "hl", 15)),
    )
    return out


def _market(bar: Bar, features: np.ndarray) -> MarketFeatures:
    adx = float(features[15])
    return MarketFeatures(
        close_time_ms=bar.close_time,
        price=bar.close,
        atr=float(features[11]) * bar.close,
        sigma_1m=float(features[8]),
        vol_percentile=float(features[10]),
        adx=adx,
        trend=trend_strength(adx, float(features[16])),
        return_1m=float(features[0]),
        volume_z=float(features[17]),
        trades_z=float(features[18]),
    )


def _market_to_list(m: MarketFeatures) -> list[Any]:
    # orjson writes NaN as null, so the floats go packed, in field order for MarketFeatures(close, *values)
    values = (m.price, m.atr, m.sigma_1m, m.vol_percentile, m.adx, m.trend, m.return_1m, m.volume_z, m.trades_z)
    return [m.close_time_ms, pack_float_values(values)]


def pack_floats(values: np.ndarray) -> str:
    """float64 array → base64 text; exact (NaN and all bits kept), unlike JSON numbers."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode("ascii")


def pack_float_values(values: Sequence[float]) -> str:
    """`pack_floats` of a few Python floats, the same text, without an array in between (a state is written every
    bar)."""
    return base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode("ascii")


def unpack_floats(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f8").copy()


def _market_from_list(values: list[Any]) -> MarketFeatures:
    if len(values) == 2:
        return MarketFeatures(int(values[0]), *unpack_floats(values[1]).tolist())
    return MarketFeatures(int(values[0]), *(float(unpack_floats(v)[0]) for v in values[1:]))  # one per field
