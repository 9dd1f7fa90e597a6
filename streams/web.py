"""The HTTP API under /ml-risk: signals on demand and from the database, performance, risk, regime; OpenAPI.

Errors are JSON `{"error": ...}` with a 4xx status; bad input never gives a 500.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np
import orjson
import psycopg
from aiohttp import ClientTimeout
from aiohttp import web as aiohttp_web
from faust import web

from models.bars import Bar
from models.data import FIELDS as BAR_FIELDS
from models.engine import SignalEngine, SymbolState
from risk.portfolio import historical_var, parametric_var
from streams import metrics
from streams.config import parse_symbol
from streams.ingest.events import EARLIEST_MS, MAX_PRICE, MAX_QUANTITY, NANOSECONDS_FROM
from streams.runtime import Runtime, Serving
from streams.signals.stage import DECAY_IC, DECAY_MIN_RESOLVED, decode_state

log = logging.getLogger("mlrisk.api")

MAX_LIMIT = 1000
_LIMIT = re.compile(r"[0-9]{1,4}")
MAX_BARS = 1_440  # a day: about four times what the features and the longest model window need (~380)
MAX_BAR_AHEAD_MS = 60_000  # a given bar may be the minute in the making, no later
SCORING_THREADS = 1  # scoring given bars runs here, off the event loop that also serves ingest
MAX_SCORING_IN_FLIGHT = 4  # running or waiting for the thread; more is answered 429
SCORING_TIMEOUT_S = 15.0  # a maximal request scores in about a second
PERFORMANCE_WINDOW = timedelta(days=30)
# the window's newest hour is read from the raw rows, the rest from the hourly aggregate: rows written late (a
# replay's) below what the aggregate has materialised count before its next refresh (every 10 minutes) has seen them
RAW_WINDOW = timedelta(hours=1)
# per signal type: count, mean confidence, mean risk score; parameters: start, split, split, end
PERFORMANCE_SQL = (
    "SELECT signal_type, sum(n)::BIGINT, sum(confidence) / sum(n), sum(risk) / NULLIF(sum(risk_n), 0) "
    "FROM (SELECT signal_type, signals AS n, confidence_sum AS confidence, risk_score_sum AS risk, "
    "risk_scored AS risk_n FROM signals_hourly WHERE bucket >= %s AND bucket < %s "
    "UNION ALL SELECT signal_type, 1, confidence_score, risk_score, (risk_score IS NOT NULL)::INT "
    "FROM actionable_trade_signals WHERE timestamp >= %s AND timestamp < %s) AS window_rows "
    "GROUP BY signal_type ORDER BY signal_type"
)


def performance_window(
    signals: Iterable[dict[str, Any]], now: datetime | None = None
) -> tuple[datetime, datetime, datetime]:
    """The signal counts' window as (start, split, end): the 30 days up to the stream's clock (the newest bar this
    worker turned into a signal, so that a replay of past days reports on them; the wall clock before any), from
    an hour boundary; the hourly aggregate answers [start, split), the raw rows [split, end)."""
    closes = [s["bar_close_time"] for s in signals]
    end = datetime.fromtimestamp((max(closes) + 1) / 1000, UTC) if closes else (now or datetime.now(UTC))
    hour = end.replace(minute=0, second=0, microsecond=0)
    return hour - PERFORMANCE_WINDOW, hour - RAW_WINDOW, end


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(view: web.View, body: Any, status: int = 200) -> web.Response:
    return view.bytes(
        orjson.dumps(body, default=_default, option=orjson.OPT_SERIALIZE_NUMPY),
        content_type="application/json",
        status=status,
    )


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(type(value).__name__)


def _symbol(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadRequest(400, "'symbol' must be a non-empty string such as BTCUSDT or BTC/USDT")
    symbol = parse_symbol(raw)
    if symbol is None:
        raise BadRequest(400, f"not a symbol (2 to 20 ASCII letters and digits): {raw[:40]!r}")
    return symbol


def _finite(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRequest(422, f"bar field {name!r} must be a number")
    if isinstance(value, str) and (len(value) > 64 or not value.isascii()):
        raise BadRequest(422, f"bar field {name!r} must be a number")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise BadRequest(422, f"bar field {name!r} must be a number") from None
    if not math.isfinite(number):
        raise BadRequest(422, f"bar field {name!r} must be finite")
    return number


def _in_range(value: Any, name: str, low: float, high: float) -> float:
    number = _finite(value, name)
    if not low <= number <= high:
        raise BadRequest(422, f"bar field {name!r} must be in {low:g}..{high:g}, got {number:g}")
    return number


def _open_time(value: Any, now_ms: int) -> int:
    """Epoch ms or µs (by magnitude, as on market-data), from 2009 to the minute in the making."""
    raw = _finite(value, "open_time")
    if not 0 < raw < NANOSECONDS_FROM:
        raise BadRequest(422, "bar field 'open_time' must be epoch milliseconds or microseconds")
    open_time = int(raw) // 1000 if raw >= 10**14 else int(raw)
    if not EARLIEST_MS <= open_time <= now_ms + MAX_BAR_AHEAD_MS:
        raise BadRequest(422, f"bar field 'open_time' must be between 2009 and now, got {open_time}")
    return open_time


def _bars_from_body(symbol: str, raw: Any, now_ms: int) -> list[Bar]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest(422, "'bars' must be a non-empty list of 1-minute bars, oldest first")
    if len(raw) > MAX_BARS:
        raise BadRequest(422, f"at most {MAX_BARS} bars, got {len(raw)}")
    bars = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequest(422, f"bars[{i}] must be an object")
        for name in ("open_time", "open", "high", "low", "close", "volume"):
            if name not in item:
                raise BadRequest(422, f"bars[{i}] lacks {name!r}")
        open_time = _open_time(item["open_time"], now_ms)
        prices = [_finite(item[n], n) for n in ("open", "high", "low", "close")]
        if (
            min(prices) <= 0
            or max(prices) >= MAX_PRICE
            or not prices[2] <= min(prices[0], prices[3]) <= max(prices[0], prices[3]) <= prices[1]
        ):
            raise BadRequest(422, f"bars[{i}] prices must be in (0, {MAX_PRICE:g}) with low <= open, close <= high")
        optional = {
            n: _in_range(item[n], n, 0, MAX_QUANTITY * MAX_PRICE if "quote" in n else MAX_QUANTITY)
            for n in ("quote_volume", "taker_buy_base", "taker_buy_quote")
            if item.get(n) is not None
        }
        if item.get("trades") is not None:
            optional["trades"] = _in_range(item["trades"], "trades", 0, 2**31 - 1)
        bars.append(
            Bar(
                symbol,
                open_time - open_time % 60_000,
                prices[0],
                prices[1],
                prices[2],
                prices[3],
                _in_range(item["volume"], "volume", 0, MAX_QUANTITY),
                optional.get("quote_volume"),
                None if "trades" not in optional else int(optional["trades"]),
                optional.get("taker_buy_base"),
                optional.get("taker_buy_quote"),
            )
        )
    if any(b.open_time <= a.open_time for a, b in zip(bars, bars[1:], strict=False)):
        raise BadRequest(422, "bars must be in increasing open_time order")
    return bars


ROUTED_HEADER = "X-Mlrisk-Routed"  # set on a request one worker passes to another: it is answered, never passed on
ROUTE_TIMEOUT_S = 10.0


class Api:
    """The API's answers over the worker's runtime: each handler returns (status, body) or raises BadRequest.

    A symbol's live state lives on the worker of the group that owns its partition; a request for a symbol this
    worker does not keep is passed to that worker (as Faust's table routing does) and its answer returned.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.scoring = ThreadPoolExecutor(max_workers=SCORING_THREADS, thread_name_prefix="api-scoring")
        self.in_flight = 0  # scoring jobs handed to the thread and not yet finished (a timed-out one still counts)

    @property
    def serving(self) -> Serving:
        if self.runtime.serving is None:
            raise BadRequest(503, "the worker is starting; try again")
        return self.runtime.serving

    def state_of(self, symbol: str) -> SymbolState | None:
        blob = self.runtime.tables["engine_state"].get(symbol)
        return None if blob is None else decode_state(blob)

    async def answer(self, view: web.View, handler: Callable[[], Awaitable[tuple[int, Any]]]) -> web.Response:
        """Run a handler; every error is a JSON answer: 4xx for what the client sent, 503 for what is away or
        failed here (logged), never a 500."""
        try:
            status, body = await handler()
            return _json(view, body, status)
        except BadRequest as error:
            status, message = error.status, error.message
        except aiohttp_web.HTTPException as error:  # raised by aiohttp itself: a body above its 1 MiB limit
            status, message = error.status, error.reason
        except (psycopg.Error, TimeoutError, ConnectionError) as error:
            log.warning("%s %s: a service is away (%r)", view.__class__.__name__, error.__class__.__name__, error)
            status, message = 503, "a service this answer needs is unavailable; try again"
        except Exception:
            log.exception("%s failed", view.__class__.__name__)
            metrics.ERRORS.labels("api").inc()
            status, message = 503, "the request could not be answered; the error is logged"
        metrics.API_REJECTED.labels(str(status)).inc()
        return _json(view, {"error": message}, status)

    async def from_owner(self, request: web.Request, symbol: str, body: bytes | None) -> tuple[int, Any] | None:
        """The answer of the worker that keeps `symbol`'s state, when that is another one; None when it is this
        worker, when the request was passed here already, or while partitions are not assigned."""
        if request.headers.get(ROUTED_HEADER):
            return None
        app = self.runtime.app
        changelog = self.runtime.tables["engine_state"].changelog_topic.get_topic_name()
        try:  # the state's partition is the bars' partition of the symbol: the raw key's
            owner = app.assignor.key_store(changelog, symbol.encode())
        except (KeyError, AttributeError):
            return None
        here = app.conf.canonical_url
        if (owner.host, owner.port) == (here.host, here.port) or not owner.host:
            return None
        headers = {name: request.headers[name] for name in ("Authorization", "Content-Type") if name in request.headers}
        headers[ROUTED_HEADER] = "1"
        url = request.url.with_host(owner.host).with_port(owner.port)
        async with app.http_client.request(
            request.method, url, headers=headers, data=body, timeout=ClientTimeout(total=ROUTE_TIMEOUT_S)
        ) as response:
            return response.status, orjson.loads(await response.read())

    def check_capacity(self) -> None:
        if self.in_flight >= MAX_SCORING_IN_FLIGHT:
            raise BadRequest(429, f"{self.in_flight} requests are being scored; try again shortly")

    def score_bars(self, engine: SignalEngine | None, symbol: str, raw_bars: Any, now_ms: int) -> dict[str, Any]:
        """Validate the given bars and score the last of them alone (in the scoring thread: a day of bars costs
        the loop nothing this way, neither their checks nor the model). Bad bars are a 422 even without models."""
        bars = _bars_from_body(symbol, raw_bars, now_ms)
        if engine is None:
            raise BadRequest(409, "no trained models are loaded")
        state = engine.new_state(symbol)
        signal = None
        for bar in bars:
            signal = engine.on_bar(state, bar) or signal
        if (
            signal is None
            or state.last_close_time != bars[-1].close_time
            or signal["bar_close_time"] != bars[-1].close_time
        ):
            raise BadRequest(
                422,
                f"too few bars for the features: {len(bars)} given, the models need about "
                f"{engine.window + 100} consecutive minutes",
            )
        signal_dict: dict[str, Any] = signal
        return signal_dict

    async def score_off_loop(self, symbol: str, raw_bars: Any) -> dict[str, Any]:
        engine = self.serving.engine
        self.check_capacity()
        self.in_flight += 1
        job = asyncio.get_running_loop().run_in_executor(
            self.scoring, self.score_bars, engine, symbol, raw_bars, int(time.time() * 1000)
        )

        def done(_: Any) -> None:
            self.in_flight -= 1

        job.add_done_callback(done)
        try:
            return await asyncio.wait_for(asyncio.shield(job), SCORING_TIMEOUT_S)
        except TimeoutError:
            raise BadRequest(503, f"scoring took longer than {SCORING_TIMEOUT_S:g} s; try again") from None

    async def generate_signal(self, request: web.Request) -> tuple[int, Any]:
        # the driver's request is aiohttp's; a browser's plain form post cannot send application/json
        if getattr(request, "content_type", None) != "application/json":
            raise BadRequest(415, "the body must be JSON, sent as Content-Type: application/json")
        self.check_capacity()  # before the body is read: a full queue costs the loop nothing more
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BadRequest(400, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise BadRequest(400, "the body must be a JSON object")
        symbol = _symbol(body.get("symbol"))
        if "bars" in body:
            return 200, await self.score_off_loop(symbol, body["bars"])
        serving = self.serving
        if serving.engine is None or serving.stage is None:
            raise BadRequest(409, "no trained models are loaded")
        signal = serving.stage.last_signals.get(symbol)
        if signal is None:
            state = self.state_of(symbol)
            if state is None:
                routed = await self.from_owner(request, symbol, raw)
                if routed is not None:
                    return routed
                raise BadRequest(404, f"unknown symbol {symbol}: no bars seen")
            signal = state.recent[-1] if state.recent else None
        if signal is None:
            raise BadRequest(409, f"{symbol} is not warmed up yet")
        return 200, signal

    async def signals(self, request: web.Request, symbol: str) -> tuple[int, Any]:
        name = _symbol(symbol)
        raw_limit = request.query.get("limit", "50")
        if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:  # ASCII: "²" is a digit
            raise BadRequest(400, f"'limit' must be an integer in 1..{MAX_LIMIT}")
        since = request.query.get("since")
        since_at = None
        if since is not None:
            try:
                since_at = datetime.fromisoformat(since[:64].replace("Z", "+00:00"))
            except ValueError:
                raise BadRequest(400, "'since' must be an ISO 8601 time") from None
            if since_at.tzinfo is None:  # read as UTC, not in the database session's time zone
                since_at = since_at.replace(tzinfo=UTC)
        rows = await self.serving.sink.query(
            "SELECT to_jsonb(s) FROM actionable_trade_signals s WHERE symbol = %s "
            "AND (%s::timestamptz IS NULL OR timestamp >= %s::timestamptz) "
            "ORDER BY timestamp DESC, id DESC LIMIT %s",
            (name, since_at, since_at, int(raw_limit)),
        )
        return 200, {"symbol": name, "signals": [r[0] for r in rows]}

    async def performance(self) -> tuple[int, Any]:
        serving = self.serving
        stage, account = serving.stage, serving.broker.account
        start, split, end = performance_window(stage.last_signals.values() if stage else ())
        rows = await serving.sink.query(PERFORMANCE_SQL, (start, split, split, end))
        books = [b.book for b in account.books.values()]
        trades = sum(b.trades for b in books)
        return 200, {
            "models": stage.tracker.report() if stage else {},
            "drift": stage.drift.report() if stage else None,
            "decay": {"decayed": stage.tracker.decayed, "threshold_ic": DECAY_IC, "min_outcomes": DECAY_MIN_RESOLVED}
            if stage
            else None,
            "model_version": serving.bundle.version if serving.bundle else None,
            "paper": {
                "equity_usdt": account.equity_usdt(),
                "pnl_usdt": account.equity_usdt() - account.initial_equity_usdt,
                "drawdown": account.drawdown(),
                "trades": trades,
                "win_rate": sum(b.wins for b in books) / trades if trades else None,
                "fees_usdt": sum(b.fees_paid_usdt for b in books),
                "liquidations": sum(b.liquidations for b in books),
            },
            "signals_by_type": {t: n for t, n, _, _ in rows},
            "signals": {
                "from": start,
                "to": end,
                "by_type": {
                    t: {"count": n, "mean_confidence": confidence, "mean_risk_score": risk}
                    for t, n, confidence, risk in rows
                },
            },
        }

    def symbol_risk(self, symbol: str, signal: dict[str, Any]) -> dict[str, Any]:
        """A symbol's risk score and level, its paper position and that position's distance to liquidation."""
        book = self.serving.broker.account.books.get(symbol)
        price = book.last_price if book else signal["entry_price"]
        position = book.book.position if book else None
        distance = None
        if position is not None and position.liquidation_price > 0 and price > 0:
            distance = abs(price - position.liquidation_price) / price
        return {
            "risk_score": signal["risk_score"],
            "risk_level": signal["risk_level"],
            "liquidation_distance": distance,
            "position": None
            if position is None
            else {
                "side": position.side,
                "notional_usdt": position.notional_usdt,
                "leverage": position.leverage,
                "liquidation_price": position.liquidation_price,
            },
        }

    async def risk_analysis(self) -> tuple[int, Any]:
        serving = self.serving
        account, stage = serving.broker.account, serving.stage
        equity = account.equity_usdt()
        positions = account.positions()
        exposure = sum(p.notional_usdt for p in positions)
        margin = sum(p.margin_usdt for p in positions)
        last = stage.last_signals if stage else {}
        sigmas = [s["metadata"]["regime_indicators"].get("sigma_1m") for s in last.values()]
        sigma = float(np.mean([s for s in sigmas if s])) if any(sigmas) else None
        pnl = [b.book.realised_pnl_usdt for b in account.books.values()]
        pnl_returns = (np.diff(pnl) / equity).tolist() if len(pnl) > 20 else []
        return 200, {
            "equity_usdt": equity,
            "gross_exposure_usdt": exposure,
            "margin_used_usdt": margin,
            "margin_use": margin / equity if equity > 0 else None,
            "drawdown": account.drawdown(),
            "var_95_usdt": {
                "parametric_1h": parametric_var(sigma * math.sqrt(60), 1.0, 0.95) * exposure if sigma else 0.0,
                "historical": historical_var(pnl_returns, 0.95) * equity if pnl_returns else None,
            },
            "trading_state": account.portfolio(int(datetime.now().timestamp() * 1000)).trading_state,
            "symbols": {symbol: self.symbol_risk(symbol, signal) for symbol, signal in last.items()},
        }

    async def market_regime(self, request: web.Request) -> tuple[int, Any]:
        symbol = _symbol(request.query.get("symbol"))
        stage = self.serving.stage
        signal = stage.last_signals.get(symbol) if stage else None
        state = self.state_of(symbol)
        if signal is None and state is not None and state.recent:
            signal = state.recent[-1]
        if signal is None and state is None:
            routed = await self.from_owner(request, symbol, None)
            if routed is not None:
                return routed
        if signal is None:
            raise BadRequest(404, f"unknown symbol {symbol}: no decision yet")
        regime = state.regime if state is not None else None
        return 200, {
            "symbol": symbol,
            "market_regime": signal["market_regime"],
            "as_of": signal["timestamp"],
            "indicators": signal["metadata"]["regime_indicators"],
            "hysteresis": None if regime is None else {"candidate": regime.candidate, "count": regime.count},
        }


class ApiView(web.View):
    """A view of the API; `register_api` gives the class its `Api`."""

    api: ClassVar[Api]


class GenerateSignal(ApiView):
    async def post(self, request: web.Request) -> web.Response:
        return await self.api.answer(self, lambda: self.api.generate_signal(request))


class Signals(ApiView):
    async def get(self, request: web.Request, symbol: str) -> web.Response:
        return await self.api.answer(self, lambda: self.api.signals(request, symbol))


class Performance(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        return await self.api.answer(self, self.api.performance)


class RiskAnalysis(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        return await self.api.answer(self, self.api.risk_analysis)


class MarketRegime(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        return await self.api.answer(self, lambda: self.api.market_regime(request))


class OpenApi(ApiView):
    async def get(self, request: web.Request) -> web.Response:
        return _json(self, OPENAPI)


ROUTES: tuple[tuple[str, type[ApiView]], ...] = (
    ("/ml-risk/generate-signal", GenerateSignal),
    ("/ml-risk/signals/{symbol}", Signals),
    ("/ml-risk/performance", Performance),
    ("/ml-risk/risk-analysis", RiskAnalysis),
    ("/ml-risk/market-regime", MarketRegime),
    ("/openapi.json", OpenApi),
)


def register_api(runtime: Runtime) -> Api:
    """Serve the API's routes from the runtime's app."""
    api = Api(runtime)
    ApiView.api = api
    for path, view in ROUTES:
        runtime.app.page(path)(view)
    return api


def _error_responses(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "mlrisk", "version": "1", "description": "Actionable trading signals with risk controls."},
    "paths": {
        "/ml-risk/generate-signal": {
            "post": {
                "summary": "A signal from the live state of a symbol, or from the given recent 1-minute bars",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["symbol"],
                                "properties": {
                                    "symbol": {"type": "string", "example": "BTCUSDT"},
                                    "bars": {"type": "array", "items": {"$ref": "#/components/schemas/Bar"}},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "ActionableTradeSignal"},
                    **_error_responses(400, 404, 409, 415, 422, 429, 503),
                },
            }
        },
        "/ml-risk/signals/{symbol}": {
            "get": {
                "summary": "Recent signals from the database, newest first",
                "parameters": [
                    {"name": "symbol", "in": "path", "required": True, "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                ],
                "responses": {"200": {"description": "signals"}, **_error_responses(400)},
            }
        },
        "/ml-risk/performance": {
            "get": {
                "summary": "Per-model hit rate and IC, paper PnL, signals by type",
                "responses": {"200": {"description": "performance"}},
            }
        },
        "/ml-risk/risk-analysis": {
            "get": {
                "summary": "Exposure, margin, VaR, drawdown, per-symbol risk",
                "responses": {"200": {"description": "risk"}},
            }
        },
        "/ml-risk/market-regime": {
            "get": {
                "summary": "Regime of a symbol with the indicators behind it",
                "parameters": [{"name": "symbol", "in": "query", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "regime"}, **_error_responses(400, 404)},
            }
        },
        "/health": {
            "get": {
                "summary": "Readiness with every component's progress",
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "stalled: the components and why"},
                },
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Readiness (the same answer as /health)",
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "stalled: the components and why"},
                },
            }
        },
        "/health/live": {
            "get": {"summary": "Liveness: the process answers", "responses": {"200": {"description": "alive"}}}
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
    },
    "components": {
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
            "Bar": {
                "type": "object",
                "required": ["open_time", "open", "high", "low", "close", "volume"],
                "properties": {n: {"type": "number"} for n in BAR_FIELDS},
            },
        }
    },
}
