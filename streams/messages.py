"""The internal topics' messages (`bars`, `signals`, `executions`) as typed structs, validated when decoded.

The wire JSON is the contract's and stays as it is (orjson writes it); these structs only read it. What the signal
stage and the sink would trip over later (a missing field, a string for a number, a price of 1e300, a time from
another era, a symbol with state of its own) is refused here, with a reason, and goes to the internal dead-letter
topic instead of stopping an agent.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from models.bars import MINUTE_MS, Bar
from streams.ingest.events import EARLIEST_MS, MAX_PRICE, MAX_QUANTITY

LATEST_MS = 4_102_444_800_000  # 2100-01-01: beyond it a time is a unit error (the clock check is ingest's)

Symbol = Annotated[str, msgspec.Meta(pattern=r"^[A-Z0-9]{2,20}$")]
EpochMs = Annotated[int, msgspec.Meta(ge=EARLIEST_MS, lt=LATEST_MS)]
Price = Annotated[float, msgspec.Meta(gt=0, lt=MAX_PRICE)]
Quantity = Annotated[float, msgspec.Meta(ge=0, le=MAX_QUANTITY)]
Count = Annotated[int, msgspec.Meta(ge=0, lt=2**31)]
Unit = Annotated[float, msgspec.Meta(ge=0, le=1)]
Score = Annotated[float, msgspec.Meta(ge=0, le=100)]
Text = Annotated[str, msgspec.Meta(max_length=200)]


class InvalidMessage(ValueError):
    """An internal message that does not decode to its struct; `reason` is a short code for metrics."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}"[:256])
        self.reason = reason


class BarMessage(msgspec.Struct, frozen=True):
    """A closed 1-minute bar on `bars`, with its receive time and the market at its close."""

    symbol: Symbol
    open_time: EpochMs
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Quantity
    quote_volume: Annotated[float, msgspec.Meta(ge=0)] | None = None
    trades: Count | None = None
    taker_buy_base: Quantity | None = None
    taker_buy_quote: Annotated[float, msgspec.Meta(ge=0)] | None = None
    received_ms: float | None = None
    market: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.open_time % MINUTE_MS:
            raise ValueError("open_time is not on a minute boundary")
        if not self.low <= min(self.open, self.close) <= max(self.open, self.close) <= self.high:
            raise ValueError("prices violate low <= open, close <= high")

    def to_bar(self) -> Bar:
        return Bar(
            self.symbol,
            self.open_time,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.quote_volume,
            self.trades,
            self.taker_buy_base,
            self.taker_buy_quote,
        )


class SignalMessage(msgspec.Struct, frozen=True):
    """The fields of an ActionableTradeSignal on `signals` that the sink writes, in their contract ranges."""

    signal_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    symbol: Symbol
    timestamp: Annotated[str, msgspec.Meta(min_length=10, max_length=40)]
    bar_close_time: EpochMs
    signal_type: Literal["long", "short", "close", "hold"]
    signal_strength: Literal["strong_buy", "buy", "hold", "sell", "strong_sell"]
    confidence_score: Unit
    ml_confidence: Unit
    ml_prediction: Literal["up", "down", "flat"]
    risk_level: Literal["minimal", "low", "medium", "high", "critical"]
    market_regime: Literal["trending_up", "trending_down", "ranging", "volatile", "liquidation_event"]
    entry_price: Price
    recommended_leverage: Annotated[int, msgspec.Meta(ge=1, le=125)] | None
    position_size_usdt: Annotated[float, msgspec.Meta(ge=0, lt=1e13)] | None
    quantity: Quantity | None
    stop_loss_price: Price | None
    take_profit_price: Price | None
    risk_reward_ratio: Annotated[float, msgspec.Meta(ge=0, lt=1e4)] | None
    liquidation_price: Annotated[float, msgspec.Meta(ge=0, lt=MAX_PRICE)] | None
    risk_score: Score
    liquidation_risk: Score
    portfolio_impact: Annotated[float, msgspec.Meta(ge=-100, le=100)]
    volatility_score: Unit
    liquidity_score: Unit
    model_contributions: dict[str, Any]
    model_version: Text
    latency_ms: float
    metadata: dict[str, Any]


class ExecutionMessage(msgspec.Struct, frozen=True):
    """An execution log on `executions`: a row of `signal_execution_logs`."""

    timestamp: Annotated[str, msgspec.Meta(min_length=10, max_length=40)]
    signal_id: Annotated[str, msgspec.Meta(max_length=64)]
    symbol: Symbol
    execution_status: Literal["executed", "rejected", "expired", "closed", "liquidated"]
    execution_price: Price | None = None
    execution_size: Annotated[float, msgspec.Meta(ge=0, lt=1e13)] | None = None
    execution_leverage: Annotated[int, msgspec.Meta(ge=1, le=125)] | None = None
    actual_stop_loss: Price | None = None
    actual_take_profit: Price | None = None
    execution_time_ms: Count | None = None
    error_message: Annotated[str, msgspec.Meta(max_length=2_000)] | None = None
    metadata: dict[str, Any] | None = None


_BAR = msgspec.json.Decoder(BarMessage)
_SIGNAL = msgspec.json.Decoder(SignalMessage)
_EXECUTION = msgspec.json.Decoder(ExecutionMessage)
MAX_INTERNAL_BYTES = 262_144  # a signal with its metadata is a few KB


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes | None) -> Any:
    if raw is None:
        raise InvalidMessage("empty", "no value")
    if len(raw) > MAX_INTERNAL_BYTES:
        raise InvalidMessage("too_large", f"{len(raw)} bytes, more than {MAX_INTERNAL_BYTES}")
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise InvalidMessage("invalid", str(error)) from None
    except msgspec.DecodeError as error:
        raise InvalidMessage("not_json", str(error)) from None


def decode_bar(raw: bytes | None) -> BarMessage:
    """A `bars` message, validated; raises InvalidMessage."""
    decoded: BarMessage = _decode(_BAR, raw)
    return decoded


def check_signal(raw: bytes | None) -> None:
    """Raise InvalidMessage unless `raw` is a signal the sink can write."""
    _decode(_SIGNAL, raw)


def check_execution(raw: bytes | None) -> None:
    """Raise InvalidMessage unless `raw` is an execution log the sink can write."""
    _decode(_EXECUTION, raw)
