"""The embedded PostgreSQL asks for its password, keeps it to its owner, and start() refuses a server squatting its
port, be it another PostgreSQL or one that asks for the password in clear text."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from streams.config import Settings
from streams.sink import pgserver
from streams.sink.db import database_url as url_for


def test_a_connection_without_the_password_is_refused(database_url: str) -> None:
    home = Settings.from_env().home
    with psycopg.connect(database_url) as conn:  # the URL clients get carries the password
        assert conn.execute("SELECT 1").fetchone() == (1,)
    for wrong in (
        f"postgresql://postgres@127.0.0.1:{pgserver.port()}/postgres",
        f"postgresql://postgres:wrong@127.0.0.1:{pgserver.port()}/postgres",
    ):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(wrong, connect_timeout=5).close()
    mode = pgserver.password_file(home).stat().st_mode
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another OS user needs root")
def test_another_os_user_can_neither_connect_nor_read_the_password(database_url: str) -> None:
    home = Settings.from_env().home
    psql = pgserver._bin("psql")
    result = subprocess.run(
        [psql, "-h", "127.0.0.1", "-p", str(pgserver.port()), "-U", "postgres", "-w", "-c", "SELECT 1", "postgres"],
        user="nobody",
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert result.returncode != 0 and "password" in result.stderr
    read = subprocess.run(
        ["cat", str(pgserver.password_file(home))], user="nobody", capture_output=True, timeout=30, cwd="/"
    )
    assert read.returncode != 0 and read.stdout == b""


def test_database_url_with_tls_passes_through() -> None:
    url = "postgresql://app:pw@db.example.com:5432/mlrisk?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert url_for(Settings.from_env({"DATABASE_URL": url})) == url


@pytest.fixture
def other_port(monkeypatch: pytest.MonkeyPatch) -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    monkeypatch.setenv("MLRISK_PG_PORT", str(port))
    return port


def test_another_postgres_on_the_port_is_refused(other_port: int, tmp_path: Path) -> None:
    squatter, victim = tmp_path / "squatter", tmp_path / "victim"
    pgserver.start(squatter)
    try:
        with pytest.raises(RuntimeError, match="not the embedded PostgreSQL"):
            pgserver.start(victim)
        assert not (victim / "postgres" / "data").exists()  # nothing was initialised or started for it
    finally:
        pgserver.stop(squatter, mode="immediate")


class CleartextSquatter:
    """A TCP server on the port that answers a PostgreSQL start-up with a request for the clear-text password,
    and keeps whatever password message it receives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):  # the client hanging up is its right
                    self.converse(conn)

    def converse(self, conn: socket.socket) -> None:
        while True:
            header = conn.recv(8)
            if len(header) < 8:  # a bare connection test (is anyone there?)
                return
            length, code = struct.unpack("!ii", header)
            if length > 8:
                conn.recv(length - 8)  # the start-up parameters: not needed
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        data = conn.recv(4096)
        if data:
            self.received.append(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def cleartext_squatter(other_port: int) -> Iterator[CleartextSquatter]:
    squatter = CleartextSquatter(other_port)
    yield squatter
    squatter.close()


def test_a_squatter_asking_for_the_password_gets_nothing(cleartext_squatter: CleartextSquatter, tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(RuntimeError, match="not the embedded PostgreSQL") as caught:
        pgserver.start(home)
    assert "cleartext" in str(caught.value)  # it asked; the client declined to answer
    secret = pgserver.password(home).encode()
    assert all(secret not in message for message in cleartext_squatter.received)
    assert all(not message.startswith(b"p") for message in cleartext_squatter.received)
