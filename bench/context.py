"""What every figure module is handed: the settings, the running stack, the jobs to load,
and the results collected so far (later figures build on earlier ones, e.g. half load is
half of the measured saturation)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from bench.load import LoadSpec
from bench.platform_client import JobCredentials, OperatorClient, experiment_name
from bench.results import Results
from bench.services import BenchStack
from bench.settings import BenchSettings

STEP_BLOCK = 10_000_000  # step numbers per wrk run: steps keep growing across runs


@dataclass
class BenchContext:
    settings: BenchSettings
    stack: BenchStack
    results: Results
    operator: OperatorClient
    jobs: list[JobCredentials]
    jobs_file: Path
    _runs: itertools.count = field(default_factory=lambda: itertools.count(1))

    def own_job(self, purpose: str) -> JobCredentials:
        """A fresh job for a figure that follows one job. The shared `jobs` carry what the
        load figures sent: a backlog still being projected, whose live "projected" events
        and queued work would land in the figure measuring something else (ws p99 0.5-0.8 s
        measured that backlog, not delivery)."""
        return self.operator.create_jobs(1, experiment_name(purpose))[0]

    def load_spec(self, path: str, jobs_file: Path | None = None,
                  honour_retry_after: bool = False) -> LoadSpec:
        """A wrk target on the API; each spec gets its own block of step numbers."""
        return LoadSpec(base_url=self.stack.api_url, path=path,
                        jobs_file=jobs_file or self.jobs_file,
                        connections=self.settings.connections,
                        threads=self.settings.wrk_threads,
                        step_offset=next(self._runs) * STEP_BLOCK,
                        honour_retry_after=honour_retry_after)
