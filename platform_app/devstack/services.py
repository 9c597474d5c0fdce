"""Factories for the platform's backing services, as private processes on 127.0.0.1.

Each factory returns an unstarted `ManagedProcess` whose command, environment and readiness
probe are also what `make up` writes into its Procfile, so tests and the dev stack run the
services with the same flags. Flags are the ones measured to matter on this machine
(shared/notes/object-storage.md, shared/notes/mlflow-and-queue.md).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

from .ports import HOST, free_port_pair, free_ports
from .postgres import create_database, postgres_cluster
from .priority import background
from .process import ManagedProcess, find_binary
from .readiness import S3Settings, mlflow_ready, redis_ready, s3_ready

__all__ = [
    "S3Settings",
    "create_database",
    "mlflow_server",
    "postgres_cluster",
    "redis_server",
    "seaweedfs",
]

# SeaweedFS's plugin worker dials the admin gRPC port as admin HTTP port + this offset.
SEAWEED_GRPC_OFFSET = 10000

# The sink side (Celery workers, MLflow) yields the CPU to the API on a shared machine: the
# request path is what trainers wait on, the queue absorbs the rest (bench: half-load p99
# with the workers draining into MLflow). Set per session, see priority.py.
SINK_NICE = 10
WORKER_CONCURRENCY = 2  # prefork children: one per core here
# The API's gunicorn config, by path (why not `python:…`: its docstring).
GUNICORN_CONFIG = str(Path(__file__).resolve().parent.parent / "gunicorn_conf.py")
# MLflow under gunicorn, one process per core: a single process caps MLflow at one core while
# the platform's workers write several jobs' batches at once (~1.8× the metrics/s with two
# writers here). Not uvicorn: with several uvicorn workers a kept-alive client stalls ~40 ms
# a request (Nagle, shared/notes/mlflow-and-queue.md). Sync workers block for a whole request,
# so the timeout must cover a large artifact upload through the proxy; the access log is what
# the benchmark counts MLflow requests in; gunicorn's control socket is one per user unless
# told otherwise, and the API's gunicorn has its own.
MLFLOW_WORKERS = 2
MLFLOW_GUNICORN_OPTS = "--timeout 600 --access-logfile - --no-control-socket"


def celery_worker_command(*extra: str, concurrency: int = WORKER_CONCURRENCY) -> list[str]:
    """The platform's Celery worker, as `make up` and the benchmark run it; `extra` adds
    what only one of them wants (task events for Flower, an embedded beat)."""
    return background([find_binary("celery"), "-A", "workers", "worker",
                       "--loglevel", "INFO", "--concurrency", str(concurrency), *extra],
                      SINK_NICE)


def _service_dir(data_dir: Path | str) -> Path:
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def redis_server(data_dir: Path | str, port: int, log_path: Path | None = None) -> ManagedProcess:
    """A throwaway broker: nothing is persisted, so a restart starts empty."""
    data_dir = _service_dir(data_dir)
    url = f"redis://{HOST}:{port}/0"
    command = [
        find_binary("redis-server"),
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        "--daemonize", "no",
    ]  # fmt: skip
    return ManagedProcess(
        "redis",
        command,
        {},
        log_path or data_dir / "redis.log",
        functools.partial(redis_ready, url),
        cwd=data_dir,
        uri=url,
    )


def write_s3_identities(path: Path, access_key: str, secret_key: str) -> Path:
    """Without an identities file SeaweedFS accepts any key, so one is always written."""
    identities = {
        "identities": [
            {
                "name": "platform",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(identities, fh)
    os.chmod(path, 0o600)
    return path


def seaweedfs(
    data_dir: Path | str,
    s3_port: int,
    access_key: str,
    secret_key: str,
    bucket: str,
    log_path: Path | None = None,
    region: str = "us-east-1",
) -> ManagedProcess:
    """`weed mini` locked down: loopback only, no telemetry, auth enforced, and no side door
    (the filer's HTTP API and WebDAV would read and write objects without credentials)."""
    data_dir = _service_dir(data_dir)
    for sub in ("data", "logs"):
        (data_dir / sub).mkdir(exist_ok=True)
    config = write_s3_identities(data_dir / "identities.json", access_key, secret_key)
    master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc = free_ports(7)
    admin = free_port_pair(SEAWEED_GRPC_OFFSET)
    settings = S3Settings(f"http://{HOST}:{s3_port}", access_key, secret_key, bucket, region)
    command = [
        find_binary("weed"),
        f"-logdir={data_dir / 'logs'}",
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-filer.localSocket={data_dir / 'filer.sock'}",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_grpc}",
        f"-s3.localSocket={data_dir / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin + SEAWEED_GRPC_OFFSET}",
        "-admin.ui=false",
        "-webdav=false",
        "-disableHttp",
        f"-bucket={bucket}",
    ]
    return ManagedProcess(
        "s3",
        command,
        {},
        log_path or data_dir / "weed.log",
        functools.partial(s3_ready, settings),
        cwd=data_dir,
        uri=settings.endpoint_url,
    )


def mlflow_server(
    data_dir: Path | str,
    port: int,
    s3: S3Settings | None = None,
    backend_store_uri: str | None = None,
    log_path: Path | None = None,
) -> ManagedProcess:
    """gunicorn with MLFLOW_WORKERS processes and no job runner (8 extra processes,
    ~1.3 GB). Artifacts are proxied by the server so that trainers only need the tracking
    URI, not S3 credentials."""
    data_dir = _service_dir(data_dir)
    uri = f"http://{HOST}:{port}"
    store = backend_store_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
    env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    if s3 is not None:
        destination = f"s3://{s3.bucket}/mlflow"
        env.update(
            MLFLOW_S3_ENDPOINT_URL=s3.endpoint_url,
            AWS_ACCESS_KEY_ID=s3.access_key,
            AWS_SECRET_ACCESS_KEY=s3.secret_key,
            AWS_DEFAULT_REGION=s3.region,
        )
    else:
        destination = str(data_dir / "artifacts")
    command = background([
        find_binary("mlflow"),
        "server",
        "--backend-store-uri", store,
        "--host", HOST,
        "--port", str(port),
        "--workers", str(MLFLOW_WORKERS),
        "--gunicorn-opts", MLFLOW_GUNICORN_OPTS,
        "--serve-artifacts",
        "--artifacts-destination", destination,
    ], SINK_NICE)  # fmt: skip
    return ManagedProcess(
        "mlflow",
        command,
        env,
        log_path or data_dir / "mlflow.log",
        functools.partial(mlflow_ready, uri),
        cwd=data_dir,  # a stray ./mlruns or ./mlartifacts lands here, not in the repo
        uri=uri,
    )
