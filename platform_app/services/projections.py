"""Projections of accepted events into their sinks. Each one is idempotent: it claims the
event with a compare-and-set on its state in the same transaction as its DB writes, or (for
MLflow, which has no transactions with us) writes points that MLflow stores once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app

from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.models import (
    Event,
    EventKind,
    EventState,
    Job,
    LogLine,
    ValidationImageResult,
    ValidationResult,
    utcnow,
)
from platform_app.services import locks, loki, metrics_queue
from platform_app.services.errors import SinkRejected, SinkUnavailable
from platform_app.services.tracking import Point, RunSpec, TrackingService, legal_metric_key


def claim(event_ids: list[int]) -> int:
    """Mark pending events projected; returns how many this caller claimed."""
    result = db.session.execute(
        sa.update(Event)
        .where(Event.id.in_(event_ids), Event.state == EventState.PENDING)
        .values(state=EventState.PROJECTED, projected_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount


def project_logs(event: Event) -> list[int] | None:
    """Into the DB, and first into Loki when LOKI_URL is set (see services/loki.py)."""
    event_id, job_id, accepted_ms = event.id, event.job_id, event.accepted_ms
    log_type, lines = event.payload.get("log_type", "stdout"), event.payload["lines"]
    if current_app.config["LOKI_URL"]:
        end_snapshot()
        loki.push(current_app.config["LOKI_URL"], job_id, log_type, lines, accepted_ms)
    if not claim([event_id]):
        db.session.rollback()
        return []  # another worker claimed it first: nothing to announce
    db.session.execute(sa.insert(LogLine), [
        {"job_id": job_id, "event_id": event_id, "seq": seq, "log_type": log_type,
         "line": line, "created_ms": accepted_ms}
        for seq, line in enumerate(lines)
    ])
    db.session.commit()


def project_validation(event: Event) -> list[int] | None:
    """Update-or-create per (job, epoch); an older event never overwrites a newer one."""
    if not claim([event.id]):
        db.session.rollback()
        return []  # another worker claimed it first: nothing to announce
    data = event.payload
    existing = db.session.scalar(sa.select(ValidationResult).where(
        ValidationResult.job_id == event.job_id, ValidationResult.epoch == data["epoch"]))
    if existing is not None:
        if existing.event_id > event.id:
            db.session.commit()
            return
        db.session.execute(sa.delete(ValidationImageResult).where(
            ValidationImageResult.validation_result_id == existing.id))
        db.session.delete(existing)
        db.session.flush()
    images = data.get("image_results") or []
    result = ValidationResult(
        job_id=event.job_id, event_id=event.id, epoch=data["epoch"],
        task_type=data["task_type"], primary_metric_name=data.get("primary_metric_name"),
        primary_metric_value=_finite_or_none(data.get("primary_metric_value")),
        overall_loss=_finite_or_none(data.get("overall_loss")),
        metrics=data.get("metrics") or {}, class_names=data.get("class_names") or [],
        visualization_urls=data.get("visualization_urls") or {},
        confusion_matrix=data.get("confusion_matrix"), image_count=len(images))
    db.session.add(result)
    db.session.flush()
    if images:
        db.session.execute(sa.insert(ValidationImageResult), [
            {"validation_result_id": result.id, "image_path": image["image_path"],
             "image_name": image.get("image_name"),
             "true_label_id": image.get("true_label_id"),
             "predicted_label_id": image.get("predicted_label_id"),
             "confidence": image.get("confidence"), "is_correct": image.get("is_correct"),
             "detections": image.get("detections")}
            for image in images
        ])
    db.session.commit()
    job_logger(__name__, event.job_id).info(
        "validation epoch %s stored with %d image results", data["epoch"], len(images))


def _finite_or_none(value: float | str | None) -> float | None:
    """DB float columns hold finite numbers; the event payload keeps NaN/Infinity."""
    return None if value is None or isinstance(value, str) else float(value)


METRICS_KINDS = (EventKind.PROGRESS, EventKind.COMPLETION)


def pending_metrics_events(job_id: int) -> sa.Select:
    return (sa.select(Event).where(Event.job_id == job_id, Event.state == EventState.PENDING,
                                   Event.kind.in_(METRICS_KINDS)).order_by(Event.id))


def oldest_pending_metrics_event(job_id: int) -> int | None:
    """The event a metrics task counts its attempts on."""
    return db.session.scalar(pending_metrics_events(job_id).with_only_columns(Event.id).limit(1))


def hold_while_mlflow_down(job_id: int, tracking: TrackingService) -> float:
    """While this process knows MLflow to be down, put the job's metrics on hold
    (services/metrics_queue.py `hold`) for at least MLFLOW_OUTAGE_HOLD_SECONDS, without
    looking at its events: returns for how long, 0 when MLflow is not known to be down."""
    outage_s = tracking.outage_left_s()
    if not outage_s:
        return 0.0
    hold_s = max(outage_s, current_app.config["MLFLOW_OUTAGE_HOLD_SECONDS"])
    metrics_queue.hold(job_id, hold_s)
    job_logger(__name__, job_id).debug("MLflow is down: metrics held for %.1f s", hold_s)
    return hold_s


@contextmanager
def _held_when_down(job_id: int, tracking: TrackingService) -> Iterator[None]:
    """The task that finds MLflow down had taken the job up: hold it again at once, or each
    of its callbacks until the next task would queue one."""
    try:
        yield
    except SinkUnavailable:
        hold_while_mlflow_down(job_id, tracking)
        raise


def project_job_metrics(job_id: int, tracking: TrackingService) -> list[int]:
    """Write the pending progress/completion events of a job to its MLflow run, oldest
    first, in as few `log_batch` calls as MLflow's limits allow, and return their ids.

    One worker at a time per job (a lock). It takes what was pending when it cleared the
    job's queued-task flag, and stops there: a callback accepted after that queued a task of
    its own, which waits for the lock and takes everything that arrived meanwhile in one
    batch. (Going round again for the few events that arrived during one `log_batch` would
    send MLflow many small requests under load — the opposite of what it needs.)"""
    logger = job_logger(__name__, job_id)
    batch_size = current_app.config["METRICS_BATCH_EVENTS"]
    projected: list[int] = []
    end_snapshot()  # the lock may take seconds to come free
    with locks.job_lock("metrics", job_id) as renew_lock:
        # Taken up before the outage check, which holds the job again if MLflow is down
        # (its callbacks queue no task until the hold ends).
        metrics_queue.take_up(job_id)
        with _held_when_down(job_id, tracking), tracking.available():
            run_id = ensure_run(db.session.get(Job, job_id), tracking)
            while (batch := next_metrics_batch(job_id, batch_size)) is not None:
                end_snapshot()
                requests, rejected = _write_isolating_rejects(batch.points, run_id, tracking,
                                                              logger)
                if batch.completion is not None:
                    tracking.finish_run(run_id, *batch.completion)
                _fail_rejected(rejected)
                ids = [event_id for event_id, _ in batch.points if event_id not in rejected]
                claim(ids)
                db.session.commit()
                projected.extend(ids)
                renew_lock()
                logger.info("projected %d events into MLflow run %s in %d requests",
                            len(ids), run_id, requests)
                if not batch.more:
                    break
    return projected


def end_snapshot(*keep: object) -> None:
    """End the worker's read-only transaction before it waits on a sink. A backend idle in
    transaction holds PostgreSQL's pruning horizon for the whole database: while workers
    waited on MLflow, the request path's job updates stopped being HOT and the jobs table
    grew thirty-fold (README, "half load"). Loaded objects expire, except those in `keep`,
    which leave the session with what they loaded (get them again to write to them).
    Nothing may be unsaved here."""
    for instance in keep:
        db.session.expunge(instance)
    db.session.rollback()


@dataclass(frozen=True)
class MetricsBatch:
    """What a batch sends to MLflow, as plain data so that no transaction need stay open."""
    points: list[tuple[int, list[Point]]]  # per event id, oldest first
    completion: tuple[str, int] | None  # the run's final status and when it was accepted
    more: bool  # what was pending did not fit in this batch


def next_metrics_batch(job_id: int, batch_size: int) -> MetricsBatch | None:
    """The oldest pending events of the job, up to and including a completion (the run ends
    there: what follows it waits for the next batch)."""
    events = db.session.scalars(pending_metrics_events(job_id).limit(batch_size)).all()
    more = len(events) == batch_size
    completion = next((e for e in events if e.kind == EventKind.COMPLETION), None)
    if completion is not None:
        more = more or events[-1].id > completion.id
        events = [e for e in events if e.id <= completion.id]
    if not events:
        return None
    final_step = 0
    if completion is not None:
        final_step = db.session.scalar(
            sa.select(Job.current_epoch).where(Job.id == job_id)) or 0
    return MetricsBatch(
        points=[(event.id, points_of(event, final_step)) for event in events],
        completion=(None if completion is None
                    else (completion.payload["status"], completion.accepted_ms)),
        more=more)


def ensure_run(job: Job, tracking: TrackingService) -> str:
    """The job's MLflow run id, creating experiment and run on first need. Call it holding
    the job's lock, so that two workers cannot create two runs, with nothing unsaved."""
    if job.mlflow_run_id:
        return job.mlflow_run_id
    job_id, experiment_name = job.id, job.experiment_name
    spec = RunSpec(
        job_id=job.id, job_uid=job.uid, run_name=f"job-{job.id}",
        tags={**{str(k): str(v) for k, v in job.tags.items()},
              "model_name": job.model_name, "task_type": job.task_type},
        params=dict(job.params))
    end_snapshot()
    experiment_id = tracking.ensure_experiment(experiment_name)
    run_id = tracking.ensure_run(spec, experiment_id)
    db.session.execute(sa.update(Job).where(Job.id == job_id).values(
        mlflow_experiment_id=experiment_id, mlflow_run_id=run_id))
    db.session.commit()
    job_logger(__name__, job_id).info("MLflow run %s in experiment %s", run_id, experiment_id)
    return run_id


def points_of(event: Event, final_step: int) -> list[Point]:
    """Progress metrics at their step (or epoch); final metrics at the job's last epoch."""
    payload = event.payload
    if event.kind == EventKind.PROGRESS:
        step = payload.get("step")
        step = payload["current_epoch"] if step is None else step
        metrics = payload.get("metrics") or {}
    else:
        step, metrics = final_step, payload.get("final_metrics") or {}
    return [Point(legal_metric_key(k), v, step, event.accepted_ms)
            for k, v in metrics.items() if v is not None]


def _write_isolating_rejects(points: list[tuple[int, list[Point]]], run_id: str,
                             tracking: TrackingService, logger) -> tuple[int, dict[int, str]]:
    """One batch for all events; if MLflow refuses it, find the refused events one by one
    so that one bad event cannot hold the others back. Returns the requests made and why
    each refused event was refused."""
    try:
        return tracking.log_points(run_id, [p for _, event_points in points
                                            for p in event_points]), {}
    except SinkRejected:
        if len(points) == 1:
            raise
    requests, rejected = 0, {}
    for event_id, event_points in points:
        try:
            requests += tracking.log_points(run_id, event_points)
        except SinkRejected as exc:
            logger.error("MLflow refused event %s: %s", event_id, exc)
            rejected[event_id] = str(exc)[:4000]
    return requests, rejected


def _fail_rejected(rejected: dict[int, str]) -> None:
    for event_id, error in rejected.items():
        db.session.execute(sa.update(Event).where(Event.id == event_id).values(
            state=EventState.FAILED, last_error=error))
