"""Task metrics from Celery's signals, and the worker's own /metrics port.

With the prefork pool the tasks run in child processes, so they count in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, one directory per worker host) and the main process serves the
sum on WORKER_METRICS_PORT.
"""

from __future__ import annotations

import logging
import os
import time

from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_process_shutdown,
    worker_ready,
)
from prometheus_client import start_http_server

from platform_app.metrics import (
    TASK_DURATION,
    TASK_FAILURES,
    TASK_RETRIES,
    archive_dead_process,
    clear_directory,
    process_registry,
)

log = logging.getLogger(__name__)
_started: dict[str, float] = {}


@task_prerun.connect
def _start(task_id: str, **_: object) -> None:
    _started[task_id] = time.perf_counter()


@task_postrun.connect
def _finish(task_id: str, task, **_: object) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        TASK_DURATION.labels(task.name).observe(time.perf_counter() - started)


@task_retry.connect
def _retried(sender, **_: object) -> None:
    TASK_RETRIES.labels(sender.name).inc()


@task_failure.connect
def _failed(sender, **_: object) -> None:
    TASK_FAILURES.labels(sender.name).inc()


def serve_metrics(port: int) -> None:
    """Called once in the worker's main process."""
    if not port:
        return
    clear_directory()
    start_http_server(port, addr=os.environ.get("WORKER_METRICS_ADDR", "127.0.0.1"),
                      registry=process_registry())
    log.info("worker metrics on port %d", port)


@worker_ready.connect
def _ready(sender, **_: object) -> None:
    from workers import flask_app  # the module is imported while workers/__init__ runs
    serve_metrics(flask_app.config["WORKER_METRICS_PORT"])


@worker_process_shutdown.connect
def _child_exit(pid: int | None = None, **_: object) -> None:
    archive_dead_process(pid or os.getpid())
