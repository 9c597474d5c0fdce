"""Projections of accepted events into their sinks. Each one is idempotent: it claims the
event with a compare-and-set on its state in the same transaction as its DB writes, or (for
MLflow, which has no transactions with us) writes points that MLflow stores once."""

from __future__ import annotations

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
from platform_app.services.errors import SinkRejected
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
    log_type = event.payload.get("log_type", "stdout")
    if current_app.config["LOKI_URL"]:
        loki.push(current_app.config["LOKI_URL"], event.job_id, log_type,
                  event.payload["lines"], event.accepted_ms)
    if not claim([event.id]):
        db.session.rollback()
        return []  # another worker claimed it first: nothing to announce
    db.session.execute(sa.insert(LogLine), [
        {"job_id": event.job_id, "event_id": event.id, "seq": seq, "log_type": log_type,
         "line": line, "created_ms": event.accepted_ms}
        for seq, line in enumerate(event.payload["lines"])
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
    with locks.job_lock("metrics", job_id) as renew_lock:
        metrics_queue.take_up(job_id)
        job = db.session.get(Job, job_id)
        run_id = ensure_run(job, tracking)
        more = True
        while more:
            events = db.session.scalars(pending_metrics_events(job_id).limit(batch_size)).all()
            more = len(events) == batch_size  # what was pending did not fit in one batch
            completion = next((e for e in events if e.kind == EventKind.COMPLETION), None)
            if completion is not None:
                more = more or events[-1].id > completion.id
                events = [e for e in events if e.id <= completion.id]
            if not events:
                break
            requests = _write_isolating_rejects(events, run_id, job.current_epoch or 0,
                                                tracking, logger)
            if completion is not None:
                tracking.finish_run(run_id, completion.payload["status"],
                                    completion.accepted_ms)
            ids = [e.id for e in events]  # before the commit expires them: one SELECT each
            claim(ids)
            db.session.commit()
            projected.extend(ids)
            renew_lock()
            logger.info("projected %d events into MLflow run %s in %d requests",
                        len(events), run_id, requests)
    return projected


def ensure_run(job: Job, tracking: TrackingService) -> str:
    """The job's MLflow run id, creating experiment and run on first need. Call it holding
    the job's lock, so that two workers cannot create two runs."""
    if job.mlflow_run_id:
        return job.mlflow_run_id
    experiment_id = tracking.ensure_experiment(job.experiment_name)
    spec = RunSpec(
        job_id=job.id, job_uid=job.uid, run_name=f"job-{job.id}",
        tags={**{str(k): str(v) for k, v in job.tags.items()},
              "model_name": job.model_name, "task_type": job.task_type},
        params=dict(job.params))
    job.mlflow_experiment_id = experiment_id
    job.mlflow_run_id = tracking.ensure_run(spec, experiment_id)
    db.session.commit()
    job_logger(__name__, job.id).info("MLflow run %s in experiment %s", job.mlflow_run_id,
                                      experiment_id)
    return job.mlflow_run_id


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


def _write_isolating_rejects(events: list[Event], run_id: str, final_step: int,
                             tracking: TrackingService, logger) -> int:
    """One batch for all events; if MLflow refuses it, find the refused events one by one
    so that one bad event cannot hold the others back."""
    per_event = [(event, points_of(event, final_step)) for event in events]
    points = [point for _, event_points in per_event for point in event_points]
    try:
        return tracking.log_points(run_id, points)
    except SinkRejected:
        if len(events) == 1:
            raise
    requests = 0
    for event, event_points in per_event:
        try:
            requests += tracking.log_points(run_id, event_points)
        except SinkRejected as exc:
            logger.error("MLflow refused event %s: %s", event.id, exc)
            event.state = EventState.FAILED
            event.last_error = str(exc)[:4000]
            events.remove(event)
    return requests
