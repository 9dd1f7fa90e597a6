"""Binance's REST market-data endpoints within the IP's request-weight budget.

Each request reserves its documented weight from a one-minute budget kept here and corrected by the
`X-MBX-USED-WEIGHT-1M` header Binance returns; a 429 (rate limit) or 418 (IP ban) stops every request until the
`Retry-After` it sends has passed. Server errors and network failures are retried with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import aiohttp
import orjson

from streams.feed import metrics
from streams.feed.venues import Venue

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # a 5,000-level snapshot is under 1 MB
MAX_ATTEMPTS = 6
BUDGET_SHARE = 0.8  # leave a fifth of the IP's weight to anything else sharing it


class RestError(RuntimeError):
    """A REST call that failed for good (after retries, or with a client error)."""


class BinanceRest:
    """One HTTP session to a venue's REST API."""

    def __init__(self, venue: Venue, base_url: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self.venue = venue
        self.base_url = base_url.rstrip("/")
        headers = {"X-MBX-APIKEY": api_key} if api_key else {}
        self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s))
        self._minute = 0
        self._used_weight = 0
        self._blocked_until = 0.0  # monotonic time before which no request may be sent (429/418)

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._session.close()

    async def depth_snapshot(self, symbol: str) -> dict[str, Any]:
        """The order book at `depth_limit` levels a side, with its `lastUpdateId`."""
        body = await self.get(
            self.venue.depth_path, {"symbol": symbol, "limit": self.venue.depth_limit}, self.venue.depth_weight
        )
        if not isinstance(body, dict) or not isinstance(body.get("lastUpdateId"), int):
            raise RestError(f"depth snapshot of {symbol} without lastUpdateId")
        if not isinstance(body.get("bids"), list) or not isinstance(body.get("asks"), list):
            raise RestError(f"depth snapshot of {symbol} without bids and asks")
        return body

    async def trades_from(self, symbol: str, from_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Trades with id >= from_id, oldest first (historicalTrades)."""
        body = await self.get(
            self.venue.trades_path, {"symbol": symbol, "fromId": from_id, "limit": limit}, self.venue.trades_weight
        )
        return _list_of_objects(body, "historicalTrades")

    async def agg_trades_from(self, symbol: str, from_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        """Aggregate trades with id >= from_id, oldest first."""
        body = await self.get(
            self.venue.agg_trades_path,
            {"symbol": symbol, "fromId": from_id, "limit": limit},
            self.venue.agg_trades_weight,
        )
        return _list_of_objects(body, "aggTrades")

    async def get(self, path: str, params: dict[str, Any], weight: int) -> Any:
        """GET a JSON body, waiting for weight and retrying what is worth retrying."""
        for attempt in range(MAX_ATTEMPTS):
            await self._reserve(weight)
            try:
                async with self._session.get(self.base_url + path, params=params) as response:
                    self._note_used_weight(response.headers.get("X-MBX-USED-WEIGHT-1M"))
                    if response.status in (418, 429):
                        retry_after_s = _retry_after_s(response.headers.get("Retry-After"))
                        metrics.REST_LIMITED.labels(status=str(response.status)).inc()
                        log.warning("REST %s answered %s: waiting %.0f s", path, response.status, retry_after_s)
                        self._blocked_until = max(self._blocked_until, time.monotonic() + retry_after_s)
                        continue
                    if response.status >= 500:
                        raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > MAX_RESPONSE_BYTES:
                            raise RestError(f"REST {path} answered more than {MAX_RESPONSE_BYTES} bytes")
                    if response.status != 200:
                        raise RestError(f"REST {path} answered {response.status}: {body[:200]!r}")
                    return orjson.loads(bytes(body))
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as error:
                metrics.REST_ERRORS.inc()
                delay_s = min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())
                log.warning("REST %s failed (%s); retrying in %.1f s", path, error, delay_s)
                await asyncio.sleep(delay_s)
        raise RestError(f"REST {path} failed {MAX_ATTEMPTS} times")

    async def _reserve(self, weight: int) -> None:
        while True:
            now = time.monotonic()
            if now < self._blocked_until:
                await asyncio.sleep(self._blocked_until - now)
                continue
            minute = int(time.time() // 60)
            if minute != self._minute:
                self._minute, self._used_weight = minute, 0
            if self._used_weight + weight <= self.venue.weight_per_minute * BUDGET_SHARE:
                self._used_weight += weight
                return
            await asyncio.sleep(60.0 - time.time() % 60 + 0.05)

    def _note_used_weight(self, header: str | None) -> None:
        if header is not None and header.isdigit():
            self._used_weight = max(self._used_weight, int(header))


def _retry_after_s(header: str | None) -> float:
    if header is not None and header.strip().isdigit():
        return min(float(header), 3600.0)
    return 60.0  # Binance always sends it; without one, wait a full weight window


def _list_of_objects(body: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(body, list) or not all(isinstance(item, dict) for item in body):
        raise RestError(f"{what} answered something other than a list of objects")
    return body
