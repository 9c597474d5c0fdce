"""HTTP to the platform: one `requests.Session`, a timeout on every call, errors translated.

The session's adapter retries what is cheap and safe to retry at once (connection errors
before anything was sent, and 500/502/504 on GET/POST, whose bodies are bytes) a couple of
times with a short backoff, as MLflow's `request_utils` does. 408, 429 and 503 come back to
the caller unretried, so that the sender and `call()` can honour `Retry-After` and keep
their own (longer, bounded) schedule. Presigned object-store PUTs go through the same
session without the platform's `Authorization` header.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from trainer_sdk.errors import APIError, TransportError

log = logging.getLogger("trainer_sdk")

#: (connect, read) seconds for platform calls
DEFAULT_TIMEOUT = (5.0, 30.0)
#: Retry-After values above this are capped (a misconfigured proxy must not park us for hours)
MAX_RETRY_AFTER = 600.0
_QUERY = re.compile(r"\?[^\s'\")]*")


def make_session(pool_size: int = 16) -> requests.Session:
    retry = Retry(
        total=3, connect=2, read=1, status=2, other=0,
        status_forcelist=(500, 502, 504),
        allowed_methods=frozenset({"GET", "POST"}),  # PUT bodies may be files: retried by us
        backoff_factor=0.1, backoff_max=2.0,
        respect_retry_after_header=False, raise_on_status=False, redirect=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=pool_size, pool_maxsize=pool_size)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with ±25 % jitter: base, 2·base, 4·base… capped at `cap`."""
    delay = min(cap, base * (2 ** max(0, attempt - 1)))
    return delay * random.uniform(0.75, 1.25)


def retry_delay(error: APIError | TransportError, attempt: int, base: float,
                cap: float) -> float | None:
    """The one retry rule of every loop in the SDK: seconds to wait before trying again
    after `error` (the `attempt`-th failure), or None when trying again cannot help (a
    refusal). The server's Retry-After wins over backoff; either is capped."""
    if isinstance(error, APIError) and not error.transient:
        return None
    delay = error.retry_after if isinstance(error, APIError) else None
    if delay is None:
        delay = backoff_delay(attempt, base, cap)
    return min(delay, MAX_RETRY_AFTER)


class Transport:
    """Authenticated JSON calls to one job's callback API, plus raw PUTs for uploads."""

    def __init__(self, callback_url: str, token: str, *, timeout=DEFAULT_TIMEOUT,
                 user_agent: str = "trainer-sdk") -> None:
        self.base_url = callback_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self.session = make_session()
        self.session.headers["User-Agent"] = user_agent
        self._closed = threading.Event()

    def __repr__(self) -> str:  # never shows the token
        return f"<Transport {self.base_url}>"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def post(self, path: str, body: Any, *, idempotency_key: str | None = None,
             timeout=None) -> dict:
        """One POST (plus the adapter's quick retries). Returns the JSON body of a 2xx;
        raises `APIError` for any other status and `TransportError` for no answer."""
        headers = {"Authorization": f"Bearer {self._token}",
                   "Content-Type": "application/json"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        data = json.dumps(body, allow_nan=True, separators=(",", ":")).encode()
        try:
            response = self.session.post(self.url(path), data=data, headers=headers,
                                         timeout=timeout or self.timeout)
        except requests.RequestException as exc:
            raise TransportError(f"POST {path}: {_describe(exc)}",
                                 request=getattr(exc, "request", None)) from exc
        if not 200 <= response.status_code < 300:
            raise APIError.from_response(response)
        try:
            answer = response.json()
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {"body": answer}

    def get(self, path: str, *, timeout=None) -> dict:
        """One authenticated GET; returns the JSON body, raises like `post`."""
        try:
            response = self.session.get(self.url(path), timeout=timeout or self.timeout,
                                        headers={"Authorization": f"Bearer {self._token}"})
        except requests.RequestException as exc:
            raise TransportError(f"GET {path}: {_describe(exc)}",
                                 request=getattr(exc, "request", None)) from exc
        if not 200 <= response.status_code < 300:
            raise APIError.from_response(response)
        return response.json()

    def call(self, path: str, body: Any, *, idempotency_key: str, deadline: float,
             base_delay: float = 0.5, max_delay: float = 15.0) -> dict:
        """POST until it gets a 2xx or `deadline` (monotonic) passes. Transient answers
        (408, 429, 5xx) and transport errors are retried with backoff, honouring
        Retry-After; anything else raises at once. The idempotency key is the same for
        every attempt, so a retry after a lost answer stores nothing twice."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.post(path, body, idempotency_key=idempotency_key)
            except (APIError, TransportError) as error:
                delay = retry_delay(error, attempt, base_delay, max_delay)
                remaining = deadline - time.monotonic()
                if (delay is None or self._closed.is_set() or remaining <= 0
                        or delay > remaining):
                    raise
                log.info("POST %s failed (%s); retry %d in %.1f s", path, error, attempt,
                         delay)
            time.sleep(delay)

    def put(self, url: str, data: Any, headers: dict[str, str], *, timeout=None
            ) -> requests.Response:
        """A PUT to a presigned URL (no platform credentials). Raises like `post`."""
        try:
            response = self.session.put(url, data=data, headers=headers,
                                        timeout=timeout or (self.timeout[0], 300.0))
        except requests.RequestException as exc:
            raise TransportError(f"PUT {_strip_query(url)}: {_describe(exc)}",
                                 request=getattr(exc, "request", None)) from exc
        if not 200 <= response.status_code < 300:
            raise APIError.from_response(response)
        return response

    def close(self) -> None:
        self._closed.set()
        self.session.close()


def _strip_query(url: str) -> str:
    """Presigned URLs carry a signature in the query: keep it out of logs."""
    return url.split("?", 1)[0]


def _describe(exc: requests.RequestException) -> str:
    text = _QUERY.sub("?…", str(exc))  # urllib3 messages quote the URL, signature and all
    if len(text) > 300:
        text = text[:300] + "…"
    return f"{type(exc).__name__}: {text}"
