"""A clean stop: SIGTERM ends the worker within MLRISK_STOP_TIMEOUT_S even when the broker or the database is gone.

Orchestrators kill a process that outlives its grace period (Kubernetes 30 s, Docker 10 s); before the deadline,
a worker whose broker had gone did not exit 40 s after SIGTERM.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from streams.shutdown import EXIT_OK, EXIT_STOP_TIMEOUT
from tests.integration.conftest import PrivateBroker, WorkerProcess, free_port

STOP_TIMEOUT_S = 5


def _stop_seconds(worker: WorkerProcess) -> float:
    assert worker.proc is not None and worker.proc.poll() is None, "the worker must be running before the stop"
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        worker.proc.wait(timeout=STOP_TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        worker.proc.kill()
        pytest.fail(f"the worker was still running {STOP_TIMEOUT_S + 30} s after SIGTERM")
    return time.monotonic() - started


def test_sigterm_with_the_broker_killed_exits_within_the_stop_timeout(
    private_broker: PrivateBroker, worker_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**worker_env, "MLRISK_KAFKA_BROKERS": private_broker.url, "MLRISK_STOP_TIMEOUT_S": str(STOP_TIMEOUT_S)}
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    private_broker.kill()
    time.sleep(2)  # the worker's clients notice the broker gone
    took = _stop_seconds(worker)
    assert took <= STOP_TIMEOUT_S + 3, f"exited {took:.1f} s after SIGTERM"
    assert worker.proc is not None and worker.proc.returncode in (EXIT_OK, EXIT_STOP_TIMEOUT)
    if worker.proc.returncode == EXIT_STOP_TIMEOUT:
        assert "MLRISK_STOP_TIMEOUT_S" in worker.log_path.read_text()


def test_sigterm_with_the_database_unreachable_exits_within_the_stop_timeout(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    # nothing listens on this port: every connection is refused, as with a database server that has stopped
    unreachable = f"postgresql://mlrisk@127.0.0.1:{free_port()}/mlrisk?connect_timeout=2"
    env = {**worker_env, "DATABASE_URL": unreachable, "MLRISK_STOP_TIMEOUT_S": str(STOP_TIMEOUT_S)}
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    time.sleep(3)  # the sink is retrying its connection
    took = _stop_seconds(worker)
    assert took <= STOP_TIMEOUT_S + 3, f"exited {took:.1f} s after SIGTERM"
    assert worker.proc is not None and worker.proc.returncode in (EXIT_OK, EXIT_STOP_TIMEOUT)
