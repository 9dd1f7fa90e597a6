"""Cost of one full risk decision (`risk.decide`), median over many calls on realistic BTCUSDT inputs.

Run: `.venv/bin/python bench/risk_bench.py`. `bench_decide_us()` is what the project-wide bench calls.
"""

from __future__ import annotations

import statistics
import time

from risk import MarketSnapshot, ModelView, OpenPosition, PortfolioState, RegimeState, RiskConfig, decide


def _inputs() -> tuple[list[MarketSnapshot], list[ModelView], PortfolioState, RiskConfig]:
    # a BTCUSDT bar in an ordinary hour: σ 0.06 %/√min, ATR about 0.1 % of price, a 60-minute model horizon
    markets = [
        MarketSnapshot(
            symbol="BTCUSDT",
            close_time_ms=1_714_566_899_999 + 60_000 * i,
            price=60_000.0 + 7.0 * i,
            atr=55.0,
            sigma_1m=0.0006,
            vol_percentile=0.55,
            adx=22.0,
            trend=0.1,
            return_1m=0.0002,
            volume_z=0.4,
            trades_z=0.3,
            mark_price=60_001.5 + 7.0 * i,
            spread_bps=0.02,
            depth_usdt={"0.1%": 2.5e6, "0.5%": 9.0e6, "1%": 1.6e7},
        )
        for i in range(64)
    ]
    # confident enough to clear fees, so every call goes through the whole opening path
    models = [
        ModelView(p_up=0.80 + 0.001 * (i % 10), confidence=0.6, disagreement=0.1, horizon_minutes=60) for i in range(64)
    ]
    other = OpenPosition("ETHUSDT", "long", 0.5, 3_000.0, 10, 2_940.0, 3_120.0, 2_715.0, 1_714_560_000_000)
    portfolio = PortfolioState(equity=10_000.0, peak_equity=10_400.0, day_start_equity=10_100.0, positions=(other,))
    return markets, models, portfolio, RiskConfig()


def bench_decide_us(calls: int = 20_000) -> float:
    """Median cost of one `decide` on the opening path, in microseconds."""
    markets, models, portfolio, config = _inputs()
    regime = RegimeState("ranging", "ranging", 0)
    samples: list[float] = []
    clock = time.perf_counter_ns
    for i in range(calls):
        market = markets[i % 64]
        model = models[i % 64]
        start = clock()
        decide(market, model, None, portfolio, regime, config)
        samples.append((clock() - start) / 1000.0)
    return statistics.median(samples)


def main() -> None:
    markets, models, portfolio, config = _inputs()
    sample = decide(markets[0], models[0], None, portfolio, None, config)
    print(
        f"sample decision: {sample.signal_type} {sample.recommended_leverage}x "
        f"{sample.position_size_usdt} USDT, stop {sample.stop_loss_price}, target {sample.take_profit_price}"
    )
    bench_decide_us(2_000)
    print(f"risk.decide: {bench_decide_us():.1f} µs per decision (median)")


if __name__ == "__main__":
    main()
