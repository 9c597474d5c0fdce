"""The local services behave like the production ones where the platform relies on it:
S3 enforces credentials, MLflow keeps data across a restart, PostgreSQL databases can be
made per test, and a service that fails to start says why."""

from __future__ import annotations

import io
import socket
import sys
import uuid
from dataclasses import replace

import psycopg
import pytest
import redis
import requests
from minio.error import S3Error
from mlflow.tracking import MlflowClient

from platform_app.devstack import (
    ManagedProcess,
    S3Settings,
    ServiceStartError,
    create_database,
    port_or_free,
)


def test_redis_answers(redis_url: str) -> None:
    assert redis.Redis.from_url(redis_url).ping()


def test_s3_put_get_with_the_right_key(s3_settings: S3Settings) -> None:
    client = s3_settings.client()
    key = f"devstack/{uuid.uuid4().hex}.txt"
    client.put_object(s3_settings.bucket, key, io.BytesIO(b"hello"), 5)
    assert client.get_object(s3_settings.bucket, key).read() == b"hello"


def test_s3_refuses_a_wrong_secret_key(s3_settings: S3Settings) -> None:
    wrong = replace(s3_settings, secret_key=s3_settings.secret_key + "x").client()
    with pytest.raises(S3Error) as exc:
        wrong.put_object(s3_settings.bucket, "devstack/forged", io.BytesIO(b"x"), 1)
    assert exc.value.code in {"SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId"}


def test_s3_refuses_anonymous_requests(s3_settings: S3Settings) -> None:
    key = f"devstack/{uuid.uuid4().hex}.txt"
    s3_settings.client().put_object(s3_settings.bucket, key, io.BytesIO(b"secret"), 6)
    url = f"{s3_settings.endpoint_url}/{s3_settings.bucket}/{key}"
    assert requests.get(url, timeout=5).status_code == 403
    assert requests.put(url + ".anon", data=b"x", timeout=5).status_code == 403


def test_mlflow_keeps_runs_and_artifacts_across_a_restart(
    mlflow_server, s3_settings: S3Settings, tmp_path
) -> None:
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment(f"devstack-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id).info.run_id
    client.log_metric(run_id, "loss", 0.25, step=3)
    artifact = tmp_path / "notes.txt"
    artifact.write_text("through the proxy into S3")
    client.log_artifact(run_id, str(artifact))
    stored = s3_settings.client().list_objects(s3_settings.bucket, prefix="mlflow/", recursive=True)
    assert any(obj.object_name.endswith(f"{run_id}/artifacts/notes.txt") for obj in stored)

    mlflow_server.stop()
    assert not mlflow_server.running
    with pytest.raises(requests.ConnectionError):
        requests.get(mlflow_server.uri + "/health", timeout=2)
    mlflow_server.start()

    history = client.get_metric_history(run_id, "loss")
    assert [(m.value, m.step) for m in history] == [(0.25, 3)]
    downloaded = client.download_artifacts(run_id, "notes.txt", str(tmp_path / "back"))
    assert open(downloaded).read() == "through the proxy into S3"


def test_postgres_create_database_and_connect(postgres_admin_url: str) -> None:
    name = f"devstack_{uuid.uuid4().hex[:8]}"
    url = create_database(postgres_admin_url, name)
    assert create_database(postgres_admin_url, name) == url  # idempotent
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)


def test_a_crashing_service_reports_its_log(tmp_path) -> None:
    proc = ManagedProcess(
        "crasher",
        [sys.executable, "-c", "import sys; print('bad config: no FOO'); sys.exit(3)"],
        {},
        tmp_path / "crasher.log",
        ready=lambda: False,
    )
    with pytest.raises(ServiceStartError, match=r"(?s)crasher exited with code 3.*bad config"):
        proc.start_and_wait(timeout=10)


def test_a_silent_service_is_stopped_after_the_timeout(tmp_path) -> None:
    proc = ManagedProcess(
        "sleeper",
        [sys.executable, "-c", "import time; print('starting'); time.sleep(60)"],
        {},
        tmp_path / "sleeper.log",
        ready=lambda: False,
    )
    with pytest.raises(ServiceStartError, match=r"sleeper did not become ready"):
        proc.start_and_wait(timeout=1)
    assert not proc.running


def test_port_or_free_avoids_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert port_or_free(port) != port
    assert port_or_free(port) == port
