"""Validation results: the trainer posts one per epoch (seed 003's ValidationCallbackRequest);
operators read the summary, one epoch, and the per-image drill-down."""

from __future__ import annotations

import sqlalchemy as sa

from platform_app.api import URL_PREFIX, Blueprint
from platform_app.api.callbacks import accept
from platform_app.api.jobs import get_job
from platform_app.auth import require_job_token, require_operator
from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.models import EventKind, ValidationImageResult, ValidationResult
from platform_app.schemas import (
    AcceptedSchema,
    ImageFilterArgsSchema,
    ImageResultOutSchema,
    ValidationCallbackSchema,
    ValidationResultSchema,
)
from platform_app.services import uploads

bp = Blueprint("validation", __name__, url_prefix=f"{URL_PREFIX}/validation",
               description="Validation results")
result_schema = ValidationResultSchema()
summary_schema = ValidationResultSchema(many=True, exclude=("confusion_matrix",))
images_schema = ImageResultOutSchema(many=True)


@bp.route("/jobs/<int:job_id>/results", methods=["POST"])
@require_job_token
@bp.arguments(ValidationCallbackSchema())
@bp.response(202, AcceptedSchema)
def post_result(payload: dict, job_id: int):
    """Re-sending an epoch replaces its earlier result."""
    if payload["job_id"] != job_id:
        raise APIError.validation("job_id", f"must match the job in the URL ({job_id})")
    return accept(job_id, EventKind.VALIDATION, payload)


@bp.route("/jobs/<int:job_id>/results", methods=["GET"])
@require_operator
def list_results(job_id: int):
    get_job(job_id)
    results = db.session.scalars(
        sa.select(ValidationResult).where(ValidationResult.job_id == job_id)
        .order_by(ValidationResult.epoch)).all()
    best = _best(results)
    return {"items": summary_schema.dump(results),
            "summary": {"epochs": len(results),
                        "latest_epoch": results[-1].epoch if results else None,
                        "best_epoch": best.epoch if best else None,
                        "primary_metric_name": best.primary_metric_name if best else None,
                        "best_primary_metric_value": best.primary_metric_value if best else None}}


def _best(results: list[ValidationResult]) -> ValidationResult | None:
    scored = [r for r in results if r.primary_metric_value is not None]
    return max(scored, key=lambda r: r.primary_metric_value) if scored else None


def get_result(job_id: int, epoch: int) -> ValidationResult:
    get_job(job_id)
    result = db.session.scalar(sa.select(ValidationResult).where(
        ValidationResult.job_id == job_id, ValidationResult.epoch == epoch))
    if result is None:
        raise APIError.not_found("result", job_id=job_id, epoch=epoch)
    return result


@bp.route("/jobs/<int:job_id>/results/<int:epoch>", methods=["GET"])
@require_operator
def read_result(job_id: int, epoch: int):
    """With presigned GET URLs for the plots the trainer uploaded."""
    result = get_result(job_id, epoch)
    body = result_schema.dump(result)
    body["visualization_download_urls"] = uploads.download_urls(job_id,
                                                                result.visualization_urls)
    return body


@bp.route("/jobs/<int:job_id>/results/<int:epoch>/images", methods=["GET"])
@require_operator
@bp.arguments(ImageFilterArgsSchema(), location="query")
def list_images(args: dict, job_id: int, epoch: int):
    """Per-image results, filterable by true / predicted class: the confusion-matrix
    drill-down."""
    result = get_result(job_id, epoch)
    query = sa.select(ValidationImageResult).where(
        ValidationImageResult.validation_result_id == result.id)
    for field in ("true_label_id", "predicted_label_id", "is_correct"):
        if field in args:
            query = query.where(getattr(ValidationImageResult, field) == args[field])
    page = db.paginate(query.order_by(ValidationImageResult.id), page=args["page"],
                       per_page=args["per_page"], error_out=False)
    return {"items": images_schema.dump(page.items), "page": page.page,
            "per_page": page.per_page, "total": page.total}
