"""The request path: validation, auth, idempotency and the job state machine.
Nothing here needs a worker: it checks what was stored and answered."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from flask import session
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from platform_app import auth
from platform_app.auth import CALLBACK_SALT
from platform_app.extensions import db
from platform_app.models import Event

PROGRESS = {"current_epoch": 1, "total_epochs": 3,
            "metrics": {"metrics/mAP50-95(B)": 0.42, "train/box_loss": 1.5}}


def count_events(app, job_id: int) -> int:
    with app.app_context():
        return db.session.query(Event).filter_by(job_id=job_id).count()


def test_progress_is_accepted_and_moves_the_job_to_running(api):
    job = api.create_job()
    body = api.callback(job, "progress", PROGRESS).get_json()
    assert body["event_id"] > 0 and body["job_status"] == "running"
    state = api.job(job["job_id"])
    assert state["status"] == "running" and state["current_epoch"] == 1
    assert state["latest_metrics"]["metrics/mAP50-95(B)"] == 0.42


def test_no_request_keeps_state_in_a_cookie(api, api_app):
    """Callers authenticate every request; the API opens no cookie session at all."""
    job = api.create_job()
    response = api.callback(job, "progress", PROGRESS)
    assert "Set-Cookie" not in response.headers
    with api_app.test_request_context("/"):
        with pytest.raises(RuntimeError, match="session is unavailable"):
            session["user"] = "someone"


@pytest.mark.parametrize("body, field", [
    ({"metrics": {}}, "current_epoch"),
    ({"current_epoch": -1}, "current_epoch"),
    ({"current_epoch": "3"}, "current_epoch"),
    ({"current_epoch": 1, "metrics": {"loss": "high"}}, "metrics"),
    ({"current_epoch": 1, "metrics": {"loss": True}}, "metrics"),
    ({"current_epoch": 1, "metrics": {"x" * 251: 1.0}}, "metrics"),
    ({"current_epoch": 1, "metrics": {"": 1.0}}, "metrics"),
    ({"current_epoch": 1, "metrics": {"loss": 0.5, "big": 10 ** 400}}, "metrics"),
    ({"current_epoch": 1, "status": "done"}, "status"),
])
def test_invalid_progress_names_the_field(api, api_app, body, field):
    job = api.create_job()
    response = api.callback(job, "progress", body, expect=422)
    error = response.get_json()
    assert error["error_code"] == "VALIDATION_ERROR"
    assert field in error["details"]
    assert count_events(api_app, job["job_id"]) == 0


def test_body_that_is_not_json_is_400(api):
    job = api.create_job()
    response = api.client.post(
        f"/api/v1/training/jobs/{job['job_id']}/callback/progress", data=b"{not json",
        headers={**api.bearer(job), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.get_json()["error_code"] == "INVALID_JSON"


def test_json_without_content_type_is_accepted(api):
    job = api.create_job()
    response = api.client.post(
        f"/api/v1/training/jobs/{job['job_id']}/callback/logs",
        data=b'{"lines": ["hello"]}', headers=api.bearer(job))
    assert response.status_code == 202


def test_oversize_body_is_413(api, api_config):
    job = api.create_job()
    lines = ["x" * 60000] * (api_config.MAX_CONTENT_LENGTH // 60000 + 1)
    response = api.callback(job, "logs", {"lines": lines}, expect=413)
    assert response.get_json()["error_code"] == "PAYLOAD_TOO_LARGE"


def test_nan_and_infinity_are_kept_as_tokens(api):
    job = api.create_job()
    raw = b'{"current_epoch": 1, "metrics": {"loss": NaN, "lr": Infinity, "x": null}}'
    response = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/callback/progress",
                               data=raw, headers=api.bearer(job))
    assert response.status_code == 202, response.get_json()
    metrics = api.get(f"/api/v1/training/jobs/{job['job_id']}/metrics")["items"][0]["metrics"]
    assert metrics == {"loss": "NaN", "lr": "Infinity", "x": None}


def test_metric_values_are_stored_as_sent(api):
    job = api.create_job()
    sent = {"loss": 0.125, "count": 7, "huge": 1e308, "tiny": -5e-324, "unmeasured": None}
    api.callback(job, "progress", {"current_epoch": 1, "metrics": sent})
    metrics = api.get(f"/api/v1/training/jobs/{job['job_id']}/metrics")["items"][0]["metrics"]
    assert metrics == sent and type(metrics["count"]) is int


def test_missing_forged_and_expired_tokens_are_401(api, api_config, monkeypatch):
    job = api.create_job()
    url = f"/api/v1/training/jobs/{job['job_id']}/callback/progress"
    token = job["callback_token"]
    forged_token = token[:-4] + ("BBBB" if token.endswith("AAAA") else "AAAA")
    signer = URLSafeTimedSerializer(api_config.SECRET_KEY, salt=CALLBACK_SALT)
    with monkeypatch.context() as patched:
        issued_long_ago = int(time.time()) - api_config.CALLBACK_TOKEN_TTL_SECONDS - 10
        patched.setattr(TimestampSigner, "get_timestamp", lambda self: issued_long_ago)
        expired_token = signer.dumps({"job_id": job["job_id"]})
    responses = [
        api.client.post(url, json=PROGRESS),
        api.client.post(url, json=PROGRESS, headers={"Authorization": f"Bearer {forged_token}"}),
        api.client.post(url, json=PROGRESS, headers={"Authorization": f"Bearer {expired_token}"}),
    ]
    assert [r.status_code for r in responses] == [401, 401, 401]
    assert [r.get_json()["error_code"] for r in responses] == [
        "UNAUTHENTICATED", "INVALID_TOKEN", "TOKEN_EXPIRED"]


def test_a_token_in_use_still_expires(api, api_config, monkeypatch):
    job = api.create_job()
    api.callback(job, "progress", PROGRESS)  # verified once, then remembered by the process
    later = time.time() + api_config.CALLBACK_TOKEN_TTL_SECONDS + 10
    monkeypatch.setattr(auth, "time", SimpleNamespace(time=lambda: later))
    response = api.callback(job, "progress", {**PROGRESS, "current_epoch": 2}, expect=401)
    assert response.get_json()["error_code"] == "TOKEN_EXPIRED"


def test_token_of_another_job_is_403(api, api_app):
    mine, other = api.create_job(), api.create_job()
    response = api.client.post(f"/api/v1/training/jobs/{mine['job_id']}/callback/progress",
                               json=PROGRESS, headers=api.bearer(other))
    assert response.status_code == 403
    assert response.get_json()["error_code"] == "FORBIDDEN"
    assert count_events(api_app, mine["job_id"]) == 0


def test_auth_is_checked_before_the_body(api):
    job = api.create_job()
    response = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/callback/progress",
                               json={"bad": True})
    assert response.status_code == 401


def test_idempotent_replay_returns_the_first_answer(api, api_app):
    job = api.create_job()
    first = api.callback(job, "progress", PROGRESS, key="epoch-1")
    again = api.callback(job, "progress", PROGRESS, key="epoch-1")
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_events(api_app, job["job_id"]) == 1


def test_retried_completion_gets_its_first_answer_not_a_conflict(api, api_app):
    """The job finished with the first attempt; a retry (its 202 was lost) must not be told
    the job has finished."""
    job = api.create_job()
    body = {"status": "completed", "final_metrics": {"mAP": 0.5}}
    first = api.callback(job, "completion", body, key="done")
    again = api.callback(job, "completion", body, key="done")
    assert again.get_json() == first.get_json()
    assert again.get_json()["job_status"] == "completed"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_events(api_app, job["job_id"]) == 1


def test_reused_key_with_another_body_is_refused(api, api_app):
    job = api.create_job()
    api.callback(job, "progress", PROGRESS, key="k1")
    response = api.callback(job, "progress", {**PROGRESS, "current_epoch": 2}, key="k1",
                            expect=422)
    assert response.get_json()["error_code"] == "IDEMPOTENCY_KEY_REUSED"
    assert count_events(api_app, job["job_id"]) == 1


def test_overlong_idempotency_key_is_named(api):
    job = api.create_job()
    response = api.callback(job, "progress", PROGRESS, key="k" * 256, expect=422)
    assert "Idempotency-Key" in response.get_json()["details"]


def test_same_key_on_two_jobs_is_two_events(api, api_app):
    one, two = api.create_job(), api.create_job()
    api.callback(one, "progress", PROGRESS, key="same")
    api.callback(two, "progress", PROGRESS, key="same")
    assert count_events(api_app, one["job_id"]) == count_events(api_app, two["job_id"]) == 1


def test_late_progress_does_not_reopen_a_finished_job(api, api_app):
    job = api.create_job()
    api.callback(job, "progress", PROGRESS)
    api.callback(job, "completion", {"status": "completed", "final_metrics": {"mAP": 0.5}})
    late = api.callback(job, "progress", {**PROGRESS, "current_epoch": 2}, expect=409)
    assert late.get_json()["error_code"] == "JOB_FINISHED"
    again = api.callback(job, "completion", {"status": "failed"}, expect=409)
    assert again.get_json()["details"]["status"] == "completed"
    state = api.job(job["job_id"])
    assert state["status"] == "completed" and state["current_epoch"] == 1
    assert count_events(api_app, job["job_id"]) == 2
    # logs still arrive after the end: a trainer flushes them around its last callbacks
    api.callback(job, "logs", {"lines": ["bye"]})


def test_failed_completion_keeps_the_error(api):
    job = api.create_job()
    api.callback(job, "completion", {"status": "failed", "error_message": "CUDA OOM"})
    state = api.job(job["job_id"])
    assert state["status"] == "failed" and state["error_message"] == "CUDA OOM"
    assert state["finished_at"]


def test_validation_job_id_must_match_the_url(api):
    job = api.create_job()
    body = {"job_id": job["job_id"] + 1, "epoch": 1, "task_type": "detection"}
    response = api.callback(job, "validation", body, expect=422)
    assert "job_id" in response.get_json()["details"]


def test_validation_confusion_matrix_must_fit_the_classes(api):
    job = api.create_job()
    body = {"job_id": job["job_id"], "epoch": 1, "task_type": "detection",
            "class_names": ["a", "b"], "confusion_matrix": [[1, 0, 0, 0]] * 4}
    response = api.callback(job, "validation", body, expect=422)
    assert "confusion_matrix" in response.get_json()["details"]


def test_logs_need_lines(api):
    job = api.create_job()
    response = api.callback(job, "logs", {"log_type": "stdout", "lines": []}, expect=422)
    assert "lines" in response.get_json()["details"]


def test_callback_for_unknown_job_is_404(api, api_config):
    token = URLSafeTimedSerializer(api_config.SECRET_KEY, salt=CALLBACK_SALT).dumps(
        {"job_id": 424242})
    response = api.client.post("/api/v1/training/jobs/424242/callback/progress", json=PROGRESS,
                               headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 404


def test_callbacks_are_accepted_while_the_broker_is_down(api_config, tmp_path):
    """The outbox keeps the event; the sweeper announces it once the broker is back."""
    from platform_app import create_app, init_platform
    from platform_app.devstack import free_port
    from tests.conftest import ApiActions

    down = f"redis://127.0.0.1:{free_port()}/0"
    config = api_config.replace(CELERY_BROKER_URL=down, REDIS_URL=down)
    app = create_app(config)
    init_platform(app, bucket=False)
    api = ApiActions(app.test_client(), config)
    job = api.create_job()
    body = api.callback(job, "progress", PROGRESS).get_json()
    with app.app_context():
        event = db.session.get(Event, body["event_id"])
        assert event.state.value == "pending" and event.payload["current_epoch"] == 1
    ready = api.client.get("/ready")
    assert ready.status_code == 503 and ready.get_json()["checks"]["broker"] != "ok"


def test_cancel_tells_the_trainer_to_stop(api):
    job = api.create_job()
    assert api.callback(job, "progress", PROGRESS).get_json()["stop_requested"] is False
    response = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/cancel",
                               headers=api.operator)
    assert response.status_code == 202 and response.get_json()["status"] == "stopping"
    answer = api.callback(job, "progress", {**PROGRESS, "current_epoch": 2}).get_json()
    assert answer["stop_requested"] is True and answer["job_status"] == "stopping"
    api.callback(job, "completion", {"status": "cancelled"})
    assert api.job(job["job_id"])["status"] == "cancelled"
    again = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/cancel",
                            headers=api.operator)
    assert again.status_code == 409


def test_cancel_needs_the_operator_key(api):
    job = api.create_job()
    response = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/cancel",
                               headers=api.bearer(job))
    assert response.status_code == 401
