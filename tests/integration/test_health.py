"""Health from progress: break each component for real, /health/ready turns 503 naming it, and 200 once repaired.

Before, /health said ok while nothing moved: the Kafka check was "a producer object exists", ingest's "its task
is alive" (true while it retried a refused publication for ever), and a worker without a loadable model version
was not a failed check at all when the version was corrupt: it died at start-up instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.registry import CURRENT_FILE, METADATA_FILE, current_version
from tests.integration.conftest import REPO_ROOT, PrivateBroker, WorkerProcess, free_port

DETECT_S = 15  # the bound: a broken component is named within this
RECOVER_S = 90  # clients reconnect with backoff: repair shows within this


def ready(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def wait_for(port: int, status: int, timeout_s: float, naming: str | None = None) -> tuple[float, dict[str, Any]]:
    """Seconds until /health/ready answers `status` (503: with `naming` among the stalled components)."""
    started = time.monotonic()
    body: dict[str, Any] = {}
    while time.monotonic() - started < timeout_s:
        code, body = ready(port)
        if code == status and (naming is None or any(r.startswith(naming + ":") for r in body["stalled"])):
            return time.monotonic() - started, body
        time.sleep(0.5)
    raise AssertionError(f"/health/ready did not answer {status} naming {naming} in {timeout_s} s: {body}")


def _worker_env(base: dict[str, str], model_dir: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    models = tmp_path / "models"
    version = current_version(model_dir)
    shutil.copytree(model_dir / version, models / version)
    (models / CURRENT_FILE).write_text(version + "\n")
    return {**base, "MLRISK_MODEL_DIR": str(models), "MLRISK_MODEL_POLL_S": "1", "MLRISK_HEALTH_STALL_S": "8", **extra}


def test_live_answers_and_ready_names_a_corrupt_model_version_until_it_is_repaired(
    worker_env: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    env = _worker_env(worker_env, model_dir, tmp_path)
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    wait_for(worker.port, 200, RECOVER_S)
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/health/live", timeout=5) as resp:
        assert resp.status == 200
    models = Path(env["MLRISK_MODEL_DIR"])
    version = current_version(models)
    broken = models / "broken"
    shutil.copytree(models / version, broken)
    (broken / METADATA_FILE).write_bytes(b'{"truncated": ')
    (models / CURRENT_FILE).write_text("broken\n")
    took, body = wait_for(worker.port, 503, DETECT_S, naming="models")
    assert "broken" in body["checks"]["models"]["reason"]
    (broken / METADATA_FILE).write_bytes((models / version / METADATA_FILE).read_bytes())  # repaired in place
    wait_for(worker.port, 200, RECOVER_S)
    assert body["checks"]["kafka"]["ok"] and body["checks"]["sink"]["ok"], "only the models were broken"


def test_ready_names_a_refused_dead_letter_topic_then_a_dead_broker_and_recovers_from_both(
    worker_env: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    broker = PrivateBroker(tmp_path / "broker-home", auto_create_topics=False)
    broker.start()
    try:
        env = _worker_env(worker_env, model_dir, tmp_path, MLRISK_KAFKA_BROKERS=broker.url)
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        wait_for(worker.port, 200, RECOVER_S)
        dlq = env["MLRISK_TOPIC_PREFIX"] + "market-data-dlq"
        servers = f"localhost:{broker.port}"

        async def admin(action: str) -> None:
            client = AIOKafkaAdminClient(bootstrap_servers=servers)
            await client.start()
            try:
                if action == "delete":
                    await client.delete_topics([dlq])
                else:
                    await client.create_topics([NewTopic(dlq, 2, 1)])
            finally:
                await client.close()

        async def send_garbage() -> None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(env["MLRISK_TOPIC_PREFIX"] + "market-data", b"not json", key=b"BTCUSDT")
            finally:
                await producer.stop()

        # the dead-letter topic gone and the broker creating none: every dead letter is refused
        asyncio.run(admin("delete"))
        asyncio.run(send_garbage())
        took, body = wait_for(worker.port, 503, DETECT_S + 60, naming="ingest")
        asyncio.run(admin("create"))
        wait_for(worker.port, 200, RECOVER_S)

        broker.kill()
        took, body = wait_for(worker.port, 503, DETECT_S, naming="kafka")
        assert took <= DETECT_S
        broker.start()
        wait_for(worker.port, 200, RECOVER_S)
    finally:
        broker.kill()


def _db(env: dict[str, str], action: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "db", action],
        cwd=REPO_ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def test_ready_names_a_stopped_database_and_recovers_when_it_is_back(
    worker_env: dict[str, str], model_dir: Path, tmp_path: Path
) -> None:
    if os.environ.get("DATABASE_URL"):
        pytest.skip("the database is external (DATABASE_URL): this test runs an embedded server of its own")
    db_env = {k: v for k, v in worker_env.items() if k != "DATABASE_URL"}
    db_env.update(MLRISK_HOME=str(tmp_path / "db-home"), MLRISK_PG_PORT=str(free_port()))
    _db(db_env, "init")
    try:
        env = _worker_env(db_env, model_dir, tmp_path)
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        wait_for(worker.port, 200, RECOVER_S)
        _db(db_env, "stop")
        took, body = wait_for(worker.port, 503, DETECT_S, naming="sink")
        assert took <= DETECT_S and "database" in body["checks"]["sink"]["reason"]
        _db(db_env, "init")
        wait_for(worker.port, 200, RECOVER_S)
    finally:
        _db(db_env, "stop")
