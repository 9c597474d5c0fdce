"""Request and response schemas. Field names follow the seed documents.

Non-finite numbers: JSON has no NaN, but Python clients send `NaN`/`Infinity` literals. The
body parser turns them into the strings "NaN", "Infinity" and "-Infinity", which is also how
they are stored and served (strict JSON for browsers and PostgreSQL); `null` means
"not measured". MLflow receives the real float values.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from platform_app.models import EventKind, EventState, JobStatus, UploadPurpose, UploadStatus

NON_FINITE = frozenset({"NaN", "Infinity", "-Infinity"})  # the tokens JSON lacks
FLOAT_MAX = sys.float_info.max
TASK_TYPES = ("detection", "segmentation", "classification", "pose", "obb")
TERMINAL = ("completed", "failed", "cancelled")
MAX_METRICS = 1000
MLFLOW_KEY_MAX = 250


class Number(fields.Field):
    """A JSON number, or one of the non-finite tokens; never a bool or numeric string."""

    default_error_messages = {
        "invalid": "must be a number, null, or one of NaN, Infinity, -Infinity",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any):
        if _plain_number(value):
            return value  # ints stay ints (confusion-matrix counts)
        if isinstance(value, str) and value in NON_FINITE:
            return value
        if isinstance(value, float):  # NaN or ±inf: kept as its token
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        # a bool, a string, or an integer no float (nor MLflow) can hold
        raise self.make_error("invalid")


def _plain_number(value: object) -> bool:
    """What Number passes through unchanged: None, or an int or float within float range
    (NaN and ±inf fail the comparison)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and -FLOAT_MAX <= value <= FLOAT_MAX)


class Metrics(fields.Dict):
    """A metric name → Number mapping. Every progress callback carries one, so a well-formed
    mapping is checked in one pass; anything else goes through fields.Dict, whose errors name
    the offending key. (Its per-item field objects were ~9 % of a callback's instructions.)"""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(validate=validate.Length(min=1, max=MLFLOW_KEY_MAX)),
                         values=Number(allow_none=True), validate=validate.Length(max=MAX_METRICS),
                         **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any):
        if isinstance(value, dict) and all(
                type(k) is str and 0 < len(k) <= MLFLOW_KEY_MAX and _plain_number(v)
                for k, v in value.items()):
            return dict(value)
        return super()._deserialize(value, attr, data, **kwargs)


def path_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=validate.Length(min=1, max=1024), allow_none=True, **kwargs)


class JobCreateSchema(Schema):
    model_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    task_type = fields.String(required=True, validate=validate.OneOf(TASK_TYPES))
    experiment_name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    epochs = fields.Integer(strict=True, validate=validate.Range(min=1, max=100_000),
                            allow_none=True)
    params = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=250)),
                         validate=validate.Length(max=100), load_default=dict)
    tags = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=250)),
                       values=fields.String(validate=validate.Length(max=5000)),
                       validate=validate.Length(max=100), load_default=dict)
    dataset_uri = fields.String(validate=validate.Regexp(r"^s3://[^/]+/.+", error=(
        "must be an s3://bucket/key URI")), allow_none=True)


class JobSchema(Schema):
    job_id = fields.Integer(attribute="id")
    status = fields.Enum(JobStatus, by_value=True)
    model_name = fields.String()
    task_type = fields.String()
    experiment_name = fields.String()
    epochs = fields.Integer()
    params = fields.Dict()
    tags = fields.Dict()
    current_epoch = fields.Integer()
    total_epochs = fields.Integer()
    latest_metrics = fields.Dict()
    final_metrics = fields.Dict()
    best_checkpoint_path = fields.String()
    last_checkpoint_path = fields.String()
    error_message = fields.String()
    mlflow_experiment_id = fields.String()
    mlflow_run_id = fields.String()
    dataset_uri = fields.String()
    created_at = fields.DateTime()
    started_at = fields.DateTime()
    finished_at = fields.DateTime()
    cancel_requested_at = fields.DateTime()


class CreatedJobSchema(JobSchema):
    callback_url = fields.String()
    callback_token = fields.String()
    callback_token_expires_at = fields.DateTime()


class PageArgsSchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1))
    per_page = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))


class JobListArgsSchema(PageArgsSchema):
    status = fields.String(validate=validate.OneOf(("pending", "running", "stopping",
                                                    *TERMINAL)))


class CursorArgsSchema(Schema):
    since = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=500, validate=validate.Range(min=1, max=5000))


class ProgressSchema(Schema):
    current_epoch = fields.Integer(required=True, strict=True,
                                   validate=validate.Range(min=0))
    total_epochs = fields.Integer(strict=True, validate=validate.Range(min=1), allow_none=True)
    step = fields.Integer(strict=True, validate=validate.Range(min=0), allow_none=True)
    status = fields.String(validate=validate.OneOf(("running",)), load_default="running")
    metrics = Metrics(load_default=dict)
    best_checkpoint_path = path_field()
    last_checkpoint_path = path_field()


class LogsSchema(Schema):
    log_type = fields.String(load_default="stdout",
                             validate=validate.Regexp(r"^[a-z][a-z0-9_]{0,31}$",
                                                      error="must be a short lowercase name"))
    lines = fields.List(fields.String(validate=validate.Length(max=65536)), required=True,
                        validate=validate.Length(min=1, max=10_000))


class CompletionSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(TERMINAL))
    final_metrics = Metrics(load_default=dict)
    best_checkpoint_path = path_field()
    last_checkpoint_path = path_field()
    error_message = fields.String(validate=validate.Length(max=65536), allow_none=True)


class ImageResultSchema(Schema):
    image_path = fields.String(required=True, validate=validate.Length(min=1, max=1024))
    image_name = fields.String(validate=validate.Length(max=512), allow_none=True)
    true_label_id = fields.Integer(strict=True, validate=validate.Range(min=0),
                                   allow_none=True)
    predicted_label_id = fields.Integer(strict=True, validate=validate.Range(min=0),
                                        allow_none=True)
    confidence = fields.Float(validate=validate.Range(min=0, max=1), allow_none=True)
    is_correct = fields.Boolean(allow_none=True)
    detections = fields.List(fields.Dict(), allow_none=True,
                             validate=validate.Length(max=1000))


class ValidationCallbackSchema(Schema):
    job_id = fields.Integer(required=True, strict=True)
    epoch = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    task_type = fields.String(required=True, validate=validate.OneOf(TASK_TYPES))
    primary_metric_name = fields.String(validate=validate.Length(min=1, max=MLFLOW_KEY_MAX),
                                        allow_none=True)
    primary_metric_value = Number(allow_none=True)
    overall_loss = Number(allow_none=True)
    metrics = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=250)),
                          load_default=dict, validate=validate.Length(max=MAX_METRICS))
    class_names = fields.List(fields.String(validate=validate.Length(max=250)),
                              load_default=list, validate=validate.Length(max=10_000))
    visualization_urls = fields.Dict(keys=fields.String(validate=validate.Length(max=100)),
                                     values=fields.String(validate=validate.Length(max=2048)),
                                     load_default=dict, validate=validate.Length(max=100))
    confusion_matrix = fields.List(fields.List(Number()), allow_none=True)
    image_results = fields.List(fields.Nested(ImageResultSchema), load_default=list,
                                validate=validate.Length(max=100_000))

    @validates_schema
    def _matrix_is_square(self, data: dict, **kwargs: Any) -> None:
        matrix = data.get("confusion_matrix")
        if not matrix:
            return
        size = len(matrix)
        if any(len(row) != size for row in matrix):
            raise ValidationError("must be a square matrix", "confusion_matrix")
        names = data.get("class_names")
        if names and size not in (len(names), len(names) + 1):
            raise ValidationError(
                f"has {size} rows but class_names has {len(names)} entries "
                "(expected n, or n + 1 with a background row)", "confusion_matrix")


class AcceptedSchema(Schema):
    event_id = fields.Integer()
    job_id = fields.Integer()
    kind = fields.String()
    job_status = fields.String()
    stop_requested = fields.Boolean()
    upload_id = fields.String()
    s3_uri = fields.String()


class EventSchema(Schema):
    event_id = fields.Integer(attribute="id")
    job_id = fields.Integer()
    kind = fields.Enum(EventKind, by_value=True)
    state = fields.Enum(EventState, by_value=True)
    attempts = fields.Integer()
    last_error = fields.String()
    accepted_ms = fields.Integer()
    payload = fields.Dict()


class LogLineSchema(Schema):
    id = fields.Integer()
    event_id = fields.Integer()
    log_type = fields.String()
    line = fields.String()
    created_ms = fields.Integer()


class ImageFilterArgsSchema(PageArgsSchema):
    true_label_id = fields.Integer(validate=validate.Range(min=0))
    predicted_label_id = fields.Integer(validate=validate.Range(min=0))
    is_correct = fields.Boolean()


class ValidationResultSchema(Schema):
    job_id = fields.Integer()
    epoch = fields.Integer()
    event_id = fields.Integer()
    task_type = fields.String()
    primary_metric_name = fields.String()
    primary_metric_value = fields.Raw()
    overall_loss = fields.Raw()
    metrics = fields.Dict()
    class_names = fields.List(fields.String())
    visualization_urls = fields.Dict()
    visualization_download_urls = fields.Dict()
    confusion_matrix = fields.Raw()
    image_count = fields.Integer()
    created_at = fields.DateTime()


class ImageResultOutSchema(Schema):
    image_path = fields.String()
    image_name = fields.String()
    true_label_id = fields.Integer()
    predicted_label_id = fields.Integer()
    confidence = fields.Float()
    is_correct = fields.Boolean()
    detections = fields.Raw()


FILENAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                           error="must be a plain file name: letters, digits, '.', '_', '-'")
SHA256 = validate.Regexp(r"^[0-9a-f]{64}$", error="must be a lowercase hex SHA-256")
CHECKPOINT_TYPES = ("best", "last", "epoch")


class UploadRequestSchema(Schema):
    filename = fields.String(required=True, validate=FILENAME)
    size = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    sha256 = fields.String(validate=SHA256, allow_none=True)
    content_type = fields.String(load_default="application/octet-stream",
                                 validate=validate.Regexp(r"^[\w.+-]+/[\w.+-]+$",
                                                          error="must be a MIME type"))


class CheckpointUploadRequestSchema(UploadRequestSchema):
    checkpoint_type = fields.String(required=True, validate=validate.OneOf(CHECKPOINT_TYPES))
    epoch = fields.Integer(strict=True, validate=validate.Range(min=0), allow_none=True)

    @validates_schema
    def _epoch_checkpoints_name_their_epoch(self, data: dict, **kwargs: Any) -> None:
        if data.get("checkpoint_type") == "epoch" and data.get("epoch") is None:
            raise ValidationError("is required for an 'epoch' checkpoint", "epoch")


class ArtifactUploadRequestSchema(UploadRequestSchema):
    kind = fields.String(required=True, validate=validate.Regexp(
        r"^[a-z][a-z0-9_]{0,31}$", error="must be a short lowercase name"))


class PartSchema(Schema):
    part_number = fields.Integer(required=True, strict=True,
                                 validate=validate.Range(min=1, max=10_000))
    etag = fields.String(required=True, validate=validate.Length(min=1, max=128))


class UploadCompleteSchema(Schema):
    upload_id = fields.String(required=True, validate=validate.Length(min=1, max=32))
    sha256 = fields.String(required=True, validate=SHA256)
    parts = fields.List(fields.Nested(PartSchema), validate=validate.Length(min=1, max=10_000))
    metrics = Metrics()


class UploadSchema(Schema):
    upload_id = fields.String()
    purpose = fields.Enum(UploadPurpose, by_value=True)
    checkpoint_type = fields.String()
    kind = fields.String()
    epoch = fields.Integer()
    filename = fields.String()
    content_type = fields.String()
    s3_uri = fields.String()
    size = fields.Integer()
    sha256 = fields.String()
    etag = fields.String()
    status = fields.Enum(UploadStatus, by_value=True)
    reason = fields.String()
    metrics = fields.Dict()
    created_at = fields.DateTime()
    verified_at = fields.DateTime()
    download_url = fields.String()
