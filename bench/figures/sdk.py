"""Trainer SDK overhead (`sdk.*`): what one progress report costs the training loop.

Measured in this process, as a trainer would call it: `Client.report_progress` with the
benchmark's 20 Ultralytics-style metrics, once against the running platform and once with
the platform down (nothing listening: the SDK must keep training fast while it retries and
spools). The baseline is what Ultralytics' own MLflow callback does every epoch: a direct
`log_metrics` request to the MLflow server, timed the same way in the same run.
"""

from __future__ import annotations

import tempfile
import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from bench.context import BenchContext
from bench.platform_client import experiment_name, progress_body
from bench.progress import log
from bench.results import FigureSpec, Target, at_least, at_most
from bench.settings import BenchSettings
from bench.stats import percentile
from platform_app.devstack import free_port
from trainer_sdk import Client

NAMES = frozenset({"sdk"})
SDK_CALLS = 2000
MLFLOW_CALLS = 200


def needs(selected: frozenset[str]) -> set[str]:
    return {"mlflow"}


def figures(settings: BenchSettings) -> list[FigureSpec]:
    return [
        FigureSpec("sdk.report_p50_ms", "ms", "SDK progress report, time spent in the trainer"),
        FigureSpec("sdk.report_p99_ms", "ms", "the same, 99th percentile",
                   "sdk.mlflow_log_metrics_p99_ms"),
        FigureSpec("sdk.report_p99_ms_platform_down", "ms",
                   "SDK progress report while the platform is unreachable, p99"),
        FigureSpec("sdk.mlflow_log_metrics_p99_ms", "ms",
                   "direct mlflow log_metrics per epoch from the trainer, p99", "the alternative"),
        FigureSpec("sdk.cheaper_than_mlflow", "×", "mlflow p99 ÷ SDK p99 (platform up)",
                   "sdk.mlflow_log_metrics_p99_ms"),
        FigureSpec("sdk.cheaper_than_mlflow_platform_down", "×",
                   "mlflow p99 ÷ SDK p99 (platform down)", "sdk.mlflow_log_metrics_p99_ms"),
    ]


def targets(settings: BenchSettings) -> list[Target]:
    return [at_most("sdk.report_p99_ms", 1, " ms"),
            at_most("sdk.report_p99_ms_platform_down", 1, " ms"),
            at_least("sdk.cheaper_than_mlflow", 20),
            at_least("sdk.cheaper_than_mlflow_platform_down", 20)]


def time_reports(client: Client, calls: int) -> list[float]:
    """Milliseconds per `report_progress` call; the sender works in the background."""
    samples = []
    for step in range(1, calls + 1):
        metrics = progress_body(step, step)["metrics"]
        started = time.perf_counter()
        client.report_progress(step, metrics, total_epochs=calls)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_mlflow(tracking_uri: str, calls: int) -> list[float]:
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment_name("sdk-baseline"))
    run_id = client.create_run(experiment_id).info.run_id
    samples = []
    for step in range(1, calls + 1):
        metrics = progress_body(step, step)["metrics"]
        points = [Metric(key.replace("(", "").replace(")", ""), float(value),
                         int(time.time() * 1000), step) for key, value in metrics.items()]
        started = time.perf_counter()
        client.log_batch(run_id, metrics=points)  # what mlflow.log_metrics sends
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    job = ctx.own_job("sdk")  # its 2000 callbacks must not become the next figure's backlog
    calls = SDK_CALLS if ctx.settings.profile != "quick" else SDK_CALLS // 4
    with tempfile.TemporaryDirectory() as spool:
        log.info("sdk: %d report_progress calls against the platform", calls)
        up = Client(f"{ctx.stack.api_url}/api/v1", job.token, job.job_id, spool_dir=spool)
        up_samples = time_reports(up, calls)
        up.close(timeout=60)
        log.info("sdk: %d calls with the platform down", calls)
        down = Client(f"http://127.0.0.1:{free_port()}/api/v1", job.token, job.job_id,
                      spool_dir=spool, close_timeout=1)
        down_samples = time_reports(down, calls)
        down.close(timeout=1)
    log.info("sdk: %d direct MLflow log_metrics calls", MLFLOW_CALLS)
    mlflow_samples = time_mlflow(ctx.stack.mlflow_uri, MLFLOW_CALLS)

    results = ctx.results
    up_p99, down_p99 = percentile(up_samples, 99), percentile(down_samples, 99)
    mlflow_p99 = percentile(mlflow_samples, 99)
    note = f"{calls} calls of {len(progress_body(1, 1)['metrics'])} metrics"
    results.measured("sdk.report_p50_ms", [], percentile(up_samples, 50), note=note)
    results.measured("sdk.report_p99_ms", [], up_p99, note=note)
    results.measured("sdk.report_p99_ms_platform_down", [], down_p99,
                     note=f"{note}, nothing listening at the callback URL")
    results.measured("sdk.mlflow_log_metrics_p99_ms", [], mlflow_p99,
                     note=f"{MLFLOW_CALLS} log_batch calls, p50 "
                          f"{percentile(mlflow_samples, 50):.2f} ms")
    results.measured("sdk.cheaper_than_mlflow", [], mlflow_p99 / up_p99)
    results.measured("sdk.cheaper_than_mlflow_platform_down", [], mlflow_p99 / down_p99)
