"""One error shape for every non-2xx answer: `{"error_code", "message", "details"}`.

Views and services raise `APIError`; nobody builds error JSON by hand. The HTTP status comes
from one table keyed by error code, as MLflow's exceptions do.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from marshmallow import ValidationError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from platform_app.extensions import db

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[str, int] = {
    "INVALID_JSON": 400,
    "BAD_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "INVALID_TOKEN": 401,
    "TOKEN_EXPIRED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "JOB_NOT_FOUND": 404,
    "EVENT_NOT_FOUND": 404,
    "RESULT_NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "JOB_FINISHED": 409,
    "CONFLICT": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "VALIDATION_ERROR": 422,
    "IDEMPOTENCY_KEY_REUSED": 422,
    "RATE_LIMITED": 429,
    "INTERNAL_ERROR": 500,
    "DEPENDENCY_UNAVAILABLE": 503,
}

_CODE_BY_HTTP_STATUS = {
    400: "BAD_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
}


class APIError(Exception):
    """An error a client can act on. `details` names fields or ids involved."""

    def __init__(self, error_code: str, message: str, details: dict | None = None,
                 retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        self.details = details or {}
        self.status_code = STATUS_BY_CODE[error_code]
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, Any]:
        return {"error_code": self.error_code, "message": self.message, "details": self.details}

    @classmethod
    def not_found(cls, what: str, **ids: Any) -> APIError:
        code = f"{what.upper()}_NOT_FOUND"
        return cls(code if code in STATUS_BY_CODE else "NOT_FOUND", f"{what} not found", ids)

    @classmethod
    def validation(cls, field: str, message: str) -> APIError:
        return cls("VALIDATION_ERROR", "request body failed validation", {field: [message]})


def error_response(error: APIError, headers: dict | None = None):
    response = jsonify(error.to_dict())
    response.status_code = error.status_code
    if headers:
        response.headers.update(headers)
    if error.retry_after_s is not None:
        response.headers["Retry-After"] = str(error.retry_after_s)
    return response


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(APIError, error_response)
    app.register_error_handler(ValidationError, _handle_validation_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(OperationalError, _handle_database_unavailable)
    app.register_error_handler(Exception, _handle_unexpected)


def _handle_validation_error(err: ValidationError):
    return error_response(
        APIError("VALIDATION_ERROR", "request body failed validation", _messages(err.messages))
    )


def _messages(messages: Any) -> dict:
    return messages if isinstance(messages, dict) else {"_schema": messages}


def _handle_http_exception(err: HTTPException):
    """Routing errors and webargs' aborts (which carry the marshmallow messages in
    `err.data`) get the same body as everything else."""
    status = err.code or 500
    data = getattr(err, "data", None) or {}
    if status == 422 and "messages" in data:
        # webargs nests messages by location ("json"); the client only needs the fields
        messages = data["messages"]
        fields = messages.get("json", messages) if isinstance(messages, dict) else messages
        return error_response(
            APIError("VALIDATION_ERROR", "request body failed validation", _messages(fields))
        )
    if status == 400 and "messages" in data:
        return error_response(APIError("INVALID_JSON", "request body is not valid JSON"))
    code = _CODE_BY_HTTP_STATUS.get(status)
    if code is None:
        return _handle_unexpected(err)
    error = APIError(code, err.description or err.name)
    if status == 413:
        error.message = "request body is larger than the limit"
    return error_response(error, headers=dict(getattr(err, "headers", None) or {}))


def _handle_database_unavailable(err: OperationalError):
    log.error("database unavailable: %s", err.orig if err.orig is not None else err)
    db.session.rollback()
    return error_response(
        APIError("DEPENDENCY_UNAVAILABLE", "the database is unavailable; retry later")
    )


def _handle_unexpected(err: Exception):
    log.exception("unhandled error")
    db.session.rollback()
    return error_response(APIError("INTERNAL_ERROR", "internal server error"))
