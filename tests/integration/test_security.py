"""The secured broker of `kafka.sh start-secure` (SASL_SSL with SCRAM-SHA-512, mutual TLS, ACLs) with real clients:
the worker with its credentials makes the engine's signals from real bars; a wrong password stops it with a
message naming the authentication failure; PLAINTEXT is refused; the subscriber reads signals and nothing else."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

from models.bars import parse_iso_ms
from models.data import load_bars
from models.engine import SignalEngine
from models.registry import load_bundle
from risk.config import RiskConfig
from streams.config import Settings
from streams.kafka_security import client_options
from streams.topics import ensure_topics
from tests.integration.conftest import REPO_ROOT, WorkerProcess, free_port, listening_addresses, replay

START, END = "2024-10-14T00:00:00", "2024-10-14T09:00:00"
# every decision published (holds too), so that the comparison covers each bar after the warm-up
COSTS = {"MLRISK_TAKER_FEE_RATE": "0.0002", "MLRISK_MIN_EDGE_TO_COST": "0.5", "MLRISK_PUBLISH_HOLD": "true"}


def _ports_free(first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


class SecureBroker:
    """Where the secured broker listens, its topic prefix (the ACLs' scope) and each user's client settings."""

    def __init__(self, home: Path, port: int, prefix: str) -> None:
        self.home, self.port, self.prefix = home, port, prefix

    def env(self, user: str, password: str | None = None) -> dict[str, str]:
        """SASL_SSL settings for `user` (with `password` instead of the real one when given)."""
        secret = (
            {"MLRISK_KAFKA_SASL_PASSWORD": password}
            if password is not None
            else {"MLRISK_KAFKA_SASL_PASSWORD_FILE": str(self.home / "secrets" / f"{user}.password")}
        )
        return {
            "MLRISK_KAFKA_BROKERS": f"localhost:{self.port}",
            "MLRISK_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "MLRISK_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "MLRISK_KAFKA_SASL_USERNAME": user,
            "MLRISK_KAFKA_SSL_CAFILE": str(self.home / "tls" / "ca.pem"),
            "MLRISK_TOPIC_PREFIX": self.prefix,
            **secret,
        }

    def options(self, user: str) -> dict[str, Any]:
        return client_options(Settings.from_env(self.env(user)))


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """One secured broker for the module, on free ports, with its state in a temporary folder."""
    home = tmp_path_factory.mktemp("kafka-secure")
    port = next(p for p in (random.randrange(20_000, 40_000) for _ in range(100)) if _ports_free(p, 3))
    prefix = f"sec{uuid.uuid4().hex[:8]}-"
    env = {
        **os.environ,
        "MLRISK_KAFKA_SECURE_HOME": str(home),
        "MLRISK_KAFKA_SECURE_PORT": str(port),
        "MLRISK_TOPIC_PREFIX": prefix,
    }
    script = str(REPO_ROOT / "ops" / "kafka" / "kafka.sh")
    try:
        subprocess.run([script, "start-secure"], env=env, check=True, capture_output=True, text=True, timeout=180)
        broker = SecureBroker(home, port, prefix)
        # topics provisioned by the administrator, as on a managed cluster
        asyncio.run(ensure_topics(Settings.from_env(broker.env("admin"))))
        yield broker
    finally:
        subprocess.run([script, "stop-secure"], env=env, check=False, capture_output=True, timeout=60)


async def _read(options: dict[str, Any], topic: str, expected: int, timeout_s: float, group: str | None) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, **options, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    messages: list[Any] = []
    try:
        deadline, last_new = time.monotonic() + timeout_s, time.monotonic()
        while time.monotonic() < deadline and not (len(messages) >= expected and time.monotonic() - last_new > 2):
            batch = await consumer.getmany(timeout_ms=500)
            fresh = [m for records in batch.values() for m in records]
            if fresh:
                messages.extend(fresh)
                last_new = time.monotonic()
    finally:
        await consumer.stop()
    return messages


def _offline_signals(model_dir: Path, data_dir: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Every decision the engine makes on the same bars, by signal_id (the backtest's code path)."""
    engine = SignalEngine(load_bundle(model_dir), RiskConfig.from_env(env))
    state = engine.new_state("BTCUSDT")
    signals = {}
    for bar in load_bars(data_dir, "BTCUSDT", parse_iso_ms(START), parse_iso_ms(END)).bars():
        signal = engine.on_bar(state, bar)
        if signal is not None:
            signals[signal["signal_id"]] = signal
    return signals


def test_worker_with_credentials_makes_the_engines_signals_and_the_subscriber_reads_them(
    secure_broker: SecureBroker, database_url: str, model_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    # the topics were provisioned by admin: the worker creates none
    env = {
        **os.environ,
        **COSTS,
        **secure_broker.env("worker"),
        "MLRISK_MODEL_DIR": str(model_dir),
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_HOME": str(tmp_path / "home"),
        "DATABASE_URL": database_url,
        "MLRISK_CREATE_TOPICS": "false",
    }
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    try:
        # the HTTP server listens on the loopback address unless MLRISK_WEB_BIND says otherwise
        assert listening_addresses(worker.port) == {"127.0.0.1"}
        expected = _offline_signals(model_dir, data_dir, env)
        replay(env, "--data", str(data_dir), "--source", "bars", "--symbols", "BTCUSDT", "--start", START, "--end", END)
        messages = asyncio.run(
            _read(
                secure_broker.options("subscriber"),
                secure_broker.prefix + "signals",
                len(expected),
                240,
                group=f"subscriber-{uuid.uuid4().hex[:6]}",
            )
        )
    finally:
        worker.stop()
    live = {s["signal_id"]: s for s in (orjson.loads(m.value) for m in messages)}
    assert len(messages) == len(expected) > 100
    assert set(live) == set(expected)
    for signal_id, signal in expected.items():
        assert live[signal_id]["signal_type"] == signal["signal_type"]
        stop = signal["stop_loss_price"]  # None on a hold
        assert live[signal_id]["stop_loss_price"] == (stop if stop is None else pytest.approx(stop, rel=1e-12))


def test_a_wrong_password_stops_the_worker_naming_the_authentication_failure(
    secure_broker: SecureBroker, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        **secure_broker.env("worker", password="not-the-password"),
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_HOME": str(tmp_path / "home"),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "worker", "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "authentication failed: wrong user name or password" in result.stderr
    assert "not-the-password" not in result.stderr + result.stdout
    assert time.monotonic() - started < 60  # it stops, it does not retry forever


def test_a_plaintext_client_is_refused(secure_broker: SecureBroker) -> None:
    async def connect() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=f"localhost:{secure_broker.port}", request_timeout_ms=5000)
        await admin.start()
        await admin.close()

    with pytest.raises(KafkaConnectionError):
        asyncio.run(connect())


def test_the_subscriber_can_neither_read_market_data_nor_write_signals(secure_broker: SecureBroker) -> None:
    options = secure_broker.options("subscriber")

    async def read_market_data() -> None:
        await _read(options, secure_broker.prefix + "market-data", 1, 20, group=f"subscriber-{uuid.uuid4().hex}")

    async def write_signal() -> None:
        producer = AIOKafkaProducer(**options, request_timeout_ms=10_000)
        await producer.start()
        try:
            await producer.send_and_wait(secure_broker.prefix + "signals", b"{}", key=b"BTCUSDT")
        finally:
            await producer.stop()

    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(read_market_data())
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(write_signal())


def test_mutual_tls_with_a_client_certificate(secure_broker: SecureBroker) -> None:
    tls = secure_broker.home / "tls"
    base = {
        "MLRISK_KAFKA_BROKERS": f"localhost:{secure_broker.port + 1}",
        "MLRISK_KAFKA_SECURITY_PROTOCOL": "SSL",
        "MLRISK_KAFKA_SSL_CAFILE": str(tls / "ca.pem"),
    }

    async def topics(env: dict[str, str]) -> list[str]:
        admin = AIOKafkaAdminClient(**client_options(Settings.from_env(env)), request_timeout_ms=5000)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    def as_user(user: str) -> dict[str, str]:
        return {
            **base,
            "MLRISK_KAFKA_SSL_CERTFILE": str(tls / f"{user}.pem"),
            "MLRISK_KAFKA_SSL_KEYFILE": str(tls / f"{user}.key"),
            "MLRISK_TOPIC_PREFIX": secure_broker.prefix,
        }

    # the certificate's CN is the principal, under the same ACLs: the worker sees its topics, the subscriber
    # the signals topic and nothing of the worker's
    prefix = secure_broker.prefix
    assert {prefix + "market-data", prefix + "signals"} <= set(asyncio.run(topics(as_user("worker"))))
    assert [t for t in asyncio.run(topics(as_user("subscriber"))) if t.startswith(prefix)] == [prefix + "signals"]
    with pytest.raises(KafkaConnectionError):  # no client certificate, no connection
        asyncio.run(topics(base))


def test_a_worker_on_mutual_tls_gets_its_partitions(
    secure_broker: SecureBroker, database_url: str, tmp_path: Path
) -> None:
    tls = secure_broker.home / "tls"
    env = {
        **os.environ,
        "MLRISK_KAFKA_BROKERS": f"localhost:{secure_broker.port + 1}",
        "MLRISK_KAFKA_SECURITY_PROTOCOL": "SSL",
        "MLRISK_KAFKA_SSL_CAFILE": str(tls / "ca.pem"),
        "MLRISK_KAFKA_SSL_CERTFILE": str(tls / "worker.pem"),
        "MLRISK_KAFKA_SSL_KEYFILE": str(tls / "worker.key"),
        "MLRISK_TOPIC_PREFIX": secure_broker.prefix,
        "MLRISK_CREATE_TOPICS": "false",
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_HOME": str(tmp_path / "home"),
        "DATABASE_URL": database_url,
    }
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.start()  # ready: Faust's consumer has partitions of the worker's topics
    finally:
        worker.stop()


def test_missing_topics_stop_start_up_when_topics_are_provisioned(kafka: str, tmp_path: Path) -> None:
    prefix = f"prov{uuid.uuid4().hex[:8]}-"
    env = {
        **os.environ,
        "MLRISK_CREATE_TOPICS": "false",
        "MLRISK_TOPIC_PREFIX": prefix,
        "MLRISK_WEB_PORT": str(free_port()),
        "MLRISK_HOME": str(tmp_path / "home"),
        "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    }
    result = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "worker", "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "MLRISK_CREATE_TOPICS" in result.stderr
    for topic in ("market-data", "signals", "bars"):
        assert f"{prefix}{topic}" in result.stderr
