"""Bearer-token authentication for the worker's HTTP server, as one aiohttp middleware.

With MLRISK_API_TOKENS (or MLRISK_API_TOKENS_FILE) set, every route needs `Authorization: Bearer <token>` except
the health checks (orchestrators probe them without credentials) and, unless MLRISK_METRICS_REQUIRE_TOKEN is
true, `/metrics` (Prometheus scrapes it). Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from streams.config import Settings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]

MAX_AUTHORIZATION_CHARS = 1024


def _digest(token: str) -> bytes:
    # equal-length digests: the comparison's time says nothing about a token's length either
    return hashlib.sha256(token.encode()).digest()


def is_open(path: str, settings: Settings) -> bool:
    """Whether `path` is served without a token (never one with dot segments or empty segments: an open prefix
    must not reach another route)."""
    if "/." in path or "//" in path:
        return False
    if path == "/health" or path.startswith("/health/"):
        return True
    return path == "/metrics" and not settings.metrics_require_token


def token_middleware(settings: Settings) -> Middleware | None:
    """The middleware that asks for a token, or None when no tokens are configured (loopback or anonymous by
    choice: `Settings` refuses a non-loopback bind without tokens unless MLRISK_ALLOW_ANONYMOUS is true)."""
    if not settings.api_tokens:
        return None
    digests = [_digest(token) for token in settings.api_tokens]

    def authorised(header: str) -> bool:
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given or len(header) > MAX_AUTHORIZATION_CHARS:
            return False
        candidate = _digest(given.strip())
        # every token compared, without stopping at a match
        return sum(hmac.compare_digest(candidate, digest) for digest in digests) > 0

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_open(request.path, settings) or authorised(request.headers.get("Authorization", "")):
            return await handler(request)
        return web.Response(
            body=orjson.dumps({"error": "authentication required: send Authorization: Bearer <token>"}),
            status=401,
            content_type="application/json",
            headers={"WWW-Authenticate": 'Bearer realm="mlrisk"'},
        )

    return require_token
