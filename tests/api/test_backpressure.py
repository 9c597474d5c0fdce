"""Backpressure: a job whose metrics wait too long for a worker gets 429 + Retry-After on
progress callbacks; nothing it already sent is lost and its other callbacks still pass."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import redis

from platform_app.models import now_ms
from platform_app.services import backpressure, metrics_queue, projections
from platform_app.services.errors import SinkUnavailable
from platform_app.services.metrics_queue import queued_flag
from platform_app.services.tracking import TrackingService
from tests.api.test_callbacks import PROGRESS
from tests.conftest import queued_tasks


def metrics_queued_for(api_config, job_id: int, seconds_ago: float) -> None:
    """As if a metrics task had been queued for the job that long ago and none had started."""
    redis.Redis.from_url(api_config.REDIS_URL).set(
        queued_flag(job_id), int((time.time() - seconds_ago) * 1000), ex=60)


def test_a_job_far_behind_is_told_to_retry_later(api, api_config):
    job = api.create_job()
    metrics_queued_for(api_config, job["job_id"], seconds_ago=60)
    accepted = api.callback(job, "progress", PROGRESS)  # accepted: this is how it learns
    refused = api.callback(job, "progress", {**PROGRESS, "current_epoch": 2}, expect=429)
    # 58 s beyond the threshold: held as long as allowed
    assert refused.headers["Retry-After"] == str(api_config.BACKPRESSURE_MAX_RETRY_AFTER_SECONDS)
    assert refused.get_json()["error_code"] == "RATE_LIMITED"
    assert refused.get_json()["details"]["job_id"] == job["job_id"]
    assert api.job(job["job_id"])["current_epoch"] == 1  # the refused one left nothing
    assert accepted.get_json()["event_id"]
    # the end of training and its logs are never held back
    api.callback(job, "logs", {"lines": ["still here"]})
    api.callback(job, "completion", {"status": "completed", "final_metrics": {}})


def test_the_hold_grows_with_how_far_behind_the_job_is(api, api_config):
    """Held for what the job is behind beyond the threshold, so that trainers slow to what
    MLflow absorbs instead of the backlog growing; never less than the shortest hold."""
    slightly, further = api.create_job(), api.create_job()
    metrics_queued_for(api_config, slightly["job_id"],
                       seconds_ago=api_config.BACKPRESSURE_LAG_SECONDS + 0.3)
    metrics_queued_for(api_config, further["job_id"],
                       seconds_ago=api_config.BACKPRESSURE_LAG_SECONDS + 4.6)
    for job in (slightly, further):
        api.callback(job, "progress", PROGRESS)
    assert api.callback(slightly, "progress", PROGRESS, expect=429).headers["Retry-After"] \
        == str(api_config.BACKPRESSURE_RETRY_AFTER_SECONDS)
    assert api.callback(further, "progress", PROGRESS, expect=429).headers["Retry-After"] == "5"


def test_other_jobs_and_fresh_backlogs_are_not_held_back(api, api_config):
    behind, fine = api.create_job(), api.create_job()
    metrics_queued_for(api_config, behind["job_id"], seconds_ago=60)
    metrics_queued_for(api_config, fine["job_id"],
                       seconds_ago=api_config.BACKPRESSURE_LAG_SECONDS / 2)
    api.callback(behind, "progress", PROGRESS)
    api.callback(behind, "progress", PROGRESS, expect=429)
    for epoch in (1, 2, 3):
        api.callback(fine, "progress", {**PROGRESS, "current_epoch": epoch})


def test_the_hold_ends_after_retry_after(api, api_config, monkeypatch):
    job = api.create_job()
    metrics_queued_for(api_config, job["job_id"], seconds_ago=60)
    api.callback(job, "progress", PROGRESS)
    retry_after = int(api.callback(job, "progress", PROGRESS, expect=429).headers["Retry-After"])
    redis.Redis.from_url(api_config.REDIS_URL).delete(queued_flag(job["job_id"]))  # caught up
    later = time.monotonic() + retry_after + 0.1
    # the API process's clock only (patching time.monotonic itself would move every clock)
    monkeypatch.setattr(backpressure, "time", SimpleNamespace(monotonic=lambda: later))
    almost = later - 1.0  # the next 429 says what is left of the hold
    monkeypatch.setattr(backpressure, "time", SimpleNamespace(monotonic=lambda: almost))
    assert api.callback(job, "progress", PROGRESS, expect=429).headers["Retry-After"] == "1"
    monkeypatch.setattr(backpressure, "time", SimpleNamespace(monotonic=lambda: later))
    api.callback(job, "progress", {**PROGRESS, "current_epoch": 2})
    api.callback(job, "progress", {**PROGRESS, "current_epoch": 3})
    assert api.job(job["job_id"])["current_epoch"] == 3


def queued_metrics_tasks(api_config, job_id: int) -> int:
    """Metrics tasks waiting in the broker for the job (no worker consumes it here)."""
    broker = redis.Redis.from_url(api_config.CELERY_BROKER_URL)
    return queued_tasks(broker, job_id).count(metrics_queue.TASK)


def test_a_job_on_hold_during_an_mlflow_outage_queues_nothing_and_is_not_held_back(
        api, api_app, api_config):
    """A metrics task that finds MLflow down holds its job (metrics_queue.hold) for longer
    than the backpressure threshold: the job's callbacks meanwhile are accepted and queue no
    task of their own; another job's first callback queues one, as always."""
    held, other = api.create_job(), api.create_job()
    with api_app.app_context():
        metrics_queue.hold(held["job_id"], api_config.BACKPRESSURE_LAG_SECONDS + 30)
    for epoch in (1, 2, 3):
        for job in (held, other):
            api.callback(job, "progress", {**PROGRESS, "current_epoch": epoch})
    assert queued_metrics_tasks(api_config, held["job_id"]) == 0
    assert queued_metrics_tasks(api_config, other["job_id"]) == 1
    assert api.job(held["job_id"])["current_epoch"] == 3


def test_a_worker_that_knows_mlflow_is_down_holds_the_job_without_looking(api_app, api_config):
    """For as long as its breaker says MLflow is down, at least MLFLOW_OUTAGE_HOLD_SECONDS."""
    tracking = TrackingService("http://127.0.0.1:9", timeout_s=1, max_retries=0,
                               outage_probe_s=60)
    broker = redis.Redis.from_url(api_config.REDIS_URL)
    with api_app.app_context():
        assert projections.hold_while_mlflow_down(7, tracking) == 0  # not known to be down
        assert not broker.exists(queued_flag(7))
        with pytest.raises(SinkUnavailable), tracking.available():
            raise SinkUnavailable("MLflow unreachable")
        held_s = projections.hold_while_mlflow_down(7, tracking)
    assert 59 < held_s <= 60 and api_config.MLFLOW_OUTAGE_HOLD_SECONDS < 59
    assert now_ms() + 58_000 < int(broker.get(queued_flag(7))) <= now_ms() + 60_000
    assert 58_000 < broker.pttl(queued_flag(7)) <= 60_000
