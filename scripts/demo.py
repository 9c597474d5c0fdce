"""`make demo`: the main job end to end on the running stack.

Creates a job, generates a small detection dataset, runs the Ultralytics trainer on the CPU
in its own environment (.venv-trainer) with nothing but CALLBACK_URL, CALLBACK_TOKEN, JOB_ID
and the Ultralytics settings in its environment, follows the job through the API while it
trains, then shows where everything landed.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
TRAINER_PYTHON = ROOT / ".venv-trainer" / "bin" / "python"
TRAINER = ROOT / "trainer_images" / "ultralytics" / "train.py"
EPOCHS = int(os.environ.get("DEMO_EPOCHS", "60"))
IMGSZ = 128


def read_stack_env() -> dict[str, str]:
    path = RUN_DIR / "stack.env"
    if not path.exists():
        sys.exit("no .run/stack.env: start the stack with `make up` first")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


class Api:
    def __init__(self, env: dict[str, str]) -> None:
        self.url = env["API_URL"]
        self.session = requests.Session()
        self.session.headers["X-API-Key"] = env["OPERATOR_API_KEY"]

    def get(self, path: str) -> dict:
        response = self.session.get(f"{self.url}/api/v1{path}", timeout=10)
        response.raise_for_status()
        return response.json()

    def create_job(self) -> dict:
        response = self.session.post(f"{self.url}/api/v1/training/jobs", timeout=10, json={
            "model_name": "yolov8n.yaml", "task_type": "detection",
            "experiment_name": "demo-detection", "epochs": EPOCHS,
            "params": {"imgsz": IMGSZ, "batch": 8, "device": "cpu"},
            "tags": {"demo": "make demo", "run": uuid.uuid4().hex[:6]}})
        if response.status_code != 201:
            sys.exit(f"creating the job failed: {response.status_code} {response.text}")
        return response.json()


def make_dataset(directory: Path) -> Path:
    """The trainer image's own generator (standard library only), imported by path."""
    spec = importlib.util.spec_from_file_location(
        "make_dataset", ROOT / "trainer_images" / "ultralytics" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Path(module.make_detection(directory, 16, 8, IMGSZ))


def run_trainer(job: dict, data: Path, workdir: Path, api: Api) -> int:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir),
           "CALLBACK_URL": job["callback_url"], "CALLBACK_TOKEN": job["callback_token"],
           "JOB_ID": str(job["job_id"]),
           "MODEL": "yolov8n.yaml", "DATA": str(data), "EPOCHS": str(EPOCHS),
           "IMGSZ": str(IMGSZ), "BATCH": "8", "DEVICE": "cpu", "OUTPUT_DIR": str(workdir)}
    log_path = RUN_DIR / "logs" / f"trainer-job-{job['job_id']}.log"
    print(f"training: .venv-trainer/bin/python {TRAINER.relative_to(ROOT)}  "
          f"(its output: {log_path.relative_to(ROOT)})")
    print(f"  its environment: {', '.join(sorted(k for k in env if k not in ('PATH', 'HOME')))}")
    view = ProgressView()
    with open(log_path, "w") as log:
        trainer = subprocess.Popen([str(TRAINER_PYTHON), "-I", str(TRAINER)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        while trainer.poll() is None:
            view.show(api.get(f"/training/jobs/{job['job_id']}"))
            time.sleep(1)
    view.show(api.get(f"/training/jobs/{job['job_id']}"))
    print()
    return trainer.returncode


class ProgressView:
    """A bar redrawn in place on a terminal; one line per change in a log."""

    def __init__(self) -> None:
        self.last = ""

    def show(self, state: dict) -> None:
        epoch, total = state.get("current_epoch") or 0, state.get("total_epochs") or EPOCHS
        filled = int(30 * min(epoch, total) / total)
        metric = (state.get("latest_metrics") or {}).get("metrics/mAP50-95(B)")
        shown = f"mAP50-95 {metric:.3f}" if isinstance(metric, (int, float)) else ""
        line = (f"  [{'#' * filled}{'.' * (30 - filled)}] epoch {epoch}/{total} "
                f"{state['status']:<9} {shown}")
        if sys.stdout.isatty():
            print(f"\r{line}", end="", flush=True)
        elif line != self.last:
            print(line, flush=True)
        self.last = line


def wait_until_projected(api: Api, job_id: int, timeout: float = 60) -> None:
    """The workers write to MLflow and verify uploads after the trainer is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = [c for c in api.get(f"/training/jobs/{job_id}/checkpoints")["items"]
                   if c["status"] == "pending"]
        metrics = api.get(f"/training/jobs/{job_id}/metrics?limit=5000")["items"]
        if not pending and all(item["state"] != "pending" for item in metrics):
            return
        time.sleep(0.5)
    print(f"  (some events still pending after {timeout} s: see .run/logs/worker.log)")


def report(env: dict[str, str], api: Api, job_id: int) -> None:
    state = api.get(f"/training/jobs/{job_id}")
    print(f"\njob {job_id}: {state['status']} after {state['current_epoch']} epochs"
          + (f" — {state['error_message']}" if state.get("error_message") else ""))
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    if state.get("mlflow_run_id"):
        run = client.get_run(state["mlflow_run_id"])
        ui = env.get("MLFLOW_UI_URL", env["MLFLOW_TRACKING_URI"]).rstrip("/")
        print(f"MLflow run ({run.info.status}): "
              f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        for key in sorted(run.data.metrics):
            points = client.get_metric_history(run.info.run_id, key)
            print(f"  {key:<26} {len(points):>3} points, last {run.data.metrics[key]:.4f}")
    print("checkpoints:")
    for checkpoint in api.get(f"/training/jobs/{job_id}/checkpoints")["items"]:
        print(f"  {checkpoint['checkpoint_type']:<5} {checkpoint['status']:<8} "
              f"{checkpoint['size']:>9} bytes  sha256 {(checkpoint['sha256'] or '-')[:16]}…  "
              f"{checkpoint['s3_uri']}")
    results = api.get(f"/validation/jobs/{job_id}/results")["items"]
    if results:
        result = api.get(f"/validation/jobs/{job_id}/results/{results[-1]['epoch']}")
        print(f"validation (epoch {result['epoch']}): {result['primary_metric_name']} = "
              f"{result['primary_metric_value']}, classes {result['class_names']}")
        print("  confusion matrix (rows predicted, columns true, last = background):")
        for row in result["confusion_matrix"] or []:
            print("   " + " ".join(f"{cell:5g}" for cell in row))
        for name in sorted(result["visualization_download_urls"]):
            print(f"  plot {name}: {result['visualization_urls'][name]}")
    print(f"\nMLflow UI: {env.get('MLFLOW_UI_URL')}   Flower: {env.get('FLOWER_URL')}   "
          f"API docs: {api.url}/api/v1/openapi.json")


def main() -> None:
    if not TRAINER_PYTHON.exists():
        sys.exit("no .venv-trainer: run `make trainer-env` (or `make demo`, which does)")
    env = read_stack_env()
    api = Api(env)
    job = api.create_job()
    job_id = job["job_id"]
    workdir = RUN_DIR / "demo" / f"job-{job_id}"
    workdir.mkdir(parents=True, exist_ok=True)
    data = make_dataset(workdir / "dataset")
    print(f"created job {job_id}; dataset: 16 train + 8 val generated images ({data})")
    code = run_trainer(job, data, workdir, api)
    if code != 0:
        print(f"the trainer exited with status {code}")
    wait_until_projected(api, job_id)
    report(env, api, job_id)
    if code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
