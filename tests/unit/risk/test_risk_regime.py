"""Regime classification: hysteresis rules, and known episodes of real BTCUSDT data."""

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from risk_strategies import snapshot

from risk import RegimeConfig, RegimeState, market_indicators, raw_regime, regime_history, update_regime

DATA_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
CONFIG = RegimeConfig()
QUIET = snapshot(vol_percentile=0.3, adx=15.0, trend=0.0)
UPTREND = snapshot(vol_percentile=0.5, adx=40.0, trend=0.8)
CASCADE = snapshot(sigma_1m=0.001, return_1m=-0.01, volume_z=5.0, trades_z=5.0)


def test_raw_regime_of_each_kind():
    assert raw_regime(QUIET, CONFIG) == "ranging"
    assert raw_regime(UPTREND, CONFIG) == "trending_up"
    assert raw_regime(snapshot(adx=40.0, trend=-0.8), CONFIG) == "trending_down"
    assert raw_regime(snapshot(adx=40.0, trend=0.1), CONFIG) == "ranging"
    assert raw_regime(snapshot(vol_percentile=0.95, adx=40.0, trend=0.8), CONFIG) == "volatile"
    assert raw_regime(CASCADE, CONFIG) == "liquidation_event"


def test_cascade_needs_flow_and_degrades_without_trade_counts():
    assert (
        raw_regime(snapshot(sigma_1m=0.001, return_1m=-0.01, volume_z=5.0, trades_z=1.0), CONFIG) != "liquidation_event"
    )
    # trade count unknown: a volume spike of 4σ or more is required instead
    assert (
        raw_regime(snapshot(sigma_1m=0.001, return_1m=-0.01, volume_z=5.0, trades_z=float("nan")), CONFIG)
        == "liquidation_event"
    )
    assert (
        raw_regime(snapshot(sigma_1m=0.001, return_1m=-0.01, volume_z=3.5, trades_z=float("nan")), CONFIG)
        != "liquidation_event"
    )
    # no flow data at all: only an extreme return counts
    no_flow = {"volume_z": float("nan"), "trades_z": float("nan")}
    assert raw_regime(snapshot(sigma_1m=0.001, return_1m=-0.01, **no_flow), CONFIG) == "liquidation_event"
    assert raw_regime(snapshot(sigma_1m=0.001, return_1m=-0.007, **no_flow), CONFIG) != "liquidation_event"
    # a small move is no cascade however many σ it is
    assert (
        raw_regime(snapshot(sigma_1m=0.0002, return_1m=-0.002, volume_z=5.0, trades_z=5.0), CONFIG)
        != "liquidation_event"
    )


def test_a_new_regime_must_persist_before_it_takes_over():
    state = update_regime(None, QUIET, CONFIG)
    assert state.regime == "ranging"
    for bar in range(1, CONFIG.persistence_bars):
        state = update_regime(state, UPTREND, CONFIG)
        assert state.regime == "ranging" and state.candidate == "trending_up" and state.count == bar
    state = update_regime(state, UPTREND, CONFIG)
    assert state.regime == "trending_up"
    # an interruption restarts the count
    state = update_regime(state, QUIET, CONFIG)
    state = update_regime(state, UPTREND, CONFIG)
    state = update_regime(state, QUIET, CONFIG)
    assert state.regime == "trending_up" and state.count == 1


def test_liquidation_event_enters_at_once_and_decays():
    state = update_regime(RegimeState("ranging", "ranging", 0), CASCADE, CONFIG)
    assert state.regime == "liquidation_event"
    for _ in range(CONFIG.liquidation_decay_bars - 1):
        state = update_regime(state, QUIET, CONFIG)
        assert state.regime == "liquidation_event"
    state = update_regime(state, QUIET, CONFIG)
    assert state.regime == "ranging" and state.liquidation_bars_left == 0


def test_indicators_on_a_synthetic_trend():
    rng = np.random.default_rng(3)
    close = 100.0 * np.exp(np.cumsum(0.0005 + 0.0002 * rng.standard_normal(3000)))
    high, low = close * 1.0002, close * 0.9998
    indicators = market_indicators(high, low, close, np.full(3000, 5.0), None)
    assert np.nanmean(indicators.trend[200:]) > 0.5
    assert np.nanmean(indicators.adx[200:]) > 40.0
    assert np.isnan(indicators.trades_z).all()
    assert indicators.sigma_1m[-1] == pytest.approx(np.std(np.diff(np.log(close))[-60:]), rel=1e-6)


def _ms(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def btc_regimes():
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data not found at {DATA_DIR}")
    from models.data import load_bars

    frame = load_bars(DATA_DIR, "BTCUSDT", _ms("2023-01-01"), _ms("2025-01-01"))
    indicators = market_indicators(frame.high, frame.low, frame.close, frame.volume, frame.trades)
    regimes = np.array(regime_history(indicators, frame.close, frame.open_time + 59_999, "BTCUSDT", CONFIG))
    return frame.open_time, regimes


def _shares(open_time, regimes, start: str, end: str) -> dict[str, float]:
    window = regimes[(open_time >= _ms(start)) & (open_time < _ms(end))]
    counts = Counter(window.tolist())
    return {
        name: counts[name] / window.size
        for name in ("trending_up", "trending_down", "ranging", "volatile", "liquidation_event")
    }


def _stressed(shares: dict[str, float]) -> float:
    return shares["volatile"] + shares["liquidation_event"] + shares["trending_down"]


def test_known_crashes_are_stressed_far_more_than_a_quiet_week(btc_regimes):
    open_time, regimes = btc_regimes
    # 2023-09-01..07: BTC pinned near 25.8k-26k, the lowest realised volatility of the weeks examined
    quiet = _shares(open_time, regimes, "2023-09-01", "2023-09-08")
    banking_crisis = _shares(open_time, regimes, "2023-03-09", "2023-03-11")  # BTC below 20k
    yen_carry_crash = _shares(open_time, regimes, "2024-08-05", "2024-08-06")
    print(f"\nquiet {quiet}\n2023-03-09/10 {banking_crisis}\n2024-08-05 {yen_carry_crash}")
    for crash in (banking_crisis, yen_carry_crash):
        assert _stressed(crash) > 2.5 * _stressed(quiet)
        assert crash["liquidation_event"] > 0.0
        assert crash["ranging"] < quiet["ranging"]
    assert quiet["ranging"] > 0.75


def test_regime_shares_over_2023_and_2024(btc_regimes):
    open_time, regimes = btc_regimes
    shares = _shares(open_time, regimes, "2023-01-01", "2025-01-01")
    print(
        "\nBTCUSDT 2023-2024 share of bars per regime: "
        + ", ".join(f"{name} {share:.2%}" for name, share in shares.items())
    )
    assert max(shares, key=shares.__getitem__) == "ranging"
    assert all(share > 0.0 for share in shares.values())
    assert shares["liquidation_event"] < 0.01
    assert 0.05 < shares["volatile"] < 0.2
