"""Operator endpoints for jobs and their auth."""

from __future__ import annotations


def test_create_job_returns_callback_details(api):
    job = api.create_job(experiment_name="detector", epochs=5)
    assert job["status"] == "pending"
    assert job["callback_url"].endswith("/api/v1")
    assert job["callback_token"] and job["callback_token_expires_at"]
    assert api.job(job["job_id"])["experiment_name"] == "detector"


def test_create_job_names_invalid_fields(api):
    response = api.client.post("/api/v1/training/jobs", headers=api.operator,
                               json={"model_name": "", "task_type": "juggling", "epochs": 0})
    assert response.status_code == 422
    body = response.get_json()
    assert body["error_code"] == "VALIDATION_ERROR"
    assert set(body["details"]) == {"model_name", "task_type", "experiment_name", "epochs"}


def test_unknown_field_is_named(api):
    response = api.client.post("/api/v1/training/jobs", headers=api.operator,
                               json={"model_name": "m", "task_type": "detection",
                                     "experiment_name": "e", "epoch": 3})
    assert response.status_code == 422
    assert "epoch" in response.get_json()["details"]


def test_operator_key_required(api):
    missing = api.client.get("/api/v1/training/jobs")
    wrong = api.client.get("/api/v1/training/jobs", headers={"X-API-Key": "x" * 32})
    assert missing.status_code == wrong.status_code == 401
    assert missing.get_json()["error_code"] == "UNAUTHENTICATED"


def test_trainer_token_is_not_an_operator_key(api):
    job = api.create_job()
    response = api.client.get(f"/api/v1/training/jobs/{job['job_id']}", headers=api.bearer(job))
    assert response.status_code == 401
    response = api.client.get(f"/api/v1/training/jobs/{job['job_id']}",
                              headers={"X-API-Key": job["callback_token"]})
    assert response.status_code == 401


def test_list_jobs_is_paginated(api):
    ids = [api.create_job()["job_id"] for _ in range(5)]
    first = api.get("/api/v1/training/jobs", page=1, per_page=2)
    last = api.get("/api/v1/training/jobs", page=3, per_page=2)
    assert first["total"] == 5 and first["page"] == 1 and first["per_page"] == 2
    assert [j["job_id"] for j in first["items"]] == ids[::-1][:2]
    assert [j["job_id"] for j in last["items"]] == ids[:1]


def test_unknown_job_is_404_in_the_error_shape(api):
    response = api.client.get("/api/v1/training/jobs/999999", headers=api.operator)
    assert response.status_code == 404
    assert response.get_json() == {"error_code": "JOB_NOT_FOUND", "message": "job not found",
                                   "details": {"job_id": 999999}}


def test_unknown_route_uses_the_error_shape(api):
    response = api.client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.get_json()["error_code"] == "NOT_FOUND"


def test_health_and_ready(api):
    assert api.client.get("/health").get_json() == {"status": "ok"}
    ready = api.client.get("/ready")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_openapi_document_lists_the_callbacks(api):
    spec = api.client.get("/api/v1/openapi.json").get_json()
    assert "/api/v1/training/jobs/{job_id}/callback/progress" in spec["paths"]


def test_polling_with_an_etag_costs_a_304_until_something_changes(api):
    job = api.create_job()
    url = f"/api/v1/training/jobs/{job['job_id']}/metrics"
    first = api.client.get(url, headers=api.operator)
    etag = first.headers["ETag"]
    same = api.client.get(url, headers={**api.operator, "If-None-Match": etag})
    assert same.status_code == 304 and same.get_data() == b""
    api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}})
    changed = api.client.get(url, headers={**api.operator, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.get_json()["items"]
