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
from dataclasses import dataclass, field
from datetime import timedelta

import redis
import sqlalchemy as sa
from celery import current_app as celery_app
from flask import current_app
from sqlalchemy.exc import IntegrityError

from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.metrics import CALLBACKS_ACCEPTED
from platform_app.models import Event, EventKind, EventState, Job, now_ms, utcnow
from platform_app.services import events, metrics_queue
from platform_app.services.redis_client import redis_client

log = logging.getLogger(__name__)

TASK_BY_KIND = {
    EventKind.PROGRESS: metrics_queue.TASK,
    EventKind.COMPLETION: metrics_queue.TASK,
    EventKind.LOGS: "logs.project",
    EventKind.VALIDATION: "validation.project",
    EventKind.UPLOAD: "uploads.finalize",
}


@dataclass(frozen=True)
class Accepted:
    body: dict
    replayed: bool
    event: events.StoredEvent | None = None  # None for a replayed answer


@dataclass(frozen=True)
class Effect:
    """What a callback does besides adding its event: decided under the job's row lock by
    the callback kind's rule (services/jobstate.py), written in the same transaction."""

    job_changes: dict = field(default_factory=dict)  # jobs column → new value
    response: dict = field(default_factory=dict)  # extra fields of the 202 body
    # gets the transaction's connection and the event id (e.g. to link a row to the event)
    on_inserted: Callable[[sa.Connection, int], None] | None = None


# Built once: a statement object caches its compiled form and cache key.
# The job columns a rule may look at, read with FOR UPDATE so that concurrent callbacks of one
# job apply their rules one after the other.
JOB_FOR_RULES = (sa.select(Job.id, Job.status, Job.current_epoch, Job.started_at)
                 .where(Job.id == sa.bindparam("job_id")).with_for_update())
INSERT_EVENT = sa.insert(Event).returning(Event.id, Event.accepted_ms, Event.task_id)
UPDATE_JOB = sa.update(Job).where(Job.id == sa.bindparam("target_job_id"))  # SET: the params
Rule = Callable[[sa.Row, dict], Effect]


def request_hash(kind: EventKind, payload: dict) -> str:
    canonical = json.dumps([kind.value, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def body_of(event_id: int, response: dict) -> dict:
    """A 202 body: the stored response holds all of it but the event's own id (unknown until
    the row is inserted), so a replayed answer is built the same way as the first."""
    return {"event_id": event_id, **response}


def accept(job_id: int, kind: EventKind, payload: dict, idempotency_key: str | None,
           rule: Rule | None = None) -> Accepted:
    """Persist one callback, then announce it."""
    accepted = store(job_id, kind, payload, idempotency_key, rule)
    if accepted.event is not None:
        CALLBACKS_ACCEPTED.labels(kind.value).inc()
        tell(Announcement.of(accepted.event), events.message_of(accepted.event))
    return accepted


def store(job_id: int, kind: EventKind, payload: dict, idempotency_key: str | None,
          rule: Rule | None = None, state: EventState = EventState.PENDING) -> Accepted:
    """Persist one callback in one short transaction of plain statements on a connection of
    its own: the ORM session's unit of work and transaction bookkeeping cost more CPU than the
    statements themselves. `rule(job, payload)` decides the callback's effect or raises
    APIError to refuse it, which then leaves nothing behind."""
    digest = request_hash(kind, payload)
    with db.engine.connect() as connection:
        try:
            accepted = _store_on(connection, job_id, kind, payload, idempotency_key, digest,
                                 rule, state)
            connection.commit()
            return accepted
        except (APIError, IntegrityError):
            # A repeated Idempotency-Key is rare: the unique constraint finds it, instead of
            # a look-up on every request. And a retried callback whose first attempt moved
            # the job on (a completion) gets its first answer, not the refusal its second
            # attempt would earn.
            connection.rollback()
            earlier = _replay(connection, job_id, idempotency_key, digest) \
                if idempotency_key else None
            if earlier is None:
                raise
            return earlier


def _store_on(connection: sa.Connection, job_id: int, kind: EventKind, payload: dict,
              idempotency_key: str | None, digest: str, rule: Rule | None,
              state: EventState) -> Accepted:
    job = connection.execute(JOB_FOR_RULES, {"job_id": job_id}).one_or_none()
    if job is None:
        raise APIError.not_found("job", job_id=job_id)
    effect = rule(job, payload) if rule is not None else Effect()
    status = effect.job_changes.get("status", job.status)
    response = {"job_id": job_id, "kind": kind.value, "job_status": status.value,
                **effect.response}
    inserted = connection.execute(INSERT_EVENT, {
        "job_id": job_id, "kind": kind, "payload": payload, "idempotency_key": idempotency_key,
        "request_hash": digest, "response": response, "state": state,
    }).one()
    event = events.StoredEvent(inserted.id, job_id, kind, payload, state, inserted.accepted_ms,
                               inserted.task_id)
    if effect.job_changes:
        connection.execute(UPDATE_JOB, {"target_job_id": job_id, **effect.job_changes})
    if effect.on_inserted is not None:
        effect.on_inserted(connection, event.id)
    return Accepted(body=body_of(event.id, response), replayed=False, event=event)


def _replay(connection: sa.Connection, job_id: int, key: str, digest: str) -> Accepted | None:
    earlier = connection.execute(
        sa.select(Event.id, Event.request_hash, Event.response)
        .where(Event.job_id == job_id, Event.idempotency_key == key)
    ).first()
    if earlier is None:
        return None
    if earlier.request_hash != digest:
        raise APIError("IDEMPOTENCY_KEY_REUSED",
                       "this Idempotency-Key was used with a different request",
                       {"idempotency_key": key})
    return Accepted(body=body_of(earlier.id, earlier.response), replayed=True)


@dataclass(frozen=True)
class Announcement:
    """An event's projection task as plain values, usable after the commit."""

    task: str
    event_id: int
    job_id: int
    task_id: str

    @classmethod
    def of(cls, event: Event | events.StoredEvent) -> Announcement:
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


def tell(announcement: Announcement, message: dict) -> None:
    """After the commit: enqueue the event's projection and publish it live, with one Redis
    round trip; a metrics task is queued only if none is queued for the job yet
    (services/metrics_queue.py), and the wait it reports feeds backpressure."""
    coalesced = announcement.task == metrics_queue.TASK
    queue_it = True
    try:
        pipe = redis_client(current_app.config["REDIS_URL"]).pipeline(transaction=False)
        now = now_ms()
        if coalesced:
            metrics_queue.ask(pipe, announcement.job_id, now)
        events.publish_on(pipe, message)
        replies = pipe.execute()
        if coalesced:
            queue_it, waited_s = metrics_queue.answer(replies[:2], now)
            current_app.extensions["backpressure"].observe(announcement.job_id, waited_s)
    except redis.RedisError as exc:
        job_logger(__name__, announcement.job_id).warning(
            "event %s not published live (Redis unavailable): %s", announcement.event_id, exc)
    if queue_it:
        send(announcement)


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
