"""Prometheus metrics: every metric object is defined here and nowhere else.

Under gunicorn and Celery's prefork pool, several processes count; prometheus_client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR) sums their files. Its known flaw is that the
files of dead processes pile up (one set per pid, forever): `archive_dead_process` folds a
dead process's counters and histograms into one archive file and deletes its own, so the
directory stays as small as the number of live processes.

What the database knows (outbox backlog, per-job training gauges) is read at scrape time,
so it is right whichever process answers, and a finished job's series simply stop existing.
"""

from __future__ import annotations

import fcntl
import glob
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from platform_app.extensions import db
from platform_app.models import Event, EventState, Job, JobStatus

HTTP_LATENCY = Histogram(
    "platform_http_request_duration_seconds", "API request latency",
    ["endpoint", "method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
CALLBACKS_ACCEPTED = Counter(
    "platform_callbacks_accepted_total", "Callbacks accepted (replays not counted)", ["kind"])
TASK_DURATION = Histogram(
    "platform_task_duration_seconds", "Celery task run time", ["task"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TASK_RETRIES = Counter("platform_task_retries_total", "Celery task retries", ["task"])
TASK_FAILURES = Counter("platform_task_failures_total",
                        "Celery tasks that raised, and events failed for good", ["task"])
SINK_LATENCY = Histogram(
    "platform_sink_request_duration_seconds", "Calls to MLflow and the object store",
    ["sink", "operation"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SINK_ERRORS = Counter("platform_sink_errors_total", "Failed calls to MLflow and the object store",
                      ["sink", "operation"])

LOSS_KEYS = ("loss", "train/loss", "val/loss")
PRIMARY_KEYS = {"classification": ("metrics/accuracy_top1", "accuracy")}
PRIMARY_DEFAULT = ("metrics/mAP50-95(B)", "metrics/mAP50-95(M)", "metrics/mAP50-95(P)",
                   "metrics/mAP50-95(OBB)", "mAP50-95")


@contextmanager
def sink_call(sink: str, operation: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except Exception:
        SINK_ERRORS.labels(sink, operation).inc()
        raise
    finally:
        SINK_LATENCY.labels(sink, operation).observe(time.perf_counter() - started)


def job_loss(metrics: dict) -> float | None:
    """One loss per job for dashboards: the sum of the train/*loss terms Ultralytics
    reports, or a plain `loss`."""
    terms = [v for k, v in metrics.items()
             if k.startswith("train/") and k.endswith("loss") and isinstance(v, (int, float))]
    if terms:
        return float(sum(terms))
    return next((float(metrics[k]) for k in LOSS_KEYS
                 if isinstance(metrics.get(k), (int, float))), None)


def job_primary_metric(task_type: str, metrics: dict) -> float | None:
    for key in PRIMARY_KEYS.get(task_type, PRIMARY_DEFAULT):
        if isinstance(metrics.get(key), (int, float)):
            return float(metrics[key])
    return None


class DatabaseCollector:
    """Gauges read from the DB at scrape time."""

    def collect(self):
        pending, oldest_ms = db.session.execute(
            sa.select(sa.func.count(), sa.func.min(Event.accepted_ms))
            .where(Event.state == EventState.PENDING)).one()
        failed = db.session.scalar(sa.select(sa.func.count()).select_from(Event)
                                   .where(Event.state == EventState.FAILED))
        yield GaugeMetricFamily("platform_outbox_pending_events",
                                "Accepted events not yet projected", value=pending)
        yield GaugeMetricFamily(
            "platform_outbox_oldest_pending_age_seconds", "Age of the oldest pending event",
            value=(time.time() * 1000 - oldest_ms) / 1000 if oldest_ms else 0)
        yield GaugeMetricFamily("platform_outbox_failed_events",
                                "Events that failed for good", value=failed)
        epoch = GaugeMetricFamily("platform_job_current_epoch", "Current epoch", labels=["job_id"])
        loss = GaugeMetricFamily("platform_job_loss", "Latest training loss", labels=["job_id"])
        primary = GaugeMetricFamily("platform_job_primary_metric",
                                    "Latest primary metric (mAP50-95 or top-1 accuracy)",
                                    labels=["job_id"])
        live = db.session.execute(sa.select(Job.id, Job.task_type, Job.current_epoch,
                                            Job.latest_metrics)
                                  .where(Job.status.in_((JobStatus.RUNNING, JobStatus.STOPPING))))
        for job_id, task_type, current_epoch, metrics in live:
            label = [str(job_id)]
            if current_epoch is not None:
                epoch.add_metric(label, current_epoch)
            for family, value in ((loss, job_loss(metrics or {})),
                                  (primary, job_primary_metric(task_type, metrics or {}))):
                if value is not None:
                    family.add_metric(label, value)
        yield from (epoch, loss, primary)


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's when running multiprocess."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return registry


def init_app(app: Flask) -> None:
    app.before_request(_start_timer)
    app.after_request(_observe)

    @app.get("/metrics")
    def metrics() -> Response:
        registry = CollectorRegistry()
        for collector in (_ProcessMetrics(), DatabaseCollector()):
            registry.register(collector)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class _ProcessMetrics:
    def collect(self):
        yield from process_registry().collect()


def _start_timer() -> None:
    g.request_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("request_started", None)
    if started is not None and request.endpoint != "metrics":
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        HTTP_LATENCY.labels(endpoint, request.method, str(response.status_code)).observe(
            time.perf_counter() - started)
    return response


def archive_dead_process(pid: int, directory: str | None = None) -> None:
    """Fold a dead process's counter and histogram files into `*_archive.db` (values
    summed), delete them, and drop its live gauges. Safe against concurrent callers."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return
    mark_process_dead(pid, directory)
    with open(os.path.join(directory, ".archive.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for kind in ("counter", "histogram"):
            path = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(path):
                continue
            archive = MmapedDict(os.path.join(directory, f"{kind}_archive.db"))
            try:
                totals = {key: value for key, value, _ in archive.read_all_values()}
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(path):
                    archive.write_value(key, totals.get(key, 0.0) + value, timestamp)
            finally:
                archive.close()
            os.remove(path)


def clear_directory(directory: str | None = None) -> None:
    """At server start: values from an earlier run would be summed into this one."""
    directory = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        os.makedirs(directory, exist_ok=True)
        for path in glob.glob(os.path.join(directory, "*.db")):
            os.remove(path)
