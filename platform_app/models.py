"""Database models. The DB is the source of truth; MLflow and the object store are
projections of the `events` outbox."""

from __future__ import annotations

import enum
import time
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from platform_app.extensions import db


def utcnow() -> datetime:
    return datetime.now(UTC)


def now_ms() -> int:
    return int(time.time() * 1000)


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    STOPPING = "stopping"  # an operator cancelled; the trainer is told on its next progress
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class EventKind(enum.StrEnum):
    PROGRESS = "progress"
    LOGS = "logs"
    COMPLETION = "completion"
    VALIDATION = "validation"
    UPLOAD = "upload"


class EventState(enum.StrEnum):
    PENDING = "pending"
    PROJECTED = "projected"
    FAILED = "failed"


def _enum(cls: type[enum.Enum]) -> sa.Enum:
    return sa.Enum(cls, values_callable=lambda e: [m.value for m in e], native_enum=False,
                   length=16)


class Job(db.Model):
    __tablename__ = "jobs"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    # Unique across databases: finds the job's MLflow run even if ids were reused (a reset DB)
    uid: so.Mapped[str] = so.mapped_column(sa.String(32), unique=True,
                                           default=lambda: uuid.uuid4().hex)
    model_name: so.Mapped[str] = so.mapped_column(sa.String(200))
    task_type: so.Mapped[str] = so.mapped_column(sa.String(32))
    experiment_name: so.Mapped[str] = so.mapped_column(sa.String(200))
    epochs: so.Mapped[int | None]
    params: so.Mapped[dict] = so.mapped_column(sa.JSON, default=dict)
    tags: so.Mapped[dict] = so.mapped_column(sa.JSON, default=dict)
    status: so.Mapped[JobStatus] = so.mapped_column(_enum(JobStatus), default=JobStatus.PENDING,
                                                    index=True)
    current_epoch: so.Mapped[int | None]
    total_epochs: so.Mapped[int | None]
    latest_metrics: so.Mapped[dict] = so.mapped_column(sa.JSON, default=dict)
    final_metrics: so.Mapped[dict | None] = so.mapped_column(sa.JSON)
    best_checkpoint_path: so.Mapped[str | None] = so.mapped_column(sa.String(1024))
    last_checkpoint_path: so.Mapped[str | None] = so.mapped_column(sa.String(1024))
    error_message: so.Mapped[str | None] = so.mapped_column(sa.Text)
    mlflow_experiment_id: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    mlflow_run_id: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    dataset_uri: so.Mapped[str | None] = so.mapped_column(sa.String(1024))
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True),
                                                       default=utcnow)
    started_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    finished_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
    cancel_requested_at: so.Mapped[datetime | None] = so.mapped_column(
        sa.DateTime(timezone=True))

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Event(db.Model):
    """One accepted callback: the outbox row a Celery task projects into a sink.

    `accepted_ms` is fixed at acceptance and reused as the MLflow timestamp, so replaying
    the projection writes the identical point, which MLflow stores once.
    """

    __tablename__ = "events"
    __table_args__ = (
        sa.UniqueConstraint("job_id", "idempotency_key", name="uq_events_job_idempotency"),
        sa.Index("ix_events_job_kind_state", "job_id", "kind", "state"),
        sa.Index("ix_events_state_enqueued", "state", "enqueued_at"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    job_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: so.Mapped[EventKind] = so.mapped_column(_enum(EventKind))
    payload: so.Mapped[dict] = so.mapped_column(sa.JSON)
    accepted_ms: so.Mapped[int] = so.mapped_column(sa.BigInteger, default=now_ms)
    idempotency_key: so.Mapped[str | None] = so.mapped_column(sa.String(255))
    request_hash: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    response: so.Mapped[dict | None] = so.mapped_column(sa.JSON)
    task_id: so.Mapped[str] = so.mapped_column(sa.String(64),
                                               default=lambda: str(uuid.uuid4()))
    state: so.Mapped[EventState] = so.mapped_column(_enum(EventState),
                                                    default=EventState.PENDING)
    attempts: so.Mapped[int] = so.mapped_column(default=0)
    last_error: so.Mapped[str | None] = so.mapped_column(sa.Text)
    enqueued_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True),
                                                        default=utcnow)
    projected_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))


class LogLine(db.Model):
    __tablename__ = "log_lines"
    __table_args__ = (sa.UniqueConstraint("event_id", "seq", name="uq_log_lines_event_seq"),
                      sa.Index("ix_log_lines_job_id_id", "job_id", "id"))

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    job_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    event_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("events.id", ondelete="CASCADE"))
    seq: so.Mapped[int]
    log_type: so.Mapped[str] = so.mapped_column(sa.String(32))
    line: so.Mapped[str] = so.mapped_column(sa.Text)
    created_ms: so.Mapped[int] = so.mapped_column(sa.BigInteger)


class ValidationResult(db.Model):
    __tablename__ = "validation_results"
    __table_args__ = (sa.UniqueConstraint("job_id", "epoch", name="uq_validation_job_epoch"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    job_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    event_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("events.id", ondelete="CASCADE"))
    epoch: so.Mapped[int]
    task_type: so.Mapped[str] = so.mapped_column(sa.String(32))
    primary_metric_name: so.Mapped[str | None] = so.mapped_column(sa.String(250))
    primary_metric_value: so.Mapped[float | None]
    overall_loss: so.Mapped[float | None]
    metrics: so.Mapped[dict] = so.mapped_column(sa.JSON, default=dict)
    class_names: so.Mapped[list] = so.mapped_column(sa.JSON, default=list)
    visualization_urls: so.Mapped[dict] = so.mapped_column(sa.JSON, default=dict)
    confusion_matrix: so.Mapped[list | None] = so.mapped_column(sa.JSON)
    image_count: so.Mapped[int] = so.mapped_column(default=0)
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True),
                                                       default=utcnow)


class ValidationImageResult(db.Model):
    __tablename__ = "validation_image_results"
    __table_args__ = (
        sa.Index("ix_validation_images_result_labels", "validation_result_id",
                 "true_label_id", "predicted_label_id"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    validation_result_id: so.Mapped[int] = so.mapped_column(
        sa.ForeignKey("validation_results.id", ondelete="CASCADE"))
    image_path: so.Mapped[str] = so.mapped_column(sa.String(1024))
    image_name: so.Mapped[str | None] = so.mapped_column(sa.String(512))
    true_label_id: so.Mapped[int | None]
    predicted_label_id: so.Mapped[int | None]
    confidence: so.Mapped[float | None]
    is_correct: so.Mapped[bool | None]
    detections: so.Mapped[list | None] = so.mapped_column(sa.JSON)


class UploadPurpose(enum.StrEnum):
    CHECKPOINT = "checkpoint"
    ARTIFACT = "artifact"


class UploadStatus(enum.StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    REJECTED = "rejected"
    ABANDONED = "abandoned"


class Upload(db.Model):
    """An object a trainer uploads through presigned URLs: a checkpoint or an artifact.

    The key is built by the server (`jobs/{job_id}/{purpose}s/{type or kind}/{upload_id}/
    {filename}`), unique per upload so that rejecting one never touches another, and the
    same on every retry of this upload.
    """

    __tablename__ = "uploads"
    __table_args__ = (sa.Index("ix_uploads_job_purpose", "job_id", "purpose"),
                      sa.Index("ix_uploads_status_expires", "status", "expires_at"))

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    upload_id: so.Mapped[str] = so.mapped_column(sa.String(32), unique=True)
    job_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"))
    purpose: so.Mapped[UploadPurpose] = so.mapped_column(_enum(UploadPurpose))
    checkpoint_type: so.Mapped[str | None] = so.mapped_column(sa.String(16))
    kind: so.Mapped[str | None] = so.mapped_column(sa.String(32))
    epoch: so.Mapped[int | None]
    filename: so.Mapped[str] = so.mapped_column(sa.String(128))
    content_type: so.Mapped[str] = so.mapped_column(sa.String(128))
    key: so.Mapped[str] = so.mapped_column(sa.String(1024))
    size: so.Mapped[int] = so.mapped_column(sa.BigInteger)
    declared_sha256: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    sha256: so.Mapped[str | None] = so.mapped_column(sa.String(64))
    s3_upload_id: so.Mapped[str | None] = so.mapped_column(sa.String(1024))
    part_size: so.Mapped[int | None] = so.mapped_column(sa.BigInteger)
    status: so.Mapped[UploadStatus] = so.mapped_column(_enum(UploadStatus),
                                                       default=UploadStatus.PENDING)
    reason: so.Mapped[str | None] = so.mapped_column(sa.Text)
    etag: so.Mapped[str | None] = so.mapped_column(sa.String(128))
    metrics: so.Mapped[dict | None] = so.mapped_column(sa.JSON)
    complete_event_id: so.Mapped[int | None] = so.mapped_column(sa.ForeignKey("events.id"))
    created_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True),
                                                       default=utcnow)
    expires_at: so.Mapped[datetime] = so.mapped_column(sa.DateTime(timezone=True))
    verified_at: so.Mapped[datetime | None] = so.mapped_column(sa.DateTime(timezone=True))
