"""A private PostgreSQL cluster for tests, and per-test databases on it.

Tests that must hold for PostgreSQL (locking, JSON, transactional behaviour that SQLite
fakes) get a real server without Docker: Debian's server binaries run against a cluster
in pytest's temp dir, with durability turned off because the data is thrown away.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .ports import HOST
from .process import ManagedProcess, ServiceStartError, log_tail
from .readiness import postgres_ready


def _postgres_bin_dir() -> Path:
    """Debian installs each major version side by side; the newest one wins."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    candidates = [
        p for p in glob.glob("/usr/lib/postgresql/*/bin") if Path(p, "postgres").is_file()
    ]
    if candidates:
        return Path(max(candidates, key=version))
    found = shutil.which("postgres")
    if found:
        return Path(found).resolve().parent
    raise ServiceStartError(
        "postgres: no server binaries under /usr/lib/postgresql/*/bin or on PATH "
        "(scripts/install-system-deps.sh installs them)"
    )


def _open_path_for(user: str, path: Path) -> None:
    """The cluster runs as `user`, who must be able to walk down to its directory (pytest's
    /tmp/pytest-of-root is 0700): grant search (x) only, never read, on the ancestors."""
    entry = pwd.getpwnam(user)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def postgres_cluster(
    data_dir: Path | str, port: int, log_path: Path | None = None
) -> ManagedProcess:
    """A disposable cluster tuned for tests (no fsync): trust auth on 127.0.0.1 only.
    initdb and postgres refuse root, so as root both run as the `postgres` account."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata, sockets = data_dir / "pgdata", data_dir / "sock"
    sockets.mkdir(exist_ok=True)
    log_path = log_path or data_dir / "postgres.log"
    bin_dir = _postgres_bin_dir()
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        _open_path_for(user, data_dir)
        _open_path_for(user, sockets)

    def initdb_once() -> None:
        if (pgdata / "PG_VERSION").exists():
            return
        command = [
            str(bin_dir / "initdb"),
            "-D", str(pgdata),
            "-A", "trust",
            "-U", "postgres",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as logfile:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        if result.returncode != 0:
            raise ServiceStartError(
                f"postgres: initdb failed with code {result.returncode}; "
                f"last lines of {log_path}:\n{log_tail(log_path)}"
            )

    url = f"postgresql://postgres@{HOST}:{port}/postgres"
    command = [
        str(bin_dir / "postgres"),
        "-D", str(pgdata),
        "-k", str(sockets),
        "-h", HOST,
        "-p", str(port),
        "-c", "fsync=off",
        "-c", "full_page_writes=off",
        "-c", "synchronous_commit=off",
    ]  # fmt: skip
    return ManagedProcess(
        "postgres",
        command,
        {},
        log_path,
        functools.partial(postgres_ready, url),
        cwd=data_dir,
        prepare=initdb_once,
        user=user,
        # SIGTERM is "smart" shutdown, which waits for every client to disconnect.
        stop_signal=signal.SIGINT,
        uri=url,
    )


def database_url(admin_url: str, name: str) -> str:
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + name))


def create_database(admin_url: str, name: str, *, replace: bool = False) -> str:
    """Each test module gets its own database on the shared cluster; idempotent so a
    re-run against a long-lived server (TEST_POSTGRES_ADMIN_URL) still works."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and replace:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            exists = None
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_url(admin_url, name)
