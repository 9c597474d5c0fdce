"""Presigned uploads (job token): checkpoints and artifacts, and the job's dataset URL.

Asking for an upload returns presigned URL(s) for a key the server chose under the job's
prefix; saying it is done enqueues the verification (202). The trainer never holds store
credentials.
"""

from __future__ import annotations

import sqlalchemy as sa

from platform_app.api import URL_PREFIX, Blueprint
from platform_app.api.callbacks import accept
from platform_app.api.jobs import get_job
from platform_app.auth import require_job_token, require_operator
from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.models import Event, EventKind, Upload, UploadPurpose, UploadStatus
from platform_app.schemas import (
    AcceptedSchema,
    ArtifactUploadRequestSchema,
    CheckpointUploadRequestSchema,
    UploadCompleteSchema,
    UploadSchema,
)
from platform_app.services import outbox, statements, uploads

bp = Blueprint("uploads", __name__, url_prefix=f"{URL_PREFIX}/training",
               description="Checkpoint and artifact uploads through presigned URLs")
uploads_schema = UploadSchema(many=True)
# built once: the batch's statements are compiled once per process (services/statements.py)
LINK_COMPLETE_EVENT = (sa.update(Upload).where(Upload.id == sa.bindparam("upload"))
                       .values(complete_event_id=sa.bindparam("event")))


def _issue(job_id: int, purpose: UploadPurpose, data: dict) -> dict:
    """Uploads are accepted in any job state: a trainer may upload last.pt after its final
    callbacks, and an upload changes no job state until it is verified."""
    _, body = uploads.issue(get_job(job_id), purpose, data)
    return body


@bp.route("/jobs/<int:job_id>/checkpoint/get-upload-url", methods=["POST"])
@require_job_token
@bp.arguments(CheckpointUploadRequestSchema())
def get_checkpoint_upload_url(data: dict, job_id: int):
    """A presigned PUT (with the declared size and SHA-256 signed in, so the store refuses
    any other body), or above the multipart threshold one presigned URL per part."""
    return _issue(job_id, UploadPurpose.CHECKPOINT, data)


@bp.route("/jobs/<int:job_id>/artifacts/get-upload-url", methods=["POST"])
@require_job_token
@bp.arguments(ArtifactUploadRequestSchema())
def get_artifact_upload_url(data: dict, job_id: int):
    return _issue(job_id, UploadPurpose.ARTIFACT, data)


def _complete(job_id: int, purpose: UploadPurpose, data: dict):
    upload = db.session.scalar(sa.select(Upload).where(
        Upload.upload_id == data["upload_id"], Upload.job_id == job_id,
        Upload.purpose == purpose))
    if upload is None:
        raise APIError("NOT_FOUND", f"no {purpose.value} upload {data['upload_id']} in this job",
                       {"upload_id": data["upload_id"]})
    if upload.complete_event_id is not None:
        earlier = db.session.get(Event, upload.complete_event_id)
        return outbox.body_of(earlier.id, earlier.response), 202, {"Idempotent-Replayed": "true"}
    if upload.status != UploadStatus.PENDING:
        raise APIError("CONFLICT", f"upload {upload.upload_id} is {upload.status.value}",
                       {"upload_id": upload.upload_id, "status": upload.status.value})
    if upload.declared_sha256 and upload.declared_sha256 != data["sha256"]:
        raise APIError.validation("sha256", "differs from the sha256 declared for this upload")
    if bool(upload.s3_upload_id) != bool(data.get("parts")):
        raise APIError.validation("parts", "are required for a multipart upload and only then")

    def link(job: outbox.JobForRules, payload: dict) -> outbox.Effect:
        def record(transaction: statements.Transaction, event_id: int) -> None:
            transaction.queue(LINK_COMPLETE_EVENT, {"upload": upload.id, "event": event_id})

        return outbox.Effect(response={"upload_id": upload.upload_id,
                                       "s3_uri": uploads.get_store().uri(upload.key)},
                             on_inserted=record)

    return accept(job_id, EventKind.UPLOAD, {**data, "purpose": purpose.value}, link)


@bp.route("/jobs/<int:job_id>/checkpoint/upload-complete", methods=["POST"])
@require_job_token
@bp.arguments(UploadCompleteSchema())
@bp.response(202, AcceptedSchema)
def complete_checkpoint_upload(data: dict, job_id: int):
    """A task then completes the multipart upload, verifies size and SHA-256, records the
    checkpoint and moves the job's best / last pointer — or rejects and deletes it."""
    return _complete(job_id, UploadPurpose.CHECKPOINT, data)


@bp.route("/jobs/<int:job_id>/artifacts/upload-complete", methods=["POST"])
@require_job_token
@bp.arguments(UploadCompleteSchema())
@bp.response(202, AcceptedSchema)
def complete_artifact_upload(data: dict, job_id: int):
    return _complete(job_id, UploadPurpose.ARTIFACT, data)


@bp.route("/jobs/<int:job_id>/checkpoints", methods=["GET"])
@require_operator
def list_checkpoints(job_id: int):
    """Every checkpoint with its status; verified ones with a presigned download URL."""
    get_job(job_id)
    rows = db.session.scalars(sa.select(Upload).where(
        Upload.job_id == job_id, Upload.purpose == UploadPurpose.CHECKPOINT)
        .order_by(Upload.id)).all()
    return {"items": uploads_schema.dump([uploads.describe(row) for row in rows])}


@bp.route("/jobs/<int:job_id>/dataset", methods=["GET"])
@require_job_token
def get_dataset_url(job_id: int):
    """The trainer's way to its dataset: a presigned GET, never credentials."""
    job = get_job(job_id)
    if not job.dataset_uri:
        raise APIError("NOT_FOUND", f"job {job_id} has no dataset_uri", {"job_id": job_id})
    return uploads.dataset_download(job)
