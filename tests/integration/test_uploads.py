"""Checkpoints and artifacts through presigned URLs, against SeaweedFS's S3 gateway.

The "trainer" side here is plain `requests` with the job token and the URLs the platform
hands out: it has no store credentials.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from platform_app.extensions import db
from platform_app.models import Upload, utcnow
from tests.conftest import wait_until

MiB = 1024 * 1024


def ask(stack, job, body: dict, what: str = "checkpoint", expect: int = 200) -> dict:
    path = f"/api/v1/training/jobs/{job['job_id']}/{what}/get-upload-url"
    response = stack.actions.client.post(path, json=body, headers=stack.actions.bearer(job))
    assert response.status_code == expect, response.get_json()
    return response.get_json()


def complete(stack, job, body: dict, what: str = "checkpoint", expect: int = 202):
    path = f"/api/v1/training/jobs/{job['job_id']}/{what}/upload-complete"
    response = stack.actions.client.post(path, json=body, headers=stack.actions.bearer(job))
    assert response.status_code == expect, response.get_json()
    return response


def put_parts(grant: dict, data: bytes) -> list[dict]:
    size = grant["part_size"]

    def put(part: dict) -> dict:
        start = (part["part_number"] - 1) * size
        response = requests.put(part["url"], data=data[start:start + size], timeout=60)
        response.raise_for_status()
        return {"part_number": part["part_number"], "etag": response.headers["ETag"]}

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(put, grant["parts"]))


def upload(stack, job, data: bytes, checkpoint_type: str = "best", claim: str | None = None,
           epoch: int | None = None) -> tuple[dict, dict]:
    digest = hashlib.sha256(data).hexdigest()
    grant = ask(stack, job, {"checkpoint_type": checkpoint_type, "filename": "best.pt",
                             "size": len(data), "epoch": epoch,
                             "sha256": None if claim else digest})
    body = {"upload_id": grant["upload_id"], "sha256": claim or digest}
    if "parts" in grant:
        body["parts"] = put_parts(grant, data)
    else:
        response = requests.put(grant["upload_url"], data=data, headers=grant["headers"],
                                timeout=60)
        assert response.status_code == 200, response.text
    return grant, complete(stack, job, body).get_json()


def checkpoints(stack, job) -> list[dict]:
    return stack.actions.get(f"/api/v1/training/jobs/{job['job_id']}/checkpoints")["items"]


def test_single_put_checkpoint_is_verified_recorded_and_linked(stack):
    job = stack.actions.create_job()
    data = os.urandom(MiB)
    grant, accepted = upload(stack, job, data, "best")
    assert "upload_url" in grant and "x-amz-checksum-sha256" in grant["headers"]
    assert grant["s3_uri"].startswith(f"s3://{stack.config.S3_BUCKET}/jobs/{job['job_id']}/")
    stack.wait_projected([accepted["event_id"]])
    [checkpoint] = checkpoints(stack, job)
    assert checkpoint["status"] == "verified" and checkpoint["size"] == MiB
    assert checkpoint["sha256"] == hashlib.sha256(data).hexdigest()
    assert requests.get(checkpoint["download_url"], timeout=30).content == data
    state = stack.actions.job(job["job_id"])
    assert state["best_checkpoint_path"] == grant["s3_uri"]
    run = MlflowClient(stack.mlflow.uri).get_run(state["mlflow_run_id"])
    assert run.data.tags["checkpoint.best.uri"] == grant["s3_uri"]
    assert run.data.tags["checkpoint.best.sha256"] == checkpoint["sha256"]


def test_200_mib_multipart_upload_with_parallel_parts(stack):
    job = stack.actions.create_job()
    data = os.urandom(200 * MiB)
    grant, accepted = upload(stack, job, data, "last")
    assert len(grant["parts"]) == -(-200 * MiB // grant["part_size"])
    stack.wait_projected([accepted["event_id"]], timeout=120)
    [checkpoint] = checkpoints(stack, job)
    assert checkpoint["status"] == "verified"
    assert checkpoint["sha256"] == hashlib.sha256(data).hexdigest()
    assert stack.actions.job(job["job_id"])["last_checkpoint_path"] == grant["s3_uri"]


def test_wrong_sha256_is_rejected_and_deleted(stack, s3_settings):
    job = stack.actions.create_job()
    data = os.urandom(80 * MiB)  # multipart: the store keeps no checksum, the worker reads
    grant, accepted = upload(stack, job, data, "best", claim="0" * 64)
    stack.wait_projected([accepted["event_id"]], timeout=120)
    [checkpoint] = checkpoints(stack, job)
    assert checkpoint["status"] == "rejected" and "sha256" in checkpoint["reason"]
    assert checkpoint["download_url"] is None
    key = grant["s3_uri"].split("/", 3)[3]
    assert not list(s3_settings.client().list_objects(s3_settings.bucket, prefix=key))
    assert stack.actions.job(job["job_id"])["best_checkpoint_path"] is None


def test_store_refuses_a_body_other_than_declared(stack):
    job = stack.actions.create_job()
    data = os.urandom(MiB)
    grant = ask(stack, job, {"checkpoint_type": "best", "filename": "best.pt",
                             "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    other = os.urandom(MiB)
    refused = requests.put(grant["upload_url"], data=other, headers=grant["headers"])
    assert refused.status_code == 400
    shorter = {**grant["headers"], "Content-Length": str(MiB - 1)}
    assert requests.put(grant["upload_url"], data=data[:-1], headers=shorter).status_code == 403
    tampered = grant["upload_url"].replace("best.pt", "other.pt")
    assert requests.put(tampered, data=data, headers=grant["headers"]).status_code == 403
    # nothing landed, so completing it is rejected
    accepted = complete(stack, job, {"upload_id": grant["upload_id"],
                                     "sha256": hashlib.sha256(data).hexdigest()}).get_json()
    stack.wait_projected([accepted["event_id"]])
    assert checkpoints(stack, job)[0]["reason"] == "no object was uploaded"


def test_expired_url_is_refused(stack):
    store = stack.app.extensions["storage"]
    url = store.presign_put(f"jobs/0/expired/{os.getpid()}", 4, None,
                            "application/octet-stream", expires_s=1)
    wait_until(lambda: requests.put(url.url, data=b"late", headers=url.headers).status_code
               == 403, timeout=10, message="the presigned URL to expire")


@pytest.mark.parametrize("filename", ["../other/best.pt", "a/b.pt", ".hidden", "x" * 200])
def test_client_cannot_choose_a_key_outside_the_job(stack, filename):
    job = stack.actions.create_job()
    response = stack.actions.client.post(
        f"/api/v1/training/jobs/{job['job_id']}/checkpoint/get-upload-url",
        json={"checkpoint_type": "best", "filename": filename, "size": 10},
        headers=stack.actions.bearer(job))
    assert response.status_code == 422
    assert "filename" in response.get_json()["details"]


def test_another_jobs_token_cannot_ask_or_complete(stack):
    mine, other = stack.actions.create_job(), stack.actions.create_job()
    body = {"checkpoint_type": "best", "filename": "best.pt", "size": 10}
    response = stack.actions.client.post(
        f"/api/v1/training/jobs/{mine['job_id']}/checkpoint/get-upload-url", json=body,
        headers=stack.actions.bearer(other))
    assert response.status_code == 403
    grant = ask(stack, mine, body)
    response = stack.actions.client.post(
        f"/api/v1/training/jobs/{other['job_id']}/checkpoint/upload-complete",
        json={"upload_id": grant["upload_id"], "sha256": "a" * 64},
        headers=stack.actions.bearer(other))
    assert response.status_code == 404


def test_upload_complete_twice_is_one_checkpoint(stack):
    job = stack.actions.create_job()
    data = os.urandom(1000)
    grant, first = upload(stack, job, data, "epoch", epoch=3)
    again = complete(stack, job, {"upload_id": grant["upload_id"],
                                  "sha256": hashlib.sha256(data).hexdigest()})
    assert again.get_json() == first and again.headers["Idempotent-Replayed"] == "true"
    stack.wait_projected([first["event_id"]])
    assert [(c["checkpoint_type"], c["epoch"], c["status"]) for c in checkpoints(stack, job)] == [
        ("epoch", 3, "verified")]
    run = MlflowClient(stack.mlflow.uri).get_run(stack.actions.job(job["job_id"])["mlflow_run_id"])
    assert run.data.tags["checkpoint.epoch.3.uri"] == grant["s3_uri"]


def test_abandoned_multipart_upload_is_cleaned_up(stack):
    job = stack.actions.create_job()
    grant = ask(stack, job, {"checkpoint_type": "last", "filename": "last.pt",
                             "size": 70 * MiB})
    store = stack.app.extensions["storage"]
    with stack.app.app_context():
        row = db.session.scalar(sa.select(Upload).where(Upload.upload_id == grant["upload_id"]))
        key, s3_upload_id = row.key, row.s3_upload_id
        assert store.multipart_exists(key, s3_upload_id)
        row.expires_at = utcnow() - timedelta(hours=1)  # as if its URLs expired long ago
        db.session.commit()
    wait_until(lambda: checkpoints(stack, job)[0]["status"] == "abandoned", timeout=30,
               message="the sweeper to abandon the upload")
    assert not store.multipart_exists(key, s3_upload_id)


def test_plots_are_uploaded_as_artifacts_and_served_presigned(stack):
    job = stack.actions.create_job()
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
    grant = ask(stack, job, {"kind": "validation_plot", "filename": "confusion_matrix.png",
                             "content_type": "image/png", "size": len(png),
                             "sha256": hashlib.sha256(png).hexdigest()}, what="artifacts")
    assert requests.put(grant["upload_url"], data=png, headers=grant["headers"]).status_code == 200
    done = complete(stack, job, {"upload_id": grant["upload_id"],
                                 "sha256": hashlib.sha256(png).hexdigest()}, what="artifacts")
    validation = stack.actions.callback(job, "validation", {
        "job_id": job["job_id"], "epoch": 1, "task_type": "detection",
        "visualization_urls": {"confusion_matrix": grant["s3_uri"],
                               "elsewhere": "s3://another-bucket/x.png"}})
    stack.wait_projected([done.get_json()["event_id"], validation.get_json()["event_id"]])
    result = stack.actions.get(f"/api/v1/validation/jobs/{job['job_id']}/results/1")
    assert set(result["visualization_download_urls"]) == {"confusion_matrix"}
    fetched = requests.get(result["visualization_download_urls"]["confusion_matrix"])
    assert fetched.content == png and fetched.headers["Content-Type"] == "image/png"


def test_dataset_is_handed_out_as_a_presigned_get(stack, s3_settings):
    import io
    client = s3_settings.client()
    client.put_object(s3_settings.bucket, "datasets/tiny.zip", io.BytesIO(b"zipzip"), 6)
    api = stack.actions
    job = api.create_job(dataset_uri=f"s3://{s3_settings.bucket}/datasets/tiny.zip")
    response = api.client.get(f"/api/v1/training/jobs/{job['job_id']}/dataset",
                              headers=api.bearer(job))
    assert response.status_code == 200
    assert requests.get(response.get_json()["download_url"]).content == b"zipzip"
    missing = api.client.post("/api/v1/training/jobs", headers=api.operator, json={
        "model_name": "m", "task_type": "detection", "experiment_name": "e",
        "dataset_uri": f"s3://{s3_settings.bucket}/datasets/nope.zip"})
    assert missing.status_code == 422 and "dataset_uri" in missing.get_json()["details"]
