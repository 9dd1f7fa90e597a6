"""Market regime with hysteresis, and the per-bar indicators it is classified from.

Raw classification of one bar, in order of precedence:
- liquidation_event: an extreme 1-minute return (relative to σ, and large in itself) on a volume and
trade-count
  spike;
- volatile: realised volatility in the top of its own trailing history;
- trending_up / trending_down: a strong directional move (signed trend) confirmed by ADX;
- ranging: everything else.
A new regime takes over only after it has persisted `persistence_bars` bars; a liquidation event enters at
once and holds for `liquidation_decay_bars` bars after the last cascade bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from risk.types import MarketRegime, MarketSnapshot, RegimeState


@dataclass(frozen=True, slots=True)
class RegimeConfig:
    """Thresholds of the regime classification."""

    trend_adx_min: float = 25.0
    trend_strength_min: float = 0.5
    volatile_percentile: float = 0.9
    cascade_return_sigmas: float = 5.0
    # σ over a short window already contains the shock (one bar of 60 can be at most √60 σ), so the return
    # must also be large in itself: without this floor, quiet weeks show as many "cascades" as crash days
    cascade_min_abs_return: float = 0.006
    cascade_volume_z: float = 3.0
    cascade_trades_z: float = 3.0
    # without trade counts a volume spike alone must be larger; without either, the return alone must be
    # extreme
    cascade_volume_z_without_trades: float = 4.0
    cascade_return_sigmas_without_flow: float = 6.0
    cascade_min_abs_return_without_flow: float = 0.009
    persistence_bars: int = 5
    liquidation_decay_bars: int = 15

    def __post_init__(self) -> None:
        for name in ("persistence_bars", "liquidation_decay_bars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < self.volatile_percentile <= 1.0:
            raise ValueError(f"volatile_percentile must lie in (0, 1], got {self.volatile_percentile!r}")
        if not 0.0 <= self.trend_strength_min <= 1.0:
            raise ValueError(f"trend_strength_min must lie in [0, 1], got {self.trend_strength_min!r}")
        for name in (
            "trend_adx_min",
            "cascade_return_sigmas",
            "cascade_return_sigmas_without_flow",
            "cascade_min_abs_return",
            "cascade_min_abs_return_without_flow",
        ):
            value = getattr(self, name)
            if not 0.0 < value < math.inf:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def is_cascade(market: MarketSnapshot, config: RegimeConfig) -> bool:
    """Whether the bar looks like a liquidation cascade; degrades to stricter tests when flow data is
    missing."""
    sigma = market.sigma_1m
    if not sigma > 0.0 or not math.isfinite(market.return_1m):
        return False
    move = abs(market.return_1m)
    shock_sigmas = move / sigma
    volume_known = math.isfinite(market.volume_z)
    trades_known = math.isfinite(market.trades_z)
    if not volume_known and not trades_known:
        return (
            shock_sigmas >= config.cascade_return_sigmas_without_flow
            and move >= config.cascade_min_abs_return_without_flow
        )
    if shock_sigmas < config.cascade_return_sigmas or move < config.cascade_min_abs_return:
        return False
    if volume_known and trades_known:
        return market.volume_z >= config.cascade_volume_z and market.trades_z >= config.cascade_trades_z
    if volume_known:
        return market.volume_z >= config.cascade_volume_z_without_trades
    return market.trades_z >= config.cascade_trades_z


def raw_regime(market: MarketSnapshot, config: RegimeConfig) -> MarketRegime:
    """The regime this bar alone shows, before hysteresis. Unknown (NaN) indicators never trigger a regime."""
    if is_cascade(market, config):
        return "liquidation_event"
    if market.vol_percentile >= config.volatile_percentile:
        return "volatile"
    if market.adx >= config.trend_adx_min:
        if market.trend >= config.trend_strength_min:
            return "trending_up"
        if market.trend <= -config.trend_strength_min:
            return "trending_down"
    return "ranging"


def update_regime(prev: RegimeState | None, market: MarketSnapshot, config: RegimeConfig) -> RegimeState:
    """The regime after this bar, from the previous state (None: no history yet, the raw regime applies)."""
    raw = raw_regime(market, config)
    if raw == "liquidation_event":
        return RegimeState("liquidation_event", "liquidation_event", 0, config.liquidation_decay_bars)
    if prev is None:
        return RegimeState(raw, raw, 0, 0)
    if prev.liquidation_bars_left > 1:
        return RegimeState("liquidation_event", raw, 0, prev.liquidation_bars_left - 1)
    if prev.liquidation_bars_left == 1 or raw == prev.regime:
        # a decayed liquidation event hands over to what the market shows now
        return RegimeState(raw, raw, 0, 0)
    count = prev.count + 1 if raw == prev.candidate else 1
    if count >= config.persistence_bars:
        return RegimeState(raw, raw, 0, 0)
    return RegimeState(prev.regime, raw, count, 0)


@dataclass(frozen=True, slots=True)
class IndicatorArrays:
    """Per-bar indicators in the units of MarketSnapshot, one array each, aligned with the input bars."""

    atr: np.ndarray
    sigma_1m: np.ndarray
    vol_percentile: np.ndarray
    adx: np.ndarray
    trend: np.ndarray
    return_1m: np.ndarray
    volume_z: np.ndarray
    trades_z: np.ndarray


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` bars (an expanding mean over the first bars)."""
    sums = np.concatenate(([0.0], np.cumsum(values)))
    count = np.minimum(np.arange(1, values.shape[0] + 1), window)
    ends = np.arange(1, values.shape[0] + 1)
    return (sums[ends] - sums[ends - count]) / count


def _rolling_std(values: np.ndarray, window: int) -> np.ndarray:
    mean = _rolling_mean(values, window)
    variance = _rolling_mean(values * values, window) - mean * mean
    return np.sqrt(np.maximum(variance, 0.0))


def _trailing_z(values: np.ndarray, window: int, min_history: int) -> np.ndarray:
    """z-score of each value against the `window` values before it (the bar itself excluded, so a spike stands
    out instead of diluting its own baseline); NaN until `min_history` bars exist."""
    mean = np.concatenate(([np.nan], _rolling_mean(values, window)[:-1]))
    std = np.concatenate(([np.nan], _rolling_std(values, window)[:-1]))
    history = np.minimum(np.arange(values.shape[0]), window)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (values - mean) / std
    z[(history < min_history) | ~(std > 0.0)] = np.nan
    return z


def _trailing_percentile(sigma: np.ndarray, sample_every: int, history_samples: int, min_samples: int) -> np.ndarray:
    """Rank of each bar's σ among σ sampled every `sample_every` bars over the trailing `history_samples`
    samples."""
    n = sigma.shape[0]
    sample_index = np.arange(sample_every - 1, n, sample_every)
    samples = sigma[sample_index]
    padded = np.concatenate((np.full(history_samples, np.nan), samples))
    windows = sliding_window_view(padded, history_samples)
    # samples taken strictly before bar i
    available = np.searchsorted(sample_index, np.arange(n), side="left")
    result = np.full(n, np.nan)
    chunk = 16384
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        history = windows[available[start:stop]]
        valid = np.count_nonzero(~np.isnan(history), axis=1)
        below = np.count_nonzero(history <= sigma[start:stop, None], axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            result[start:stop] = np.where(valid >= min_samples, below / np.maximum(valid, 1), np.nan)
    return result


def market_indicators(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    trades: np.ndarray | None = None,
    *,
    period: int = 14,
    sigma_window: int = 60,
    trend_window: int = 60,
    z_window: int = 1440,
    percentile_history_hours: int = 168,
) -> IndicatorArrays:
    """The regime's indicators for a run of consecutive 1-minute bars, vectorised (numpy).

    Trailing simple means stand in for Wilder's recursive smoothing in ATR and ADX, so a whole history
    computes at once. Volume and trade counts are compared on a log scale (their spikes are multiplicative).
    Missing minutes are not filled: the arrays are per bar. Trade counts that are absent (None or NaN) give
    NaN `trades_z`.
    """
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    close = np.asarray(close, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.float64)
    n = close.shape[0]
    previous_close = np.concatenate((close[:1], close[:-1]))
    true_range = np.maximum(high - low, np.maximum(np.abs(high - previous_close), np.abs(low - previous_close)))
    atr = _rolling_mean(true_range, period)

    up_move = np.concatenate(([0.0], high[1:] - high[:-1]))
    down_move = np.concatenate(([0.0], low[:-1] - low[1:]))
    plus_dm = np.where((up_move > down_move) & (up_move > 0.0), up_move, 0.0)
    minus_dm = np.where((down_move > up_move) & (down_move > 0.0), down_move, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        plus_di = np.where(atr > 0.0, 100.0 * _rolling_mean(plus_dm, period) / atr, 0.0)
        minus_di = np.where(atr > 0.0, 100.0 * _rolling_mean(minus_dm, period) / atr, 0.0)
        di_sum = plus_di + minus_di
        dx = np.where(di_sum > 0.0, 100.0 * np.abs(plus_di - minus_di) / di_sum, 0.0)
    adx = _rolling_mean(dx, period)

    return_1m = np.concatenate(([0.0], np.log(close[1:] / close[:-1])))
    sigma = _rolling_std(return_1m, sigma_window)
    lagged = np.concatenate((np.full(min(trend_window, n), close[0]), close[: max(n - trend_window, 0)]))
    move = np.log(close / lagged)
    scale = 2.0 * sigma * math.sqrt(trend_window)
    with np.errstate(divide="ignore", invalid="ignore"):
        trend = np.where(scale > 0.0, np.tanh(move / scale), 0.0)

    min_history = max(z_window // 4, 2)
    volume_z = _trailing_z(np.log1p(np.maximum(volume, 0.0)), z_window, min_history)
    if trades is None or np.isnan(np.asarray(trades, dtype=np.float64)).all():
        trades_z = np.full(n, np.nan)
    else:
        trades_z = _trailing_z(np.log1p(np.maximum(np.asarray(trades, dtype=np.float64), 0.0)), z_window, min_history)
    vol_percentile = _trailing_percentile(sigma, 60, percentile_history_hours, min_samples=24)
    return IndicatorArrays(atr, sigma, vol_percentile, adx, trend, return_1m, volume_z, trades_z)


def regime_history(
    indicators: IndicatorArrays,
    close: np.ndarray,
    close_time_ms: np.ndarray,
    symbol: str,
    config: RegimeConfig,
) -> list[MarketRegime]:
    """The regime after each bar, running `update_regime` bar by bar exactly as the live path does."""
    columns = (
        close.tolist(),
        indicators.atr.tolist(),
        indicators.sigma_1m.tolist(),
        indicators.vol_percentile.tolist(),
        indicators.adx.tolist(),
        indicators.trend.tolist(),
        indicators.return_1m.tolist(),
        indicators.volume_z.tolist(),
        indicators.trades_z.tolist(),
    )
    regimes: list[MarketRegime] = []
    state: RegimeState | None = None
    for time_ms, row in zip(close_time_ms.tolist(), zip(*columns, strict=True), strict=True):
        state = update_regime(state, MarketSnapshot(symbol, int(time_ms), *row), config)
        regimes.append(state.regime)
    return regimes
