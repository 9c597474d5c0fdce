"""Benchmark-only endpoints: the ceiling and the design the platform replaced.

- `POST /bench/noop`: a trivial 202, nothing parsed — what gunicorn and Flask cost alone.
- `POST /bench/inline/jobs/<id>/callback/progress`: the seed's design. The same token check,
  the same schema and the same transaction as the real progress callback (`outbox.store`:
  event row plus the job's state change), but instead of announcing it to a worker it writes
  the callback's metrics to MLflow with `MlflowClient.log_batch` inside the request, as the
  seed documents proposed.
"""

from __future__ import annotations

from flask import current_app

from platform_app.api import Blueprint
from platform_app.auth import require_job_token
from platform_app.extensions import db
from platform_app.models import EventKind, EventState, Job
from platform_app.schemas import ProgressSchema
from platform_app.services import locks, outbox
from platform_app.services.jobstate import apply_progress
from platform_app.services.projections import ensure_run, points_of

bp = Blueprint("bench", __name__, url_prefix="/bench",
               description="Benchmark comparison endpoints (bench.app only)")


@bp.route("/noop", methods=["POST"])
def noop():
    return {"accepted": True}, 202


@bp.route("/inline/jobs/<int:job_id>/callback/progress", methods=["POST"])
@require_job_token
@bp.arguments(ProgressSchema())
def inline_progress(payload: dict, job_id: int):
    stored = outbox.store(job_id, EventKind.PROGRESS, payload, None, apply_progress,
                          state=EventState.PROJECTED)
    job = db.session.get(Job, job_id)
    tracking = current_app.extensions["tracking"]
    run_id = job.mlflow_run_id
    if not run_id:  # first callback of the job: create its run once, under the job's lock
        with locks.job_lock("metrics", job_id):
            db.session.refresh(job)
            run_id = ensure_run(job, tracking)
    tracking.log_points(run_id, points_of(stored.event, job.current_epoch or 0))
    return stored.body, 202
