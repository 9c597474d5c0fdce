"""Freshness: from a callback's 202 to its point being readable in MLflow.

Callbacks go out at a fixed rate of `freshness_fraction` (50 %) of what MLflow was measured
to absorb through the platform (or its raw ceiling), spread over fresh jobs, from a Python
sender that notes when each one was accepted. A poller reads MLflow's `latest_metrics` table
every 20 ms (MLflow commits a batch's metrics and latest values in one transaction, and
reading its database leaves its HTTP server alone, so the probe does not slow what it
measures). A point counts as readable at the first poll that shows its step or a later one
of the same run, so figures are at most one poll interval high.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
import uuid
from dataclasses import dataclass

import psycopg
import requests

from bench.context import BenchContext
from bench.figures import mlflow_sink
from bench.paced import PacedSender
from bench.platform_client import (
    PROBE_KEY,
    PROGRESS_PATH,
    JobCredentials,
    experiment_name,
    prime_runs,
    progress_body,
)
from bench.progress import log
from bench.results import FigureSpec, Target, at_most
from bench.settings import BenchSettings
from bench.stats import percentile

NAMES = frozenset({"freshness"})
POLL_S = 0.02
DRAIN_TIMEOUT_S = 60
MIN_ROUND_S = 4


def needs(selected: frozenset[str]) -> set[str]:
    return {"mlflow", "workers"}


def figures(settings: BenchSettings) -> list[FigureSpec]:
    what = (f"accept → point readable in MLflow, at {settings.freshness_fraction:.0%} of what "
            "MLflow absorbs")
    base = "mlflow.metrics_per_s (sets the rate)"
    return [FigureSpec("freshness.p50_ms", "ms", what, base),
            FigureSpec("freshness.p99_ms", "ms", "the same, 99th percentile", base)]


def targets(settings: BenchSettings) -> list[Target]:
    return [at_most("freshness.p99_ms", 2000, " ms")]


@dataclass(frozen=True)
class Accepted:
    job_id: int
    step: int
    accepted_at: float  # monotonic, when the 202 arrived
    status: int


class CallbackSender:
    """Round-robin over jobs; each job's steps grow, so 'step ≥ s is readable' means s is."""

    def __init__(self, api_url: str, jobs: list[JobCredentials], first_step: int,
                 metrics_per_callback: int) -> None:
        self.api_url = api_url
        self.jobs = jobs
        self.first_step = first_step
        self.metrics_per_callback = metrics_per_callback
        self.nonce = uuid.uuid4().hex[:10]
        self._local = threading.local()

    def send(self, index: int) -> Accepted:
        job = self.jobs[index % len(self.jobs)]
        step = self.first_step + index // len(self.jobs)
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        response = session.post(
            self.api_url + PROGRESS_PATH.format(job_id=job.job_id),
            json=progress_body(step, step, self.metrics_per_callback), timeout=30,
            headers={"Authorization": f"Bearer {job.token}",
                     "Idempotency-Key": f"fresh-{self.nonce}-{index}"})
        return Accepted(job.job_id, step, time.monotonic(), response.status_code)


class VisibilityPoller(threading.Thread):
    """Per run, the times at which its highest readable step grew."""

    def __init__(self, mlflow_db_url: str, run_ids: list[str]) -> None:
        super().__init__(name="freshness-poller", daemon=True)
        self.url = mlflow_db_url
        self.run_ids = run_ids
        self.history: dict[str, tuple[list[float], list[int]]] = {r: ([], []) for r in run_ids}
        self._halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._halt.is_set():
                polled_at = time.monotonic()
                rows = conn.execute(
                    "SELECT run_uuid, step FROM latest_metrics "
                    "WHERE key = %s AND run_uuid = ANY(%s)", (PROBE_KEY, self.run_ids)).fetchall()
                for run_id, step in rows:
                    times, steps = self.history[run_id]
                    if not steps or step > steps[-1]:
                        times.append(polled_at)
                        steps.append(step)
                self._halt.wait(POLL_S)

    def stop(self) -> None:
        self._halt.set()
        self.join(5)

    def readable_at(self, run_id: str, step: int) -> float | None:
        times, steps = self.history[run_id]
        index = bisect.bisect_left(steps, step)
        return times[index] if index < len(times) else None


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    settings, stack = ctx.settings, ctx.stack
    stack.start_mlflow()
    stack.start_workers()
    stack.discard_backlog()
    absorbed = mlflow_sink.absorbed_metrics_per_s(ctx)
    rate = settings.freshness_fraction * absorbed / settings.metrics_per_callback
    jobs = ctx.operator.create_jobs(settings.freshness_jobs, experiment_name("freshness"))
    run_ids = prime_runs(stack.api_url, ctx.operator, jobs, DRAIN_TIMEOUT_S)
    seconds = max(MIN_ROUND_S, settings.freshness_seconds / settings.rounds)
    p50s, p99s, notes = [], [], []
    steps = itertools.count(1)
    for round_no in range(settings.rounds):
        sender = CallbackSender(stack.api_url, jobs, next(steps) * 1_000_000,
                                settings.metrics_per_callback)
        poller = VisibilityPoller(stack.mlflow_db_url, list(run_ids.values()))
        poller.start()
        try:
            paced = PacedSender(rate, seconds, sender.send)
            sent = paced.run()
            lags = _wait_readable(poller, run_ids, sent)
        finally:
            poller.stop()
        accepted = [a for a in sent if a.status == 202]
        missing = len(accepted) - len(lags)
        p50s.append(percentile(lags, 50) or 0.0)
        p99s.append(percentile(lags, 99) or 0.0)
        note = (f"{rate:,.1f} callbacks/s over {len(jobs)} jobs for {seconds:.0f} s: "
                f"{len(accepted)} accepted, {missing} not readable within "
                f"{DRAIN_TIMEOUT_S} s, {len(sent) - len(accepted)} refused, "
                f"{paced.skipped} not sent; poll every {POLL_S * 1000:.0f} ms")
        notes.append(note)
        log.info("round %d/%d freshness p50 %.0f ms, p99 %.0f ms (%s)", round_no + 1,
                 settings.rounds, p50s[-1], p99s[-1], note)
        stack.discard_backlog()
    ctx.results.measured("freshness.p50_ms", p50s, note=notes[len(notes) // 2])
    ctx.results.measured("freshness.p99_ms", p99s, note=notes[len(notes) // 2])


def _wait_readable(poller: VisibilityPoller, run_ids: dict[int, str],
                   sent: list[Accepted]) -> list[float]:
    """Lag in ms per accepted callback, waiting until all are readable (or the timeout)."""
    accepted = [a for a in sent if a.status == 202]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        readable = [(a, poller.readable_at(run_ids[a.job_id], a.step)) for a in accepted]
        if all(at is not None for _, at in readable) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return [max(0.0, (at - a.accepted_at) * 1000) for a, at in readable if at is not None]
