"""Operator endpoints for jobs: create, list, read, and the polling feeds."""

from __future__ import annotations

from types import SimpleNamespace

import sqlalchemy as sa
from flask import current_app, request

from platform_app.api import URL_PREFIX, Blueprint
from platform_app.auth import issue_callback_token, issue_view_token, require_operator
from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.models import Event, EventKind, Job, JobStatus, LogLine
from platform_app.schemas import (
    CreatedJobSchema,
    CursorArgsSchema,
    JobCreateSchema,
    JobListArgsSchema,
    JobSchema,
    LogLineSchema,
)
from platform_app.services import events, jobstate, uploads

bp = Blueprint("jobs", __name__, url_prefix=f"{URL_PREFIX}/training",
               description="Training jobs (operator API key)")
job_schema = JobSchema()
jobs_schema = JobSchema(many=True)
log_lines_schema = LogLineSchema(many=True)


def get_job(job_id: int) -> Job:
    """The job, or a 404 in the API's error shape."""
    job = db.session.get(Job, job_id)
    if job is None:
        raise APIError.not_found("job", job_id=job_id)
    return job


def callback_url() -> str:
    """The API root a trainer calls; behind a proxy set PUBLIC_BASE_URL."""
    base = current_app.config["PUBLIC_BASE_URL"] or request.host_url.rstrip("/")
    return f"{base}{URL_PREFIX}"


@bp.route("/jobs", methods=["POST"])
@require_operator
@bp.arguments(JobCreateSchema())
@bp.response(201, CreatedJobSchema)
def create_job(data: dict):
    if data.get("dataset_uri"):
        uploads.check_dataset(data["dataset_uri"])
    job = Job(**data, status=JobStatus.PENDING, latest_metrics={})
    db.session.add(job)
    db.session.commit()
    token, expires_at = issue_callback_token(job.id)
    columns = {column.key: getattr(job, column.key) for column in Job.__table__.columns}
    return SimpleNamespace(**columns, callback_url=callback_url(), callback_token=token,
                           callback_token_expires_at=expires_at)


@bp.route("/jobs", methods=["GET"])
@require_operator
@bp.arguments(JobListArgsSchema(), location="query")
def list_jobs(args: dict):
    query = sa.select(Job).order_by(Job.id.desc())
    if "status" in args:
        query = query.where(Job.status == JobStatus(args["status"]))
    page = db.paginate(query, page=args["page"], per_page=args["per_page"], error_out=False)
    return {"items": jobs_schema.dump(page.items), "page": page.page,
            "per_page": page.per_page, "total": page.total}


@bp.route("/jobs/<int:job_id>", methods=["GET"])
@require_operator
def read_job(job_id: int):
    return job_schema.dump(get_job(job_id))


@bp.route("/jobs/<int:job_id>/cancel", methods=["POST"])
@require_operator
def cancel_job(job_id: int):
    """Ask the trainer to stop: its next progress answer says `stop_requested`, it finishes
    the epoch and reports `cancelled`. If it stays silent for CANCEL_GRACE_SECONDS the
    platform cancels the job itself."""
    job = db.session.get(Job, job_id, with_for_update=True)
    if job is None:
        raise APIError.not_found("job", job_id=job_id)
    jobstate.request_cancel(job)
    body = job_schema.dump(job)
    events.publish(current_app.config["REDIS_URL"], [
        {"type": "status", "job_id": job_id, "event_id": None, "data": body}])
    return body, 202


@bp.route("/jobs/<int:job_id>/view-token", methods=["POST"])
@require_operator
def create_view_token(job_id: int):
    """For a browser's WebSocket (`/ws/jobs/{id}?token=`): read-only, this job only,
    short-lived (VIEW_TOKEN_TTL_SECONDS)."""
    get_job(job_id)
    token, expires_at = issue_view_token(job_id)
    return {"token": token, "expires_at": expires_at.isoformat(),
            "ws_url": f"/ws/jobs/{job_id}?token={token}"}, 201


@bp.route("/jobs/<int:job_id>/metrics", methods=["GET"])
@require_operator
@bp.arguments(CursorArgsSchema(), location="query")
def list_metrics(args: dict, job_id: int):
    """Progress and final metrics as they were accepted, oldest first; `next_cursor` is
    the `since` of the next poll."""
    get_job(job_id)
    events = db.session.scalars(
        sa.select(Event).where(
            Event.job_id == job_id, Event.id > args["since"],
            Event.kind.in_((EventKind.PROGRESS, EventKind.COMPLETION)))
        .order_by(Event.id).limit(args["limit"])
    ).all()
    items = [_metrics_item(e) for e in events]
    return {"items": items, "next_cursor": events[-1].id if events else args["since"]}


def _metrics_item(event: Event) -> dict:
    payload = event.payload
    final = event.kind == EventKind.COMPLETION
    return {
        "event_id": event.id,
        "kind": event.kind.value,
        "epoch": None if final else payload["current_epoch"],
        "step": None if final else payload.get("step"),
        "metrics": payload["final_metrics"] if final else payload["metrics"],
        "accepted_ms": event.accepted_ms,
        "state": event.state.value,
    }


@bp.route("/jobs/<int:job_id>/logs", methods=["GET"])
@require_operator
@bp.arguments(CursorArgsSchema(), location="query")
def list_logs(args: dict, job_id: int):
    """Log lines once the worker has stored them; the cursor is the last line's id."""
    get_job(job_id)
    lines = db.session.scalars(
        sa.select(LogLine).where(LogLine.job_id == job_id, LogLine.id > args["since"])
        .order_by(LogLine.id).limit(args["limit"])
    ).all()
    return {"items": log_lines_schema.dump(lines),
            "next_cursor": lines[-1].id if lines else args["since"]}
