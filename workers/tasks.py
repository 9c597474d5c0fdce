"""Thin projection tasks: load the event by id, call a service, record the outcome.

Arguments are event ids only. Every task is idempotent (see platform_app.services), so
they run with late acks and are re-delivered if a worker dies. Failures that may pass
(MLflow down, DB busy) are retried with exponential backoff and jitter, counted on the
event; data a sink refuses fails the event at once. Either way the outcome is visible on
the event row, not in a result backend.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import sqlalchemy as sa
from celery import Task, shared_task
from flask import current_app
from sqlalchemy.exc import OperationalError

from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.models import Event, EventState
from platform_app.services import (
    events,
    jobstate,
    metrics_queue,
    outbox,
    projections,
    uploads,
)
from platform_app.services.errors import SinkRejected, SinkUnavailable
from platform_app.services.locks import JobBusy

TRANSIENT = (SinkUnavailable, OperationalError)
PROJECTION = dict(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)


def backoff(attempts: int, base_s: float, cap_s: float) -> float:
    """Exponential backoff with jitter, so that tasks failing together (a sink outage) do
    not come back together. Celery's helper takes whole seconds only."""
    ceiling = min(cap_s, base_s * 2 ** attempts)
    return random.uniform(ceiling / 2, ceiling)


def run_projection(task: Task, event_id: int,
                   project: Callable[[Event], list[int] | dict | None]) -> bool:
    """`project` returns what to announce: the ids of the events it projected (a batch; none
    when another worker claimed them first), or details about this event (e.g. an upload's
    verdict). Returns False when the event was no longer pending (a duplicate delivery, or
    failed for good) and nothing was done."""
    event = db.session.get(Event, event_id)
    if event is None or event.state != EventState.PENDING:
        db.session.rollback()  # the next look-up must see what others committed meanwhile
        return False
    logger = job_logger(task.name, event.job_id)
    config = current_app.config
    try:
        outcome = project(event)
        announce_projected(event, outcome)
    except JobBusy:
        db.session.rollback()
        raise task.retry(countdown=random.uniform(0.5, 1.5)) from None
    except TRANSIENT as exc:
        db.session.rollback()
        delay = backoff(event.attempts, config["OUTBOX_RETRY_BACKOFF_SECONDS"],
                        config["OUTBOX_RETRY_BACKOFF_MAX_SECONDS"])
        failure = outbox.record_failure(event_id, str(exc), retryable=True,
                                        max_attempts=config["OUTBOX_MAX_ATTEMPTS"],
                                        retry_in_s=delay)
        if failure is None:
            logger.info("event %s: attempt not counted (no longer pending, or its retry is "
                        "already scheduled): %s", event_id, exc)
        elif failure.final:
            logger.error("event %s failed after %d attempts: %s", event_id, failure.attempts,
                         exc)
        else:
            logger.warning("event %s attempt %d failed, retrying in %.1f s: %s",
                           event_id, failure.attempts, delay, exc)
            raise task.retry(countdown=delay, exc=exc) from exc
    except SinkRejected as exc:
        db.session.rollback()
        if outbox.record_failure(event_id, str(exc), retryable=False, max_attempts=1,
                                 retry_in_s=0) is not None:
            logger.error("event %s refused by its sink: %s", event_id, exc)
    return True


def announce_projected(event: Event, outcome: list[int] | dict | None) -> None:
    """Tell live viewers that events reached their sink ("in MLflow", "verified")."""
    if isinstance(outcome, list):
        if not outcome:
            return
        projected = db.session.scalars(sa.select(Event).where(Event.id.in_(outcome))).all()
        messages = [events.projected_message(e, {"sink": "mlflow"}) for e in projected]
    else:
        db.session.refresh(event)
        messages = [events.projected_message(event, outcome)]
    events.publish(current_app.config["REDIS_URL"], messages)


@shared_task(name="metrics.project_job", **PROJECTION)
def project_job_metrics(self: Task, event_id: int, job_id: int) -> None:
    """Progress and completion events of the event's job → its MLflow run. One queued task
    stands for every callback of its job accepted before it starts
    (services/metrics_queue.py), so it projects whatever is pending — also when its own event
    went out with another batch."""
    tracking = current_app.extensions["tracking"]
    if hold_s := projections.hold_while_mlflow_down(job_id, tracking):
        # A scheduled retry keeps its place (nothing else may come for an idle job); a task
        # queued by a callback ends, and when the hold expires the next callback queues one.
        if self.request.retries:
            raise self.retry(countdown=hold_s)
        return
    while True:
        # The anchor is the event attempts are counted on; another worker may project it
        # between this look-up and the claim, and then this task looks again.
        anchor = projections.oldest_pending_metrics_event(job_id)
        if anchor is None:
            # Nothing left (another worker's batch took it all): the job's next callback must
            # queue a task again — unless one came in just now and found the flag still set.
            metrics_queue.take_up(job_id)
            db.session.rollback()  # a fresh snapshot for the second look
            anchor = projections.oldest_pending_metrics_event(job_id)
            if anchor is None:
                return
        if run_projection(self, anchor,
                          lambda event: projections.project_job_metrics(job_id, tracking)):
            return


@shared_task(name="logs.project", **PROJECTION)
def project_logs(self: Task, event_id: int, job_id: int | None = None) -> None:
    run_projection(self, event_id, projections.project_logs)


@shared_task(name="validation.project", **PROJECTION)
def project_validation(self: Task, event_id: int, job_id: int | None = None) -> None:
    run_projection(self, event_id, projections.project_validation)


@shared_task(name="uploads.finalize", **PROJECTION)
def finalize_upload(self: Task, event_id: int, job_id: int | None = None) -> None:
    """Complete, verify and record an uploaded checkpoint or artifact."""
    store, tracking = current_app.extensions["storage"], current_app.extensions["tracking"]
    run_projection(self, event_id, lambda event: uploads.finalize(event, store, tracking))


@shared_task(name="outbox.sweep", ignore_result=True)
def sweep_outbox() -> int:
    """Beat-scheduled: re-announce events whose message was lost, and clean up uploads
    whose URLs expired unused."""
    swept = outbox.sweep(current_app.config["OUTBOX_STALE_AFTER_SECONDS"])
    jobstate.cancel_silent_jobs(current_app.config["CANCEL_GRACE_SECONDS"])
    try:
        uploads.abandon_expired()
    except SinkUnavailable as exc:
        db.session.rollback()
        logging.getLogger(__name__).warning("expired uploads not cleaned up yet: %s", exc)
    return swept
