"""The benchmark's private stack: every service on free loopback ports in a temp dir.

The same launchers as the tests and `make up` (`platform_app.devstack`), so the services run
with the flags measured to matter here, but with PostgreSQL as both the platform DB and
MLflow's store (as in production). The API runs under gunicorn serving `bench.app:app` (the
real app plus the comparison endpoints) and the Celery workers with `make up`'s concurrency
and background priority (prefork ×2; MLflow's server at that priority too, see
devstack/priority.py), beat embedded (-B) and without task events (-E, which `make up` turns
on for Flower).
Workers and MLflow can be stopped and started again: the throughput figures measure the API
alone, and `sink_independence` needs MLflow down.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

import psycopg
import redis

from bench import cpu
from bench.progress import log
from bench.settings import BenchSettings
from platform_app.config import Config
from platform_app.devstack import (
    ManagedProcess,
    S3Settings,
    ServiceStartError,
    celery_worker_command,
    create_database,
    find_binary,
    free_port,
    mlflow_server,
    postgres_cluster,
    redis_server,
    seaweedfs,
)
from platform_app.devstack.ports import HOST
from platform_app.devstack.process import log_tail
from platform_app.devstack.readiness import LogMarker, http_ok
from platform_app.services import metrics_queue

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = {"postgres": 60, "redis": 20, "s3": 60, "mlflow": 120, "api": 90, "worker": 90}
BUCKET = "training"
MLFLOW_DATABASE = "mlflow"  # on the platform's cluster
# Services every figure needs; the others are started only when a selected figure asks.
ALWAYS = frozenset({"postgres", "redis", "s3", "api"})


class BenchStack:
    """Start with `start(needs)`, always `stop()` (the caller uses try/finally)."""

    def __init__(self, settings: BenchSettings, log_dir: Path) -> None:
        self.settings = settings
        self.workdir = Path(tempfile.mkdtemp(prefix="platform-bench-"))
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for old in self.log_dir.glob("*.log"):
            old.unlink()
        self._procs: dict[str, ManagedProcess] = {}
        self.config: Config | None = None
        self.s3: S3Settings | None = None
        self.platform_db_url = ""
        self.mlflow_db_url = ""
        self.api_url = ""
        self.mlflow_uri = ""
        self.backpressure = False

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, needs: Iterable[str]) -> None:
        needs = set(needs) | ALWAYS
        log.info("starting services in %s: %s", self.workdir, ", ".join(sorted(needs)))
        access, secret = "BENCH" + secrets.token_hex(6).upper(), secrets.token_urlsafe(30)
        self.s3 = S3Settings(f"http://{HOST}:{free_port()}", access, secret, BUCKET)
        first = [
            postgres_cluster(self.workdir / "postgres", free_port(), self.log("postgres")),
            redis_server(self.workdir / "redis", free_port(), self.log("redis")),
            seaweedfs(self.workdir / "s3", int(self.s3.endpoint_url.rsplit(":", 1)[1]),
                      access, secret, BUCKET, self.log("s3")),
        ]
        for proc in first:  # start all, then wait: they boot in parallel
            self._procs[proc.name] = proc.start()
        for proc in first:
            proc.wait_ready(START_TIMEOUT[proc.name])
        admin_url = self._procs["postgres"].uri or ""
        self.platform_db_url = create_database(admin_url, "platform")
        self.mlflow_db_url = create_database(admin_url, MLFLOW_DATABASE)
        mlflow_port = free_port()
        self.mlflow_uri = f"http://{HOST}:{mlflow_port}"
        if "mlflow" in needs:
            self._procs["mlflow"] = mlflow_server(
                self.workdir / "mlflow", mlflow_port, self.s3,
                backend_store_uri=self.mlflow_db_url, log_path=self.log("mlflow")).start()
        self.config = self._platform_config()
        self._init_platform()
        api = self._api_process()
        self._procs["api"] = api.start()
        if "mlflow" in self._procs:
            self._procs["mlflow"].wait_ready(START_TIMEOUT["mlflow"])
        api.wait_ready(START_TIMEOUT["api"])
        log.info("API %s (gunicorn %s), MLflow %s", self.api_url,
                 " ".join(self.settings.gunicorn_args),
                 self.mlflow_uri if "mlflow" in self._procs else "not started")

    def stop(self) -> None:
        """Everything, in reverse start order; safe to call twice and after a failed start."""
        self.resume_workers()
        for name in reversed(list(self._procs)):
            with suppress(Exception):
                self._procs[name].stop(timeout=15)
        self._procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def operator_key(self) -> str:
        assert self.config is not None
        return self.config.OPERATOR_API_KEY

    # --- the platform's own processes -------------------------------------------------------

    def _platform_config(self) -> Config:
        """Built from an environment mapping, as the processes will read it, so a setting
        added to Config later gets its default here too."""
        assert self.s3 is not None
        return Config.from_env({
            "SECRET_KEY": secrets.token_urlsafe(32),
            "OPERATOR_API_KEY": secrets.token_urlsafe(32),
            "PLATFORM_DATA_DIR": str(self.workdir / "platform"),
            "DATABASE_URL": self.platform_db_url,
            "REDIS_URL": self._procs["redis"].uri or "",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "S3_ENDPOINT_URL": self.s3.endpoint_url,
            "S3_ACCESS_KEY": self.s3.access_key,
            "S3_SECRET_KEY": self.s3.secret_key,
            "S3_BUCKET": self.s3.bucket,
            "LOG_LEVEL": "INFO",
        })

    def platform_env(self, group: str) -> dict[str, str]:
        """The platform's config for one process group; each group that shares a /metrics
        gets its own Prometheus multiprocess directory, as under `make up`."""
        assert self.config is not None
        metrics_dir = self.workdir / "prometheus" / group
        metrics_dir.mkdir(parents=True, exist_ok=True)
        return {**self.config.as_environ(), "PYTHONUNBUFFERED": "1",
                "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)}

    def _init_platform(self) -> None:
        """Schema and bucket, once, before several processes start: `flask --app wsgi init`,
        as a deployment (and `make up`) does it, in its own process and log."""
        log_path = self.log("init")
        with open(log_path, "ab") as out:
            result = subprocess.run(
                [sys.executable, "-m", "flask", "--app", "wsgi", "init"],
                env={**os.environ, **self.platform_env("init")}, cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=180)
        if result.returncode != 0:
            raise ServiceStartError(f"`flask --app wsgi init` failed ({result.returncode}); "
                                    f"last lines of {log_path}:\n{log_tail(log_path)}")

    def _api_process(self) -> ManagedProcess:
        if not self.api_url:
            self.api_url = f"http://{HOST}:{free_port()}"
        command = [
            find_binary("gunicorn"),
            "--bind", self.api_url.removeprefix("http://"),
            *self.settings.gunicorn_args,
            "--control-socket", str(self.workdir / "gunicorn.ctl"),
            "bench.app:app",
        ]  # fmt: skip
        # Backpressure is off unless a figure asks for it: the capacity figures starve the
        # workers on purpose, and with it on the API would answer 429 after
        # BACKPRESSURE_LAG_SECONDS — which is what it is for, not what they measure.
        env = {**self.platform_env("api"),
               **({} if self.backpressure else {"BACKPRESSURE_LAG_SECONDS": "0"})}
        return ManagedProcess("api", command, env, self.log("api"),
                              functools.partial(http_ok, self.api_url + "/health"),
                              cwd=PROJECT_ROOT, uri=self.api_url)

    def set_backpressure(self, enabled: bool) -> None:
        """Restart the API, on the same port, with backpressure at its default or off."""
        if enabled == self.backpressure:
            return
        log.info("restarting the API with backpressure %s", "on" if enabled else "off")
        self._procs.pop("api").stop(timeout=20)
        self.backpressure = enabled
        self._procs["api"] = self._api_process().start_and_wait(START_TIMEOUT["api"])

    # --- workers ---------------------------------------------------------------------------

    @property
    def workers_running(self) -> bool:
        proc = self._procs.get("worker")
        return proc is not None and proc.running

    def start_workers(self) -> None:
        if self.workers_running:
            return
        log.info("starting Celery workers (prefork, concurrency %d, embedded beat)",
                 self.settings.worker_concurrency)
        log_path = self.log("worker")
        command = celery_worker_command(
            "-B", "--schedule", str(self.workdir / "celerybeat-schedule"),
            concurrency=self.settings.worker_concurrency)
        proc = ManagedProcess("worker", command, self.platform_env("worker"), log_path,
                              LogMarker(log_path, " ready."), cwd=PROJECT_ROOT)
        self._procs["worker"] = proc.start_and_wait(START_TIMEOUT["worker"])

    def stop_workers(self) -> None:
        proc = self._procs.pop("worker", None)
        if proc is not None and proc.running:
            log.info("stopping Celery workers")
            self._signal_workers(proc, signal.SIGCONT)  # a paused worker cannot shut down
            proc.stop(timeout=20)

    def pause_workers(self) -> None:
        """Freeze the workers (SIGSTOP, instant) so a backlog can build up; call it only
        when they are idle (after `discard_backlog`), so they hold no lock or transaction."""
        self._signal_workers(self._procs.get("worker"), signal.SIGSTOP)

    def resume_workers(self) -> None:
        self._signal_workers(self._procs.get("worker"), signal.SIGCONT)

    @staticmethod
    def _signal_workers(proc: ManagedProcess | None, sig: int) -> None:
        if proc is not None and proc.pid is not None and proc.running:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    # --- MLflow ----------------------------------------------------------------------------

    @property
    def mlflow_running(self) -> bool:
        proc = self._procs.get("mlflow")
        return proc is not None and proc.running

    def stop_mlflow(self) -> None:
        if self.mlflow_running:
            log.info("stopping MLflow")
            self._procs["mlflow"].stop(timeout=15)

    def start_mlflow(self) -> None:
        proc = self._procs.get("mlflow")
        if proc is None:
            raise RuntimeError("MLflow was not part of this run's services")
        if not proc.running:
            started = time.monotonic()
            proc.start_and_wait(START_TIMEOUT["mlflow"])
            log.info("MLflow is back after %.1f s", time.monotonic() - started)

    # --- where the cores go -------------------------------------------------------------------

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds used so far per running service (bench/cpu.py); MLflow's database
        backends count as "mlflow-postgres", the platform's as "postgres"."""
        roots = {name: proc.pid for name, proc in self._procs.items()
                 if proc.running and proc.pid is not None}
        return cpu.cpu_seconds(roots, {MLFLOW_DATABASE: "mlflow-postgres"})

    # --- the backlog between phases ----------------------------------------------------------

    def discard_backlog(self, settle_s: float = 1.5) -> int:
        """End a load phase cleanly for the next: pending events are marked failed (so the
        sweeper leaves them alone), queued task messages are deleted, and the workers get a
        moment to finish what they hold (a retry they keep finds its event failed and
        returns). Returns how many events were discarded."""
        with psycopg.connect(self.platform_db_url, autocommit=True) as conn:
            discarded = conn.execute(
                "UPDATE events SET state = 'failed', last_error = 'bench: backlog discarded' "
                "WHERE state = 'pending'").rowcount
        client = redis.Redis.from_url(self._procs["redis"].uri or "")
        try:
            queue = _celery_queue_name()
            keys = [k for k in client.scan_iter(match=f"{queue}*")
                    if k == queue.encode() or k.startswith(queue.encode() + b"\x06\x16")]
            # "A metrics task is queued for this job" flags (with their tasks deleted they
            # would hold back the next phase's tasks) and the waits recorded at take-up (a
            # drain's long waits would have the next phase's API answer 429 at once).
            marks = [k for pattern in metrics_queue.KEY_PATTERNS
                     for k in client.scan_iter(match=pattern)]
            if keys or marks:
                client.delete(*keys, *marks)
        finally:
            client.close()
        time.sleep(settle_s)  # a task already running finishes (its event is failed now)
        if discarded:
            log.info("discarded a backlog of %d pending events", discarded)
        return discarded


def _celery_queue_name() -> str:
    import celeryconfig

    return getattr(celeryconfig, "task_default_queue", "celery")
