"""Real Ultralytics training in the trainer's own environment (.venv-trainer, made by
scripts/setup-trainer-env.sh), reporting to the real platform: the API served over a socket
from this process, with the `stack` fixture's real Celery worker projecting into MLflow and
the object store. Slow (tens of seconds per run); skipped when .venv-trainer is missing."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import wait_until
from tests.sdk.servers import LiveServer

ROOT = Path(__file__).resolve().parents[2]
TRAINER_PYTHON = ROOT / ".venv-trainer" / "bin" / "python"
TRAIN_PY = ROOT / "trainer_images" / "ultralytics" / "train.py"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TRAINER_PYTHON.exists(),
                       reason="no .venv-trainer (run scripts/setup-trainer-env.sh)"),
    pytest.mark.parametrize("stack", ["sqlite"], indirect=True),
]


def _dataset_module():
    spec = importlib.util.spec_from_file_location(
        "make_dataset", ROOT / "trainer_images" / "ultralytics" / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_dataset = _dataset_module()


@pytest.fixture()
def api_server(stack):
    server = LiveServer(stack.app).start()
    yield server
    server.stop()


def trainer_env(server: LiveServer, job: dict, tmp_path: Path, **settings: str) -> dict:
    """Only what a trainer container gets: the three callback variables and its settings."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "CALLBACK_URL": f"{server.url}/api/v1", "CALLBACK_TOKEN": job["callback_token"],
           "JOB_ID": str(job["job_id"]), "OUTPUT_DIR": str(tmp_path / "run"),
           "TRAINER_SDK_SPOOL_DIR": str(tmp_path / "spool"), "DEVICE": "cpu",
           "CHECKPOINT_MIN_INTERVAL": "0", "PYTHONUNBUFFERED": "1", **settings}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # this machine's BLAS settings
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def assert_no_secrets(env: dict, stack) -> None:
    config = stack.config
    for name in ("S3_ACCESS_KEY", "S3_SECRET_KEY", "SECRET_KEY", "OPERATOR_API_KEY"):
        value = getattr(config, name)
        assert not value or all(value not in v for v in env.values()), name
    assert not any(k.startswith(("S3_", "AWS_", "MLFLOW_")) for k in env)


def run_trainer(env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(TRAINER_PYTHON), "-I", str(TRAIN_PY)], env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-6000:])
    return result


def mlflow_history(stack, run_id: str, key: str) -> list:
    return MlflowClient(stack.mlflow.uri).get_metric_history(run_id, key)


def wait_for_run(stack, job_id: int, keys: list[str], steps: set[int]) -> str:
    def ready():
        job = stack.actions.job(job_id)
        run_id = job.get("mlflow_run_id")
        if not run_id:
            return None
        have = all({m.step for m in mlflow_history(stack, run_id, k)} >= steps for k in keys)
        return run_id if have else None
    return wait_until(ready, timeout=90, message="every epoch's metrics in MLflow")


def checkpoints(stack, job_id: int) -> list[dict]:
    return stack.actions.get(f"/api/v1/training/jobs/{job_id}/checkpoints")["items"]


def test_detection_run_lands_in_mlflow_the_store_and_the_validation_tables(
        stack, api_server, tmp_path):
    data = make_dataset.make_detection(tmp_path / "dataset", 16, 8, 128)
    job = stack.actions.create_job(model_name="yolov8n.yaml", task_type="detection", epochs=2)
    env = trainer_env(api_server, job, tmp_path, MODEL="yolov8n.yaml", DATA=str(data),
                      EPOCHS="2", IMGSZ="128", BATCH="8")
    assert_no_secrets(env, stack)

    result = run_trainer(env)
    output = result.stdout + result.stderr
    assert "Downloading" not in output and "MLflow" not in output  # offline, no own MLflow

    job_id = job["job_id"]
    finished = stack.actions.job(job_id)
    assert finished["status"] == "completed", finished
    assert finished["current_epoch"] == 2 and finished["total_epochs"] == 2
    assert "metrics/mAP50-95(B)" in finished["final_metrics"]

    keys = ["train/box_loss", "train/cls_loss", "metrics/mAP50-95B", "metrics/precisionB",
            "val/box_loss", "lr/pg0"]
    run_id = wait_for_run(stack, job_id, keys, {1, 2})
    run = MlflowClient(stack.mlflow.uri).get_run(run_id)
    assert all("(" not in key and ")" not in key for key in run.data.metrics)

    result = stack.actions.get(f"/api/v1/validation/jobs/{job_id}/results/2")
    assert result["task_type"] == "detection"
    assert result["class_names"] == ["rectangle", "ellipse"]
    assert len(result["confusion_matrix"]) == 3
    assert sum(map(sum, result["confusion_matrix"])) > 0  # the final validation filled it
    assert "per_class" in result["metrics"]
    plots = result["visualization_urls"]
    assert {"confusion_matrix", "results"} <= set(plots)
    assert any(name.endswith("F1_curve") for name in plots)
    assert all(uri.startswith("s3://") for uri in plots.values())

    def verified():
        rows = checkpoints(stack, job_id)
        return rows if rows and all(r["status"] != "pending" for r in rows) else None
    rows = wait_until(verified, timeout=60, message="checkpoints verified")
    assert all(r["status"] == "verified" for r in rows), rows
    weights = tmp_path / "run" / "train" / "weights"
    final = {r["checkpoint_type"]: r for r in rows if r["s3_uri"] in (
        finished["best_checkpoint_path"], finished["last_checkpoint_path"])}
    assert set(final) == {"best", "last"}
    for kind in ("best", "last"):
        local = hashlib.sha256((weights / f"{kind}.pt").read_bytes()).hexdigest()
        assert final[kind]["sha256"] == local


def test_classification_run(stack, api_server, tmp_path):
    data = make_dataset.make_classification(tmp_path / "dataset", 16, 8, 32)
    job = stack.actions.create_job(model_name="yolov8n-cls.yaml", task_type="classification",
                                   epochs=2)
    env = trainer_env(api_server, job, tmp_path, MODEL="yolov8n-cls.yaml", DATA=str(data),
                      EPOCHS="2", IMGSZ="32", BATCH="8")
    run_trainer(env)

    job_id = job["job_id"]
    assert stack.actions.job(job_id)["status"] == "completed"
    wait_for_run(stack, job_id, ["metrics/accuracy_top1", "train/loss", "val/loss"], {1, 2})
    result = stack.actions.get(f"/api/v1/validation/jobs/{job_id}/results/2")
    assert result["task_type"] == "classification"
    assert result["primary_metric_name"] == "metrics/accuracy_top1"
    assert len(result["confusion_matrix"]) == 2


def test_a_cancel_mid_run_ends_the_job_cancelled(stack, api_server, tmp_path):
    data = make_dataset.make_detection(tmp_path / "dataset", 16, 8, 128)
    job = stack.actions.create_job(model_name="yolov8n.yaml", task_type="detection", epochs=40)
    env = trainer_env(api_server, job, tmp_path, MODEL="yolov8n.yaml", DATA=str(data),
                      EPOCHS="40", IMGSZ="128", BATCH="8")
    job_id = job["job_id"]
    process = subprocess.Popen([str(TRAINER_PYTHON), "-I", str(TRAIN_PY)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: (stack.actions.job(job_id).get("current_epoch") or 0) >= 1,
                   timeout=180, message="the first epoch")
        response = stack.actions.client.post(f"/api/v1/training/jobs/{job_id}/cancel",
                                             headers=stack.actions.operator)
        assert response.status_code in (200, 202), response.get_json()
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output[-4000:]
    ended = stack.actions.job(job_id)
    assert ended["status"] == "cancelled", ended
    assert ended["current_epoch"] < 40
