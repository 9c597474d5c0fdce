"""How long and how hard the benchmark pushes, and the server settings it runs with.

Two profiles: the full run (medians of several interleaved rounds, ~12 minutes on 2 cores)
and `--quick` (one round each, ~3 minutes) for a sanity check after a change. `--duration`
scales every timed phase from the chosen profile, which is how the smoke test runs the real
code paths in seconds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from platform_app.devstack import GUNICORN_CONFIG, WORKER_CONCURRENCY

# The API's own gunicorn settings, so the benchmark measures what is deployed.
PLATFORM_GUNICORN_ARGS: tuple[str, ...] = ("-c", GUNICORN_CONFIG)


@dataclass(frozen=True)
class BenchSettings:
    """Everything a figure needs to know about the run it is part of."""

    profile: str
    rounds: int  # interleaved rounds per comparison; the figure is their median
    load_seconds: float  # one wrk measurement
    warmup_seconds: float  # load before each measurement, not counted
    connections: int  # wrk connections (the notes' anchors used 16)
    wrk_threads: int  # 1: wrk shares the 2 cores with the stack, one thread is plenty
    jobs: int  # jobs whose callbacks the load rotates through
    overload_seconds: float  # sustained overload of the MLflow projection
    overload_warmup_seconds: float
    overload_factor: float  # offered metrics/s as a multiple of the MLflow ceiling
    ceiling_seconds: float  # raw log_batch loop
    drain_fill_seconds: float  # callbacks accepted at saturation while the workers are paused
    drain_seconds: float  # longest drain window measured
    freshness_seconds: float
    freshness_fraction: float  # offered load as a fraction of what MLflow absorbs
    freshness_jobs: int
    upload_sizes_mib: tuple[int, ...]
    upload_rounds: int
    gunicorn_args: tuple[str, ...] = ()  # empty: PLATFORM_GUNICORN_ARGS
    worker_concurrency: int = WORKER_CONCURRENCY  # as `make up` runs it
    metrics_per_callback: int = 20

    @classmethod
    def full(cls) -> BenchSettings:
        return cls(profile="full", rounds=3, load_seconds=10, warmup_seconds=2,
                   connections=16, wrk_threads=1, jobs=50, overload_seconds=20,
                   overload_warmup_seconds=6, overload_factor=2.0, ceiling_seconds=10,
                   drain_fill_seconds=10, drain_seconds=20,
                   freshness_seconds=30, freshness_fraction=0.5, freshness_jobs=20,
                   upload_sizes_mib=(50, 256, 512), upload_rounds=5)

    @classmethod
    def quick(cls) -> BenchSettings:
        return dataclasses.replace(
            cls.full(), profile="quick", rounds=1, load_seconds=5, warmup_seconds=1,
            overload_seconds=10, overload_warmup_seconds=3, ceiling_seconds=5,
            drain_fill_seconds=5, drain_seconds=8,
            freshness_seconds=12, upload_rounds=1)

    def with_duration(self, seconds: float) -> BenchSettings:
        """Scale every timed phase so that one load measurement lasts `seconds`."""
        factor = seconds / self.load_seconds

        def scaled(value: float, floor: float) -> float:
            return max(floor, round(value * factor, 2))

        return dataclasses.replace(
            self, load_seconds=max(1.0, seconds),
            warmup_seconds=scaled(self.warmup_seconds, 0.5),
            overload_seconds=scaled(self.overload_seconds, 2),
            overload_warmup_seconds=scaled(self.overload_warmup_seconds, 1),
            ceiling_seconds=scaled(self.ceiling_seconds, 1),
            drain_fill_seconds=scaled(self.drain_fill_seconds, 1),
            drain_seconds=scaled(self.drain_seconds, 2),
            freshness_seconds=scaled(self.freshness_seconds, 2))

    def with_gunicorn(self, args: tuple[str, ...]) -> BenchSettings:
        return dataclasses.replace(self, gunicorn_args=args)

    def resolved(self) -> BenchSettings:
        """Defaults that depend on the code being measured, filled in."""
        return self if self.gunicorn_args else self.with_gunicorn(PLATFORM_GUNICORN_ARGS)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)
