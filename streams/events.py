"""Market events accepted on `market-data`, and the parser that validates them.

Accepted, bare or inside Binance's combined-stream wrapper `{"stream": ..., "data": {...}}`:
Binance `trade`, `aggTrade`, `kline`, `bookTicker`, `depthUpdate`, `markPriceUpdate`, a REST order-book snapshot
tagged `{"e": "depthSnapshot", "s": SYMBOL, ...}`, and the generic tick `{"symbol", "ts", "price", "qty", "side"}`.
Anything else raises BadEvent with a short reason code (the metric label) and a detail (the DLQ message).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from models.bars import to_epoch_ms

EARLIEST_MS = 1_230_768_000_000  # 2009-01-01: anything earlier is a unit error, not market data


class BadEvent(ValueError):
    """An input that cannot be processed; `code` is a short, bounded reason for metrics."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Trade:
    symbol: str
    event_time_ms: int
    trade_time_ms: int
    trade_id: int | None
    price: float
    quantity: float
    taker_side: str | None  # "buy" | "sell" | None (unknown)
    kind: str  # "trade" | "aggTrade" | "tick"
    regular: bool = True  # False for Binance's INSURANCE_FUND fills, which are not market prices


@dataclass(frozen=True, slots=True)
class Kline:
    symbol: str
    event_time_ms: int
    open_time: int
    close_time: int
    interval: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float | None
    trades: int | None
    taker_buy_base: float | None
    taker_buy_quote: float | None
    closed: bool


@dataclass(frozen=True, slots=True)
class BookTicker:
    symbol: str
    event_time_ms: int | None  # spot bookTicker carries no event time
    bid_price: float
    bid_qty: float
    ask_price: float
    ask_qty: float
    update_id: int | None


@dataclass(frozen=True, slots=True)
class DepthUpdate:
    symbol: str
    event_time_ms: int
    first_update_id: int
    last_update_id: int
    previous_update_id: int | None  # USD-M `pu`; spot chains by U = previous u + 1
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    symbol: str
    event_time_ms: int | None
    last_update_id: int
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class MarkPrice:
    symbol: str
    event_time_ms: int
    mark_price: float
    index_price: float | None
    funding_rate: float | None
    next_funding_time_ms: int | None


MarketEvent = Trade | Kline | BookTicker | DepthUpdate | DepthSnapshot | MarkPrice


def event_kind(event: MarketEvent) -> str:
    """The metric label for an accepted event."""
    if isinstance(event, Trade):
        return event.kind
    return _KIND_NAMES[type(event)]


_KIND_NAMES: dict[type, str] = {
    Kline: "kline",
    BookTicker: "bookTicker",
    DepthUpdate: "depthUpdate",
    DepthSnapshot: "depthSnapshot",
    MarkPrice: "markPriceUpdate",
}


def parse_event(raw: bytes | str, now_ms: int, max_future_ms: int = 3_600_000) -> MarketEvent:
    """Decode and validate one message; `now_ms` is the receiver's clock, used only to reject future times."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadEvent("not_json", f"not valid JSON ({exc})") from None
    if not isinstance(message, dict):
        raise BadEvent("not_object", f"expected a JSON object, got {type(message).__name__}")
    if "data" in message and "stream" in message:
        message = message["data"]
        if not isinstance(message, dict):
            raise BadEvent("not_object", "the combined-stream 'data' is not an object")
    kind = message.get("e")
    parser: Callable[[dict[str, Any]], MarketEvent] | None = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        if "e" not in message and "symbol" in message:
            parser = _parse_tick
        elif "e" not in message and "b" in message and "a" in message and "u" in message and "s" in message:
            parser = _parse_book_ticker  # spot bookTicker has no "e"
        else:
            raise BadEvent("unknown_event", f"unknown event type {kind!r}" if kind else "no event type")
    event = parser(message)
    time_ms = getattr(event, "event_time_ms", None)
    if time_ms is None and isinstance(event, Kline):
        time_ms = event.open_time
    if time_ms is not None and time_ms > now_ms + max_future_ms:
        raise BadEvent("future_timestamp", f"event time {time_ms} is more than {max_future_ms} ms ahead of now")
    return event


def _field(message: dict[str, Any], key: str) -> Any:
    try:
        return message[key]
    except KeyError:
        raise BadEvent("missing_field", f"missing field {key!r}") from None


def _symbol(message: dict[str, Any], key: str) -> str:
    value = _field(message, key)
    if not isinstance(value, str):
        raise BadEvent("bad_symbol", f"{key!r} must be a string")
    symbol = value.replace("/", "").replace("-", "").upper()
    if not 2 <= len(symbol) <= 20 or not symbol.isalnum():
        raise BadEvent("bad_symbol", f"{key!r} is not a symbol: {value!r}")
    return symbol


def _number(message: dict[str, Any], key: str) -> float:
    value = _field(message, key)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadEvent("bad_type", f"{key!r} must be a number or a decimal string")
    try:
        number = float(value)
    except ValueError:
        raise BadEvent("bad_type", f"{key!r} is not numeric: {value!r}") from None
    if not math.isfinite(number):
        raise BadEvent("non_finite", f"{key!r} is not finite: {value!r}")
    return number


def _price(message: dict[str, Any], key: str) -> float:
    price = _number(message, key)
    if price <= 0:
        raise BadEvent("non_positive_price", f"{key!r} must be positive, got {price}")
    return price


def _quantity(message: dict[str, Any], key: str) -> float:
    quantity = _number(message, key)
    if quantity < 0:
        raise BadEvent("negative_quantity", f"{key!r} must not be negative, got {quantity}")
    return quantity


def _integer(message: dict[str, Any], key: str) -> int:
    value = _field(message, key)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise BadEvent("bad_type", f"{key!r} must be an integer, got {value!r}")
    if value < 0:
        raise BadEvent("bad_type", f"{key!r} must not be negative, got {value}")
    return value


def _timestamp(message: dict[str, Any], key: str) -> int:
    value = _field(message, key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadEvent("bad_timestamp", f"{key!r} must be an epoch number, got {value!r}")
    if value <= 0:
        raise BadEvent("bad_timestamp", f"{key!r} must be positive, got {value!r}")
    time_ms = to_epoch_ms(value)
    if time_ms < EARLIEST_MS:
        raise BadEvent("bad_timestamp", f"{key!r} = {value!r} is before 2009: wrong unit?")
    return time_ms


def _optional(message: dict[str, Any], key: str, read: Any) -> Any:
    return read(message, key) if message.get(key) is not None else None


def _parse_trade(message: dict[str, Any]) -> Trade:
    maker_is_buyer = _field(message, "m")
    if not isinstance(maker_is_buyer, bool):
        raise BadEvent("bad_type", "'m' must be true or false")
    kind = message["e"]
    return Trade(
        symbol=_symbol(message, "s"),
        event_time_ms=_timestamp(message, "E"),
        trade_time_ms=_timestamp(message, "T"),
        trade_id=_integer(message, "t" if kind == "trade" else "a"),
        price=_price(message, "p"),
        quantity=_quantity(message, "q"),
        taker_side="sell" if maker_is_buyer else "buy",
        kind=kind,
        regular=message.get("X", "MARKET") == "MARKET",
    )


def _parse_tick(message: dict[str, Any]) -> Trade:
    side = message.get("side")
    if side is not None:
        if not isinstance(side, str) or side.lower() not in ("buy", "sell"):
            raise BadEvent("bad_type", f"'side' must be 'buy' or 'sell', got {side!r}")
        side = side.lower()
    time_ms = _timestamp(message, "ts")
    tick_id = message.get("id")
    return Trade(
        symbol=_symbol(message, "symbol"),
        event_time_ms=time_ms,
        trade_time_ms=time_ms,
        trade_id=None if tick_id is None else _integer(message, "id"),
        price=_price(message, "price"),
        quantity=_quantity(message, "qty") if "qty" in message else 0.0,
        taker_side=side,
        kind="tick",
    )


def _parse_kline(message: dict[str, Any]) -> Kline:
    k = _field(message, "k")
    if not isinstance(k, dict):
        raise BadEvent("bad_type", "'k' must be an object")
    interval = _field(k, "i")
    if interval != "1m":
        raise BadEvent("bad_interval", f"only 1m klines are accepted, got {interval!r}")
    closed = _field(k, "x")
    if not isinstance(closed, bool):
        raise BadEvent("bad_type", "'x' must be true or false")
    kline = Kline(
        symbol=_symbol(message, "s"),
        event_time_ms=_timestamp(message, "E"),
        open_time=_timestamp(k, "t"),
        close_time=_timestamp(k, "T"),
        interval=interval,
        open=_price(k, "o"),
        high=_price(k, "h"),
        low=_price(k, "l"),
        close=_price(k, "c"),
        volume=_quantity(k, "v"),
        quote_volume=_optional(k, "q", _quantity),
        trades=_optional(k, "n", _integer),
        taker_buy_base=_optional(k, "V", _quantity),
        taker_buy_quote=_optional(k, "Q", _quantity),
        closed=closed,
    )
    if not kline.low <= min(kline.open, kline.close) <= max(kline.open, kline.close) <= kline.high:
        raise BadEvent("bad_ohlc", "kline prices violate low <= open, close <= high")
    if kline.open_time % 60_000:
        raise BadEvent("bad_timestamp", "kline open time is not on a minute boundary")
    return kline


def _parse_book_ticker(message: dict[str, Any]) -> BookTicker:
    return BookTicker(
        symbol=_symbol(message, "s"),
        event_time_ms=_optional(message, "E", _timestamp),
        bid_price=_price(message, "b"),
        bid_qty=_quantity(message, "B"),
        ask_price=_price(message, "a"),
        ask_qty=_quantity(message, "A"),
        update_id=_optional(message, "u", _integer),
    )


def _levels(message: dict[str, Any], key: str) -> tuple[tuple[float, float], ...]:
    raw = _field(message, key)
    if not isinstance(raw, list):
        raise BadEvent("bad_type", f"{key!r} must be a list of [price, quantity]")
    levels = []
    for level in raw:
        if not isinstance(level, list) or len(level) < 2:
            raise BadEvent("bad_type", f"{key!r} must be a list of [price, quantity]")
        pair = {"price": level[0], "quantity": level[1]}
        levels.append((_price(pair, "price"), _quantity(pair, "quantity")))
    return tuple(levels)


def _parse_depth(message: dict[str, Any]) -> DepthUpdate:
    return DepthUpdate(
        symbol=_symbol(message, "s"),
        event_time_ms=_timestamp(message, "E"),
        first_update_id=_integer(message, "U"),
        last_update_id=_integer(message, "u"),
        previous_update_id=_optional(message, "pu", _integer),
        bids=_levels(message, "b"),
        asks=_levels(message, "a"),
    )


def _parse_snapshot(message: dict[str, Any]) -> DepthSnapshot:
    return DepthSnapshot(
        symbol=_symbol(message, "s"),
        event_time_ms=_optional(message, "E", _timestamp),
        last_update_id=_integer(message, "lastUpdateId"),
        bids=_levels(message, "bids"),
        asks=_levels(message, "asks"),
    )


def _parse_mark_price(message: dict[str, Any]) -> MarkPrice:
    return MarkPrice(
        symbol=_symbol(message, "s"),
        event_time_ms=_timestamp(message, "E"),
        mark_price=_price(message, "p"),
        index_price=_optional(message, "i", _price),
        funding_rate=_optional(message, "r", _number),
        next_funding_time_ms=_optional(message, "T", _timestamp),
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], MarketEvent]] = {
    "trade": _parse_trade,
    "aggTrade": _parse_trade,
    "kline": _parse_kline,
    "bookTicker": _parse_book_ticker,
    "depthUpdate": _parse_depth,
    "depthSnapshot": _parse_snapshot,
    "markPriceUpdate": _parse_mark_price,
}
