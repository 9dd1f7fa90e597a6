"""Client-side probes of a running worker's HTTP endpoints, for the demo, the bench and the tests."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

import orjson


def health(port: int) -> dict[str, Any] | None:
    """The /health body (also when degraded, 503), or None when the worker does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return orjson.loads(resp.read())
    except urllib.error.HTTPError as error:
        return orjson.loads(error.read())
    except (OSError, ValueError):
        return None


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120.0, log: str = "") -> None:
    """Until the worker has partitions assigned; raise if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited ({proc.returncode}); {log}")
        body = health(port)
        if body is not None and body["checks"]["kafka"]["assigned_partitions"] > 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"the worker was not ready in {timeout_s:.0f} s; {log}")


def metric(port: int, name: str) -> float:
    """The sum of a Prometheus metric's samples over all label sets."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") or line.startswith(name + " ")
    )
