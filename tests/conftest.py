"""Shared fixtures. Real services (Redis, PostgreSQL, SeaweedFS S3, MLflow) come from
tests/fixtures/services.py, started on free ports and stopped afterwards.

- `api_client`: the API in-process on a fresh SQLite DB, no worker — for request-path tests.
- `stack`: the API plus a real Celery worker process (with beat) on a real Redis broker,
  once per database backend (SQLite and PostgreSQL) — for pipeline tests.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from platform_app import create_app, init_platform
from platform_app.config import Config
from platform_app.devstack import GUNICORN_CONFIG, free_port
from platform_app.extensions import db
from tests.fixtures.loki import LokiReceiver

pytest_plugins = ["tests.fixtures.services"]
ROOT = Path(__file__).resolve().parent.parent
_redis_db = itertools.count(1)


def wait_until(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1,
               message: str = "condition") -> object:
    """Poll until `predicate()` is truthy; fail the test with `message` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def queued_tasks(broker: redis.Redis, job_id: int) -> list[str]:
    """Names of the tasks waiting in the broker's queue for one job (earlier tests may have
    left retries of their own there)."""
    messages = [json.loads(raw)["headers"] for raw in broker.lrange("platform", 0, -1)]
    return sorted(m["task"] for m in messages if m.get("kwargsrepr") == repr({"job_id": job_id}))

def base_config(**overrides: object) -> Config:
    settings = dict(
        SECRET_KEY=secrets.token_urlsafe(32),
        OPERATOR_API_KEY=secrets.token_urlsafe(32),
        OUTBOX_SWEEP_INTERVAL_SECONDS=1.0,
        OUTBOX_STALE_AFTER_SECONDS=3.0,
        OUTBOX_RETRY_BACKOFF_SECONDS=0.5,
        OUTBOX_RETRY_BACKOFF_MAX_SECONDS=2.0,
        OUTBOX_MAX_ATTEMPTS=50,
        MLFLOW_HTTP_REQUEST_TIMEOUT=5,
        PROJECTION_LOCK_TTL_SECONDS=10,
        CANCEL_GRACE_SECONDS=3.0,
    )
    settings.update(overrides)
    return Config(**settings)


class ApiActions:
    """What tests do over and over: create a job, call back as its trainer."""

    def __init__(self, client, config: Config) -> None:
        self.client = client
        self.operator = {"X-API-Key": config.OPERATOR_API_KEY}

    def create_job(self, **overrides: object) -> dict:
        body = {"model_name": "yolov8n.yaml", "task_type": "detection",
                "experiment_name": f"test-{uuid.uuid4().hex[:10]}", "epochs": 3,
                "params": {"imgsz": 128, "batch": 8}, "tags": {"team": "vision"}}
        body.update(overrides)
        response = self.client.post("/api/v1/training/jobs", json=body, headers=self.operator)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    @staticmethod
    def bearer(job: dict) -> dict:
        return {"Authorization": f"Bearer {job['callback_token']}"}

    def callback(self, job: dict, kind: str, body: dict, key: str | None = None,
                 expect: int | None = 202):
        headers = self.bearer(job)
        if key:
            headers["Idempotency-Key"] = key
        if kind == "validation":
            path = f"/api/v1/validation/jobs/{job['job_id']}/results"
        else:
            path = f"/api/v1/training/jobs/{job['job_id']}/callback/{kind}"
        response = self.client.post(path, json=body, headers=headers)
        if expect is not None:
            assert response.status_code == expect, response.get_json()
        return response

    def get(self, path: str, **params: object):
        response = self.client.get(path, headers=self.operator, query_string=params)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def job(self, job_id: int) -> dict:
        return self.get(f"/api/v1/training/jobs/{job_id}")


@pytest.fixture()
def api_config(tmp_path: Path, redis_url: str) -> Config:
    """No worker consumes this broker DB: request-path tests only look at what is stored."""
    broker_url = _redis_db_url(redis_url, 15)
    return base_config(DATABASE_URL=f"sqlite:///{tmp_path}/platform.db", REDIS_URL=broker_url,
                       CELERY_BROKER_URL=broker_url, PLATFORM_DATA_DIR=str(tmp_path))


@pytest.fixture()
def api_app(api_config: Config):
    # Job ids start at 1 in every test's DB: flags an earlier test left for its job 1 in
    # Redis (a queued metrics task, its age) must not speak for this one's.
    redis.Redis.from_url(api_config.REDIS_URL).flushdb()
    app = create_app(api_config)
    init_platform(app, bucket=False)
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture()
def api(api_app, api_config: Config) -> ApiActions:
    return ApiActions(api_app.test_client(), api_config)


def _redis_db_url(redis_url: str, index: int) -> str:
    """The same server, another logical DB: stacks must not consume each other's tasks."""
    base = redis_url.rsplit("/", 1)[0] if redis_url.count("/") > 2 else redis_url
    return f"{base}/{index}"


@dataclass
class Worker:
    """A real `celery worker -B` process with the stack's config in its environment."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_file = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-B",
             "--loglevel", "INFO", "--concurrency", "2", "-E", "--without-heartbeat",
             "--without-mingle", "--without-gossip",
             "--schedule", str(self.log_path.with_suffix(".beat"))],
            cwd=ROOT, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_until(lambda: "ready." in self.log_path.read_text() or self.process.poll(),
                   timeout=60, message="the Celery worker to start")
        if self.process.poll() is not None:
            pytest.fail(f"worker exited:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as when a machine or container dies: no warm shutdown, no acks."""
        os.killpg(self.process.pid, 9)
        self.process.wait()
        self.stop()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None
        self.log_file.close()


@dataclass
class LiveServer:
    """The API under gunicorn (gevent), as deployed: for WebSocket and SDK tests."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    url: str = ""

    def start(self) -> LiveServer:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONFIG,
             "--bind", f"127.0.0.1:{port}", "--workers", "1",
             "--control-socket", str(self.log_path.with_suffix(".ctl")), "wsgi:app"],
            cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
            env={**self.env,
                 "PROMETHEUS_MULTIPROC_DIR": str(self.log_path.with_suffix(".metrics"))})

        def up() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"API server exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                return requests.get(f"{self.url}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False
        wait_until(up, timeout=60, message="the API server to answer")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(20)
        self.log_file.close()


@dataclass
class Stack:
    app: object
    config: Config
    actions: ApiActions
    worker: Worker
    mlflow: object
    broker: redis.Redis
    env: dict[str, str]

    def event(self, event_id: int) -> dict:
        return self.actions.get(f"/api/v1/events/{event_id}")

    def wait_projected(self, event_ids: list[int], timeout: float = 60) -> None:
        def done() -> bool:
            return all(self.event(i)["state"] == "projected" for i in event_ids)
        wait_until(done, timeout=timeout, message=f"events {event_ids} to be projected")


@pytest.fixture(scope="session")
def loki() -> Iterator[LokiReceiver]:
    receiver = LokiReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(request, tmp_path_factory, redis_url, s3_settings, mlflow_server,
          loki) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"stack-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{workdir}/platform.db"
    else:
        from platform_app.devstack.services import create_database
        admin_url = request.getfixturevalue("postgres_admin_url")
        name = f"platform_{uuid.uuid4().hex[:8]}"
        create_database(admin_url, name)
        database_url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    broker_url = _redis_db_url(redis_url, next(_redis_db))
    config = base_config(
        DATABASE_URL=database_url, REDIS_URL=broker_url, CELERY_BROKER_URL=broker_url,
        MLFLOW_TRACKING_URI=mlflow_server.uri, S3_ENDPOINT_URL=s3_settings.endpoint_url,
        S3_ACCESS_KEY=s3_settings.access_key, S3_SECRET_KEY=s3_settings.secret_key,
        S3_BUCKET=s3_settings.bucket, PLATFORM_DATA_DIR=str(workdir), LOKI_URL=loki.url,
        WORKER_METRICS_PORT=free_port())
    app = create_app(config)
    init_platform(app)
    env = {**os.environ, **config.as_environ(), "PYTHONUNBUFFERED": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(workdir / "worker-metrics")}
    worker = Worker(env=env, log_path=workdir / "worker.log")
    worker.start()
    yield Stack(app=app, config=config, actions=ApiActions(app.test_client(), config),
                worker=worker, mlflow=mlflow_server, broker=redis.Redis.from_url(broker_url),
                env=env)
    worker.stop()
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(scope="session")
def api_servers(stack, tmp_path_factory) -> Iterator[list[LiveServer]]:
    """Two API processes on the stack: a socket on one sees callbacks sent to the other."""
    workdir = tmp_path_factory.mktemp("api-servers")
    env = {**stack.env, "WS_QUEUE_SIZE": "50", "WS_HEARTBEAT_SECONDS": "1"}
    servers = [LiveServer(env, workdir / f"api-{i}.log").start() for i in range(2)]
    yield servers
    for server in servers:
        server.stop()
