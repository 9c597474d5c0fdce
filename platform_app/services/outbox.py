"""The outbox: accepted callbacks are rows first, queue messages second.

A callback is committed (with its effect on the job's state) before it is acknowledged,
then announced to Celery by id. If the announcement is lost — broker down at that moment,
broker restarted with its queue, worker killed — the beat-driven sweeper announces it again,
so nothing accepted is ever lost. Projection tasks are idempotent, so an event announced
twice is harmless.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import redis
import sqlalchemy as sa
from celery import current_app as celery_app
from flask import current_app
from sqlalchemy.exc import IntegrityError

from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.metrics import CALLBACKS_ACCEPTED
from platform_app.models import Event, EventKind, EventState, Job, JobStatus, now_ms, utcnow
from platform_app.services import events, metrics_queue, statements
from platform_app.services.group_commit import GroupCommit
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
class JobForRules:
    """The job columns a rule may look at, as the earlier callbacks of its batch left them."""

    id: int
    status: JobStatus
    current_epoch: int | None
    started_at: datetime | None

    def changed(self, changes: dict) -> JobForRules:
        return dataclasses.replace(self, **{name: changes[name] for name in RULE_COLUMNS
                                            if name in changes})


RULE_COLUMNS = tuple(column.name for column in dataclasses.fields(JobForRules))[1:]  # not id


@dataclass(frozen=True)
class Effect:
    """What a callback does besides adding its event: decided under the job's row lock by
    the callback kind's rule (services/jobstate.py), written in the same transaction."""

    job_changes: dict = field(default_factory=dict)  # jobs column → new value
    response: dict = field(default_factory=dict)  # extra fields of the 202 body
    # gets the transaction and the event id (e.g. to link a row to the event)
    on_inserted: Callable[[statements.Transaction, int], None] | None = None


Rule = Callable[[JobForRules, dict], Effect]


@dataclass(frozen=True)
class Callback:
    """One callback as the request path hands it over to be stored."""

    job_id: int
    kind: EventKind
    payload: dict
    idempotency_key: str | None = None
    rule: Rule | None = None  # rule(job, payload) decides the effect or raises APIError
    state: EventState = EventState.PENDING

    @property
    def digest(self) -> str:
        canonical = json.dumps([self.kind.value, self.payload], sort_keys=True,
                               separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


MAX_BATCH = 64  # callbacks in one transaction at most (services/group_commit.py)


def _param(name: str, index: int) -> str:
    """The bind parameter of the `index`-th job of a batch statement: its id ("id") or the
    new value of one of its columns."""
    return f"{name}_{index}"


def _job_ids(count: int) -> list[sa.BindParameter]:
    return [sa.bindparam(_param("id", index)) for index in range(count)]


@functools.lru_cache(maxsize=MAX_BATCH)
def _jobs_for_rules(count: int) -> sa.Select:
    """`count` jobs locked in id order (so that two batches never wait for each other in a
    cycle): concurrent callbacks of one job apply their rules one after the other. One
    statement per count rather than an expanding IN, which SQLAlchemy re-renders on every
    execution."""
    return (sa.select(*(getattr(Job, column) for column in ("id", *RULE_COLUMNS)))
            .where(Job.id.in_(_job_ids(count))).order_by(Job.id).with_for_update())


# Every column of a new event is a parameter, the model's defaults evaluated before the
# INSERT (`_new_event`): one statement per batch size, and the task id known beforehand
# matches the RETURNING rows to the callbacks whatever order they come back in.
DEFAULTED_COLUMNS = ("accepted_ms", "task_id", "attempts", "enqueued_at")
_DEFAULTS = {name: Event.__table__.c[name].default for name in DEFAULTED_COLUMNS}
EVENT_COLUMNS = ("job_id", "kind", "payload", "idempotency_key", "request_hash", "response",
                 "state", *DEFAULTED_COLUMNS)


@functools.lru_cache(maxsize=MAX_BATCH)
def _insert_events(count: int) -> sa.Insert:
    table = Event.__table__
    return sa.insert(table).values([
        {name: sa.bindparam(_param(name, index), type_=table.c[name].type)
         for name in EVENT_COLUMNS}
        for index in range(count)]).returning(table.c.id, table.c.task_id)


@functools.lru_cache(maxsize=256)
def _update_jobs_statement(columns: tuple[str, ...], count: int) -> sa.Update:
    """The same columns of `count` jobs changed in one UPDATE, each set by a CASE on the job
    id: the statements, not the rows, are what the request path pays for (SQLAlchemy's and
    psycopg's Python per execution; psycopg's executemany runs in pipeline mode, whose loop
    held the GIL in 14 % of the API's samples at saturation, py-spy --gil)."""
    table, ids = Job.__table__, _job_ids(count)
    return sa.update(table).where(table.c.id.in_(ids)).values({
        name: sa.case(*((table.c.id == job_id,
                         sa.bindparam(_param(name, index), type_=table.c[name].type))
                        for index, job_id in enumerate(ids)))
        for name in columns})


def body_of(event_id: int, response: dict) -> dict:
    """A 202 body: the stored response holds all of it but the event's own id (unknown until
    the row is inserted), so a replayed answer is built the same way as the first."""
    return {"event_id": event_id, **response}


def accept_batches() -> GroupCommit[Callback, Accepted]:
    """One per app and process: the callbacks being accepted at the same moment share one
    transaction and one Redis round trip. A callback is answered once its transaction has
    committed; the batch is announced after that and before the next batch, so only the
    leading request waits for Redis and announcements stay in commit order."""
    return GroupCommit(store_all, MAX_BATCH, then=announce_all)


def accept(job_id: int, kind: EventKind, payload: dict, idempotency_key: str | None,
           rule: Rule | None = None) -> Accepted:
    """Persist one callback, then announce it: in one batch with whatever else this process
    is accepting at the moment (services/group_commit.py)."""
    batches = current_app.extensions["accept_batches"]
    return batches.submit(Callback(job_id, kind, payload, idempotency_key, rule))


def announce_all(outcomes: Sequence[Accepted | Exception]) -> None:
    """After a batch of `accept` has committed (`store_all`): its new events counted and
    announced together."""
    stored = [outcome.event for outcome in outcomes
              if isinstance(outcome, Accepted) and outcome.event is not None]
    for event in stored:
        CALLBACKS_ACCEPTED.labels(event.kind.value).inc()
    tell(stored)


def store(job_id: int, kind: EventKind, payload: dict, idempotency_key: str | None,
          rule: Rule | None = None, state: EventState = EventState.PENDING) -> Accepted:
    """Persist one callback on its own, unannounced."""
    outcome, = store_all([Callback(job_id, kind, payload, idempotency_key, rule, state)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def store_all(callbacks: list[Callback]) -> list[Accepted | Exception]:
    """Persist callbacks in one short transaction of plain statements, in two round trips on
    PostgreSQL (services/statements.py): the ORM session's unit of work and transaction
    bookkeeping cost more CPU than the statements themselves. A callback its rule refuses
    (APIError) leaves nothing behind and gets its error as its outcome; the others are
    stored."""
    try:
        with statements.transaction(db.engine) as transaction:
            outcomes = _store_in(transaction, callbacks)
    except IntegrityError as conflict:
        # A repeated Idempotency-Key is rare: the unique constraint finds it, instead of a
        # look-up on every request. It fails the batch's one INSERT, so the batch's
        # callbacks are then stored one by one.
        if len(callbacks) > 1:
            return [store_all([callback])[0] for callback in callbacks]
        outcomes = [conflict]
    return [_or_first_answer(callback, outcome)
            for callback, outcome in zip(callbacks, outcomes, strict=True)]


def _store_in(transaction: statements.Transaction,
              callbacks: list[Callback]) -> list[Accepted | Exception]:
    """Lock and read the batch's jobs, apply each callback's rule, then write the events and
    the jobs' changes and commit."""
    job_ids = {_param("id", index): job_id
               for index, job_id in enumerate({callback.job_id for callback in callbacks})}
    jobs = {row[0]: JobForRules(*row)
            for row in transaction.rows(_jobs_for_rules(len(job_ids)), job_ids)}
    outcomes: list = [None] * len(callbacks)  # each filled in below
    inserts: list[tuple[int, Callback, Effect, dict]] = []  # dict: the new event's row
    job_changes: dict[int, dict] = {}
    for index, callback in enumerate(callbacks):
        job = jobs.get(callback.job_id)
        try:
            if job is None:
                raise APIError.not_found("job", job_id=callback.job_id)
            effect = callback.rule(job, callback.payload) if callback.rule else Effect()
        except Exception as refused:  # this callback's alone: the batch goes on
            outcomes[index] = refused
            continue
        jobs[callback.job_id] = job.changed(effect.job_changes)
        if effect.job_changes:
            job_changes.setdefault(callback.job_id, {}).update(effect.job_changes)
        status = effect.job_changes.get("status", job.status)
        response = {"job_id": callback.job_id, "kind": callback.kind.value,
                    "job_status": status.value, **effect.response}
        inserts.append((index, callback, effect, _new_event(callback, response)))
    if not inserts:
        return outcomes
    inserted = transaction.queue(_insert_events(len(inserts)), {
        _param(name, row): new[name]
        for row, (_, _, _, new) in enumerate(inserts) for name in EVENT_COLUMNS})
    _update_jobs(transaction, job_changes)
    ids = None
    if any(effect.on_inserted for _, _, effect, _ in inserts):
        # these need the events' ids before the commit: one round trip more
        ids = {task_id: event_id for event_id, task_id in inserted.rows()}
        for _, _, effect, new in inserts:
            if effect.on_inserted is not None:
                effect.on_inserted(transaction, ids[new["task_id"]])
    transaction.commit()
    if ids is None:
        ids = {task_id: event_id for event_id, task_id in inserted.rows()}
    for index, callback, _, new in inserts:
        event = events.StoredEvent(ids[new["task_id"]], callback.job_id, callback.kind,
                                   callback.payload, callback.state, new["accepted_ms"],
                                   new["task_id"])
        outcomes[index] = Accepted(body=body_of(event.id, new["response"]), replayed=False,
                                   event=event)
    return outcomes


def _new_event(callback: Callback, response: dict) -> dict:
    """The event's row, by column: the model's defaults (platform_app/models.py) evaluated here."""
    row = {name: default.arg(None) if default.is_callable else default.arg
           for name, default in _DEFAULTS.items()}
    return {**row, "job_id": callback.job_id, "kind": callback.kind,
            "payload": callback.payload, "idempotency_key": callback.idempotency_key,
            "request_hash": callback.digest, "response": response, "state": callback.state}


def _update_jobs(transaction: statements.Transaction, job_changes: dict[int, dict]) -> None:
    """One UPDATE per set of changed columns (one set for a batch of progress callbacks)."""
    by_columns: dict[tuple[str, ...], list[tuple[int, dict]]] = {}
    for job_id, changes in job_changes.items():
        by_columns.setdefault(tuple(sorted(changes)), []).append((job_id, changes))
    for columns, jobs in by_columns.items():
        params = {}
        for index, (job_id, changes) in enumerate(jobs):
            params[_param("id", index)] = job_id
            params.update((_param(name, index), changes[name]) for name in columns)
        transaction.queue(_update_jobs_statement(columns, len(jobs)), params)


def _or_first_answer(callback: Callback, outcome: Accepted | Exception) -> Accepted | Exception:
    """A refused or conflicting callback whose Idempotency-Key was used before gets that
    first answer: a retried callback whose first attempt moved the job on (a completion)
    gets its first answer, not the refusal its second attempt would earn."""
    if callback.idempotency_key is None or not isinstance(outcome, APIError | IntegrityError):
        return outcome
    try:
        with db.engine.connect() as connection:
            earlier = _replay(connection, callback)
    except APIError as reused:
        return reused
    return earlier or outcome


def _replay(connection: sa.Connection, callback: Callback) -> Accepted | None:
    earlier = connection.execute(
        sa.select(Event.id, Event.request_hash, Event.response)
        .where(Event.job_id == callback.job_id, Event.idempotency_key == callback.idempotency_key)
    ).first()
    if earlier is None:
        return None
    if earlier.request_hash != callback.digest:
        raise APIError("IDEMPOTENCY_KEY_REUSED",
                       "this Idempotency-Key was used with a different request",
                       {"idempotency_key": callback.idempotency_key})
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


def tell(stored: list[events.StoredEvent]) -> None:
    """After the commit: enqueue each event's projection and publish it live, all with one
    Redis round trip; a metrics task is queued only if none is queued for the job yet
    (services/metrics_queue.py), and the wait it reports feeds backpressure."""
    if not stored:
        return
    announcements = [Announcement.of(event) for event in stored]
    coalesced = [announcement.task == metrics_queue.TASK for announcement in announcements]
    queue_it = [True] * len(stored)
    try:
        pipe = redis_client(current_app.config["REDIS_URL"]).pipeline(transaction=False)
        now = now_ms()
        for event, ask in zip(stored, coalesced, strict=True):
            if ask:
                metrics_queue.ask(pipe, event.job_id, now)
            events.publish_on(pipe, events.message_of(event))
        replies = iter(pipe.execute())
        for index, (event, ask) in enumerate(zip(stored, coalesced, strict=True)):
            if ask:
                queue_it[index], waited_s = metrics_queue.answer([next(replies), next(replies)],
                                                                 now)
                current_app.extensions["backpressure"].observe(event.job_id, waited_s)
            next(replies)  # the publish's count of receivers
    except redis.RedisError as exc:
        for event in stored:
            job_logger(__name__, event.job_id).warning(
                "event %s not published live (Redis unavailable): %s", event.id, exc)
    for announcement, needed in zip(announcements, queue_it, strict=True):
        if needed:
            send(announcement)


@dataclass(frozen=True)
class RecordedFailure:
    attempts: int  # failed attempts so far, this one included
    final: bool  # the event failed for good: no retry follows


# A queued retry's ETA is set after its due time is stored, on the same clock, so it finds
# itself due; the slack only covers a timer firing a little early.
RETRY_DUE_SLACK = timedelta(seconds=0.25)


def record_failure(event_id: int, error: str, *, retryable: bool, max_attempts: int,
                   retry_in_s: float) -> RecordedFailure | None:
    """Count one failed projection attempt; the event fails for good after the last
    attempt or at once when retrying cannot help.

    None when the failure is not this delivery's to count: the event is no longer pending
    (projected or failed meanwhile), or a retryable failure came while the event's retry is
    already scheduled. Several tasks can attempt one event — a job's metrics tasks all
    count on its oldest pending event, the sweeper re-announces what stays pending — and
    counted one per task, an outage would use up the backoff schedule's attempts in
    seconds. The caller then neither retries (the scheduled retry stands for it) nor
    reports a failure."""
    found = db.session.execute(
        sa.select(Event, Event.enqueued_at <= utcnow() + RETRY_DUE_SLACK)
        .where(Event.id == event_id).with_for_update()
        .execution_options(populate_existing=True)).first()
    event, due = found if found is not None else (None, False)
    if event is None or event.state != EventState.PENDING or (retryable and not due):
        db.session.rollback()
        return None
    event.attempts += 1
    event.last_error = error[:4000]
    if not retryable or event.attempts >= max_attempts:
        event.state = EventState.FAILED
    else:
        # Not stale before the retry is due: the sweeper must not race the queue's retry.
        event.enqueued_at = utcnow() + timedelta(seconds=retry_in_s)
    db.session.commit()
    return RecordedFailure(event.attempts, final=event.state == EventState.FAILED)


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
