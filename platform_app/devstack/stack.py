"""What `make up` runs: the state directory, secrets, ports, stack.env and the Procfile.

Everything the app needs to find its services is written to `.run/stack.env`, the one file a
developer sources (or honcho loads) to talk to the running stack. Services whose URL is already
in the environment are used as they are and not started, so the same command works against a
shared Redis or a real MinIO.
"""

from __future__ import annotations

import functools
import os
import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from honcho.environ import parse as parse_env

from . import services
from .ports import HOST, port_or_free
from .process import ManagedProcess, find_binary
from .readiness import (
    LogMarker,
    S3Settings,
    any_of,
    celery_ping,
    files_touched_since,
    http_ok,
    mlflow_ready,
    redis_ready,
    s3_ready,
    throttled,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PREFERRED_PORTS = {"api": 8000, "mlflow": 5000, "s3": 8333, "flower": 5555, "redis": 6390,
                   "worker_metrics": 9808}
DEFAULT_BUCKET = "training"
SERVICE_ORDER = ("redis", "s3", "mlflow", "api", "worker", "beat", "flower")
# Seconds from launch; everything starts at once on 2 cores, MLflow alone takes 6-15 s.
START_TIMEOUTS = {
    "redis": 20,
    "s3": 60,
    "mlflow": 120,
    "api": 60,
    "worker": 90,
    "beat": 60,
    "flower": 90,
}
PASSED_THROUGH = (
    "REDIS_URL",
    "DATABASE_URL",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_UI_URL",
    "S3_ENDPOINT_URL",
    "S3_ACCESS_KEY",
    "S3_SECRET_KEY",
    "S3_BUCKET",
    "S3_REGION",
    "SECRET_KEY",
    "OPERATOR_API_KEY",
)
_SECRET_FACTORIES: dict[str, Callable[[], str]] = {
    "SECRET_KEY": lambda: secrets.token_urlsafe(48),
    "OPERATOR_API_KEY": lambda: secrets.token_urlsafe(32),
    "S3_ACCESS_KEY": lambda: "PLATFORM" + secrets.token_hex(6).upper(),
    "S3_SECRET_KEY": lambda: secrets.token_urlsafe(30),
}


class StackConfigError(ValueError):
    """The environment asks for something inconsistent (e.g. an S3 endpoint without keys)."""


@dataclass(frozen=True)
class RunDir:
    """The `.run/` layout; `PLATFORM_RUN_DIR` moves it (e.g. to run two stacks side by side)."""

    root: Path

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RunDir:
        environ = os.environ if environ is None else environ
        root = environ.get("PLATFORM_RUN_DIR") or str(PROJECT_ROOT / ".run")
        return cls(Path(root).resolve())

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def secrets_env(self) -> Path:
        return self.root / "secrets.env"

    @property
    def stack_env(self) -> Path:
        return self.root / "stack.env"

    @property
    def procfile(self) -> Path:
        return self.root / "Procfile"

    @property
    def pid_file(self) -> Path:
        return self.root / "honcho.pid"

    @property
    def pids_file(self) -> Path:
        return self.root / "pids"

    @property
    def beat_schedule(self) -> Path:
        return self.root / "celerybeat-schedule"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def create(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)


def read_env_file(path: Path) -> dict[str, str]:
    """Parsed exactly as honcho parses it, so what we read back is what the processes see."""
    try:
        return parse_env(path.read_text())
    except FileNotFoundError:
        return {}


def write_private_file(path: Path, text: str) -> None:
    """Secrets live in these files: owner-only from the moment they exist."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def write_env_file(path: Path, values: Mapping[str, str]) -> None:
    write_private_file(path, "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items()))


def load_or_create_secrets(run: RunDir) -> dict[str, str]:
    """Generated once and reused, so restarts keep the same API key and the object store
    keeps accepting the keys its data was written with."""
    values = read_env_file(run.secrets_env)
    missing = [name for name in _SECRET_FACTORIES if not values.get(name)]
    if missing:
        values.update({name: _SECRET_FACTORIES[name]() for name in missing})
        write_env_file(run.secrets_env, values)
    return values


def s3_settings_from_env(env: Mapping[str, str]) -> S3Settings:
    return S3Settings(
        endpoint_url=env["S3_ENDPOINT_URL"],
        access_key=env["S3_ACCESS_KEY"],
        secret_key=env["S3_SECRET_KEY"],
        bucket=env["S3_BUCKET"],
        region=env.get("S3_REGION") or "us-east-1",
    )


@dataclass(frozen=True)
class StackPlan:
    env: dict[str, str]
    procfile: dict[str, str]  # service name -> shell command

    @property
    def external(self) -> list[str]:
        return [name for name in SERVICE_ORDER if name not in self.procfile]


def _managed_command(proc: ManagedProcess) -> str:
    """The Procfile form of a ManagedProcess: same command and env as the fixtures use."""
    env = [f"{k}={v}" for k, v in proc.env.items()]
    words = ["exec", *(["env", *env] if env else []), *proc.command]
    cd = f"cd {shlex.quote(str(proc.cwd))} && " if proc.cwd else ""
    return f"{cd}{shlex.join(words)} >> {shlex.quote(str(proc.log_path))} 2>&1"


def _app_commands(run: RunDir) -> dict[str, str]:
    """The platform's own processes; ports come from stack.env, which honcho loads."""
    gunicorn, celery = find_binary("gunicorn"), find_binary("celery")
    # gunicorn's default control socket is one per user (~/.gunicorn): keep it per stack.
    control_socket = shlex.quote(str(run.root / "gunicorn.ctl"))
    schedule = shlex.quote(str(run.beat_schedule))
    # multiprocess Prometheus: one directory per process group that shares a /metrics
    api_metrics = shlex.quote(str(run.root / "prometheus" / "api"))
    worker_metrics = shlex.quote(str(run.root / "prometheus" / "worker"))
    commands = {
        "api": f"env PROMETHEUS_MULTIPROC_DIR={api_metrics} {gunicorn}"
        f" -c {shlex.quote(services.GUNICORN_CONFIG)}"
        f" --bind {HOST}:$API_PORT --control-socket {control_socket} wsgi:app",
        "worker": f"env PROMETHEUS_MULTIPROC_DIR={worker_metrics}"
        f" {shlex.join(services.celery_worker_command('-E'))}",
        "beat": f"{celery} -A workers beat --loglevel INFO --schedule {schedule}",
        "flower": f"{celery} -A workers flower --port=$FLOWER_PORT --address={HOST}",
    }
    return {
        name: f"exec {args} >> {shlex.quote(str(run.log(name)))} 2>&1"
        for name, args in commands.items()
    }


def plan_stack(run: RunDir, environ: Mapping[str, str] | None = None) -> StackPlan:
    """Decide ports, URLs and commands. Values already in the environment win."""
    environ = os.environ if environ is None else environ
    given = {k: environ[k] for k in PASSED_THROUGH if environ.get(k)}
    env = {**load_or_create_secrets(run), **given}
    env.setdefault("S3_BUCKET", DEFAULT_BUCKET)
    env.setdefault("S3_REGION", "us-east-1")
    env.setdefault("DATABASE_URL", f"sqlite:///{run.root}/platform.db")
    procfile: dict[str, str] = {}

    if "REDIS_URL" not in given:
        proc = services.redis_server(
            run.root / "redis", port_or_free(PREFERRED_PORTS["redis"]), run.log("redis")
        )
        env["REDIS_URL"] = proc.uri or ""
        procfile["redis"] = _managed_command(proc)

    if "S3_ENDPOINT_URL" in given:
        if not (given.get("S3_ACCESS_KEY") and given.get("S3_SECRET_KEY")):
            raise StackConfigError(
                "S3_ENDPOINT_URL is set, so S3_ACCESS_KEY and S3_SECRET_KEY must be too"
            )
    else:
        proc = services.seaweedfs(
            run.root / "s3",
            port_or_free(PREFERRED_PORTS["s3"]),
            env["S3_ACCESS_KEY"],
            env["S3_SECRET_KEY"],
            env["S3_BUCKET"],
            run.log("s3"),
            env["S3_REGION"],
        )
        env["S3_ENDPOINT_URL"] = proc.uri or ""
        procfile["s3"] = _managed_command(proc)

    if "MLFLOW_TRACKING_URI" not in given:
        proc = services.mlflow_server(
            run.root / "mlflow",
            port_or_free(PREFERRED_PORTS["mlflow"]),
            s3_settings_from_env(env),
            log_path=run.log("mlflow"),
        )
        env["MLFLOW_TRACKING_URI"] = proc.uri or ""
        procfile["mlflow"] = _managed_command(proc)
    env.setdefault("MLFLOW_UI_URL", env["MLFLOW_TRACKING_URI"])

    api_port = port_or_free(PREFERRED_PORTS["api"])
    flower_port = port_or_free(PREFERRED_PORTS["flower"])
    worker_metrics_port = port_or_free(PREFERRED_PORTS["worker_metrics"])
    env.update(
        WORKER_METRICS_PORT=str(worker_metrics_port),
        WORKER_METRICS_URL=f"http://{HOST}:{worker_metrics_port}/metrics",
        API_PORT=str(api_port),
        API_URL=f"http://{HOST}:{api_port}",
        FLOWER_PORT=str(flower_port),
        FLOWER_URL=f"http://{HOST}:{flower_port}",
        PLATFORM_DATA_DIR=str(run.root),
    )
    procfile.update(_app_commands(run))
    return StackPlan(env=dict(sorted(env.items())), procfile=procfile)


def write_stack_files(run: RunDir, plan: StackPlan) -> None:
    write_env_file(run.stack_env, plan.env)
    write_private_file(
        run.procfile, "".join(f"{name}: {cmd}\n" for name, cmd in plan.procfile.items())
    )


def read_procfile_names(run: RunDir) -> list[str]:
    try:
        lines = run.procfile.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [line.split(":", 1)[0] for line in lines if ":" in line]


# --- readiness of the whole stack ------------------------------------------------------


def stack_probes(
    run: RunDir, env: Mapping[str, str], since: float
) -> dict[str, Callable[[], bool]]:
    """One probe per service, built from stack.env alone, so `up` and `status` agree.
    Worker and beat have no port: a log line proves a fresh start quickly; for `status`
    (no fresh log lines) the worker is pinged and beat must have opened its schedule."""
    return {
        "redis": functools.partial(redis_ready, env["REDIS_URL"]),
        "s3": functools.partial(s3_ready, s3_settings_from_env(env)),
        "mlflow": functools.partial(mlflow_ready, env["MLFLOW_TRACKING_URI"]),
        "api": functools.partial(http_ok, env["API_URL"] + "/health"),
        "worker": any_of(
            LogMarker(run.log("worker"), " ready."),
            throttled(functools.partial(celery_ping, "workers", env, PROJECT_ROOT), 5.0),
        ),
        "beat": any_of(
            LogMarker(run.log("beat"), "beat: Starting"),
            functools.partial(files_touched_since, f"{run.beat_schedule}*", since),
        ),
        "flower": functools.partial(http_ok, env["FLOWER_URL"] + "/"),
    }


def display_target(env: Mapping[str, str], name: str) -> str:
    """What to show next to a service name: its URL without any password in it."""
    targets = {
        "redis": env.get("REDIS_URL", ""),
        "s3": env.get("S3_ENDPOINT_URL", ""),
        "mlflow": env.get("MLFLOW_UI_URL", ""),
        "api": env.get("API_URL", ""),
        "worker": "celery -A workers worker",
        "beat": "celery -A workers beat",
        "flower": env.get("FLOWER_URL", ""),
    }
    target = targets[name]
    parts = urlsplit(target)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        target = urlunsplit(parts._replace(netloc=netloc))
    return target
