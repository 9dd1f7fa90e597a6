"""Trades a disconnection missed, fetched from REST by id and shaped as the websocket would have sent them.

`trade` streams are back-filled from historicalTrades, `aggTrade` streams from aggTrades, both paged by `fromId`
(1,000 a page). A back-filled message is the combined-stream wrapper around the websocket event, with the trade
time as its event time; consumers cannot tell it from a live one but by `"backfill": true` in the wrapper.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from streams.feed.rest import BinanceRest

PAGE = 1000


def trade_message(symbol: str, stream: str, row: dict[str, Any], futures: bool) -> tuple[int, bytes]:
    """A historicalTrades row as the `trade` websocket message; (trade id, bytes)."""
    trade_id, time_ms = int(row["id"]), int(row["time"])
    data: dict[str, Any] = {
        "e": "trade",
        "E": time_ms,
        "T": time_ms,
        "s": symbol,
        "t": trade_id,
        "p": str(row["price"]),
        "q": str(row["qty"]),
        "m": bool(row["isBuyerMaker"]),
    }
    if not futures:
        data["M"] = bool(row.get("isBestMatch", True))
    return trade_id, orjson.dumps({"stream": stream, "data": data, "backfill": True})


def agg_trade_message(symbol: str, stream: str, row: dict[str, Any], futures: bool) -> tuple[int, bytes]:
    """An aggTrades row as the `aggTrade` websocket message; (aggregate id, bytes)."""
    agg_id, time_ms = int(row["a"]), int(row["T"])
    data: dict[str, Any] = {
        "e": "aggTrade",
        "E": time_ms,
        "s": symbol,
        "a": agg_id,
        "p": str(row["p"]),
        "q": str(row["q"]),
        "f": int(row["f"]),
        "l": int(row["l"]),
        "T": time_ms,
        "m": bool(row["m"]),
    }
    if not futures:
        data["M"] = bool(row.get("M", True))
    return agg_id, orjson.dumps({"stream": stream, "data": data, "backfill": True})


async def missed(
    rest: BinanceRest, symbol: str, kind: str, stream: str, from_id: int, until_id: int | None, max_trades: int
) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Pages of (id, message) for ids from `from_id` up to `until_id` (exclusive; None: up to the latest).

    Stops after `max_trades`. The caller compares the ids with what it asked for: a first id above `from_id`
    means the exchange no longer serves the older trades.
    """
    fetch = rest.trades_from if kind == "trade" else rest.agg_trades_from
    shape = trade_message if kind == "trade" else agg_trade_message
    next_id, fetched = from_id, 0
    while fetched < max_trades and (until_id is None or next_id < until_id):
        rows = await fetch(symbol, next_id, PAGE)
        page = [shape(symbol, stream, row, rest.venue.futures) for row in rows]
        page = [(i, m) for i, m in page if i >= next_id and (until_id is None or i < until_id)]
        if not page:
            return
        page.sort(key=lambda item: item[0])
        page = page[: max_trades - fetched]
        fetched += len(page)
        next_id = page[-1][0] + 1
        yield page
        if len(rows) < PAGE:
            return  # caught up with the latest trade
