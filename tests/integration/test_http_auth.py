"""The worker's HTTP server with API tokens: every /ml-risk route answers 401 without or with a wrong token and
serves with a right one; health checks and /metrics stay open; the tokens never reach the log, even at debug."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.ops.probe import metric
from tests.integration.conftest import WorkerProcess, free_port, listening_addresses, replay

TOKENS = ("first-api-token-0123456789abcdef", "second-api-token-fedcba9876543210")
WRONG = "wrong-api-token-00000000000000000"
ROUTES = [  # (method, path, body): each answers 200 once the worker has seen BTCUSDT's bars
    ("POST", "/ml-risk/generate-signal", b'{"symbol": "BTC/USDT"}'),
    ("GET", "/ml-risk/signals/BTCUSDT?limit=5", None),
    ("GET", "/ml-risk/performance", None),
    ("GET", "/ml-risk/risk-analysis", None),
    ("GET", "/ml-risk/market-regime?symbol=BTCUSDT", None),
    ("GET", "/openapi.json", None),
]


def _call(
    port: int, method: str, path: str, body: bytes | None, authorization: str | None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            raw = resp.read()
            return resp.status, dict(resp.headers), json.loads(raw) if path != "/metrics" else raw
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture(scope="module")
def token_worker(
    kafka: str, database_url: str, model_dir: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Any:
    """A worker reachable on every interface, with two tokens and debug logging, warmed up on real bars (every
    decision published, so that BTCUSDT has a latest signal)."""
    tmp = tmp_path_factory.mktemp("http-auth")
    env = {
        **os.environ,
        "MLRISK_TOPIC_PREFIX": f"auth{int(time.time() * 1000)}-",
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_HOME": str(tmp / "home"),
        "MLRISK_PARTITIONS": "1",
        "DATABASE_URL": database_url,
        "MLRISK_MODEL_DIR": str(model_dir),
        "MLRISK_WEB_BIND": "0.0.0.0",
        "MLRISK_API_TOKENS": ",".join(TOKENS),
        "MLRISK_LOG_LEVEL": "debug",
        "MLRISK_PUBLISH_HOLD": "true",
    }
    worker = WorkerProcess(env, tmp / "worker.log").start()
    replay(
        env,
        "--data",
        str(data_dir),
        "--source",
        "bars",
        "--symbols",
        "BTCUSDT",
        "--start",
        "2024-10-14T00:00",
        "--end",
        "2024-10-14T07:00",
    )
    deadline = time.monotonic() + 120
    while metric(worker.port, "mlrisk_signals_total") < 10 and time.monotonic() < deadline:
        time.sleep(0.5)
    yield worker
    worker.stop()


def test_the_bind_setting_reaches_the_socket(token_worker: WorkerProcess) -> None:
    assert listening_addresses(token_worker.port) == {"0.0.0.0"}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_every_route_needs_a_right_token(
    token_worker: WorkerProcess, method: str, path: str, body: bytes | None
) -> None:
    port = token_worker.port
    for authorization in (None, f"Bearer {WRONG}", f"Basic {TOKENS[0]}", "Bearer ", f"Bearer {TOKENS[0]}x"):
        status, headers, answer = _call(port, method, path, body, authorization)
        assert status == 401, (authorization, answer)
        assert "error" in answer and headers["WWW-Authenticate"].startswith("Bearer")
    for token in TOKENS:
        status, _, answer = _call(port, method, path, body, f"Bearer {token}")
        assert status == 200, answer


def test_health_and_metrics_stay_open(token_worker: WorkerProcess) -> None:
    status, _, body = _call(token_worker.port, "GET", "/health", None, None)
    assert status in (200, 503) and "checks" in body
    status, _, text = _call(token_worker.port, "GET", "/metrics", None, None)
    assert status == 200 and b"mlrisk_bars_closed_total" in text


def test_tokens_never_reach_the_log(token_worker: WorkerProcess) -> None:
    for authorization in (f"Bearer {TOKENS[1]}", f"Bearer {WRONG}"):
        _call(token_worker.port, "GET", "/ml-risk/performance", None, authorization)
    log = token_worker.log_path.read_text(errors="replace")
    assert "[DEBUG]" in log  # debug logging was on
    for secret in (*TOKENS, WRONG):
        assert secret not in log
