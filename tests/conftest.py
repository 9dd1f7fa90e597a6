"""Shared test helpers: where the real market data lives, and no worker process outliving its test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = (REPO_ROOT.parent / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        raise RuntimeError(f"the shared market data is missing at {DATA}")
    return DATA


@pytest.fixture(autouse=True)
def _no_worker_outlives_its_test(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every worker process a test starts is stopped when the test ends, whether the test stops it or fails first:
    a worker left running would load the machine (and hold broker connections) for the rest of the session."""
    from streams.ops.worker_process import WorkerProcess

    started: list[WorkerProcess] = []
    start = WorkerProcess.start

    def tracked(self: WorkerProcess, *args: Any, **kwargs: Any) -> WorkerProcess:
        started.append(self)  # before it starts: one that never gets ready is stopped too
        return start(self, *args, **kwargs)

    monkeypatch.setattr(WorkerProcess, "start", tracked)
    yield
    for worker in started:
        worker.stop(kill=True)
