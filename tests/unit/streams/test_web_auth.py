"""The token middleware on a real aiohttp server on 127.0.0.1: what stays open, and MLRISK_METRICS_REQUIRE_TOKEN."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.error
import urllib.request

from aiohttp import web

from streams.config import REPO_ROOT, Settings
from streams.web_auth import token_middleware

TOKEN = "unit-test-token-0123456789"


async def _statuses(settings: Settings, paths: list[str], authorization: str | None) -> list[int]:
    middleware = token_middleware(settings)
    app = web.Application(middlewares=[middleware] if middleware else [])

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    for path in ("/health", "/health/live", "/metrics", "/ml-risk/performance", "/router"):
        app.router.add_get(path, ok)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def get(path: str) -> int:
        headers = {"Authorization": authorization} if authorization else {}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers), timeout=5
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as error:
            return error.code

    try:
        return [await asyncio.to_thread(get, path) for path in paths]
    finally:
        await runner.cleanup()


PATHS = ["/health", "/health/live", "/metrics", "/ml-risk/performance", "/router", "/health/../ml-risk/performance"]


def test_health_and_metrics_open_everything_else_asks() -> None:
    settings = Settings.from_env({"MLRISK_API_TOKENS": TOKEN})
    assert asyncio.run(_statuses(settings, PATHS, None)) == [200, 200, 200, 401, 401, 401]
    assert asyncio.run(_statuses(settings, PATHS, f"bearer {TOKEN}")) == [200, 200, 200, 200, 200, 404]


def test_metrics_behind_the_token_when_asked() -> None:
    settings = Settings.from_env({"MLRISK_API_TOKENS": TOKEN, "MLRISK_METRICS_REQUIRE_TOKEN": "true"})
    assert asyncio.run(_statuses(settings, ["/health", "/metrics"], None)) == [200, 401]
    assert asyncio.run(_statuses(settings, ["/metrics"], f"Bearer {TOKEN}")) == [200]


def test_no_tokens_no_check() -> None:
    assert token_middleware(Settings.from_env({})) is None


def test_worker_refuses_a_public_bind_without_tokens() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "worker"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MLRISK_WEB_BIND": "0.0.0.0", "MLRISK_HOME": "/nonexistent"},
    )
    assert result.returncode == 2
    assert "MLRISK_WEB_BIND" in result.stderr and "MLRISK_ALLOW_ANONYMOUS" in result.stderr
