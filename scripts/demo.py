"""`make demo`: create a job on the running stack, drive it through a scripted trainer over
HTTP, then show where everything landed.

The scripted trainer knows only what a real one would: the callback URL, its job token and
its job id. (The real Ultralytics trainer replaces it in a later step.)
"""

from __future__ import annotations

import math
import random
import sys
import time
import uuid
from pathlib import Path

import requests
from mlflow.tracking import MlflowClient

RUN_DIR = Path(__file__).resolve().parent.parent / ".run"
EPOCHS = 5
CLASSES = ["cat", "dog", "bird"]


def read_stack_env() -> dict[str, str]:
    path = RUN_DIR / "stack.env"
    if not path.exists():
        sys.exit("no .run/stack.env: start the stack with `make up` first")
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def scripted_trainer(callback_url: str, token: str, job_id: int) -> list[int]:
    """Posts what an Ultralytics detection run reports; returns the accepted event ids."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    training = f"{callback_url}/training/jobs/{job_id}"
    events = []

    def post(url: str, body: dict, key: str) -> None:
        response = session.post(url, json=body, headers={"Idempotency-Key": key}, timeout=10)
        response.raise_for_status()
        events.append(response.json()["event_id"])

    rng = random.Random(0)
    for epoch in range(1, EPOCHS + 1):
        progress = epoch / EPOCHS
        metrics = {
            "train/box_loss": 2.0 - progress, "train/cls_loss": 3.0 - 2 * progress,
            "train/dfl_loss": 1.5 - 0.5 * progress,
            "metrics/precision(B)": 0.2 + 0.5 * progress, "metrics/recall(B)": 0.1 + 0.6 * progress,
            "metrics/mAP50(B)": 0.6 * progress, "metrics/mAP50-95(B)": 0.4 * progress,
            "val/box_loss": 2.2 - progress, "val/cls_loss": 3.2 - 2 * progress,
            "val/dfl_loss": 1.6 - 0.5 * progress,
            "lr/pg0": 0.01 * math.cos(progress), "lr/pg1": 0.01, "lr/pg2": 0.01,
        }
        post(f"{training}/callback/progress",
             {"current_epoch": epoch, "total_epochs": EPOCHS, "metrics": metrics},
             f"progress-{epoch}")
        post(f"{training}/callback/logs",
             {"log_type": "stdout", "lines": [f"epoch {epoch}/{EPOCHS} mAP50-95 "
                                              f"{metrics['metrics/mAP50-95(B)']:.3f}"]},
             f"logs-{epoch}")
        print(f"  trainer: epoch {epoch}/{EPOCHS} reported")
        time.sleep(0.2)

    images = []
    matrix = [[0] * (len(CLASSES) + 1) for _ in range(len(CLASSES) + 1)]
    for i in range(60):
        true = i % len(CLASSES)
        predicted = true if rng.random() < 0.7 else rng.randrange(len(CLASSES))
        matrix[predicted][true] += 1
        images.append({"image_path": f"val/images/{i:03d}.jpg", "true_label_id": true,
                       "predicted_label_id": predicted, "confidence": round(rng.random(), 3),
                       "is_correct": true == predicted})
    post(f"{callback_url}/validation/jobs/{job_id}/results", {
        "job_id": job_id, "epoch": EPOCHS, "task_type": "detection",
        "primary_metric_name": "mAP50-95", "primary_metric_value": 0.4, "overall_loss": 1.2,
        "metrics": {"mAP50": 0.6, "precision": 0.7, "recall": 0.7}, "class_names": CLASSES,
        "confusion_matrix": matrix, "image_results": images}, "validation")
    print("  trainer: validation result sent")
    post(f"{training}/callback/completion", {
        "status": "completed", "final_metrics": {"metrics/mAP50-95(B)": 0.41},
        "best_checkpoint_path": f"jobs/{job_id}/best.pt",
        "last_checkpoint_path": f"jobs/{job_id}/last.pt"}, "completion")
    print("  trainer: completion sent")
    return events


def wait_projected(api: str, headers: dict, events: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    remaining = set(events)
    while remaining and time.monotonic() < deadline:
        for event_id in sorted(remaining):
            state = requests.get(f"{api}/api/v1/events/{event_id}", headers=headers,
                                 timeout=5).json()["state"]
            if state != "pending":
                remaining.discard(event_id)
        print(f"\r  workers: {len(events) - len(remaining)}/{len(events)} events projected",
              end="", flush=True)
        if remaining:
            time.sleep(0.5)
    print()
    if remaining:
        sys.exit(f"events still pending after {timeout} s: {sorted(remaining)} "
                 "(see .run/logs/worker.log)")


def main() -> None:
    env = read_stack_env()
    api, headers = env["API_URL"], {"X-API-Key": env["OPERATOR_API_KEY"]}
    response = requests.post(f"{api}/api/v1/training/jobs", headers=headers, timeout=10, json={
        "model_name": "yolov8n.yaml", "task_type": "detection",
        "experiment_name": "demo-detection", "epochs": EPOCHS,
        "params": {"imgsz": 128, "batch": 8}, "tags": {"demo": "scripted",
                                                       "run": uuid.uuid4().hex[:6]}})
    if response.status_code != 201:
        sys.exit(f"creating the job failed: {response.status_code} {response.text}")
    job = response.json()
    job_id = job["job_id"]
    print(f"created job {job_id}; the trainer gets only CALLBACK_URL, CALLBACK_TOKEN, JOB_ID")
    events = scripted_trainer(job["callback_url"], job["callback_token"], job_id)
    wait_projected(api, headers, events)

    state = requests.get(f"{api}/api/v1/training/jobs/{job_id}", headers=headers,
                         timeout=5).json()
    validation = requests.get(f"{api}/api/v1/validation/jobs/{job_id}/results/{EPOCHS}",
                              headers=headers, timeout=5).json()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(state["mlflow_run_id"])
    ui = env.get("MLFLOW_UI_URL", env["MLFLOW_TRACKING_URI"]).rstrip("/")
    print(f"\njob {job_id}: {state['status']} after {state['current_epoch']} epochs")
    print(f"MLflow run ({run.info.status}): "
          f"{ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
    for key in sorted(run.data.metrics):
        points = client.get_metric_history(run.info.run_id, key)
        print(f"  {key:<24} {len(points)} points, last {run.data.metrics[key]:.4f}")
    print(f"validation epoch {validation['epoch']}: {validation['primary_metric_name']} = "
          f"{validation['primary_metric_value']}, classes {validation['class_names']}, "
          f"{validation['image_count']} image results")
    for row in validation["confusion_matrix"]:
        print("  " + " ".join(f"{cell:3d}" for cell in row))
    print(f"API: {api}   Flower: {env.get('FLOWER_URL', '-')}   "
          f"OpenAPI: {api}/api/v1/openapi.json")


if __name__ == "__main__":
    main()
