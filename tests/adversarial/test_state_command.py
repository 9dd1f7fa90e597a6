"""`mlrisk state show|reset SYMBOL` on the real broker: a poisoned bar state is seen, removed, and the symbol
starts afresh.

Without it, a state that slipped through (here: a watermark in 2100, as one far-future kline used to leave)
stayed in the compacted state topic for good: every restart restored it, and the symbol's genuine trades after
it closed a bar per trade. The only way out was deleting the topic, every symbol's state with it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from models.bars import Bar
from streams.config import REPO_ROOT
from tests.adversarial.conftest import SYMBOL, feed
from tests.adversarial.test_worker import _retimed_spot_trades
from tests.integration.conftest import consume_all, produce, read_topic

YEAR_2100_MS = 4_102_444_800_000


def _state(env: dict[str, str], action: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "state", action, "btc/usdt"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown: dict[str, Any] = orjson.loads(done.stdout)
    return shown


def test_a_poisoned_symbol_state_is_shown_reset_and_rebuilt(
    data_dir: Path, start_worker: Any, worker_env: dict[str, str], tmp_path: Path
) -> None:
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    state_topic = f"mlrisk-{prefix}-ingest-state"
    genuine, _ = _retimed_spot_trades(data_dir)
    half = len(genuine) // 2
    key = SYMBOL.encode()
    worker = start_worker(MLRISK_MODEL_DIR=str(tmp_path / "no-models"))
    asyncio.run(produce(prefix + "market-data", [(key, raw) for raw in genuine[:half]]))
    assert read_topic(prefix + "bars", 1, timeout_s=60)
    worker.stop()

    # something slipped through: the symbol's latest state says its stream is in 2100
    latest = [m for m in asyncio.run(consume_all(state_topic, None, 30, idle_s=2)) if m.key == key][-1]
    record = orjson.loads(latest.value)
    record["state"]["watermark_ms"] = YEAR_2100_MS
    asyncio.run(produce(state_topic, [(key, orjson.dumps(record))]))

    shown = _state(worker_env, "show")
    assert shown["symbol"] == SYMBOL
    assert shown["state"][state_topic]["watermark"].startswith("2100-01-01")
    _state(worker_env, "reset")
    assert _state(worker_env, "show")["state"] == {}

    before = {m.value for m in read_topic(prefix + "bars", 1, timeout_s=10)}
    start_worker(MLRISK_MODEL_DIR=str(tmp_path / "no-models"))
    asyncio.run(produce(prefix + "market-data", [(key, raw) for raw in genuine[half:]]))
    expected = feed([(raw, key, orjson.loads(raw)["data"]["E"] + 50) for raw in genuine[half:]]).bars
    bars = [
        Bar.from_dict(orjson.loads(m.value))
        for m in read_topic(prefix + "bars", len(before) + len(expected), timeout_s=90)
        if m.value not in before
    ]
    assert bars[-len(expected) :] == expected
