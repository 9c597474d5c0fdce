"""A child process that is either up and answering, or stopped with its log shown.

Every local service (Redis, SeaweedFS, MLflow, PostgreSQL) is started the same way by the test
fixtures, so the failure mode is shared too: a service that dies or never answers must not
leave a half-started process behind, and the error must carry the log tail that explains it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
LOG_TAIL_LINES = 30


class ServiceStartError(RuntimeError):
    """A service exited or did not answer in time; the message carries its log tail."""


def find_binary(name: str) -> str:
    """The venv's bin/ comes first so that `weed`, `mlflow`, `celery`, `gunicorn` are the
    pinned ones even when the venv is not activated (as under `make`)."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise ServiceStartError(f"{name}: executable not found next to {sys.executable} or on PATH")
    return found


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Only the end of a log explains a crash; reading the whole file could be huge."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(data.splitlines()[-lines:]) or "(log is empty)"


def signal_group(pgid: int, sig: int) -> bool:
    """Children of a service (uvicorn workers, postgres backends) share its group, so the
    group, not the pid, is what gets signalled. False if nothing is left to signal."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


class ManagedProcess:
    """One service process in its own process group, logging to its own file.

    `env` is laid over the current environment rather than replacing it, so PATH, HOME and
    locale settings still reach the service. `prepare` runs before every start (e.g. a
    one-time `initdb`); `user` runs the process as another account (PostgreSQL refuses root).
    """

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        ready: Callable[[], bool],
        *,
        cwd: Path | None = None,
        prepare: Callable[[], None] | None = None,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
        uri: str | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.ready = ready
        self.cwd = cwd
        self.prepare = prepare
        self.user = user
        self.stop_signal = stop_signal
        self.uri = uri
        self._proc: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        state = f"pid={self._proc.pid}" if self.running and self._proc else "stopped"
        return f"<ManagedProcess {self.name} {state} {self.uri or ''}>"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> ManagedProcess:
        if self.running:
            return self
        if self.prepare is not None:
            self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_path, "ab") as logfile:
            logfile.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode()
            )
            logfile.flush()
            self._proc = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
            )
        log.debug("started %s (pid %s): %s", self.name, self._proc.pid, self.command)
        return self

    def wait_ready(self, timeout: float = 60.0) -> ManagedProcess:
        """Await up or die: a service that exits or stays silent is stopped before raising,
        so a failed fixture never leaks a process into the next test run."""
        if self._proc is None:
            raise ServiceStartError(f"{self.name}: wait_ready() called before start()")
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._fail(f"exited with code {self._proc.returncode} before it was ready")
            if probe(self.ready):
                return self
            if time.monotonic() >= deadline:
                self._fail(f"did not become ready within {timeout:.0f} s")
            time.sleep(POLL_INTERVAL)

    def start_and_wait(self, timeout: float = 60.0) -> ManagedProcess:
        return self.start().wait_ready(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Polite signal to the whole group first (data is flushed), SIGKILL if it hangs."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, self.stop_signal)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # Stray children (a worker that ignored the signal) die with the group.
        signal_group(proc.pid, signal.SIGKILL)

    def _fail(self, reason: str) -> NoReturn:
        self.stop()
        raise ServiceStartError(
            f"{self.name} {reason}; last lines of {self.log_path}:\n{log_tail(self.log_path)}"
        )


def probe(check: Callable[[], bool]) -> bool:
    """A readiness probe that raises (connection refused, ...) simply means 'not yet'."""
    try:
        return bool(check())
    except Exception:  # noqa: BLE001 - any error from a probe means not ready yet
        return False
