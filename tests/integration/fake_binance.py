"""A local server that imitates Binance's market-data protocol, playing recorded websocket captures.

Websocket `/stream?streams=a/b/...` sends the combined-stream messages of the captures (`../shared/data/binance-*-ws`)
in their receive order, paced by their receive times at `speed` x real time; each connection gets the messages
played while it is open, as at the exchange. The REST depth endpoint answers the book as it stands at the current
point of the playback (the capture's snapshot plus the diffs played since), and historicalTrades the trades played
so far, by id. Faults are injected by the test: dropped connections (refused for a while), a server-initiated
close, a withheld depth diff, silent connections, and 429 answers with `Retry-After`.

This is test code: it follows Binance's documented messages and rules, not the exchange's implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSCloseCode, web

from models.bars import to_epoch_ms


@dataclass(slots=True)
class Line:
    receive_ms: int
    symbol: str
    kind: str  # trade, depth, bookTicker, markPrice, ...
    data: dict[str, Any]
    data_bytes: bytes


@dataclass(slots=True)
class Capture:
    """The captures of some symbols on consecutive days: lines in receive order, one REST snapshot per symbol."""

    lines: list[Line]
    snapshots: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, files: list[Path], futures: bool, start_s: float = 0.0, duration_s: float | None = None) -> Capture:
        lines: list[Line] = []
        snapshots: dict[str, dict[str, Any]] = {}
        for path in files:
            symbol = path.name.split("_", 1)[0].upper()
            with gzip.open(path, "rb") as handle:
                for raw in handle:
                    stamp, _, payload = raw.strip().partition(b" ")
                    message = orjson.loads(payload)
                    if "lastUpdateId" in message:
                        snapshots[symbol] = message
                        continue
                    stream: str = message["stream"]
                    data_bytes = payload[payload.index(b'"data":') + 7 : payload.rindex(b"}")]
                    lines.append(
                        Line(to_epoch_ms(int(stamp)), symbol, stream.split("@")[1], message["data"], data_bytes)
                    )
        lines.sort(key=lambda line: line.receive_ms)  # stable: one file's lines keep their order
        first = lines[0].receive_ms + start_s * 1000
        last = first + duration_s * 1000 if duration_s is not None else float("inf")
        # a window that starts later begins from the book as it stood then
        books = {symbol: ServerBook(futures, snapshot) for symbol, snapshot in snapshots.items()}
        for line in lines:
            if line.receive_ms >= first:
                break
            if line.kind == "depth" and line.symbol in books:
                books[line.symbol].apply(line.data)
        snapshots = {symbol: book.rest_body() for symbol, book in books.items()}
        return cls([line for line in lines if first <= line.receive_ms < last], snapshots)


@dataclass(slots=True)
class ServerBook:
    """The exchange's book: the capture's snapshot, then every diff played (levels kept as the exchange's strings)."""

    futures: bool
    snapshot: dict[str, Any]
    bids: dict[str, str] = field(default_factory=dict)
    asks: dict[str, str] = field(default_factory=dict)
    last_update_id: int = 0
    started: bool = False
    event_ms: int = 0

    def apply(self, diff: dict[str, Any]) -> None:
        if not self.started:
            snapshot_id = self.snapshot["lastUpdateId"]
            if diff["u"] < snapshot_id or (not self.futures and diff["u"] == snapshot_id):
                return  # already in the snapshot (Binance's rule for the venue)
            self.bids = {p: q for p, q in self.snapshot["bids"]}
            self.asks = {p: q for p, q in self.snapshot["asks"]}
            self.started = True
        for side, levels in ((self.bids, diff["b"]), (self.asks, diff["a"])):
            for price, quantity in levels:
                if float(quantity) == 0:
                    side.pop(price, None)
                else:
                    side[price] = quantity
        self.last_update_id = diff["u"]
        self.event_ms = diff["E"]

    def rest_body(self) -> dict[str, Any]:
        if not self.started:
            return self.snapshot
        body: dict[str, Any] = {"lastUpdateId": self.last_update_id}
        if self.futures:
            body.update(E=self.event_ms, T=self.event_ms)
        body["bids"] = [[p, q] for p, q in sorted(self.bids.items(), key=lambda kv: -float(kv[0]))]
        body["asks"] = [[p, q] for p, q in sorted(self.asks.items(), key=lambda kv: float(kv[0]))]
        return body


MAX_QUEUED = 5_000  # messages a client may fall behind before the server drops it, as Binance drops slow readers


@dataclass(eq=False)
class Client:
    ws: web.WebSocketResponse
    wanted: dict[tuple[str, str], str]  # (symbol, kind) → the stream name the client asked for
    silent: bool = False
    queue: asyncio.Queue[str] = field(default_factory=lambda: asyncio.Queue(MAX_QUEUED))


class FakeBinance:
    """Plays a capture to websocket clients and answers REST, with faults on demand."""

    def __init__(self, capture: Capture, futures: bool, speed: float) -> None:
        self.capture = capture
        self.futures = futures
        self.speed = speed
        self.books = {s: ServerBook(futures, snap) for s, snap in capture.snapshots.items()}
        self.trades: dict[str, list[dict[str, Any]]] = {}
        self.trade_index: dict[str, dict[int, int]] = {}
        self.clients: list[Client] = []
        self.position = 0  # lines played
        self.refuse_until = 0.0
        self.withhold_depth: set[str] = set()
        self.withheld: list[tuple[str, int]] = []
        self.limit_next = 0
        self.slow_dropped = 0  # clients dropped for falling behind
        self.served_from: dict[str, int] = {}  # symbol → the oldest trade id historicalTrades serves
        self.rest_calls: dict[str, int] = {}
        self.finished = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._player: asyncio.Task[None] | None = None
        self.port = 0

    # --- lifecycle
    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/stream", self._stream)
        prefix = "/fapi/v1" if self.futures else "/api/v3"
        app.router.add_get(f"{prefix}/depth", self._depth)
        app.router.add_get(f"{prefix}/historicalTrades", self._historical_trades)
        app.router.add_get(f"{prefix}/aggTrades", self._agg_trades)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"127.0.0.1:{self.port}"

    def play(self) -> None:
        self._player = asyncio.create_task(self._play())

    async def stop(self) -> None:
        if self._player is not None:
            self._player.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._player
        for client in list(self.clients):
            await client.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_played(self, share: float) -> None:
        while self.position < share * len(self.capture.lines):
            await asyncio.sleep(0.02)

    async def wait_clients(self, count: int = 1) -> None:
        while sum(not c.silent for c in self.clients) < count:
            await asyncio.sleep(0.02)

    # --- faults
    async def drop(self, refuse_s: float) -> None:
        """Cut every connection without a close frame, and refuse new ones for `refuse_s` (of wall time)."""
        self.refuse_until = time.monotonic() + refuse_s
        for client in list(self.clients):
            self._abort(client)

    def _abort(self, client: Client) -> None:
        transport = client.ws._req.transport if client.ws._req is not None else None  # noqa: SLF001
        if transport is not None:
            transport.abort()
        with contextlib.suppress(ValueError):
            self.clients.remove(client)

    async def close_all(self) -> None:
        """A server-initiated close frame, as at Binance's 24-hour limit."""
        clients, self.clients = list(self.clients), []
        for client in clients:
            await client.ws.close(code=WSCloseCode.GOING_AWAY, message=b"24h")

    def silence(self) -> None:
        """The open connections stay open and get nothing more."""
        for client in self.clients:
            client.silent = True

    def forget_trades(self, symbol: str) -> None:
        """historicalTrades no longer serves the trades played so far (as the exchange's retention would)."""
        rows = self.trades.get(symbol, [])
        self.served_from[symbol] = rows[-1]["id"] + 1 if rows else 0

    def skip_depth(self, symbol: str) -> None:
        """The next depth diff of `symbol` is not sent (the book still changes)."""
        self.withhold_depth.add(symbol)

    # --- playback
    async def _play(self) -> None:
        lines = self.capture.lines
        started = time.monotonic()
        first_ms = lines[0].receive_ms
        for index, line in enumerate(lines):
            delay = (line.receive_ms - first_ms) / 1000 / self.speed - (time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            self._advance(line)
            withheld = line.kind == "depth" and line.symbol in self.withhold_depth
            if withheld:
                self.withhold_depth.discard(line.symbol)
                self.withheld.append((line.symbol, line.data["u"]))
            else:
                for client in list(self.clients):
                    stream = client.wanted.get((line.symbol, line.kind))
                    if stream is None or client.silent or client.ws.closed:
                        continue
                    payload = b'{"stream":"' + stream.encode() + b'","data":' + line.data_bytes + b"}"
                    try:
                        client.queue.put_nowait(payload.decode())
                    except asyncio.QueueFull:
                        self.slow_dropped += 1
                        self._abort(client)
            self.position = index + 1
        self.finished.set()

    def _advance(self, line: Line) -> None:
        if line.kind == "depth" and line.symbol in self.books:
            self.books[line.symbol].apply(line.data)
        elif line.kind == "trade":
            rows = self.trades.setdefault(line.symbol, [])
            self.trade_index.setdefault(line.symbol, {})[line.data["t"]] = len(rows)
            row = {
                "id": line.data["t"],
                "price": line.data["p"],
                "qty": line.data["q"],
                "quoteQty": f"{float(line.data['p']) * float(line.data['q']):.8f}",
                "time": line.data["T"],
                "isBuyerMaker": line.data["m"],
            }
            if not self.futures:
                row["isBestMatch"] = True
            rows.append(row)

    # --- websocket
    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self.refuse_until:
            raise web.HTTPServiceUnavailable()
        wanted: dict[tuple[str, str], str] = {}
        for name in request.query.get("streams", "").split("/"):
            symbol, _, channel = name.partition("@")
            wanted[(symbol.upper(), channel.split("@")[0])] = name
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        client = Client(ws, wanted)
        self.clients.append(client)
        sender = asyncio.create_task(self._send(client))
        with contextlib.suppress(Exception):
            async for _ in ws:
                pass  # a market-data connection ignores what the client sends
        sender.cancel()
        with contextlib.suppress(ValueError):
            self.clients.remove(client)
        return ws

    @staticmethod
    async def _send(client: Client) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            while True:
                await client.ws.send_str(await client.queue.get())  # Binance sends text frames

    # --- REST
    def _limited(self, name: str) -> web.Response | None:
        self.rest_calls[name] = self.rest_calls.get(name, 0) + 1
        if self.limit_next > 0:
            self.limit_next -= 1
            return web.Response(status=429, headers={"Retry-After": "1"}, text='{"code":-1003}')
        return None

    async def _depth(self, request: web.Request) -> web.Response:
        limited = self._limited("depth")
        if limited is not None:
            return limited
        book = self.books[request.query["symbol"]]
        return web.Response(
            body=orjson.dumps(book.rest_body()), content_type="application/json", headers={"X-MBX-USED-WEIGHT-1M": "20"}
        )

    async def _historical_trades(self, request: web.Request) -> web.Response:
        limited = self._limited("historicalTrades")
        if limited is not None:
            return limited
        symbol = request.query["symbol"]
        from_id = int(request.query["fromId"])
        limit = min(int(request.query.get("limit", "500")), 1000)
        rows = self.trades.get(symbol, [])
        from_id = max(from_id, self.served_from.get(symbol, 0))
        start = self.trade_index.get(symbol, {}).get(from_id)
        if start is None:  # older than the capture, or not traded yet
            start = 0 if rows and from_id < rows[0]["id"] else len(rows)
        return web.Response(
            body=orjson.dumps(rows[start : start + limit]),
            content_type="application/json",
            headers={"X-MBX-USED-WEIGHT-1M": "25"},
        )

    async def _agg_trades(self, request: web.Request) -> web.Response:
        limited = self._limited("aggTrades")
        return limited or web.Response(body=b"[]", content_type="application/json")
