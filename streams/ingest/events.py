"""Market events accepted on `market-data`, and the parser that validates them.

Accepted, bare or inside Binance's combined-stream wrapper `{"stream": ..., "data": {...}}`:
Binance `trade`, `aggTrade`, `kline`, `bookTicker`, `depthUpdate`, `markPriceUpdate`, a REST order-book snapshot
tagged `{"e": "depthSnapshot", "s": SYMBOL, ...}`, and the generic tick `{"symbol", "ts", "price", "qty", "side"}`.
Anything else raises BadEvent with a short reason code (the metric label) and a detail (the DLQ message).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from models.bars import MINUTE_MS, to_epoch_ms
from streams.config import parse_symbol

EARLIEST_MS = 1_230_768_000_000  # 2009-01-01: anything earlier is a unit error, not market data
NANOSECONDS_FROM = 10**17  # an epoch number this large is in nanoseconds: the contract takes ms or µs only
MAX_EVENT_SKEW_MS = 60_000  # |trade time − event time| and a kline's event time beyond its close (seen: 2 s)
MAX_FUNDING_AHEAD_MS = 86_400_000  # a mark price's next funding time is at most hours after its event time
MAX_MESSAGE_BYTES = 1_048_576  # the largest valid event (a 5,000-level snapshot) is about a fifth of this
MAX_LEVELS = 5_000  # price levels per side in one depth message: Binance's REST snapshot limit
MAX_PRICE = 1e9  # the database keeps prices as DECIMAL(15,6): below a billion
MAX_QUANTITY = 1e15
MAX_NUMBER_CHARS = 64  # a decimal string longer than this is not a price or a quantity
MAX_DETAIL_CHARS = 256  # the detail of a reason, as it goes to the DLQ
_INTEGER = re.compile(r"[0-9]{1,19}")


class BadEvent(ValueError):
    """An input that cannot be processed; `code` is a short, bounded reason for metrics."""

    def __init__(self, code: str, detail: str) -> None:
        detail = detail[:MAX_DETAIL_CHARS]
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def shown(value: Any, limit: int = 48) -> str:
    """`repr(value)` cut to `limit` characters: reasons quote what they refuse, never all of it."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[:limit]
    text = repr(value) if not isinstance(value, (dict, list)) else f"<{type(value).__name__} of {len(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def parse_event(raw: bytes | str, now_ms: int, max_future_ms: int = 5_000) -> MarketEvent:
    """Decode and validate one message; `now_ms` is the receiver's clock, used only to reject future times."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadEvent("too_large", f"{len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
    event = from_wire(raw)  # Binance's own shapes, typed in one pass; None: a variant or a refusal
    if event is None:
        event = _parse_checked(raw)
    _check_times(event, now_ms + max_future_ms)
    return event


def _parse_checked(raw: bytes | str) -> MarketEvent:
    """Any accepted shape, field by field; a refusal names the first field that fails, in a fixed order."""
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
            raise BadEvent("unknown_event", f"unknown event type {shown(kind)}" if kind else "no event type")
    return parser(message)


def _check_times(event: MarketEvent, latest_ms: int) -> None:
    """Every time of an event is at most `latest_ms` (the wall clock plus the allowed skew), and its times agree
    with each other: one field from another era would move a symbol's watermark or mark its trades late."""
    times: dict[str, int | None] = {"E": event.event_time_ms}
    if isinstance(event, Trade):
        times["T"] = event.trade_time_ms
        if abs(event.trade_time_ms - event.event_time_ms) > MAX_EVENT_SKEW_MS:
            raise BadEvent(
                "inconsistent_times",
                f"trade time {event.trade_time_ms} and event time "
                f"{event.event_time_ms} are more than {MAX_EVENT_SKEW_MS} ms apart",
            )
    elif isinstance(event, Kline):
        times.update({"k.t": event.open_time, "k.T": event.close_time})
        if event.close_time != event.open_time + MINUTE_MS - 1:
            raise BadEvent(
                "inconsistent_times",
                f"a 1m kline closes 59,999 ms after it opens: t={event.open_time}, T={event.close_time}",
            )
        if not event.open_time <= event.event_time_ms <= event.close_time + MAX_EVENT_SKEW_MS:
            raise BadEvent(
                "inconsistent_times",
                f"kline event time {event.event_time_ms} is outside its minute "
                f"{event.open_time}..{event.close_time} (+{MAX_EVENT_SKEW_MS} ms)",
            )
    elif (
        isinstance(event, MarkPrice)
        and event.next_funding_time_ms is not None
        and event.next_funding_time_ms > event.event_time_ms + MAX_FUNDING_AHEAD_MS
    ):
        raise BadEvent(
            "inconsistent_times", f"next funding time {event.next_funding_time_ms} is more than a day after the event"
        )
    for name, time_ms in times.items():
        if time_ms is not None and time_ms > latest_ms:
            raise BadEvent(
                "future_timestamp", f"{name} = {time_ms} is ahead of the receiver's clock (latest accepted {latest_ms})"
            )


def _field(message: dict[str, Any], key: str) -> Any:
    try:
        return message[key]
    except KeyError:
        raise BadEvent("missing_field", f"missing field {key!r}") from None


def _symbol(message: dict[str, Any], key: str) -> str:
    return _as_symbol(_field(message, key), key)


def _as_symbol(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise BadEvent("bad_symbol", f"{key!r} must be a string")
    symbol = parse_symbol(value)
    if symbol is None:
        raise BadEvent("bad_symbol", f"{key!r} is not a symbol ([A-Z0-9]{{2,20}}): {shown(value)}")
    return symbol


def _number(message: dict[str, Any], key: str) -> float:
    return _as_number(_field(message, key), key)


def _price(message: dict[str, Any], key: str) -> float:
    return _as_price(_field(message, key), key)


def _quantity(message: dict[str, Any], key: str) -> float:
    return _as_quantity(_field(message, key), key)


def _as_number(value: Any, key: str) -> float:
    if type(value) is str:  # Binance's decimals: the common case first
        if len(value) > MAX_NUMBER_CHARS or not value.isascii():
            raise BadEvent("bad_type", f"{key!r} is not a decimal number: {shown(value)}")
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadEvent("bad_type", f"{key!r} must be a number or a decimal string")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise BadEvent("bad_type", f"{key!r} is not numeric: {shown(value)}") from None
    if not math.isfinite(number):
        raise BadEvent("non_finite", f"{key!r} is not finite: {shown(value)}")
    return number


def _as_price(value: Any, key: str) -> float:
    price = _as_number(value, key)
    if not 0 < price < MAX_PRICE:
        if price <= 0:
            raise BadEvent("non_positive_price", f"{key!r} must be positive, got {price}")
        raise BadEvent("out_of_range", f"{key!r} must be below {MAX_PRICE:g}, got {price:g}")
    return price


def _as_quantity(value: Any, key: str) -> float:
    quantity = _as_number(value, key)
    if not 0 <= quantity <= MAX_QUANTITY:
        if quantity < 0:
            raise BadEvent("negative_quantity", f"{key!r} must not be negative, got {quantity}")
        raise BadEvent("out_of_range", f"{key!r} must be at most {MAX_QUANTITY:g}, got {quantity:g}")
    return quantity


def _integer(message: dict[str, Any], key: str) -> int:
    return _as_integer(_field(message, key), key)


def _as_integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and _INTEGER.fullmatch(value):  # ASCII digits only: int("²") fails
            return int(value)
        raise BadEvent("bad_type", f"{key!r} must be an integer, got {shown(value)}")
    if not 0 <= value < 2**63:
        raise BadEvent("bad_type", f"{key!r} must be in 0..2**63-1, got {shown(value)}")
    return value


def _timestamp(message: dict[str, Any], key: str) -> int:
    return _as_timestamp(_field(message, key), key)


def _as_timestamp(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadEvent("bad_timestamp", f"{key!r} must be an epoch number, got {shown(value)}")
    if value <= 0:
        raise BadEvent("bad_timestamp", f"{key!r} must be positive, got {shown(value)}")
    if value >= NANOSECONDS_FROM:
        raise BadEvent("bad_timestamp", f"{key!r} = {shown(value)} is not in ms or µs (nanoseconds?)")
    time_ms = to_epoch_ms(value)
    if time_ms < EARLIEST_MS:
        raise BadEvent("bad_timestamp", f"{key!r} = {shown(value)} is before 2009: wrong unit?")
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
            raise BadEvent("bad_type", f"'side' must be 'buy' or 'sell', got {shown(side)}")
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
        raise BadEvent("bad_interval", f"only 1m klines are accepted, got {shown(interval)}")
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
    return _checked_kline(kline)


def _checked_kline(kline: Kline) -> Kline:
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
    if len(raw) > MAX_LEVELS:
        raise BadEvent("too_many_levels", f"{key!r} holds {len(raw)} levels, more than {MAX_LEVELS}")
    levels = []
    for level in raw:
        if type(level) is not list or len(level) < 2:
            raise BadEvent("bad_type", f"{key!r} must be a list of [price, quantity]")
        levels.append((_as_price(level[0], key), _as_quantity(level[1], key)))
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


# ----------------------------------------------------------------------------------------------------
# Binance's own shapes as typed messages (msgspec): the common case decoded and type-checked in one pass, then
# range-checked by the same functions as above. A message of any other shape (numbers where Binance sends decimal
# strings, spot's bookTicker without "e", snapshots, mark prices, the generic tick) and every refusal go through
# `_parse_checked`, so that the reason of a refusal is the same whichever way the message came in.


class _TradeWire(msgspec.Struct, tag_field="e", tag="trade"):
    E: int
    T: int
    s: str
    t: int
    p: str
    q: str
    m: bool
    X: str = "MARKET"


class _AggTradeWire(msgspec.Struct, tag_field="e", tag="aggTrade"):
    E: int
    T: int
    s: str
    a: int
    p: str
    q: str
    m: bool
    X: str = "MARKET"


class _KlineBody(msgspec.Struct):
    t: int
    T: int
    i: str
    o: str
    h: str
    l: str  # noqa: E741  (Binance's name)
    c: str
    v: str
    x: bool
    q: str | None = None
    n: int | None = None
    V: str | None = None
    Q: str | None = None


class _KlineWire(msgspec.Struct, tag_field="e", tag="kline"):
    E: int
    s: str
    k: _KlineBody


class _BookTickerWire(msgspec.Struct, tag_field="e", tag="bookTicker"):
    s: str
    b: str
    B: str
    a: str
    A: str
    E: int | None = None
    u: int | None = None


class _DepthWire(msgspec.Struct, tag_field="e", tag="depthUpdate"):
    E: int
    s: str
    U: int
    u: int
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    pu: int | None = None


_Wire = _TradeWire | _AggTradeWire | _KlineWire | _BookTickerWire | _DepthWire


class _Combined(msgspec.Struct):
    """Binance's combined-stream wrapper."""

    stream: str
    data: _Wire


_BARE = msgspec.json.Decoder(_Wire)
_COMBINED = msgspec.json.Decoder(_Combined)


def from_wire(raw: bytes | str) -> MarketEvent | None:
    """The event of a message in one of Binance's own shapes, or None (another shape, or a refusal)."""
    try:
        wire = _COMBINED.decode(raw).data if raw[:10] in (b'{"stream":', '{"stream":') else _BARE.decode(raw)
        return _FROM_WIRE[type(wire)](wire)
    except (
        msgspec.DecodeError,
        ValueError,
    ):  # a ValidationError is a DecodeError; BadEvent and bad UTF-8 are ValueErrors
        return None


def _trade_from_wire(w: _TradeWire | _AggTradeWire) -> Trade:
    return Trade(
        symbol=_as_symbol(w.s, "s"),
        event_time_ms=_as_timestamp(w.E, "E"),
        trade_time_ms=_as_timestamp(w.T, "T"),
        trade_id=_as_integer(w.t, "t") if isinstance(w, _TradeWire) else _as_integer(w.a, "a"),
        price=_as_price(w.p, "p"),
        quantity=_as_quantity(w.q, "q"),
        taker_side="sell" if w.m else "buy",
        kind="trade" if isinstance(w, _TradeWire) else "aggTrade",
        regular=w.X == "MARKET",
    )


def _kline_from_wire(w: _KlineWire) -> Kline:
    k = w.k
    if k.i != "1m":
        raise BadEvent("bad_interval", f"only 1m klines are accepted, got {shown(k.i)}")
    return _checked_kline(
        Kline(
            symbol=_as_symbol(w.s, "s"),
            event_time_ms=_as_timestamp(w.E, "E"),
            open_time=_as_timestamp(k.t, "t"),
            close_time=_as_timestamp(k.T, "T"),
            interval=k.i,
            open=_as_price(k.o, "o"),
            high=_as_price(k.h, "h"),
            low=_as_price(k.l, "l"),
            close=_as_price(k.c, "c"),
            volume=_as_quantity(k.v, "v"),
            quote_volume=None if k.q is None else _as_quantity(k.q, "q"),
            trades=None if k.n is None else _as_integer(k.n, "n"),
            taker_buy_base=None if k.V is None else _as_quantity(k.V, "V"),
            taker_buy_quote=None if k.Q is None else _as_quantity(k.Q, "Q"),
            closed=k.x,
        )
    )


def _book_ticker_from_wire(w: _BookTickerWire) -> BookTicker:
    return BookTicker(
        symbol=_as_symbol(w.s, "s"),
        event_time_ms=None if w.E is None else _as_timestamp(w.E, "E"),
        bid_price=_as_price(w.b, "b"),
        bid_qty=_as_quantity(w.B, "B"),
        ask_price=_as_price(w.a, "a"),
        ask_qty=_as_quantity(w.A, "A"),
        update_id=None if w.u is None else _as_integer(w.u, "u"),
    )


def _wire_levels(levels: list[tuple[str, str]], key: str) -> tuple[tuple[float, float], ...]:
    if len(levels) > MAX_LEVELS:
        raise BadEvent("too_many_levels", f"{key!r} holds {len(levels)} levels, more than {MAX_LEVELS}")
    return tuple((_as_price(price, key), _as_quantity(quantity, key)) for price, quantity in levels)


def _depth_from_wire(w: _DepthWire) -> DepthUpdate:
    return DepthUpdate(
        symbol=_as_symbol(w.s, "s"),
        event_time_ms=_as_timestamp(w.E, "E"),
        first_update_id=_as_integer(w.U, "U"),
        last_update_id=_as_integer(w.u, "u"),
        previous_update_id=None if w.pu is None else _as_integer(w.pu, "pu"),
        bids=_wire_levels(w.b, "b"),
        asks=_wire_levels(w.a, "a"),
    )


_FROM_WIRE: dict[type, Callable[[Any], MarketEvent]] = {
    _TradeWire: _trade_from_wire,
    _AggTradeWire: _trade_from_wire,
    _KlineWire: _kline_from_wire,
    _BookTickerWire: _book_ticker_from_wire,
    _DepthWire: _depth_from_wire,
}
