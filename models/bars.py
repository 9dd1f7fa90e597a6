"""The 1-minute bar: the unit that flows from ingest to features, models, risk and the backtest."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, overload

MINUTE_MS = 60_000
DAY_MS = 1440 * MINUTE_MS


@dataclass(frozen=True, slots=True)
class Bar:
    """One closed 1-minute bar of one symbol, in exchange event time.

    `quote_volume`, `trades`, `taker_buy_base` and `taker_buy_quote` are None when the source does not carry
    them (the 6-column OHLCV layout); code that needs them degrades instead of inventing them.
    """

    symbol: str
    open_time: int  # epoch ms, start of the minute
    open: float
    high: float
    low: float
    close: float
    volume: float
    quote_volume: float | None = None
    trades: int | None = None
    taker_buy_base: float | None = None
    taker_buy_quote: float | None = None

    @property
    def close_time(self) -> int:
        """Last millisecond of the minute, as Binance reports it."""
        return self.open_time + MINUTE_MS - 1

    @property
    def halted(self) -> bool:
        """A flat, zero-volume minute: the exchange was not trading, so it carries no price information."""
        return self.volume == 0 and self.high == self.low

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bar:
        return cls(
            symbol=str(data["symbol"]),
            open_time=int(data["open_time"]),
            open=float(data["open"]),
            high=float(data["high"]),
            low=float(data["low"]),
            close=float(data["close"]),
            volume=float(data["volume"]),
            quote_volume=_opt_float(data.get("quote_volume")),
            trades=None if data.get("trades") is None else int(data["trades"]),
            taker_buy_base=_opt_float(data.get("taker_buy_base")),
            taker_buy_quote=_opt_float(data.get("taker_buy_quote")),
        )


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def to_epoch_ms(timestamp: int | float) -> int:
    """Normalise an epoch timestamp in seconds, milliseconds, microseconds or nanoseconds to milliseconds.

    The unit is told by magnitude: Binance switched its spot dumps from ms to µs on 2025-01-01, and recorded
    captures stamp lines in µs or ns.
    """
    value = int(timestamp)
    if value >= 10**17:
        return value // 1_000_000
    if value >= 10**14:
        return value // 1_000
    if value >= 10**11:
        return value
    return value * 1_000


@overload
def parse_iso_ms(text: str) -> int: ...
@overload
def parse_iso_ms(text: None) -> None: ...
def parse_iso_ms(text: str | None) -> int | None:
    """ISO 8601 date or date-time (UTC when no zone is given) → epoch ms; None stays None."""
    if text is None:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@lru_cache(maxsize=4096, typed=True)
def iso_utc(epoch_ms: int) -> str:
    """Epoch ms → ISO 8601 UTC with a Z (`2024-07-19T00:01:00Z`); milliseconds only when present.

    Kept for the last few thousand times: every symbol's signal of a minute carries the same one."""
    text = datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if epoch_ms % 1000:
        text += f".{epoch_ms % 1000:03d}"
    return text + "Z"
