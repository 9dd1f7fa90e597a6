"""Integration fixtures: the real Kafka broker and PostgreSQL server, and real `mlrisk worker` processes.

Nothing here is mocked: tests talk to the services that `make services-up` (or these fixtures) start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.ops.worker_process import WorkerProcess  # noqa: F401  (the tests import it from here)

REPO_ROOT = Path(__file__).resolve().parents[2]
BROKERS = "localhost:9092"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka() -> str:
    if not _answers("127.0.0.1", 9092):
        subprocess.run([str(REPO_ROOT / "ops" / "kafka" / "kafka.sh"), "start"], check=True)
    return BROKERS


@pytest.fixture(scope="session")
def database_url() -> str:
    from streams.config import Settings
    from streams.sink.db import database_url as url_for
    from streams.sink.db import init_schema

    url = url_for(Settings.from_env())
    init_schema(url)
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a listening TCP socket on `port`, from the kernel's tables."""
    addresses = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                raw = bytes.fromhex(address)
                if width == 8:
                    addresses.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


class PrivateBroker:
    """A broker of a test's own, on free ports, sharing the fetched jars: a test may kill and restart it."""

    def __init__(self, home: Path, auto_create_topics: bool = True) -> None:
        from streams.config import Settings

        (home / "kafka").mkdir(parents=True, exist_ok=True)
        libs = home / "kafka" / "libs"
        if not libs.exists():
            libs.symlink_to(Settings.from_env().home.resolve() / "kafka" / "libs")
        self.home = home
        self.port = free_port()
        self.env = {
            **os.environ,
            "MLRISK_HOME": str(home),
            "MLRISK_KAFKA_PORT": str(self.port),
            "MLRISK_KAFKA_CONTROLLER_PORT": str(free_port()),
            "MLRISK_KAFKA_AUTO_CREATE_TOPICS": "true" if auto_create_topics else "false",
        }
        self.url = f"kafka://localhost:{self.port}"

    def start(self) -> None:
        subprocess.run(
            [str(REPO_ROOT / "ops" / "kafka" / "kafka.sh"), "start"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def kill(self) -> None:
        pid_file = self.home / "kafka" / "kafka.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, ValueError):
                for _ in range(50):  # until it is gone, so that a restart finds its ports free
                    os.kill(int(pid_file.read_text()), 0)
                    time.sleep(0.1)
            pid_file.unlink(missing_ok=True)


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path / "broker-home")
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def topic_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def worker_env(kafka: str, database_url: str, topic_prefix: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLRISK_TOPIC_PREFIX=topic_prefix,
        MLRISK_WEB_PORT=str(free_port()),
        MLRISK_HOME=str(tmp_path / "home"),
        MLRISK_PARTITIONS="2",
        DATABASE_URL=database_url,
        MLRISK_LOG_LEVEL="warn",
    )
    return env


@pytest.fixture
def start_worker(worker_env: dict[str, str], tmp_path: Path) -> Any:
    """Start a worker with these settings over `worker_env`; every one is stopped when the test ends (by
    `_no_worker_outlives_its_test` in tests/conftest.py, as any worker a test starts)."""
    logs = itertools.count()

    def start(**overrides: str) -> WorkerProcess:
        return WorkerProcess({**worker_env, **overrides}, tmp_path / f"worker-{next(logs)}.log").start()

    return start


async def consume_all(
    topic: str,
    expected: int | None,
    timeout_s: float,
    idle_s: float = 5.0,
    into: list[Any] | None = None,
    brokers: str = BROKERS,
) -> list[Any]:
    """Read a topic from the beginning until `expected` messages arrived, or nothing new for `idle_s`.

    `into`: the list to append to as messages arrive, so that another thread can watch the progress."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    messages: list[Any] = [] if into is None else into
    try:
        deadline = time.monotonic() + timeout_s
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            fresh = [m for records in batch.values() for m in records]
            if fresh:
                messages.extend(fresh)
                last_new = time.monotonic()
            if expected is not None and len(messages) >= expected:
                # keep listening briefly so that duplicates would show up
                if time.monotonic() - last_new > 2.0:
                    break
            elif expected is None and messages and time.monotonic() - last_new > idle_s:
                break
    finally:
        await consumer.stop()
    return messages


def read_topic(topic: str, expected: int | None, timeout_s: float = 120.0, into: list[Any] | None = None) -> list[Any]:
    return asyncio.run(consume_all(topic, expected, timeout_s, into=into))


async def produce(topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=BROKERS, linger_ms=5, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def replay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "replay", "--quiet", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Quick models trained once per session on real BTCUSDT bars (never committed)."""
    from models.training.train import train_cli

    out = tmp_path_factory.mktemp("models")
    train_cli(REPO_ROOT.parent / "shared" / "data", "BTCUSDT", out, quick=True, progress=False)
    return out
