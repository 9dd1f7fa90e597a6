"""100,000 junk symbols against a real worker: its memory stays within 50 MB of what it used before them.

Without the symbol cap every new name made a market view, bar state, changelog records and metric series:
20,000 one-tick junk symbols cost 804 B each in ingest alone and grew /metrics to 2.7 MB, without bound.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from streams.ops.probe import metric
from tests.integration.conftest import produce

JUNK = 100_000
MAX_RSS_GROWTH_BYTES = 50 * 1024 * 1024


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _metrics_bytes(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return len(resp.read())


def test_a_hundred_thousand_junk_symbols_leave_the_worker_within_50_mb(
    start_worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    worker = start_worker(MLRISK_MODEL_DIR=str(tmp_path / "no-models"))
    assert worker.proc is not None
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    now = int(time.time() * 1000)
    # a clean worker that has taken some input: the same kind of ticks for the symbols it keeps
    warm = [
        (f"WARM{i:03d}".encode(), orjson.dumps({"symbol": f"WARM{i:03d}", "ts": now, "price": 1.5, "qty": 1}))
        for i in range(50)
    ]
    asyncio.run(produce(prefix + "market-data", warm))
    deadline = time.monotonic() + 60
    while metric(worker.port, "mlrisk_events_in_total") < len(warm) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(2)
    clean_rss, clean_metrics = _rss_bytes(worker.proc.pid), _metrics_bytes(worker.port)

    now = int(time.time() * 1000)
    junk = [
        (f"J{i:07d}".encode(), orjson.dumps({"symbol": f"J{i:07d}", "ts": now, "price": 1.5, "qty": 1}))
        for i in range(JUNK)
    ]
    asyncio.run(produce(prefix + "market-data", junk))
    refused = JUNK - (300 - len(warm))  # MLRISK_MAX_SYMBOLS defaults to 300
    deadline = time.monotonic() + 120
    while metric(worker.port, "mlrisk_events_rejected_total") < refused and time.monotonic() < deadline:
        time.sleep(1)
    assert metric(worker.port, "mlrisk_events_rejected_total") == refused
    time.sleep(2)

    assert worker.proc.poll() is None
    growth = _rss_bytes(worker.proc.pid) - clean_rss
    assert growth < MAX_RSS_GROWTH_BYTES, f"RSS grew {growth / 2**20:.1f} MB"
    assert _metrics_bytes(worker.port) < clean_metrics + 300 * 2_000  # a few series for each kept symbol
