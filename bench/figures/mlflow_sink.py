"""How close the MLflow projection gets to what MLflow itself can take.

`mlflow_ceiling.metrics_per_s`: one client calling `log_batch` with 1000 metrics in a loop
against the same MLflow server (no platform involved) — the most MLflow absorbs here.

`mlflow.metrics_per_s`: metrics landing in MLflow per second while callbacks keep arriving
faster than the projection takes them — offered at `overload_factor` × the ceiling (in
20-metric callbacks), or as fast as the API accepts them when that is less — counted in
MLflow's own database over a steady window after a warm-up.
`mlflow.requests_per_callback`: MLflow HTTP requests (its access log) per callback projected
(the platform DB) in the same window: the coalescing at work.

`mlflow.drain_metrics_per_s` (informational): the same count while the workers drain a
backlog built up with them paused, nothing else arriving. On 2 shared cores the API, the
workers, PostgreSQL and MLflow compete for CPU under load; the drain shows what the
projection does with the machine to itself, which tells a CPU share problem from a design one.

Rounds interleave a ceiling run (queue empty, workers idle) with the platform's runs; the
backlog is discarded after each so the next ceiling run has MLflow to itself.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.context import BenchContext
from bench.figures.throughput import accept_saturation
from bench.load import WrkRun, run_wrk
from bench.platform_client import PROGRESS_PATH, experiment_name, prime_runs
from bench.progress import log
from bench.results import FigureSpec, Target, at_most, ratio_at_least
from bench.settings import BenchSettings

NAMES = frozenset({"mlflow", "ceiling"})
CEILING_BATCH = 1000  # MLflow's log_batch limit
CEILING_KEYS = 20
DRAIN_WARMUP_S = 1.0
DRAIN_MIN_LEFT = 0.2  # stop measuring the drain when this share of the backlog is left
_REQUEST_LINE = re.compile(rb'"(?:GET|POST|PUT|PATCH|DELETE) /(?:api|ajax-api)/[^"]*" \d{3}')


def needs(selected: frozenset[str]) -> set[str]:
    return {"mlflow", "workers"} if "mlflow" in selected else {"mlflow"}


def figures(settings: BenchSettings) -> list[FigureSpec]:
    return [
        FigureSpec("mlflow_ceiling.metrics_per_s", "metrics/s",
                   f"raw log_batch of {CEILING_BATCH} metrics, one client, same MLflow server",
                   "the ceiling"),
        FigureSpec("mlflow.metrics_per_s", "metrics/s",
                   "metrics landing in MLflow through the platform under sustained overload",
                   "mlflow_ceiling.metrics_per_s"),
        FigureSpec("mlflow.requests_per_callback", "req/callback",
                   "MLflow requests per projected callback, same window"),
        FigureSpec("mlflow.drain_metrics_per_s", "metrics/s",
                   "the same while draining a backlog, no load arriving (informational)",
                   "mlflow_ceiling.metrics_per_s"),
    ]


def targets(settings: BenchSettings) -> list[Target]:
    return [ratio_at_least("mlflow.metrics_per_s", "mlflow_ceiling.metrics_per_s", 0.8),
            at_most("mlflow.requests_per_callback", 0.1)]


def measure_ceiling(ctx: BenchContext, seconds: float) -> float:
    """metrics/s of a tight `log_batch` loop from this process to the stack's MLflow."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ctx.stack.mlflow_uri)
    experiment = client.create_experiment(experiment_name("ceiling"))
    run_id = client.create_run(experiment).info.run_id
    steps = CEILING_BATCH // CEILING_KEYS
    started = time.monotonic()
    deadline, calls = started + seconds, 0
    while time.monotonic() < deadline:
        now_ms = int(time.time() * 1000)
        metrics = [Metric(f"ceiling/m{k}", (calls * steps + s) * 0.001 + k, now_ms,
                          calls * steps + s)
                   for s in range(steps) for k in range(CEILING_KEYS)]
        client.log_batch(run_id, metrics=metrics)
        calls += 1
    return calls * CEILING_BATCH / (time.monotonic() - started)


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic
    metrics: int  # metric rows in MLflow
    projected: int  # callbacks projected by the platform
    pending: int  # callbacks waiting
    log_offset: int  # size of MLflow's access log


@dataclass(frozen=True)
class Window:
    metrics_per_s: float
    callbacks_per_s: float
    requests_per_callback: float | None
    mlflow_requests_per_s: float


class SinkProbe:
    """Counters read at the edges of a window."""

    def __init__(self, ctx: BenchContext) -> None:
        self.mlflow_db = ctx.stack.mlflow_db_url
        self.platform_db = ctx.stack.platform_db_url
        self.access_log: Path = ctx.stack.log("mlflow")

    def read(self) -> Sample:
        with psycopg.connect(self.mlflow_db) as conn:
            metrics = conn.execute("SELECT count(*) FROM metrics").fetchone()[0]
        with psycopg.connect(self.platform_db) as conn:
            projected, pending = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'projected'), "
                "count(*) FILTER (WHERE state = 'pending') FROM events "
                "WHERE kind IN ('progress', 'completion')").fetchone()
        return Sample(time.monotonic(), metrics, projected, pending,
                      self.access_log.stat().st_size)

    def window(self, first: Sample, last: Sample) -> Window:
        with open(self.access_log, "rb") as fh:
            fh.seek(first.log_offset)
            requests = len(_REQUEST_LINE.findall(fh.read(last.log_offset - first.log_offset)))
        seconds = last.at - first.at
        callbacks = last.projected - first.projected
        return Window((last.metrics - first.metrics) / seconds, callbacks / seconds,
                      requests / callbacks if callbacks else None, requests / seconds)


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    settings, stack = ctx.settings, ctx.stack
    platform = "mlflow" in selected
    stack.start_mlflow()
    if platform:
        api_capacity = accept_saturation(ctx)
        stack.start_workers()
        prime_runs(stack.api_url, ctx.operator, ctx.jobs)
    stack.discard_backlog()
    ceilings: list[float] = []
    overload: list[Window] = []
    drain: list[Window] = []
    notes: list[str] = []
    for round_no in range(settings.rounds):
        ceiling = measure_ceiling(ctx, settings.ceiling_seconds)
        ceilings.append(ceiling)
        log.info(f"round {round_no + 1}/{settings.rounds} MLflow ceiling: "
                 f"{ceiling:,.0f} metrics/s")
        if not platform:
            continue
        rate = settings.overload_factor * ceiling / settings.metrics_per_callback
        window, note = _overload_round(ctx, rate if rate < api_capacity else None)
        stack.discard_backlog()
        overload.append(window)
        notes.append(note)
        log.info("round %d/%d overload: %s", round_no + 1, settings.rounds, note)
        window, note = _drain_round(ctx)
        stack.discard_backlog()
        drain.append(window)
        log.info("round %d/%d drain: %s", round_no + 1, settings.rounds, note)
    ctx.results.measured("mlflow_ceiling.metrics_per_s", ceilings,
                         note=f"{CEILING_BATCH} metrics per log_batch, one thread")
    if platform:
        ctx.results.measured("mlflow.metrics_per_s", [w.metrics_per_s for w in overload],
                             note=notes[len(notes) // 2])
        ctx.results.measured("mlflow.requests_per_callback",
                             [w.requests_per_callback for w in overload
                              if w.requests_per_callback is not None],
                             note="MLflow access-log requests ÷ callbacks projected")
        ctx.results.measured("mlflow.drain_metrics_per_s", [w.metrics_per_s for w in drain],
                             note=_describe(drain[len(drain) // 2]))


def _describe(window: Window) -> str:
    text = (f"{window.metrics_per_s:,.0f} metrics/s landed, {window.callbacks_per_s:,.0f} "
            f"callbacks/s projected in {window.mlflow_requests_per_s:,.1f} MLflow req/s")
    if window.requests_per_callback is not None:
        text += f" ({window.requests_per_callback:.3f} per callback)"
    return text


def _overload_round(ctx: BenchContext, rate: float | None) -> tuple[Window, str]:
    """`rate` None: closed loop, as many callbacks as the API accepts. The platform runs as
    deployed, backpressure on, and the load honours Retry-After as the trainer SDK does."""
    settings = ctx.settings
    probe = SinkProbe(ctx)
    total = settings.overload_warmup_seconds + settings.overload_seconds
    ctx.stack.set_backpressure(True)
    try:
        wrk = WrkRun(ctx.load_spec(PROGRESS_PATH, honour_retry_after=True), total + 1,
                     rate=rate)
        try:
            time.sleep(settings.overload_warmup_seconds)
            first = probe.read()
            time.sleep(settings.overload_seconds)
            last = probe.read()
            offered = wrk.wait()
        except BaseException:
            wrk.kill()
            raise
    finally:
        ctx.stack.set_backpressure(False)
    window = probe.window(first, last)
    offer = f"{rate:,.0f} callbacks/s" if rate else "the API's saturation"
    note = (f"{_describe(window)}; offered {offer}, accepted {offered.rps:,.0f}/s "
            f"(p99 {offered.p99_ms:.0f} ms, {offered.held:,} held back with 429); backlog "
            f"{first.pending:,} → {last.pending:,} callbacks in the window")
    return window, note


def _drain_round(ctx: BenchContext) -> tuple[Window, str]:
    """Build a backlog with the workers paused, then count what lands while they drain it."""
    settings, stack = ctx.settings, ctx.stack
    probe = SinkProbe(ctx)
    stack.pause_workers()
    try:
        filled = run_wrk(ctx.load_spec(PROGRESS_PATH), settings.drain_fill_seconds)
    finally:
        stack.resume_workers()
    time.sleep(DRAIN_WARMUP_S)
    first = probe.read()
    deadline = first.at + settings.drain_seconds
    last = first
    while time.monotonic() < deadline:
        time.sleep(1.0)
        last = probe.read()
        if last.pending <= DRAIN_MIN_LEFT * first.pending:
            break
    window = probe.window(first, last)
    return window, (f"{_describe(window)}; backlog {first.pending:,} → {last.pending:,} "
                    f"callbacks (filled at {filled.rps:,.0f}/s)")


def absorbed_metrics_per_s(ctx: BenchContext) -> float:
    """What MLflow takes through the platform in this run (else its raw ceiling, measured
    now if needed): the reference for loads expressed as a share of MLflow's capacity."""
    for key in ("mlflow.metrics_per_s", "mlflow_ceiling.metrics_per_s"):
        value = ctx.results.value(key)
        if value:
            return value
    value = measure_ceiling(ctx, ctx.settings.ceiling_seconds)
    log.info(f"MLflow ceiling (for the freshness load): {value:,.0f} metrics/s")
    return value
