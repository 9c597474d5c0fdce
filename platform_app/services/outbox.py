"""The outbox: accepted callbacks are rows first, queue messages second.

A callback is committed (with its effect on the job's state) before it is acknowledged,
then announced to Celery by id. If the announcement is lost — broker down at that moment,
broker restarted with its queue, worker killed — the beat-driven sweeper announces it again,
so nothing accepted is ever lost. Projection tasks are idempotent, so an event announced
twice is harmless.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from celery import current_app as celery_app
from flask import current_app
from sqlalchemy.exc import IntegrityError

from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.metrics import CALLBACKS_ACCEPTED
from platform_app.models import Event, EventKind, EventState, Job, utcnow
from platform_app.services import events

log = logging.getLogger(__name__)

TASK_BY_KIND = {
    EventKind.PROGRESS: "metrics.project_job",
    EventKind.COMPLETION: "metrics.project_job",
    EventKind.LOGS: "logs.project",
    EventKind.VALIDATION: "validation.project",
    EventKind.UPLOAD: "uploads.finalize",
}


@dataclass(frozen=True)
class Accepted:
    body: dict
    replayed: bool


def request_hash(kind: EventKind, payload: dict) -> str:
    canonical = json.dumps([kind.value, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def accept(job_id: int, kind: EventKind, payload: dict, idempotency_key: str | None,
           apply: Callable[[Job, Event], None] | None = None) -> Accepted:
    """Persist one callback and announce it. `apply(job, event)` runs in the same
    transaction once the event has its id: it updates the job (or other rows) and may raise
    APIError to refuse the callback, which then leaves nothing behind."""
    digest = request_hash(kind, payload)
    job = db.session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise APIError.not_found("job", job_id=job_id)
    event = Event(job_id=job_id, kind=kind, payload=payload,
                  idempotency_key=idempotency_key, request_hash=digest)
    db.session.add(event)
    try:
        # A repeated Idempotency-Key is rare: the unique constraint finds it, instead of a
        # look-up on every request.
        db.session.flush()
    except IntegrityError as error:
        return _answer_as_before(job_id, idempotency_key, digest, error)
    try:
        if apply is not None:
            apply(job, event)
    except APIError:
        db.session.rollback()
        raise
    event.response = {"event_id": event.id, "job_id": job_id, "kind": kind.value,
                      "job_status": job.status.value, **(event.response or {})}
    # Read now what is needed after the commit: the commit expires every ORM object, and
    # touching one afterwards costs a new transaction (pool ping, BEGIN, SELECT, ROLLBACK).
    body, announcement, message = event.response, Announcement.of(event), events.message_of(event)
    try:
        db.session.commit()
    except IntegrityError as error:
        return _answer_as_before(job_id, idempotency_key, digest, error)
    send(announcement)
    CALLBACKS_ACCEPTED.labels(kind.value).inc()
    events.publish(current_app.config["REDIS_URL"], [message])
    return Accepted(body=body, replayed=False)


def _answer_as_before(job_id: int, key: str | None, digest: str,
                      error: IntegrityError) -> Accepted:
    """The key was used before (or by a concurrent request that won): its first answer."""
    db.session.rollback()
    earlier = _replay(job_id, key, digest) if key else None
    if earlier is None:
        raise error
    return earlier


def _replay(job_id: int, key: str, digest: str) -> Accepted | None:
    earlier = db.session.execute(
        sa.select(Event.request_hash, Event.response)
        .where(Event.job_id == job_id, Event.idempotency_key == key)
    ).first()
    if earlier is None:
        return None
    if earlier.request_hash != digest:
        raise APIError("IDEMPOTENCY_KEY_REUSED",
                       "this Idempotency-Key was used with a different request",
                       {"idempotency_key": key})
    return Accepted(body=earlier.response, replayed=True)


@dataclass(frozen=True)
class Announcement:
    """An event's projection task as plain values, usable after the commit."""

    task: str
    event_id: int
    job_id: int
    task_id: str

    @classmethod
    def of(cls, event: Event) -> Announcement:
        return cls(TASK_BY_KIND[event.kind], event.id, event.job_id, event.task_id)


def announce(event: Event) -> bool:
    return send(Announcement.of(event))


def send(announcement: Announcement) -> bool:
    """Enqueue the projection task for an event; a broker failure is logged, not raised:
    the event is already safe in the DB and the sweeper will announce it again."""
    try:
        # job_id travels as a keyword only so that Flower shows which job a task serves
        celery_app.send_task(announcement.task, args=[announcement.event_id],
                             kwargs={"job_id": announcement.job_id},
                             task_id=announcement.task_id)
        return True
    except Exception as exc:  # kombu raises several unrelated types for an unreachable broker
        job_logger(__name__, announcement.job_id).warning(
            "event %s stays pending, broker unreachable: %s", announcement.event_id, exc)
        return False


def record_failure(event_id: int, error: str, *, retryable: bool, max_attempts: int,
                   retry_in_s: float) -> int:
    """Count one failed projection attempt; the event fails for good after the last
    attempt or at once when retrying cannot help. Returns the attempts so far."""
    event = db.session.get(Event, event_id)
    if event is None or event.state != EventState.PENDING:
        return max_attempts
    event.attempts += 1
    event.last_error = error[:4000]
    if not retryable or event.attempts >= max_attempts:
        event.state = EventState.FAILED
    else:
        # Not stale before the retry is due: the sweeper must not race the queue's retry.
        event.enqueued_at = utcnow() + timedelta(seconds=retry_in_s)
    db.session.commit()
    return event.attempts if event.state == EventState.PENDING else max_attempts


def sweep(stale_after_s: float, limit: int = 1000) -> int:
    """Announce again every pending event whose announcement is older than `stale_after_s`
    (a lost message, a flushed broker, a worker that died before acking)."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    stale = db.session.scalars(
        sa.select(Event).where(Event.state == EventState.PENDING, Event.enqueued_at < cutoff)
        .order_by(Event.id).limit(limit)
    ).all()
    for event in stale:
        event.enqueued_at = utcnow()
    db.session.commit()
    announced = sum(announce(event) for event in stale)
    if stale:
        log.info("sweeper re-announced %d of %d stale events", announced, len(stale))
    return len(stale)


def replay_failed(event: Event) -> None:
    """An operator's second chance for a failed event."""
    event.state = EventState.PENDING
    event.attempts = 0
    event.last_error = None
    event.enqueued_at = utcnow()
    db.session.commit()
    announce(event)
