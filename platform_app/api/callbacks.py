"""Trainer callbacks (job token). Each one: validate, commit the event and its effect on
the job in one short transaction, enqueue its projection, answer 202. No sink is touched
on this path. The job state machine is in services/jobstate.py.
"""

from __future__ import annotations

from flask import request

from platform_app.api import URL_PREFIX, Blueprint
from platform_app.auth import require_job_token
from platform_app.errors import APIError
from platform_app.models import EventKind
from platform_app.schemas import AcceptedSchema, CompletionSchema, LogsSchema, ProgressSchema
from platform_app.services import outbox
from platform_app.services.backpressure import hold_back_when_behind
from platform_app.services.jobstate import apply_completion, apply_progress

bp = Blueprint("callbacks", __name__, url_prefix=f"{URL_PREFIX}/training",
               description="Trainer callbacks (Authorization: Bearer <job token>)")


MAX_IDEMPOTENCY_KEY = 255


def accept(job_id: int, kind: EventKind, payload: dict, rule: outbox.Rule | None = None):
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise APIError.validation("Idempotency-Key",
                                  f"must be at most {MAX_IDEMPOTENCY_KEY} characters")
    accepted = outbox.accept(job_id, kind, payload, key, rule)
    return accepted.body, 202, {"Idempotent-Replayed": str(accepted.replayed).lower()}


@bp.route("/jobs/<int:job_id>/callback/progress", methods=["POST"])
@require_job_token
@hold_back_when_behind
@bp.arguments(ProgressSchema())
@bp.response(202, AcceptedSchema)
def post_progress(payload: dict, job_id: int):
    return accept(job_id, EventKind.PROGRESS, payload, apply_progress)


@bp.route("/jobs/<int:job_id>/callback/logs", methods=["POST"])
@require_job_token
@bp.arguments(LogsSchema())
@bp.response(202, AcceptedSchema)
def post_logs(payload: dict, job_id: int):
    return accept(job_id, EventKind.LOGS, payload)


@bp.route("/jobs/<int:job_id>/callback/completion", methods=["POST"])
@require_job_token
@bp.arguments(CompletionSchema())
@bp.response(202, AcceptedSchema)
def post_completion(payload: dict, job_id: int):
    return accept(job_id, EventKind.COMPLETION, payload, apply_completion)
