"""One combined-stream websocket, kept alive: reconnect with jittered backoff, silence detection, rotation.

aiohttp answers the server's pings (autoping). A connection that delivers no message for `silence_s` is
replaced, as is one the server closes or that fails. Before Binance's 24-hour limit the connection is
rotated with an overlap: a new one is opened and read into a buffer while the old one goes on delivering; the
switch happens once each stream's first message on the new connection has been delivered by the old one (or
after OVERLAP_LIMIT_S), and the buffered messages then pass the same duplicate check as every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Protocol

import aiohttp

from streams.feed import metrics

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a depth diff with 1,226 levels is about 40 KB
MAX_URL_CHARS = 8_000  # web servers commonly refuse longer request lines
OVERLAP_LIMIT_S = 10.0
MAX_OVERLAP_MESSAGES = 100_000
BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 60.0
CONNECT_TIMEOUT_S = 15.0
POLL_S = 0.2  # how often a reader blocked on an idle socket checks whether it should stop


class Overflow(RuntimeError):
    """The publish buffer stayed full too long: this connection's messages can no longer be kept in order."""


class MessageHandler(Protocol):
    """What a connection hands its messages to (the feed's router)."""

    async def handle(self, raw: bytes) -> None:
        """One message, in the order received."""

    def published(self, raw: bytes) -> tuple[str, bool] | None:
        """(stream, whether this message was already published), or None for a message without a stream."""

    async def catch_up(self, streams: list[str]) -> None:
        """Before a new connection's messages: what was missed since the last message published."""

    async def wait_drained(self) -> None:
        """Until Kafka has acknowledged what was handed over (after an Overflow)."""


def stream_url(base_url: str, streams: list[str]) -> str:
    """Binance's combined-stream URL for these stream names."""
    return f"{base_url}/stream?streams={'/'.join(streams)}"


class StreamConnection:
    """The websocket for one group of streams, alive until `stop()`."""

    def __init__(
        self,
        name: str,
        base_url: str,
        streams: list[str],
        handler: MessageHandler,
        silence_s: float,
        rotate_after_s: float,
    ) -> None:
        self.name = name
        self.url = stream_url(base_url, streams)
        self.streams = streams
        self.handler = handler
        self.silence_s = silence_s
        self.rotate_after_s = rotate_after_s
        self.connected = False
        self.last_message_at = time.monotonic()  # of the last message received on any connection of this group
        self._opened_at = 0.0
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False

    async def run(self) -> None:
        """Connect, read, reconnect, until stopped."""
        self._session = aiohttp.ClientSession()
        failures = 0  # consecutive failed attempts to connect
        empty = 0  # consecutive connections that ended without delivering a message
        try:
            while not self._stopping:
                try:
                    ws = await self._connect()
                except (aiohttp.ClientError, TimeoutError, OSError) as error:
                    failures += 1
                    delay_s = backoff_s(failures + empty)
                    log.warning("%s: connecting failed (%s); retrying in %.1f s", self.name, error, delay_s)
                    await asyncio.sleep(delay_s)
                    continue
                failures = 0
                cause, delivered = await self._read(ws)
                self.connected = False
                metrics.CONNECTIONS.dec()
                if self._stopping:
                    break
                metrics.RECONNECTS.labels(cause=cause).inc()
                if cause == "overflow":
                    await self.handler.wait_drained()  # reconnecting before Kafka is back would only overflow again
                # a connection that delivered reconnects at once; one closed before delivering backs off more each
                # time (Binance may ban an IP it keeps disconnecting)
                empty = 0 if delivered else empty + 1
                delay_s = backoff_s(empty) if empty else 0.0
                log.warning("%s: connection ended (%s); reconnecting in %.1f s", self.name, cause, delay_s)
                await asyncio.sleep(delay_s)
        finally:
            await self._session.close()

    async def stop(self) -> None:
        """Stop after the message in hand (the run loop checks between messages)."""
        self._stopping = True

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        assert self._session is not None
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            ws = await self._session.ws_connect(
                self.url,
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                receive_timeout=None,
            )
        self.connected = True
        self._opened_at = time.monotonic()
        metrics.CONNECTS.inc()
        metrics.CONNECTIONS.inc()
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> tuple[str, bool]:
        """Read until the connection must be replaced; (cause, whether it delivered anything). The handler
        first catches up on what was missed before the connection (a reconnection, a restart)."""
        opened_at = time.monotonic()
        delivered = False
        try:
            await self.handler.catch_up(self.streams)
            while not self._stopping:
                if time.monotonic() - opened_at >= self.rotate_after_s:
                    rotated = await self._rotate(ws)
                    if rotated is not None:
                        await ws.close()
                        ws, opened_at = rotated, time.monotonic()
                        metrics.RECONNECTS.labels(cause="rotate").inc()
                        continue
                    opened_at = time.monotonic() - self.rotate_after_s + OVERLAP_LIMIT_S  # try again soon
                try:
                    message = await ws.receive(timeout=min(self.silence_s, POLL_S * 5))
                except TimeoutError:
                    if time.monotonic() - max(self.last_message_at, self._opened_at) >= self.silence_s:
                        return "silent", delivered
                    continue
                raw = _payload(message)
                if raw is None:
                    return ("closed" if message.type in _CLOSED else "error"), delivered
                self.last_message_at = time.monotonic()
                delivered = True
                await self.handler.handle(raw)
            return "stopped", delivered
        except Overflow:
            return "overflow", delivered
        except aiohttp.ClientError:
            return "error", delivered
        except Exception:  # a bug must cost a reconnection (counted), never the connection's task
            log.exception("%s: handling a message failed", self.name)
            return "error", delivered
        finally:
            with contextlib.suppress(Exception):
                await ws.close()

    async def _rotate(self, old: aiohttp.ClientWebSocketResponse) -> aiohttp.ClientWebSocketResponse | None:
        """Open the successor, keep publishing from `old` until they overlap, then hand over; None on failure."""
        try:
            new = await self._connect()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            log.warning("%s: opening the successor connection failed (%s)", self.name, error)
            return None
        metrics.CONNECTIONS.dec()  # one logical connection; the gauge counts it once
        buffered: list[bytes] = []
        first_seen: dict[str, bytes] = {}
        failed = asyncio.Event()

        async def read_new() -> None:
            while len(buffered) < MAX_OVERLAP_MESSAGES:
                raw = _payload(await new.receive())
                if raw is None:
                    failed.set()
                    return
                buffered.append(raw)
                seen = self.handler.published(raw)
                if seen is not None:
                    first_seen.setdefault(seen[0], raw)

        reader = asyncio.create_task(read_new())
        old_streams: set[str] = set()
        deadline = time.monotonic() + OVERLAP_LIMIT_S
        try:
            while time.monotonic() < deadline and not failed.is_set() and not reader.done():
                if old_streams and all(s in first_seen and self._was_published(first_seen[s]) for s in old_streams):
                    break
                try:
                    message = await old.receive(timeout=POLL_S)
                except TimeoutError:
                    continue
                raw = _payload(message)
                if raw is None:
                    break  # the old one ended: the new one takes over at once
                self.last_message_at = time.monotonic()
                seen = self.handler.published(raw)
                if seen is not None:
                    old_streams.add(seen[0])
                await self.handler.handle(raw)
            if failed.is_set() or new.closed:
                await new.close()
                return None
        except BaseException:
            await new.close()
            raise
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        try:
            for raw in buffered:
                await self.handler.handle(raw)
        except BaseException:
            await new.close()
            raise
        log.info("%s: rotated with %d overlapping messages", self.name, len(buffered))
        return new

    def _was_published(self, raw: bytes) -> bool:
        seen = self.handler.published(raw)
        return seen is not None and seen[1]


_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


def _payload(message: aiohttp.WSMessage) -> bytes | None:
    if message.type == aiohttp.WSMsgType.TEXT:
        return message.data.encode() if isinstance(message.data, str) else bytes(message.data)
    if message.type == aiohttp.WSMsgType.BINARY:
        return bytes(message.data)
    return None


def backoff_s(failures: int) -> float:
    """Exponential in the number of consecutive failures, with jitter so that many feeds do not retry at once."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(failures, 16)) * (0.5 + random.random())
