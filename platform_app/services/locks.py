"""Short Redis locks that keep two workers from projecting the same job at once.

Not needed for correctness (projections are idempotent) but for efficiency: while one worker
writes a job's batch, the events that pile up go out in its next round instead of in
parallel small batches. A worker that dies holding a lock blocks that job for at most the
lock's TTL; the holder renews it after every round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from flask import current_app

from platform_app.services.errors import SinkUnavailable
from platform_app.services.redis_client import redis_client

WAIT_S = 2.0  # a second task waits for the holder to finish, then takes what came meanwhile
POLL_S = 0.01  # redis-py polls a held lock (0.1 s by default: a tenth of a second per hand-off)


class JobBusy(Exception):
    """Another worker is projecting this job: try again shortly (not a failure)."""


@contextmanager
def job_lock(purpose: str, job_id: int) -> Iterator[Callable[[], None]]:
    """Hold the job's lock; yields `renew()`, to call between rounds of work."""
    client = redis_client(current_app.config["REDIS_URL"])
    lock = client.lock(f"platform:lock:{purpose}:{job_id}",
                       timeout=current_app.config["PROJECTION_LOCK_TTL_SECONDS"],
                       blocking_timeout=WAIT_S, sleep=POLL_S)
    try:
        acquired = lock.acquire()
    except redis.RedisError as exc:
        raise SinkUnavailable(f"Redis unavailable for the job lock: {exc}") from exc
    if not acquired:
        raise JobBusy(f"job {job_id} is being projected by another worker")

    def renew() -> None:
        try:
            lock.reacquire()
        except redis.exceptions.LockError:
            raise JobBusy(f"job {job_id}: the lock expired mid-projection") from None

    try:
        yield renew
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            pass  # expired while we worked: another worker may already hold it
