"""Short Redis locks that keep two workers from projecting the same job at once.

Not needed for correctness (projections are idempotent) but for efficiency: the second
worker waits, then finds the events that piled up meanwhile and writes them in one batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import redis
from flask import current_app

from platform_app.services.errors import SinkUnavailable

LOCK_TTL_S = 120  # a worker that dies holding the lock blocks the job this long at most
WAIT_S = 60


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


@contextmanager
def job_lock(purpose: str, job_id: int) -> Iterator[None]:
    client = _client(current_app.config["REDIS_URL"])
    lock = client.lock(f"platform:lock:{purpose}:{job_id}", timeout=LOCK_TTL_S,
                       blocking_timeout=WAIT_S)
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        raise SinkUnavailable(f"Redis unavailable for the job lock: {exc}") from exc
    if not acquired:
        raise SinkUnavailable(f"job {job_id} is still locked by another worker")
    try:
        yield
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired while we worked: another worker may already hold it
