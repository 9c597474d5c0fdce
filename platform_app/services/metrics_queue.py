"""One queued metrics task per job.

A metrics task projects every pending progress/completion event of its job, so while one is
queued for the job a callback needs none. A Redis flag says so: set if absent by the callback
that queues the task (in the same pipeline as its live publish, so it costs no round trip),
cleared by the task when it takes the job up — or, while MLflow is down, set by the task
to the end of a hold instead (`hold`). Under load the queue then holds one message per
job instead of one per callback, and the workers do not spend their CPU on tasks that find
their event already projected.

The flag holds the time it was set and the task records how long that was when it takes the
job up: how long the job's callbacks wait for a worker, which is the backpressure signal
(services/backpressure.py). The flag expires, so that a task lost with its broker cannot
silence a job for long (the sweeper re-announces its events meanwhile).
"""

from __future__ import annotations

import redis
from flask import current_app

from platform_app.joblog import job_logger
from platform_app.models import now_ms
from platform_app.services.redis_client import redis_client

FLAG_TTL_S = 30
TASK = "metrics.project_job"
FLAG_PREFIX = "platform:queued:metrics_task:"
WAIT_PREFIX = "platform:metrics_wait_ms:"
KEY_PATTERNS = (FLAG_PREFIX + "*", WAIT_PREFIX + "*")  # every key this module writes


def queued_flag(job_id: int) -> str:
    return f"{FLAG_PREFIX}{job_id}"


def last_wait_key(job_id: int) -> str:
    return f"{WAIT_PREFIX}{job_id}"


def _ttl() -> int:
    """Long enough to see a job fall behind by the backpressure threshold."""
    return max(FLAG_TTL_S, int(2 * current_app.config["BACKPRESSURE_LAG_SECONDS"]) + 1)


def ask(pipe: redis.client.Pipeline, job_id: int, now: int) -> None:
    """Queue two commands on `pipe`: set the flag unless set, and read the last wait."""
    pipe.set(queued_flag(job_id), now, nx=True, get=True, ex=_ttl())
    pipe.get(last_wait_key(job_id))


def answer(replies: list, now: int) -> tuple[bool, float]:
    """From the replies to `ask`: whether this callback must queue the task, and how long
    (seconds) the job's callbacks wait for a worker — now, or at the last take-up."""
    queued_at, last_wait_ms = replies
    waiting_ms = 0 if queued_at is None else now - int(queued_at)
    return queued_at is None, max(waiting_ms, int(last_wait_ms or 0)) / 1000


def take_up(job_id: int) -> None:
    """A metrics task clears its job's flag once it holds the job's lock, just before it reads
    the pending events, so that a callback committed after that read queues a task of its
    own (not before: a task that only bounces off the lock would hide how long the job's
    callbacks have waited), and records that wait."""
    try:
        client = redis_client(current_app.config["REDIS_URL"])
        queued_at = client.getdel(queued_flag(job_id))
        if queued_at is not None:
            waited_ms = max(0, now_ms() - int(queued_at))  # a hold's flag lies in the future
            client.set(last_wait_key(job_id), waited_ms, ex=_ttl())
    except redis.RedisError as exc:  # the flag expires by itself
        job_logger(__name__, job_id).warning("queued-task flag not cleared: %s", exc)


def hold(job_id: int, hold_s: float) -> None:
    """While MLflow is down, a metrics task sets the job's flag until `hold_s` from now
    instead of taking the job up: the job's callbacks queue no task meanwhile (each would
    only find MLflow down again — with MLflow stopped in `make bench`'s half-load rounds the
    workers turned over ~45 such tasks a second, as fast as they could), and its time lies
    in the future, so the hold does not count as waiting: an outage is no reason to slow
    trainers down, their callbacks are stored. When it expires, the job's next callback
    queues a task, which holds again or probes MLflow."""
    hold_ms = max(1, int(hold_s * 1000))
    try:
        redis_client(current_app.config["REDIS_URL"]).set(
            queued_flag(job_id), now_ms() + hold_ms, px=hold_ms)
    except redis.RedisError as exc:  # then callbacks queue tasks as before
        job_logger(__name__, job_id).warning("metrics not held during the outage: %s", exc)
