"""The scale bench stops the processes it started beside a worker that then fails to start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.scale import _start_beside
from streams.config import SettingsError


class Beside:
    """Stands for a process already running beside the worker: it records being stopped."""

    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


def test_a_worker_that_fails_to_start_stops_what_runs_beside_it(tmp_path: Path) -> None:
    beside = [Beside(), Beside()]
    env = {**os.environ, "MLRISK_HOME": str(tmp_path), "MLRISK_WORKER_STAGES": "ingest,nonsense"}
    with pytest.raises(SettingsError, match="MLRISK_WORKER_STAGES"):  # a bad setting stops start-up with its name
        _start_beside(beside, env, tmp_path)
    assert [process.stops for process in beside] == [1, 1]
