"""Nothing accepted is lost: MLflow down, broker flushed, a sink refusing data."""

from __future__ import annotations

import importlib
import time

import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from platform_app.extensions import db
from platform_app.models import Event, EventState, now_ms
from platform_app.services import metrics_queue, outbox
from platform_app.services.errors import SinkRejected
from tests.conftest import queued_tasks, wait_until


def test_mlflow_outage_delays_but_loses_nothing(stack):
    api = stack.actions
    job = api.create_job()
    first = api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}})
    stack.wait_projected([first.get_json()["event_id"]])
    stack.mlflow.stop()
    try:
        ids = [api.callback(job, "progress", {"current_epoch": e, "metrics": {"loss": 1 / e}})
               .get_json()["event_id"] for e in range(2, 7)]
        wait_until(lambda: stack.event(ids[0])["attempts"] >= 1, timeout=30,
                   message="a failed attempt while MLflow is down")
        pending = stack.event(ids[0])
        assert pending["state"] == "pending" and "MLflow" in pending["last_error"]
    finally:
        stack.mlflow.start()
    stack.wait_projected(ids, timeout=90)
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    points = MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")
    assert sorted(p.step for p in points) == [1, 2, 3, 4, 5, 6]


OUTAGE_CALLBACKS = 20


def most_attempts_within(seconds: float, config) -> int:
    """What the backoff schedule allows: each retry at least half its ceiling (the jitter)
    less the slack allowed to a timer (workers/tasks.backoff, outbox.record_failure)."""
    elapsed, attempts = 0.0, 1
    while True:
        ceiling = min(config.OUTBOX_RETRY_BACKOFF_MAX_SECONDS,
                      config.OUTBOX_RETRY_BACKOFF_SECONDS * 2 ** attempts / 2)
        elapsed += max(0.0, ceiling / 2 - outbox.RETRY_DUE_SLACK.total_seconds())
        if elapsed > seconds:
            return attempts
        attempts += 1


def test_callbacks_during_an_outage_do_not_use_up_the_retries(stack):
    """Several metrics tasks can fail on a job while MLflow is down (a callback after each
    hold expires or a probe took the job up, a scheduled retry, the sweeper's
    re-announcements). Their failed attempts all fall on the job's oldest pending event:
    counted one per task, they would fail it for good long before its backoff schedule ends.
    One failed attempt counts per scheduled retry."""
    api = stack.actions
    job = api.create_job()
    first = api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}})
    stack.wait_projected([first.get_json()["event_id"]])
    stack.mlflow.stop()
    started = time.monotonic()
    try:
        ids = []
        for epoch in range(2, 2 + OUTAGE_CALLBACKS):
            ids.append(api.callback(job, "progress", {"current_epoch": epoch,
                                                      "metrics": {"loss": 1 / epoch}})
                       .get_json()["event_id"])
            time.sleep(0.25)
        oldest = stack.event(ids[0])
        elapsed = time.monotonic() - started
    finally:
        stack.mlflow.start()
    assert oldest["state"] == "pending"
    # counted one per task, this was 50 attempts (the stack's maximum) within 5 s
    assert 1 <= oldest["attempts"] <= most_attempts_within(elapsed, stack.config), oldest
    stack.wait_projected(ids, timeout=90)
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    points = MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")
    assert sorted(p.step for p in points) == list(range(1, 2 + OUTAGE_CALLBACKS))


def test_a_job_is_held_not_churned_while_mlflow_is_down(stack, monkeypatch):
    """Once a worker has found MLflow down, it holds the job instead of having each callback
    queue a task that would only find MLflow down again (projections.hold_while_mlflow_down):
    the queued-task flag holds a time in the future, so the job's callbacks queue (almost) no
    tasks, and they are not held back however long the outage lasts. After it everything
    lands."""
    api = stack.actions
    job = api.create_job()
    first = api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}})
    stack.wait_projected([first.get_json()["event_id"]])
    flag = metrics_queue.queued_flag(job["job_id"])
    sent, ids = [], []
    send = outbox.send

    def counting_send(announcement: outbox.Announcement) -> bool:
        sent.append(announcement)
        return send(announcement)

    def report() -> None:
        epoch = 2 + len(ids)
        ids.append(api.callback(job, "progress", {"current_epoch": epoch,
                                                  "metrics": {"loss": 1 / epoch}})
                   .get_json()["event_id"])
        time.sleep(0.1)

    stack.mlflow.stop()
    try:
        def held() -> bool:
            report()
            return int(stack.broker.get(flag) or 0) > now_ms()
        wait_until(held, timeout=30, message="the job's metrics held during the outage")
        monkeypatch.setattr(outbox, "send", counting_send)
        # longer than the backpressure threshold: every callback is accepted (202)
        deadline = time.monotonic() + stack.config.BACKPRESSURE_LAG_SECONDS + 2
        held_since = len(ids)
        while time.monotonic() < deadline:
            report()
        during_hold = len(ids) - held_since
        assert stack.event(ids[0])["state"] == "pending"
    finally:
        stack.mlflow.start()
    # one task per callback, as before the hold, would be 40 here
    assert during_hold >= 20 and len(sent) <= 3, (during_hold, sent)
    stack.wait_projected(ids, timeout=90)
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    points = MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")
    assert sorted(p.step for p in points) == list(range(1, 2 + len(ids)))


def test_killed_worker_loses_nothing(stack):
    """Events that a worker held (retrying while MLflow is down) when it was SIGKILLed are
    projected by the next worker, exactly once."""
    api = stack.actions
    job = api.create_job()
    stack.mlflow.stop()
    try:
        ids = [api.callback(job, "progress", {"current_epoch": e, "metrics": {"loss": e}})
               .get_json()["event_id"] for e in range(1, 4)]
        wait_until(lambda: stack.event(ids[0])["attempts"] >= 1, timeout=30,
                   message="a failed attempt while MLflow is down")
        stack.worker.kill()
    finally:
        stack.mlflow.start()
        stack.worker.start()
    stack.wait_projected(ids, timeout=90)
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    points = MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")
    assert sorted(p.step for p in points) == [1, 2, 3]


def test_broker_flush_is_recovered_by_the_sweeper(stack):
    api = stack.actions
    job = api.create_job()
    stack.worker.stop()
    try:
        ids = [api.callback(job, "progress", {"current_epoch": e, "metrics": {"loss": e}})
               .get_json()["event_id"] for e in range(1, 4)]
        ids.append(api.callback(job, "logs", {"lines": ["lost?"]}).get_json()["event_id"])
        # one metrics task stands for the job's three progress callbacks; one for the logs
        assert queued_tasks(stack.broker, job["job_id"]) == ["logs.project",
                                                             "metrics.project_job"]
        stack.broker.flushdb()
    finally:
        stack.worker.start()
    stack.wait_projected(ids, timeout=60)
    assert [line["line"] for line in
            api.get(f"/api/v1/training/jobs/{job['job_id']}/logs")["items"]] == ["lost?"]
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    assert len(MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")) == 3


def test_refused_event_fails_visibly_and_can_be_replayed(stack):
    """MLflow refuses runs in a deleted experiment: the event fails at once (no retries
    on bad data), shows in the operator's failed list, and replays after a fix."""
    api = stack.actions
    client = MlflowClient(stack.mlflow.uri)
    job = api.create_job()
    experiment_id = client.create_experiment(job["experiment_name"])
    client.delete_experiment(experiment_id)
    event_id = api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}}
                            ).get_json()["event_id"]
    wait_until(lambda: stack.event(event_id)["state"] == "failed", timeout=30,
               message="the refused event to fail")
    event = stack.event(event_id)
    assert event["attempts"] == 1 and event["last_error"]
    failed = api.get("/api/v1/events/failed", per_page=500)
    assert event_id in [e["event_id"] for e in failed["items"]]

    client.restore_experiment(experiment_id)
    response = api.client.post(f"/api/v1/events/{event_id}/replay", headers=api.operator)
    assert response.status_code == 202
    stack.wait_projected([event_id])
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    assert [p.value for p in client.get_metric_history(run_id, "loss")] == [1.0]


def test_silent_trainer_is_cancelled_after_the_grace_period(stack):
    """The stack's worker runs with CANCEL_GRACE_SECONDS small (see conftest)."""
    api = stack.actions
    job = api.create_job()
    api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}})
    api.client.post(f"/api/v1/training/jobs/{job['job_id']}/cancel", headers=api.operator)
    wait_until(lambda: api.job(job["job_id"])["status"] == "cancelled", timeout=30,
               message="the platform to cancel the silent job")
    state = api.job(job["job_id"])
    assert "no callback" in state["error_message"]
    wait_until(lambda: MlflowClient(stack.mlflow.uri).get_run(
        api.job(job["job_id"])["mlflow_run_id"]).info.status == "KILLED", timeout=30,
        message="the MLflow run to be ended")


@pytest.fixture
def worker_tasks(stack, monkeypatch):
    """The worker's task module, to run a task in this process; importing it builds the
    worker's app from the environment, so the stack's config is put there first."""
    for name, value in stack.config.as_environ().items():
        monkeypatch.setenv(name, value)
    return importlib.import_module("workers.tasks")


def test_a_queued_metrics_task_serves_every_callback_of_its_job(stack, worker_tasks):
    """Callbacks of a job that already has a metrics task queued queue none of their own;
    that task projects whatever is pending — even when its own event went out with another
    worker's batch — so none of them waits for the sweeper."""
    api = stack.actions
    job = api.create_job()
    stack.worker.stop()
    try:
        first, second = [api.callback(job, "progress", {"current_epoch": e, "metrics": {"loss": e}})
                         .get_json()["event_id"] for e in (1, 2)]
        assert queued_tasks(stack.broker, job["job_id"]) == ["metrics.project_job"]
        with stack.app.app_context():
            # another worker's batch took the first event between this task's queueing and
            # its start
            db.session.execute(sa.update(Event).where(Event.id == first)
                               .values(state=EventState.PROJECTED))
            db.session.commit()
            # the queued task, run here (in this app's context: the right DB for each param)
            worker_tasks.project_job_metrics.run(first, job_id=job["job_id"])
        assert stack.event(second)["state"] == "projected"
    finally:
        stack.worker.start()
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    points = MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")
    assert [p.step for p in points] == [2]


class RefusingTracking:
    """The real tracking service, refusing points named `poison` as MLflow refuses bad
    data, and recording whether a DB transaction was open at each call: a worker idle in
    transaction while it waits on MLflow holds PostgreSQL's pruning horizon."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls_in_transaction: list[str] = []

    def __getattr__(self, name: str):
        method = getattr(self.real, name)

        def call(*args, **kwargs):
            if db.session().in_transaction():
                self.calls_in_transaction.append(name)
            if name == "log_points" and any(p.key == "poison" for p in args[1]):
                raise SinkRejected("MLflow refused the metric poison")
            return method(*args, **kwargs)
        return call


def test_a_refused_event_does_not_hold_back_its_batch(stack, worker_tasks, monkeypatch):
    """MLflow refuses one event of a batch: that event fails with MLflow's reason, the rest
    of the batch lands — and no DB transaction stays open across any MLflow call."""
    api = stack.actions
    job = api.create_job()
    tracking = RefusingTracking(stack.app.extensions["tracking"])
    monkeypatch.setitem(stack.app.extensions, "tracking", tracking)
    stack.worker.stop()
    try:
        ids = [api.callback(job, "progress", {"current_epoch": e, "metrics": metrics})
               .get_json()["event_id"]
               for e, metrics in ((1, {"loss": 1.0}), (2, {"poison": 2.0}), (3, {"loss": 3.0}))]
        with stack.app.app_context():
            worker_tasks.project_job_metrics.run(ids[0], job_id=job["job_id"])
    finally:
        stack.worker.start()
    assert [stack.event(i)["state"] for i in ids] == ["projected", "failed", "projected"]
    assert "poison" in stack.event(ids[1])["last_error"]
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    points = MlflowClient(stack.mlflow.uri).get_metric_history(run_id, "loss")
    assert sorted(p.step for p in points) == [1, 3]
    assert tracking.calls_in_transaction == []
