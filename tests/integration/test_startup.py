"""Start-up says what is wrong: a topic the broker refuses to create stops the worker with its name."""

from __future__ import annotations

import subprocess
import sys

from streams.shutdown import EXIT_CONFIGURATION
from tests.integration.conftest import REPO_ROOT


def test_a_topic_the_broker_refuses_stops_start_up_naming_it(worker_env: dict[str, str]) -> None:
    """aiokafka reports refused topics in the response instead of raising: before, a refusal (here a replication
    factor of 3 on a one-broker cluster) went unnoticed and the worker ran on with its topics missing."""
    env = {**worker_env, "MLRISK_KAFKA_REPLICATION_FACTOR": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "worker", "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_CONFIGURATION, done.stderr[-2000:]
    prefix = worker_env["MLRISK_TOPIC_PREFIX"]
    assert f"{prefix}market-data" in done.stderr
    assert "replication" in done.stderr.lower()
