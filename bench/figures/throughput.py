"""Saturation throughput of the real progress callback against its two baselines.

`noop.rps` (a trivial 202: the ceiling of gunicorn + Flask here), `inline.rps` (the seed's
design: the same callback writing to MLflow in the request) and `accept.rps` (the platform's
path: validate, one transaction, enqueue). Rounds interleave the three endpoints, rotating
their order, so drift in the shared machine's load hits all three alike.

The Celery workers are stopped meanwhile: this measures the API. (With workers on the same
2 cores, draining the queue would take CPU from whichever endpoint ran next.)
"""

from __future__ import annotations

from bench.context import BenchContext
from bench.load import LoadResult, run_wrk
from bench.platform_client import INLINE_PATH, NOOP_PATH, PROGRESS_PATH
from bench.progress import log
from bench.results import FigureSpec, Target, ratio_at_least
from bench.settings import BenchSettings
from bench.stats import median

NAMES = frozenset({"noop", "inline", "accept"})
PATHS = {"noop": NOOP_PATH, "inline": INLINE_PATH, "accept": PROGRESS_PATH}
INLINE_MIN_WARMUP_S = 4  # the first inline callback of each job creates its MLflow run
SPLIT = 3  # short noop/accept runs per round (see _round_plan)


def needs(selected: frozenset[str]) -> set[str]:
    return {"mlflow"} if "inline" in selected else set()


def figures(settings: BenchSettings) -> list[FigureSpec]:
    connections = f"{settings.connections} connections"
    return [
        FigureSpec("noop.rps", "req/s", f"trivial 202 endpoint, saturation ({connections})",
                   "the ceiling"),
        FigureSpec("inline.rps", "req/s",
                   "seed design: same callback, 20 metrics to MLflow in the request",
                   "the design replaced"),
        FigureSpec("accept.rps", "req/s",
                   f"progress callback, 20 metrics, {settings.jobs} jobs, saturation "
                   f"({connections})", "noop.rps, inline.rps"),
    ]


def targets(settings: BenchSettings) -> list[Target]:
    return [ratio_at_least("accept.rps", "inline.rps", 5),
            ratio_at_least("accept.rps", "noop.rps", 0.2)]


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    settings = ctx.settings
    ctx.stack.stop_workers()
    names = [name for name in ("noop", "inline", "accept") if name in selected]
    for name in names:
        warmup = settings.warmup_seconds
        if name == "inline":
            warmup = max(warmup, INLINE_MIN_WARMUP_S)
        run_wrk(ctx.load_spec(PATHS[name]), warmup)
    runs: dict[str, list[LoadResult]] = {name: [] for name in names}
    for round_no in range(settings.rounds):
        for step_no, (name, seconds) in enumerate(_round_plan(names, round_no, settings)):
            result = run_wrk(ctx.load_spec(PATHS[name]), seconds)
            runs[name].append(result)
            log.info("round %d/%d.%d %-6s %s", round_no + 1, settings.rounds, step_no + 1,
                     name, result.describe())
    for name, results in runs.items():
        ctx.results.measured(f"{name}.rps", [r.rps for r in results], note=_note(results))
    ctx.stack.discard_backlog()


def _round_plan(names: list[str], round_no: int,
                settings: BenchSettings) -> list[tuple[str, float]]:
    """One round: noop and accept alternate in SPLIT short runs; inline runs once, at
    full length and at a rotating place (MLflow, written by 16 requests at once, wedges
    after many of wrk's end-of-run disconnects: 9 short inline runs measured 0 req/s from the
    fourth on).

    Why many short runs: the kernel hands wrk's 16 keep-alive connections to the 2 gunicorn
    processes at random, and a run's figure follows that split (accept: ~430 req/s with all
    16 on one process, one GIL; ~890 with 12/4 — counted with `ss` during the runs). More
    runs sample more splits; the median is what a client with 16 connections sees."""
    short = max(1.0, settings.load_seconds / SPLIT)
    pair = [name for name in ("noop", "accept") if name in names]
    plan = [(name, short) for split in range(SPLIT)
            for name in (pair if (round_no + split) % 2 == 0 else pair[::-1])]
    if "inline" in names:
        at = (round_no * len(plan)) // max(1, settings.rounds) if plan else 0
        plan.insert(at, ("inline", settings.load_seconds))
    return plan


def accept_saturation(ctx: BenchContext) -> float:
    """accept.rps from this run, or one short measurement when it was not selected: the
    figures that offer a share of the API's capacity need it."""
    measured = ctx.results.value("accept.rps")
    if measured:
        return measured
    log.info("accept.rps not measured in this run: measuring saturation once")
    ctx.stack.stop_workers()
    run_wrk(ctx.load_spec(PROGRESS_PATH), ctx.settings.warmup_seconds)
    result = run_wrk(ctx.load_spec(PROGRESS_PATH), ctx.settings.load_seconds)
    ctx.stack.discard_backlog()
    log.info("accept saturation: %s", result.describe())
    return result.rps


def _note(results: list[LoadResult]) -> str:
    errors = sum(r.error_count for r in results)
    note = (f"at saturation: p50 {median([r.p50_ms for r in results]):.1f} ms, "
            f"p99 {median([r.p99_ms for r in results]):.1f} ms")
    return note + (f"; {errors} failed requests" if errors else "")
