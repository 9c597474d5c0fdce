"""Latency at half load, and whether it depends on MLflow being up.

Offered load is a fixed rate of half the measured saturation (`accept.rps`), sent by wrk with
the Lua `delay()` schedule (see bench/load.py), with the Celery workers running: the steady
state a deployment lives in, where the queue is drained while callbacks keep arriving.

`sink_independence` is p99 with MLflow stopped ÷ p99 with it running at the same offered
load: the request path must not notice the sink. Rounds alternate the order of the two
conditions (ABBA), which also halves the MLflow restarts (~15 s each here). Each round also
says how many cores each service used (bench/cpu.py): on one machine that is what the two
conditions differ in.
"""

from __future__ import annotations

import time

from bench import cpu
from bench.context import BenchContext
from bench.figures.throughput import accept_saturation
from bench.load import LoadResult, run_wrk
from bench.platform_client import PROGRESS_PATH, prime_runs
from bench.progress import log
from bench.results import FigureSpec, Target, at_most
from bench.settings import BenchSettings
from bench.stats import median

NAMES = frozenset({"latency", "sink"})
HALF = 0.5


def needs(selected: frozenset[str]) -> set[str]:
    return {"mlflow", "workers"}


def figures(settings: BenchSettings) -> list[FigureSpec]:
    return [
        FigureSpec("accept.p50_ms_half_load", "ms",
                   "progress callback at a fixed 50 % of accept.rps, workers draining",
                   "accept.rps (sets the rate)"),
        FigureSpec("accept.p99_ms_half_load", "ms", "the same, 99th percentile",
                   "accept.rps (sets the rate)"),
        FigureSpec("sink_independence", "×",
                   "accept p99 with MLflow stopped ÷ running, same offered load",
                   "p99 with MLflow running"),
    ]


def targets(settings: BenchSettings) -> list[Target]:
    return [at_most("accept.p99_ms_half_load", 25, " ms"), at_most("sink_independence", 1.2)]


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    settings, stack = ctx.settings, ctx.stack
    rate = HALF * accept_saturation(ctx)
    stack.start_workers()
    stack.start_mlflow()
    # Each job's MLflow run is created by its first projection: a burst of MLflow calls that
    # belongs to no steady state, so it happens here, before anything is timed.
    prime_runs(stack.api_url, ctx.operator, ctx.jobs)
    stack.discard_backlog()
    conditions = ["running", "stopped"] if "sink" in selected else ["running"]
    runs: dict[str, list[LoadResult]] = {c: [] for c in conditions}
    usage: dict[str, list[dict[str, float]]] = {c: [] for c in conditions}
    for round_no in range(settings.rounds):
        order = conditions if round_no % 2 == 0 else conditions[::-1]
        for condition in order:
            if condition == "stopped":
                stack.stop_mlflow()
            else:
                stack.start_mlflow()
            run_wrk(ctx.load_spec(PROGRESS_PATH), settings.warmup_seconds, rate=rate)
            before, started = stack.cpu_seconds(), time.monotonic()
            result = run_wrk(ctx.load_spec(PROGRESS_PATH), settings.load_seconds, rate=rate)
            used = cpu.cores(before, stack.cpu_seconds(), time.monotonic() - started)
            stack.discard_backlog()
            runs[condition].append(result)
            usage[condition].append(used)
            log.info("round %d/%d half load, MLflow %-7s %s; cores: %s", round_no + 1,
                     settings.rounds, condition, result.describe(), cpu.describe([used]))
    stack.start_mlflow()

    running = runs["running"]
    note = _note(running, usage["running"], rate)
    ctx.results.measured("accept.p50_ms_half_load", [r.p50_ms for r in running], note=note)
    ctx.results.measured("accept.p99_ms_half_load", [r.p99_ms for r in running], note=note)
    if "stopped" in runs:
        pairs = [s.p99_ms / r.p99_ms for s, r in zip(runs["stopped"], running, strict=True)]
        stopped = runs["stopped"]
        ctx.results.measured(
            "sink_independence", pairs,
            note=f"median of paired rounds; p99 stopped {median([r.p99_ms for r in stopped]):.1f}"
                 f" ms vs running {median([r.p99_ms for r in running]):.1f} ms; "
                 f"{_note(stopped, usage['stopped'], rate)}")


def _note(results: list[LoadResult], usage: list[dict[str, float]], rate: float) -> str:
    achieved = median([r.rps for r in results]) or 0
    late = median([r.late_fraction for r in results]) or 0
    errors = sum(r.error_count for r in results)
    text = f"offered {rate:,.0f}/s, achieved {achieved:,.0f}/s, {late:.0%} of requests late"
    text += f", {errors} failed" if errors else ""
    return text + f"; cores used (median of rounds): {cpu.describe(usage)}"
