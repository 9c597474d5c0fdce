"""Checkpoints and artifacts: presigned uploads the platform issues, verifies and records.

The trainer never holds store credentials. It asks for an upload (the server builds the key
under the job's prefix from validated parts), PUTs the bytes to presigned URLs, then says it
is done; a task completes the multipart upload, checks size and SHA-256, and records the
result — or rejects it and deletes the object, so nothing unverified stays behind.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from flask import current_app

from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.joblog import job_logger
from platform_app.models import Event, Job, Upload, UploadPurpose, UploadStatus, utcnow
from platform_app.services import locks
from platform_app.services.errors import SinkRejected
from platform_app.services.projections import claim, end_snapshot, ensure_run
from platform_app.services.storage import ObjectStore, StoreRefused
from platform_app.services.tracking import TrackingService

MAX_PARTS = 10_000


def get_store() -> ObjectStore:
    return current_app.extensions["storage"]


def object_key(job_id: int, purpose: UploadPurpose, group: str, upload_id: str,
               filename: str) -> str:
    """Every part is validated (no '/' or '..' can reach here), so keys stay in the job's
    prefix whatever the client sends."""
    return f"jobs/{job_id}/{purpose.value}s/{group}/{upload_id}/{filename}"


def job_prefix(job_id: int) -> str:
    return f"jobs/{job_id}/"


def part_size_for(size: int) -> int:
    """The configured part size, grown when needed to stay within S3's 10 000 parts."""
    configured = current_app.config["MULTIPART_PART_SIZE_BYTES"]
    return max(configured, math.ceil(size / MAX_PARTS))


def issue(job: Job, purpose: UploadPurpose, data: dict) -> tuple[Upload, dict]:
    """Create the upload row and its presigned URL(s). Single PUTs are presigned offline;
    a multipart upload needs one call to the store to get its upload id."""
    config = current_app.config
    if data["size"] > config["MAX_UPLOAD_BYTES"]:
        raise APIError.validation("size", f"must be at most {config['MAX_UPLOAD_BYTES']} bytes")
    store = get_store()
    public_id = uuid.uuid4().hex
    group = data.get("checkpoint_type") or data["kind"]
    upload = Upload(
        upload_id=public_id, job_id=job.id, purpose=purpose,
        checkpoint_type=data.get("checkpoint_type"), kind=data.get("kind"),
        epoch=data.get("epoch"), filename=data["filename"], content_type=data["content_type"],
        key=object_key(job.id, purpose, group, public_id, data["filename"]), size=data["size"],
        declared_sha256=data.get("sha256"),
        expires_at=utcnow() + timedelta(seconds=config["UPLOAD_URL_EXPIRY_SECONDS"]))
    expires_s = config["UPLOAD_URL_EXPIRY_SECONDS"]
    body = {"upload_id": public_id, "s3_uri": store.uri(upload.key),
            "expires_at": upload.expires_at.isoformat()}
    if upload.size <= config["MULTIPART_THRESHOLD_BYTES"]:
        put = store.presign_put(upload.key, upload.size, upload.declared_sha256,
                                upload.content_type, expires_s)
        body.update(upload_url=put.url, headers=put.headers)
    else:
        upload.part_size = part_size_for(upload.size)
        upload.s3_upload_id = store.create_multipart(upload.key, upload.content_type)
        count = math.ceil(upload.size / upload.part_size)
        body.update(part_size=upload.part_size, parts=[
            {"part_number": n, "url": store.presign_part(
                upload.key, upload.s3_upload_id, n,
                min(upload.part_size, upload.size - (n - 1) * upload.part_size), expires_s).url}
            for n in range(1, count + 1)])
    db.session.add(upload)
    db.session.commit()
    job_logger(__name__, job.id).info("upload %s issued for %s (%d bytes, %s)", public_id,
                                      upload.key, upload.size,
                                      "multipart" if upload.s3_upload_id else "single PUT")
    return upload, body


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    sha256: str | None = None
    etag: str | None = None


def verify(upload: Upload, claimed_sha256: str, parts: list[dict] | None,
           store: ObjectStore) -> Verdict:
    """Complete (if multipart) and check what landed: present, declared size, SHA-256 —
    the store's own verified checksum when it kept one, else a streaming read."""
    if upload.s3_upload_id:
        if not parts:
            return Verdict(False, "a multipart upload needs its parts to complete")
        try:
            store.complete_multipart(upload.key, upload.s3_upload_id, parts)
        except StoreRefused as exc:
            return Verdict(False, f"completing the multipart upload failed ({exc.code})")
    info = store.stat(upload.key)
    if info is None:
        return Verdict(False, "no object was uploaded")
    if info.size != upload.size:
        return Verdict(False, f"size is {info.size} bytes, {upload.size} were declared")
    actual = store.stored_sha256(upload.key) or store.sha256(upload.key)
    if actual != claimed_sha256:
        return Verdict(False, f"sha256 is {actual}, the trainer claimed {claimed_sha256}")
    return Verdict(True, sha256=actual, etag=info.etag)


def discard(upload: Upload, store: ObjectStore) -> None:
    """Leave nothing unverified behind: the object and any unfinished multipart upload."""
    if upload.s3_upload_id:
        store.abort_multipart(upload.key, upload.s3_upload_id)
    store.remove(upload.key)


def finalize(event: Event, store: ObjectStore, tracking: TrackingService) -> dict:
    """The projection of an upload-complete event. Re-entrant: a retry after the DB record
    skips to what is left (the MLflow link). Returns the verdict for live viewers."""
    event_id, job_id, payload = event.id, event.job_id, event.payload
    logger = job_logger(__name__, job_id)
    upload = db.session.scalar(sa.select(Upload).where(
        Upload.upload_id == payload["upload_id"]))
    if upload.status == UploadStatus.PENDING:
        end_snapshot(upload)
        verdict = verify(upload, payload["sha256"], payload.get("parts"), store)
        if not verdict.ok:
            discard(upload, store)
        upload = db.session.get(Upload, upload.id)
        if verdict.ok:
            record_verified(upload, verdict, payload.get("metrics"))
            logger.info("upload %s verified: %s (%d bytes)", upload.upload_id,
                        store.uri(upload.key), upload.size)
        else:
            upload.status, upload.reason = UploadStatus.REJECTED, verdict.reason
            logger.warning("upload %s rejected and deleted: %s", upload.upload_id,
                           verdict.reason)
        db.session.commit()
    if upload.status == UploadStatus.VERIFIED and upload.purpose == UploadPurpose.CHECKPOINT:
        tags = checkpoint_tags(upload, store)
        end_snapshot()  # the lock may take seconds to come free
        with locks.job_lock("metrics", job_id):
            run_id = ensure_run(db.session.get(Job, job_id), tracking)
            end_snapshot()
            tracking.set_tags(run_id, tags)
    claim([event_id])
    db.session.commit()
    return {"upload_id": upload.upload_id, "status": upload.status.value,
            "reason": upload.reason, "s3_uri": store.uri(upload.key), "sha256": upload.sha256}


def record_verified(upload: Upload, verdict: Verdict, metrics: dict | None) -> None:
    upload.status = UploadStatus.VERIFIED
    upload.sha256, upload.etag = verdict.sha256, verdict.etag
    upload.metrics = metrics
    upload.verified_at = utcnow()
    if upload.purpose != UploadPurpose.CHECKPOINT or upload.checkpoint_type == "epoch":
        return
    newer = db.session.scalar(sa.select(sa.func.count()).select_from(Upload).where(
        Upload.job_id == upload.job_id, Upload.checkpoint_type == upload.checkpoint_type,
        Upload.status == UploadStatus.VERIFIED, Upload.id > upload.id))
    if not newer:
        job = db.session.get(Job, upload.job_id)
        setattr(job, f"{upload.checkpoint_type}_checkpoint_path", get_store().uri(upload.key))


def checkpoint_tags(upload: Upload, store: ObjectStore) -> dict[str, str]:
    """How a checkpoint shows in MLflow: tags on the job's run naming the verified object.
    (A registered model version would need the object in MLflow's artifact store.)"""
    name = upload.checkpoint_type if upload.checkpoint_type != "epoch" else f"epoch.{upload.epoch}"
    prefix = f"checkpoint.{name}"
    return {f"{prefix}.uri": store.uri(upload.key), f"{prefix}.sha256": upload.sha256 or "",
            f"{prefix}.size": str(upload.size)}


def describe(upload: Upload) -> dict:
    """An upload as the API shows it: its URI, and a download URL once verified."""
    store = get_store()
    data = {column.key: getattr(upload, column.key) for column in Upload.__table__.columns}
    data["s3_uri"] = store.uri(upload.key)
    data["download_url"] = (
        store.presign_get(upload.key, current_app.config["DOWNLOAD_URL_EXPIRY_SECONDS"])
        if upload.status == UploadStatus.VERIFIED else None)
    return data


def download_urls(job_id: int, uris: dict[str, str]) -> dict[str, str]:
    """Presigned GETs for the URIs that point into this job's prefix (plots a trainer
    uploaded); anything else is left out rather than signed."""
    store = get_store()
    expires_s = current_app.config["DOWNLOAD_URL_EXPIRY_SECONDS"]
    keys = {name: store.key_of(uri) for name, uri in uris.items()}
    return {name: store.presign_get(key, expires_s) for name, key in keys.items()
            if key and key.startswith(job_prefix(job_id)) and ".." not in key}


def dataset_download(job: Job) -> dict:
    store = get_store()
    expires_s = current_app.config["DOWNLOAD_URL_EXPIRY_SECONDS"]
    return {"dataset_uri": job.dataset_uri,
            "download_url": store.presign_get(store.key_of(job.dataset_uri), expires_s),
            "expires_at": (utcnow() + timedelta(seconds=expires_s)).isoformat()}


def check_dataset(uri: str) -> None:
    """At job creation: the dataset must be an existing object in the platform's bucket,
    so a typo fails now rather than in the trainer."""
    store = get_store()
    key = store.key_of(uri)
    if not key:
        raise APIError.validation("dataset_uri", f"must be in the bucket: s3://{store.bucket}/…")
    if store.stat(key) is None:
        raise APIError.validation("dataset_uri", "no such object in the store")


def abandon_expired(grace_s: float = 60, limit: int = 200) -> int:
    """Sweeper: uploads whose URLs expired without an upload-complete are abandoned, and
    their unfinished multipart uploads and stray objects removed."""
    cutoff = utcnow() - timedelta(seconds=grace_s)
    unclaimed = (Upload.status == UploadStatus.PENDING, Upload.complete_event_id.is_(None))
    expired = db.session.scalars(sa.select(Upload).where(
        *unclaimed, Upload.expires_at < cutoff).limit(limit)).all()
    end_snapshot(*expired)
    store = get_store()
    for upload in expired:
        try:
            discard(upload, store)
        except SinkRejected as exc:
            job_logger(__name__, upload.job_id).warning(
                "could not clean up upload %s: %s", upload.upload_id, exc)
        db.session.execute(sa.update(Upload).where(Upload.id == upload.id, *unclaimed).values(
            status=UploadStatus.ABANDONED, reason="upload URL expired unused"))
        db.session.commit()
        job_logger(__name__, upload.job_id).info("upload %s abandoned", upload.upload_id)
    return len(expired)
