"""`python -m bench [--quick] [--only accept,mlflow,...]` (`make bench`).

Starts a private stack, runs the selected figure modules in order, stops the stack (also on
Ctrl-C, SIGTERM or an error), writes `.run/bench/latest.json` and prints a markdown table on
stdout. Progress goes to stderr. A figure module that fails is reported as failed; the
others still run.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import figures, progress
from bench.context import BenchContext
from bench.load import ensure_wrk
from bench.platform_client import OperatorClient, experiment_name, write_jobs_file
from bench.progress import log
from bench.report import PROJECT_ROOT, environment, markdown, write_json
from bench.results import Results
from bench.services import BenchStack
from bench.settings import BenchSettings

DEFAULT_OUT = PROJECT_ROOT / ".run" / "bench" / "latest.json"
USES_WRK = frozenset({"noop", "inline", "accept", "latency", "sink", "mlflow"})


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one round per figure and shorter loads (~3 min instead of ~12)")
    parser.add_argument("--only", metavar="NAMES",
                        help=f"comma-separated subset of: {', '.join(figures.all_names())}")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="seconds per load measurement; other phases scale with it")
    parser.add_argument("--rounds", type=int, help="rounds per comparison (median reported)")
    parser.add_argument("--gunicorn", metavar="ARGS",
                        help="the API's gunicorn options, e.g. '--worker-class gthread "
                             "--workers 2 --threads 8'")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.only:
        args.only = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = args.only - set(figures.all_names())
        if unknown:
            parser.error(f"unknown --only name(s) {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(figures.all_names())}")
    return args


def build_settings(args: argparse.Namespace) -> BenchSettings:
    settings = BenchSettings.quick() if args.quick else BenchSettings.full()
    if args.duration:
        settings = settings.with_duration(args.duration)
    if args.rounds:
        import dataclasses

        settings = dataclasses.replace(settings, rounds=args.rounds,
                                       upload_rounds=min(settings.upload_rounds, args.rounds))
    if args.gunicorn:
        settings = settings.with_gunicorn(tuple(shlex.split(args.gunicorn)))
    return settings.resolved()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress.setup(args.verbose)
    settings = build_settings(args)
    selected = figures.select(args.only)
    results = Results(spec for m in figures.MODULES for spec in m.figures(settings))
    targets = [t for m in figures.MODULES for t in m.targets(settings)]
    started, load_before = datetime.now(UTC), os.getloadavg()[0]
    if any(names & USES_WRK for _, names in selected):
        ensure_wrk()
    needs = set().union(*(m.needs(names) for m, names in selected))
    stack = BenchStack(settings, args.out.parent / "logs")
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    status = 0
    try:
        stack.start(needs)
        operator = OperatorClient(stack.api_url, stack.operator_key)
        jobs = operator.create_jobs(settings.jobs, experiment_name("load"))
        ctx = BenchContext(settings, stack, results, operator, jobs,
                           write_jobs_file(stack.workdir / "jobs.txt", jobs))
        for module, names in selected:
            _run_module(ctx, module, names)
    except KeyboardInterrupt:
        log.info("interrupted: stopping the stack and writing what was measured")
        status = 130
    except Exception as exc:  # the stack did not start: report it, and what it says
        log.error("benchmark aborted: %s", exc)
        for module, _ in selected:
            results.failed([s.key for s in module.figures(settings)], f"aborted: {exc}")
        status = 1
    finally:
        log.info("stopping services")
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
    verdicts = [t.evaluate(results) for t in targets]
    finished = datetime.now(UTC)
    meta = {
        "command": shlex.join([sys.executable, "-m", "bench", *(argv or sys.argv[1:])]),
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": finished.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "interrupted": status == 130,
        "selected": sorted(n for _, names in selected for n in names),
        "settings": settings.as_dict(),
        "environment": environment(),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
        "workdir": str(stack.workdir),  # removed at the end, with every process started in it
    }
    path = write_json(args.out, meta, results, verdicts)
    log.info("wrote %s", path)
    print(markdown(results, verdicts, meta), flush=True)
    return status


def _run_module(ctx: BenchContext, module, names: frozenset[str]) -> None:
    title = module.__name__.rsplit(".", 1)[-1]
    log.info("— %s (%s)", title, ", ".join(sorted(names)))
    started = time.monotonic()
    try:
        module.run(ctx, names)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log.exception("%s failed", title)
        ctx.results.failed([s.key for s in module.figures(ctx.settings)],
                           f"{type(exc).__name__}: {exc}")
    log.info("— %s done in %.0f s", title, time.monotonic() - started)


if __name__ == "__main__":
    sys.exit(main())
