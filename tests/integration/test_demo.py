"""`make demo` as a new user runs it: the whole system on two real days of two symbols, then its summary."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streams.config import Settings
from tests.integration.conftest import REPO_ROOT

DATA = REPO_ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.integration


def _figure(summary: str, label: str) -> str:
    match = re.search(rf"^  {label} +(.+)$", summary, re.M)
    assert match is not None, f"no {label!r} in the summary:\n{summary}"
    return match.group(1)


def test_demo_decides_every_bar_and_stores_what_it_publishes(worker_env: dict[str, str], model_dir: Path) -> None:
    env = {**worker_env, "MLRISK_MODEL_DIR": str(model_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "streams.ops.demo", "--data", str(DATA)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("\nsummary") :]
    # two whole days of 1-minute klines of BTCUSDT and ETHUSDT, every one a closed bar
    assert _figure(summary, "events in") == "5760" and _figure(summary, "bars closed") == "5760"
    decided = re.fullmatch(r"(\d+) \(hold (\d+), published (\d+)\)", _figure(summary, "decisions"))
    assert decided is not None
    total, holds, published = (int(n) for n in decided.groups())
    # the first bars of each symbol warm the features up; every later bar is decided
    assert 5_000 <= total <= 5_760 and holds + published == total
    by_type = re.fullmatch(r"(\{.*\}) \(database: (\{.*\})\)", _figure(summary, "signals by type"))
    assert by_type is not None
    seen, stored = (ast.literal_eval(text) for text in by_type.groups())
    assert seen == stored and sum(seen.values()) == published


def test_a_worker_without_a_port_setting_serves_on_the_default_one(tmp_path: Path) -> None:
    from streams.ops.worker_process import WorkerProcess

    env = {"PATH": "/usr/bin:/bin"}
    assert WorkerProcess(env, tmp_path / "worker.log").port == Settings.from_env(env).web_port == 6066
