"""What the benchmark asks of the platform as an operator and as a trainer: jobs with their
tokens, and progress bodies shaped like Ultralytics' (20 metrics a callback)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import requests

JOBS_PATH = "/api/v1/training/jobs"
PROGRESS_PATH = "/api/v1/training/jobs/{job_id}/callback/progress"
INLINE_PATH = "/bench/inline/jobs/{job_id}/callback/progress"
NOOP_PATH = "/bench/noop"

# A segmentation run's keys as Ultralytics reports them (train losses, box and mask
# metrics, val losses, learning rates) plus the epoch time: 20 metrics a callback.
METRIC_KEYS: tuple[str, ...] = (
    "train/box_loss", "train/seg_loss", "train/cls_loss", "train/dfl_loss",
    "metrics/precision(B)", "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)",
    "metrics/precision(M)", "metrics/recall(M)", "metrics/mAP50(M)", "metrics/mAP50-95(M)",
    "val/box_loss", "val/seg_loss", "val/cls_loss", "val/dfl_loss",
    "lr/pg0", "lr/pg1", "lr/pg2", "time/epoch",
)  # fmt: skip
# The key MLflow stores for the first metric (parentheses dropped), used to read back.
PROBE_KEY = "train/box_loss"


@dataclass(frozen=True)
class JobCredentials:
    job_id: int
    token: str


class OperatorClient:
    """The operator API, as `curl` in the README uses it."""

    def __init__(self, api_url: str, operator_key: str) -> None:
        self.api_url = api_url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = operator_key

    def create_jobs(self, count: int, experiment: str) -> list[JobCredentials]:
        jobs = []
        for _ in range(count):
            response = self.session.post(f"{self.api_url}{JOBS_PATH}", timeout=30,
                                         json=job_body(experiment))
            response.raise_for_status()
            body = response.json()
            jobs.append(JobCredentials(body["job_id"], body["callback_token"]))
        return jobs

    def job(self, job_id: int) -> dict:
        response = self.session.get(f"{self.api_url}/api/v1/training/jobs/{job_id}", timeout=30)
        response.raise_for_status()
        return response.json()

    def checkpoints(self, job_id: int) -> list[dict]:
        response = self.session.get(
            f"{self.api_url}/api/v1/training/jobs/{job_id}/checkpoints", timeout=30)
        response.raise_for_status()
        return response.json()["items"]


def job_body(experiment: str) -> dict:
    """A segmentation job as the load's trainers would report it."""
    return {"model_name": "yolov8n-seg.yaml", "task_type": "segmentation",
            "experiment_name": experiment, "epochs": 100,
            "params": {"imgsz": 640, "batch": 16}, "tags": {"source": "bench"}}


def prime_runs(api_url: str, operator: OperatorClient, jobs: list[JobCredentials],
               timeout_s: float = 120) -> dict[int, str]:
    """One callback per job, then wait until the workers have created each job's MLflow run:
    a run costs a few MLflow requests once per job, which must not land in a timed window.
    Returns job id → run id. Needs the workers running."""
    session = requests.Session()
    for job in jobs:
        response = session.post(api_url + PROGRESS_PATH.format(job_id=job.job_id), timeout=30,
                                json=progress_body(0, 0),
                                headers={"Authorization": f"Bearer {job.token}"})
        response.raise_for_status()
    deadline = time.monotonic() + timeout_s
    runs: dict[int, str] = {}
    while len(runs) < len(jobs):
        for job in jobs:
            if job.job_id not in runs:
                run_id = operator.job(job.job_id).get("mlflow_run_id")
                if run_id:
                    runs[job.job_id] = run_id
        if len(runs) < len(jobs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(runs)} of {len(jobs)} jobs got an MLflow run "
                                   f"within {timeout_s:.0f} s")
            time.sleep(0.2)
    return runs


def progress_body(step: int, epoch: int, metrics_count: int = len(METRIC_KEYS)) -> dict:
    """One epoch's report: values vary with the step so no two callbacks are identical."""
    keys = METRIC_KEYS[:metrics_count]
    return {"current_epoch": epoch, "total_epochs": 100, "step": step,
            "metrics": {key: round(0.001 * ((step * 7 + i * 13) % 1000), 5)
                        for i, key in enumerate(keys)}}


def write_jobs_file(path: Path, jobs: list[JobCredentials]) -> Path:
    """One `job_id token` per line: what the wrk script rotates through."""
    path.write_text("".join(f"{job.job_id} {job.token}\n" for job in jobs))
    return path


def experiment_name(purpose: str) -> str:
    return f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
