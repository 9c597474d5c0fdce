"""Backpressure: when MLflow falls behind, trainers are told to slow down (429 with
Retry-After) instead of the backlog growing without bound.

The signal is how long a job's callbacks wait for a worker to take them up, and it costs
the request path nothing extra: the Redis flag that says "a metrics task is queued for this
job" (services/metrics_queue.py) holds the time it was set, the worker that takes the job up records
how long that was, and the publish pipeline of every accepted callback reads both. When the
wait exceeds BACKPRESSURE_LAG_SECONDS the API process answers that job's next progress
callbacks with 429 — before parsing them, so a refused callback costs less than a trivial
request — and learns again from the next one it accepts. (The recorded wait matters: the
flag's own age restarts at every take-up, and alone it would let a job that waits seconds
every round through most of the time.)

The hold lasts as long as the job is behind beyond the threshold (at least
BACKPRESSURE_RETRY_AFTER_SECONDS, at most BACKPRESSURE_MAX_RETRY_AFTER_SECONDS), and each
429's Retry-After says what is left of it. A fixed one-second hold let every job through once
a second however far behind it was: under sustained overload the API kept accepting ~1.6×
what MLflow absorbed, the backlog grew without bound, and the accepting took the CPU
MLflow needed on the same cores (`make bench`, mlflow.metrics_per_s).

Nothing is dropped: the trainer SDK keeps the callback, waits as told and sends it again, in
order. Completion, logs, validation and uploads are never held back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import current_app

from platform_app.errors import APIError

F = TypeVar("F", bound=Callable)


class Backpressure:
    """One per API process: the jobs told to wait, and until when (monotonic seconds)."""

    def __init__(self, lag_s: float, min_hold_s: int, max_hold_s: int) -> None:
        self.lag_s = lag_s
        self.min_hold_s = min_hold_s
        self.max_hold_s = max(max_hold_s, min_hold_s)
        self._held_until: dict[int, float] = {}

    def observe(self, job_id: int, lag_s: float) -> None:
        """A callback of the job was accepted while its metrics had waited `lag_s`."""
        if self.lag_s and lag_s > self.lag_s:
            hold_s = min(max(math.ceil(lag_s - self.lag_s), self.min_hold_s), self.max_hold_s)
            self._held_until[job_id] = time.monotonic() + hold_s

    def check(self, job_id: int) -> None:
        until = self._held_until.get(job_id)
        if until is None:
            return
        left_s = until - time.monotonic()
        if left_s <= 0:
            self._held_until.pop(job_id, None)
            return
        retry_after_s = math.ceil(left_s)
        raise APIError("RATE_LIMITED",
                       f"job {job_id}'s metrics are more than {self.lag_s:g} s behind in "
                       f"MLflow; send this again in {retry_after_s} s",
                       {"job_id": job_id, "retry_after": retry_after_s},
                       retry_after_s=retry_after_s)


def hold_back_when_behind(view: F) -> F:
    """For progress callbacks: refuse early while the job is held back."""

    @wraps(view)
    def wrapper(*args, job_id: int, **kwargs):
        current_app.extensions["backpressure"].check(job_id)
        return view(*args, job_id=job_id, **kwargs)

    return wrapper  # type: ignore[return-value]
