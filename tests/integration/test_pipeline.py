"""Callbacks end to end through a real worker into MLflow and the validation tables, on
SQLite and on PostgreSQL. Results are read back through MlflowClient and the GET API."""

from __future__ import annotations

import math
import sys

from mlflow.tracking import MlflowClient

ULTRALYTICS_EPOCH = {
    "train/box_loss": 1.91, "train/cls_loss": 3.2, "train/dfl_loss": 1.4,
    "metrics/precision(B)": 0.11, "metrics/recall(B)": 0.2, "metrics/mAP50(B)": 0.05,
    "metrics/mAP50-95(B)": 0.02, "val/box_loss": 2.0, "val/cls_loss": 3.5,
    "val/dfl_loss": 1.6, "lr/pg0": 0.01, "lr/pg1": 0.01, "lr/pg2": 0.01,
}


def history(stack, run_id: str, key: str) -> list:
    return MlflowClient(stack.mlflow.uri).get_metric_history(run_id, key)


def test_training_job_lands_in_mlflow_and_the_db(stack):
    api = stack.actions
    job = api.create_job(epochs=3, params={"imgsz": 128, "lr0": 0.01})
    def send(kind: str, body: dict) -> int:
        return api.callback(job, kind, body).get_json()["event_id"]

    events = [send("progress", {"current_epoch": epoch, "total_epochs": 3,
                                "metrics": {k: v / epoch for k, v in ULTRALYTICS_EPOCH.items()}})
              for epoch in (1, 2, 3)]
    events.append(send("logs", {"log_type": "stdout", "lines": ["epoch 1", "epoch 2"]}))
    events.append(send("completion", {"status": "completed",
                                      "final_metrics": {"metrics/mAP50-95(B)": 0.03},
                                      "best_checkpoint_path": "s3://training/jobs/1/best.pt"}))
    stack.wait_projected(events)

    state = api.job(job["job_id"])
    assert state["status"] == "completed" and state["mlflow_run_id"]
    client = MlflowClient(stack.mlflow.uri)
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["platform.job_id"] == str(job["job_id"])
    assert run.data.tags["model_name"] == "yolov8n.yaml" and run.data.tags["team"] == "vision"
    assert run.data.params["imgsz"] == "128"
    assert client.get_experiment(run.info.experiment_id).name == job["experiment_name"]

    # Ultralytics keys arrive under the names Ultralytics' own MLflow callback uses
    assert "metrics/mAP50-95B" in run.data.metrics and "metrics/precisionB" in run.data.metrics
    box_loss = history(stack, state["mlflow_run_id"], "train/box_loss")
    assert sorted((p.step, round(p.value, 4)) for p in box_loss) == [
        (1, 1.91), (2, round(1.91 / 2, 4)), (3, round(1.91 / 3, 4))]
    series = history(stack, state["mlflow_run_id"], "metrics/mAP50-95B")
    last = max(series, key=lambda p: p.timestamp)
    assert len(series) == 4 and (last.step, last.value) == (3, 0.03)  # the final metrics

    # the DB keeps the original keys, served to pollers with a cursor
    page = api.get(f"/api/v1/training/jobs/{job['job_id']}/metrics", since=0, limit=2)
    assert [item["epoch"] for item in page["items"]] == [1, 2]
    assert "metrics/mAP50-95(B)" in page["items"][0]["metrics"]
    rest = api.get(f"/api/v1/training/jobs/{job['job_id']}/metrics", since=page["next_cursor"])
    assert [item["kind"] for item in rest["items"]] == ["progress", "completion"]
    logs = api.get(f"/api/v1/training/jobs/{job['job_id']}/logs")
    assert [(line["line"], line["event_id"]) for line in logs["items"]] == [
        ("epoch 1", events[3]), ("epoch 2", events[3])]
    assert api.get(f"/api/v1/training/jobs/{job['job_id']}/logs",
                   since=logs["next_cursor"])["items"] == []


def test_non_finite_values_reach_mlflow_and_null_is_skipped(stack):
    api = stack.actions
    job = api.create_job()
    raw = (b'{"current_epoch": 1, "metrics": {"loss": NaN, "acc": null, "lr": 0.1, '
           b'"best": Infinity, "worst": -Infinity}}')
    response = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/callback/progress",
                               data=raw, headers=api.bearer(job))
    stack.wait_projected([response.get_json()["event_id"]])
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    assert math.isnan(history(stack, run_id, "loss")[0].value)
    assert history(stack, run_id, "acc") == []
    assert history(stack, run_id, "lr")[0].value == 0.1
    # MLflow's SQL store keeps ±infinity as ± the largest float
    assert history(stack, run_id, "best")[0].value == sys.float_info.max
    assert history(stack, run_id, "worst")[0].value == -sys.float_info.max


def test_replayed_callbacks_write_one_point(stack):
    api = stack.actions
    job = api.create_job()
    body = {"current_epoch": 1, "metrics": {"loss": 0.5}}
    first = api.callback(job, "progress", body, key="p-1").get_json()
    second = api.callback(job, "progress", body, key="p-1").get_json()
    assert first == second
    stack.wait_projected([first["event_id"]])
    assert len(history(stack, api.job(job["job_id"])["mlflow_run_id"], "loss")) == 1


def test_validation_results_are_stored_and_paginated(stack):
    api = stack.actions
    job = api.create_job()
    classes = ["cat", "dog", "bird"]
    images = [{"image_path": f"val/{i}.jpg", "true_label_id": i % 3,
               "predicted_label_id": (i * 7) % 3, "confidence": 0.5,
               "is_correct": i % 3 == (i * 7) % 3} for i in range(2500)]
    body = {"job_id": job["job_id"], "epoch": 2, "task_type": "detection",
            "primary_metric_name": "mAP50-95", "primary_metric_value": 0.31,
            "overall_loss": 1.2, "metrics": {"mAP50": 0.5}, "class_names": classes,
            "visualization_urls": {"confusion_matrix": "s3://training/jobs/x/cm.png"},
            "confusion_matrix": [[5, 1, 0, 0], [0, 4, 1, 0], [1, 0, 3, 0], [0, 0, 0, 0]],
            "image_results": images}
    first = api.callback(job, "validation", body).get_json()
    stack.wait_projected([first["event_id"]], timeout=90)
    base = f"/api/v1/validation/jobs/{job['job_id']}/results"
    result = api.get(f"{base}/2")
    assert result["class_names"] == classes and result["image_count"] == 2500
    assert result["confusion_matrix"][0] == [5, 1, 0, 0]
    cell = api.get(f"{base}/2/images", true_label_id=1, predicted_label_id=1, per_page=10)
    expected = [i for i in images if i["true_label_id"] == 1 and i["predicted_label_id"] == 1]
    assert cell["total"] == len(expected) and len(cell["items"]) == 10
    assert all(item["true_label_id"] == 1 and item["predicted_label_id"] == 1
               for item in cell["items"])

    # re-sending the epoch replaces it
    second = api.callback(job, "validation", {**body, "primary_metric_value": 0.4,
                                              "image_results": images[:10]}).get_json()
    stack.wait_projected([second["event_id"]])
    replaced = api.get(f"{base}/2")
    assert replaced["primary_metric_value"] == 0.4 and replaced["image_count"] == 10
    assert api.get(f"{base}/2/images")["total"] == 10
    summary = api.get(base)
    assert summary["summary"]["best_epoch"] == 2 and len(summary["items"]) == 1


def test_failed_and_cancelled_jobs_end_their_runs(stack):
    api = stack.actions
    statuses = {}
    for status in ("failed", "cancelled"):
        job = api.create_job()
        api.callback(job, "progress", {"current_epoch": 1, "metrics": {"loss": 1.0}})
        event = api.callback(job, "completion", {"status": status,
                                                 "error_message": "boom"}).get_json()
        stack.wait_projected([event["event_id"]])
        run = MlflowClient(stack.mlflow.uri).get_run(api.job(job["job_id"])["mlflow_run_id"])
        statuses[status] = run.info.status
    assert statuses == {"failed": "FAILED", "cancelled": "KILLED"}


def test_many_pending_events_are_written_in_few_requests(stack):
    """Events that pile up while the worker cannot write go out together."""
    api = stack.actions
    job = api.create_job()
    stack.worker.stop()
    try:
        ids = [api.callback(job, "progress", {"current_epoch": e, "metrics": {"loss": 1 / e}})
               .get_json()["event_id"] for e in range(1, 41)]
    finally:
        stack.worker.start()
    stack.wait_projected(ids)
    run_id = api.job(job["job_id"])["mlflow_run_id"]
    assert len(history(stack, run_id, "loss")) == 40
    log = stack.worker.log_path.read_text()
    batches = [line for line in log.splitlines()
               if f"[job {job['job_id']}] projected" in line]
    assert 1 <= len(batches) <= 3, batches
