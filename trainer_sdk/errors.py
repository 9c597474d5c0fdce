"""The SDK's exceptions, shaped like the platform's error body and like requests' own.

- `SDKError`: the base of everything the SDK raises.
- `APIError`: the platform answered with an error. Built from its one error body
  `{"error_code", "message", "details"}`; a page that is not that body (a proxy's HTML 502)
  still gives an `APIError` with the HTTP status and the start of the text.
- `TransportError`: no usable answer (connection refused, timeout, TLS); raised `from` the
  requests exception, which stays reachable as `__cause__`.

Training code rarely sees these: the background sender logs and retries. `send_validation`
raises `APIError` when the platform refuses the data (a caller's bug); the uploads raise only
with `raise_errors=True`. Bad arguments raise `ValueError`/`TypeError` instead.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Any

#: statuses worth retrying: the request may succeed later as it is
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class SDKError(Exception):
    """Base class of the SDK's errors."""


class TransportError(SDKError):
    """The request got no usable answer: connection refused or reset, timeout, TLS."""

    def __init__(self, message: str, *, request: Any = None) -> None:
        super().__init__(message)
        self.request = request


class APIError(SDKError):
    """The platform (or something in front of it) answered with a non-2xx status."""

    def __init__(self, status: int, error_code: str, message: str,
                 details: dict | None = None, *, response: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {error_code}: {message}")
        self.status = status
        self.error_code = error_code
        self.message = message
        self.details = details or {}
        self.response = response
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later (408, 429, 5xx gateway errors)."""
        return self.status in TRANSIENT_STATUSES

    @classmethod
    def from_response(cls, response: Any) -> APIError:
        """Parse the platform's error body; fall back to status and text for other pages."""
        status = int(response.status_code)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error_code"), str):
            details = body.get("details")
            return cls(status, body["error_code"], str(body.get("message") or ""),
                       details if isinstance(details, dict) else {"details": details},
                       response=response, retry_after=retry_after)
        text = (response.text or "").strip()
        reason = getattr(response, "reason", None) or "error"
        return cls(status, f"HTTP_{status}", text[:300] or str(reason), {},
                   response=response, retry_after=retry_after)

    def __reduce__(self):  # picklable despite the keyword-only arguments
        return (_rebuild_api_error, (self.status, self.error_code, self.message, self.details))


def _rebuild_api_error(status: int, error_code: str, message: str, details: dict) -> APIError:
    return APIError(status, error_code, message, details)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None
