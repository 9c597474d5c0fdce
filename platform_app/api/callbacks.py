"""Trainer callbacks (job token). Each one: validate, commit the event and its effect on
the job in one short transaction, enqueue its projection, answer 202. No sink is touched
on this path.

Job status only moves forward: pending → running → completed / failed / cancelled. Once a
job has finished, progress and a second completion are refused with 409 JOB_FINISHED and
nothing is stored; logs and validation results are still accepted (a trainer flushes them
around its last callbacks).
"""

from __future__ import annotations

from flask import request

from platform_app.api import URL_PREFIX, Blueprint
from platform_app.auth import require_job_token
from platform_app.errors import APIError
from platform_app.models import Event, EventKind, Job, JobStatus, utcnow
from platform_app.schemas import AcceptedSchema, CompletionSchema, LogsSchema, ProgressSchema
from platform_app.services import outbox

bp = Blueprint("callbacks", __name__, url_prefix=f"{URL_PREFIX}/training",
               description="Trainer callbacks (Authorization: Bearer <job token>)")


MAX_IDEMPOTENCY_KEY = 255


def accept(job_id: int, kind: EventKind, payload: dict, apply=None):
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise APIError.validation("Idempotency-Key",
                                  f"must be at most {MAX_IDEMPOTENCY_KEY} characters")
    accepted = outbox.accept(job_id, kind, payload, key, apply)
    return accepted.body, 202, {"Idempotent-Replayed": str(accepted.replayed).lower()}


def refuse_if_finished(job: Job) -> None:
    if job.finished:
        raise APIError("JOB_FINISHED", f"job {job.id} has already finished ({job.status.value})",
                       {"job_id": job.id, "status": job.status.value})


def apply_progress(job: Job, event: Event) -> None:
    payload = event.payload
    refuse_if_finished(job)
    if job.status == JobStatus.PENDING:
        job.status = JobStatus.RUNNING
        job.started_at = utcnow()
    if job.current_epoch is None or payload["current_epoch"] >= job.current_epoch:
        job.current_epoch = payload["current_epoch"]
        job.latest_metrics = payload["metrics"]
    if payload.get("total_epochs"):
        job.total_epochs = payload["total_epochs"]
    for field in ("best_checkpoint_path", "last_checkpoint_path"):
        if payload.get(field):
            setattr(job, field, payload[field])


def apply_completion(job: Job, event: Event) -> None:
    payload = event.payload
    refuse_if_finished(job)
    job.status = JobStatus(payload["status"])
    job.finished_at = utcnow()
    job.started_at = job.started_at or job.finished_at
    job.final_metrics = payload["final_metrics"]
    job.error_message = payload.get("error_message")
    for field in ("best_checkpoint_path", "last_checkpoint_path"):
        if payload.get(field):
            setattr(job, field, payload[field])


@bp.route("/jobs/<int:job_id>/callback/progress", methods=["POST"])
@require_job_token
@bp.arguments(ProgressSchema)
@bp.response(202, AcceptedSchema)
def post_progress(payload: dict, job_id: int):
    return accept(job_id, EventKind.PROGRESS, payload, apply_progress)


@bp.route("/jobs/<int:job_id>/callback/logs", methods=["POST"])
@require_job_token
@bp.arguments(LogsSchema)
@bp.response(202, AcceptedSchema)
def post_logs(payload: dict, job_id: int):
    return accept(job_id, EventKind.LOGS, payload)


@bp.route("/jobs/<int:job_id>/callback/completion", methods=["POST"])
@require_job_token
@bp.arguments(CompletionSchema)
@bp.response(202, AcceptedSchema)
def post_completion(payload: dict, job_id: int):
    return accept(job_id, EventKind.COMPLETION, payload, apply_completion)
