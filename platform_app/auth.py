"""Who may call what: operators with the API key, trainers with their job's token.

Callback tokens are signed with itsdangerous (timestamped, salted per purpose), so checking
one costs an HMAC and no DB round trip — once per token and process; they carry the job id
they are scoped to.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache, wraps
from typing import TypeVar

from flask import current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from platform_app.errors import APIError

F = TypeVar("F", bound=Callable)
CALLBACK_SALT = "job-callback-token"
VIEW_SALT = "job-view-token"  # a view token can never pass as a callback token, nor back
TTL_SETTING = {CALLBACK_SALT: "CALLBACK_TOKEN_TTL_SECONDS", VIEW_SALT: "VIEW_TOKEN_TTL_SECONDS"}
TOKENS_REMEMBERED = 4096  # verified tokens per process: one per job reporting at a time


def _serializer(secret: str, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=salt)


def _issue(salt: str, job_id: int) -> tuple[str, datetime]:
    token = _serializer(current_app.config["SECRET_KEY"], salt).dumps({"job_id": job_id})
    ttl = current_app.config[TTL_SETTING[salt]]
    return token, datetime.now(UTC) + timedelta(seconds=ttl)


def _verify(salt: str, token: str, job_id: int) -> None:
    """Raise 401 for a forged or expired token and 403 for another job's."""
    try:
        token_job_id, signed_at = _signed_claims(current_app.config["SECRET_KEY"], salt, token)
    except BadSignature:
        raise APIError("INVALID_TOKEN", "the token is not valid") from None
    age = time.time() - signed_at
    if not 0 <= age <= current_app.config[TTL_SETTING[salt]]:
        raise APIError("TOKEN_EXPIRED", "the token has expired")
    if token_job_id != job_id:
        raise APIError("FORBIDDEN", "this token belongs to another job", {"job_id": job_id})


@lru_cache(maxsize=TOKENS_REMEMBERED)
def _signed_claims(secret: str, salt: str, token: str) -> tuple[object, float]:
    """The job id a token was signed for and when. A trainer sends the same token with every
    callback, so its signature is checked once per process (a forged one raises, and raising
    is not cached); its age is checked on every use."""
    claims, signed_at = _serializer(secret, salt).loads(token, return_timestamp=True)
    return (claims.get("job_id") if isinstance(claims, dict) else None), signed_at.timestamp()


def issue_callback_token(job_id: int) -> tuple[str, datetime]:
    return _issue(CALLBACK_SALT, job_id)


def verify_callback_token(token: str, job_id: int) -> None:
    _verify(CALLBACK_SALT, token, job_id)


def issue_view_token(job_id: int) -> tuple[str, datetime]:
    """Short-lived, read-only, one job: what a browser puts in a WebSocket URL."""
    return _issue(VIEW_SALT, job_id)


def verify_view_token(token: str, job_id: int) -> None:
    _verify(VIEW_SALT, token, job_id)


def _bearer_token() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError("UNAUTHENTICATED", "send the job token as 'Authorization: Bearer <token>'")
    return token.strip()


def require_job_token(view: F) -> F:
    """For trainer callbacks: the URL's job_id must match the token's."""

    @wraps(view)
    def wrapper(*args, job_id: int, **kwargs):
        verify_callback_token(_bearer_token(), job_id)
        return view(*args, job_id=job_id, **kwargs)

    return wrapper  # type: ignore[return-value]


def check_operator_key(key: str) -> None:
    if not key:
        raise APIError("UNAUTHENTICATED", "send the operator key in the X-API-Key header")
    expected = current_app.config["OPERATOR_API_KEY"]
    if not hmac.compare_digest(key.encode(), expected.encode()):
        raise APIError("UNAUTHENTICATED", "the operator key is not valid")


def require_operator(view: F) -> F:
    """For operator endpoints; a trainer's job token is not accepted here."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        check_operator_key(request.headers.get("X-API-Key", ""))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
