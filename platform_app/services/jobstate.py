"""The job state machine, applied in the same transaction as the callback that moves it.

Job status only moves forward: pending → running → completed / failed / cancelled, with
`stopping` before the end when an operator cancels (progress answers then carry
`stop_requested: true`). Once a job has finished, progress and a second completion are
refused with 409 JOB_FINISHED and nothing is stored; logs and validation results are still
accepted (a trainer flushes them around its last callbacks).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.models import EventKind, Job, JobStatus, utcnow
from platform_app.services import outbox


def refuse_if_finished(job: Job | outbox.JobForRules) -> None:
    if job.status.finished:
        raise APIError("JOB_FINISHED", f"job {job.id} has already finished ({job.status.value})",
                       {"job_id": job.id, "status": job.status.value})


def checkpoint_pointers(payload: dict) -> dict:
    return {field: payload[field] for field in ("best_checkpoint_path", "last_checkpoint_path")
            if payload.get(field)}


def apply_progress(job: outbox.JobForRules, payload: dict) -> outbox.Effect:
    refuse_if_finished(job)
    changes = checkpoint_pointers(payload)
    if job.status == JobStatus.PENDING:
        changes.update(status=JobStatus.RUNNING, started_at=utcnow())
    if job.current_epoch is None or payload["current_epoch"] >= job.current_epoch:
        changes.update(current_epoch=payload["current_epoch"], latest_metrics=payload["metrics"])
    if payload.get("total_epochs"):
        changes["total_epochs"] = payload["total_epochs"]
    return outbox.Effect(changes, {"stop_requested": job.status == JobStatus.STOPPING})


def apply_completion(job: outbox.JobForRules, payload: dict) -> outbox.Effect:
    refuse_if_finished(job)
    finished_at = utcnow()
    return outbox.Effect({
        "status": JobStatus(payload["status"]), "finished_at": finished_at,
        "started_at": job.started_at or finished_at, "final_metrics": payload["final_metrics"],
        "error_message": payload.get("error_message"), **checkpoint_pointers(payload)})


def request_cancel(job: Job) -> None:
    refuse_if_finished(job)
    if job.status != JobStatus.STOPPING:
        job.status = JobStatus.STOPPING
        job.cancel_requested_at = utcnow()
    db.session.commit()


def cancel_silent_jobs(grace_s: float) -> int:
    """Sweeper: a job asked to stop whose trainer has not reported the end within the grace
    period is cancelled by the platform, through the same outbox as a trainer's completion
    (so its MLflow run is ended too)."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    silent = db.session.scalars(sa.select(Job.id).where(
        Job.status == JobStatus.STOPPING, Job.cancel_requested_at < cutoff)).all()
    for job_id in silent:
        payload = {"status": "cancelled", "final_metrics": {},
                   "error_message": f"cancelled: no callback within {grace_s:.0f} s of the "
                                    "cancel request"}
        try:
            outbox.accept(job_id, EventKind.COMPLETION, payload, f"platform-cancel-{job_id}",
                          apply_completion)
        except APIError:  # the trainer's own completion won the race
            continue
        job_logger(__name__, job_id).info("cancelled by the platform after the grace period")
    return len(silent)
