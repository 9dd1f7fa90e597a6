"""Hypothesis strategies and builders shared by the risk tests."""

from hypothesis import strategies as st

from risk import MarketSnapshot, ModelView, OpenPosition, PortfolioState, RegimeState, RiskConfig
from risk.types import REGIMES, TRADING_STATES

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def snapshot(price: float = 60_000.0, **changes) -> MarketSnapshot:
    """An ordinary BTCUSDT bar; keyword arguments override fields."""
    fields = dict(
        symbol="BTCUSDT",
        close_time_ms=1_714_566_899_999,
        price=price,
        atr=price * 0.001,
        sigma_1m=0.0015,
        vol_percentile=0.5,
        adx=20.0,
        trend=0.0,
        return_1m=0.0001,
        volume_z=0.2,
        trades_z=0.1,
    )
    fields.update(changes)
    return MarketSnapshot(**fields)


def flat_portfolio(equity: float = 10_000.0, state: str = "ACTIVE") -> PortfolioState:
    return PortfolioState(equity=equity, peak_equity=equity, day_start_equity=equity, positions=(), trading_state=state)


prices = st.floats(min_value=-2.0, max_value=6.0).map(lambda exponent: 10.0**exponent)
z_scores = st.one_of(st.just(float("nan")), st.floats(min_value=-5.0, max_value=12.0))


@st.composite
def markets(draw, symbol=None) -> MarketSnapshot:
    price = draw(prices)
    mark = draw(st.one_of(st.none(), st.floats(min_value=-0.01, max_value=0.01).map(lambda u: price * (1 + u))))
    return MarketSnapshot(
        symbol=symbol or draw(st.sampled_from(SYMBOLS)),
        close_time_ms=draw(st.integers(min_value=1_600_000_000_000, max_value=1_800_000_000_000)),
        price=price,
        atr=price * draw(st.floats(min_value=0.0, max_value=0.05)),
        sigma_1m=draw(st.floats(min_value=1e-5, max_value=0.02)),
        vol_percentile=draw(st.floats(min_value=0.0, max_value=1.0)),
        adx=draw(st.floats(min_value=0.0, max_value=100.0)),
        trend=draw(st.floats(min_value=-1.0, max_value=1.0)),
        return_1m=draw(st.floats(min_value=-0.05, max_value=0.05)),
        volume_z=draw(z_scores),
        trades_z=draw(z_scores),
        mark_price=mark,
        spread_bps=draw(st.one_of(st.none(), st.floats(min_value=0.0, max_value=50.0))),
    )


@st.composite
def models(draw) -> ModelView:
    # probabilities often far from 0.5 so that the opening path is exercised, not only the fee filter
    p_up = draw(st.one_of(st.floats(min_value=0.0, max_value=1.0), st.sampled_from([0.02, 0.1, 0.9, 0.98])))
    return ModelView(
        p_up=p_up,
        confidence=draw(st.floats(min_value=0.0, max_value=1.0)),
        disagreement=draw(st.floats(min_value=0.0, max_value=1.0)),
        horizon_minutes=draw(st.integers(min_value=1, max_value=240)),
    )


@st.composite
def positions(draw, symbol: str) -> OpenPosition:
    side = draw(st.sampled_from(["long", "short"]))
    entry = draw(prices)
    sign = 1.0 if side == "long" else -1.0
    return OpenPosition(
        symbol=symbol,
        side=side,
        quantity=draw(st.floats(min_value=1e-3, max_value=1e3)) / entry * 100,
        entry_price=entry,
        leverage=draw(st.integers(min_value=1, max_value=20)),
        stop_loss_price=entry * (1 - sign * 0.02),
        take_profit_price=entry * (1 + sign * 0.04),
        liquidation_price=entry * (1 - sign * 0.1),
        opened_at_ms=1_700_000_000_000,
    )


@st.composite
def portfolios(draw, exclude_symbol: str | None = None) -> PortfolioState:
    equity = draw(st.floats(min_value=100.0, max_value=1e6))
    peak = equity * draw(st.floats(min_value=1.0, max_value=1.3))
    day_start = equity * draw(st.floats(min_value=0.9, max_value=1.1))
    others = [s for s in ("XRPUSDT", "ADAUSDT", "DOTUSDT", "LTCUSDT") if s != exclude_symbol]
    count = draw(st.integers(min_value=0, max_value=4))
    held = tuple(draw(positions(symbol)) for symbol in others[:count])
    return PortfolioState(equity, peak, day_start, held, draw(st.sampled_from(TRADING_STATES)))


regime_states = st.one_of(
    st.none(),
    st.builds(RegimeState, st.sampled_from(REGIMES), st.sampled_from(REGIMES), st.integers(0, 4), st.integers(0, 3)),
)
configs = st.builds(
    RiskConfig,
    base_position_usdt=st.floats(min_value=10.0, max_value=200_000.0),
    max_leverage=st.integers(min_value=1, max_value=125),
    taker_fee_rate=st.sampled_from([0.0, 0.0002, 0.0004]),
    slippage_bps=st.sampled_from([0.0, 1.0, 5.0]),
)
