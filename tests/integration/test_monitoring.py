"""Prometheus, Flower and Loki after a scripted job, on the real stack."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from platform_app.devstack import free_port
from tests.conftest import ROOT, wait_until

EPOCH = {"train/box_loss": 1.0, "train/cls_loss": 0.5, "metrics/mAP50-95(B)": 0.25}


def scrape(text: str) -> dict[str, list]:
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def run_scripted_job(stack, epochs: int = 2, complete: bool = True) -> tuple[dict, list[int]]:
    api = stack.actions
    job = api.create_job()
    ids = [api.callback(job, "progress", {"current_epoch": e, "metrics": EPOCH})
           .get_json()["event_id"] for e in range(1, epochs + 1)]
    ids.append(api.callback(job, "logs", {"lines": ["a", "b"]}).get_json()["event_id"])
    if complete:
        ids.append(api.callback(job, "completion", {"status": "completed"})
                   .get_json()["event_id"])
    return job, ids


def job_series(families: dict, job_id: int) -> dict[str, float]:
    return {name: sample.value for name in ("platform_job_current_epoch", "platform_job_loss",
                                            "platform_job_primary_metric")
            for sample in families.get(name, []) if sample.labels["job_id"] == str(job_id)}


def test_api_metrics_hold_the_families_and_job_series_end_with_the_job(stack):
    api = stack.actions
    job, ids = run_scripted_job(stack, complete=False)
    stack.wait_projected(ids)
    families = scrape(api.client.get("/metrics").get_data(as_text=True))
    assert {"platform_http_request_duration_seconds", "platform_callbacks_accepted",
            "platform_outbox_pending_events", "platform_outbox_oldest_pending_age_seconds",
            "platform_job_current_epoch"} <= set(families)
    accepted = {s.labels["kind"]: s.value for s in families["platform_callbacks_accepted"]
                if s.name.endswith("_total")}
    assert accepted["progress"] >= 2 and accepted["logs"] >= 1
    assert job_series(families, job["job_id"]) == {
        "platform_job_current_epoch": 2, "platform_job_loss": 1.5,
        "platform_job_primary_metric": 0.25}
    latency = [s for s in families["platform_http_request_duration_seconds"]
               if s.labels.get("endpoint") == "/api/v1/training/jobs/<int:job_id>/callback/progress"
               and s.name.endswith("_count")]
    assert latency and latency[0].labels["status"] == "202"

    api.callback(job, "completion", {"status": "completed"})
    after = scrape(api.client.get("/metrics").get_data(as_text=True))
    assert job_series(after, job["job_id"]) == {}


def test_worker_metrics_count_tasks_and_sink_calls(stack):
    _, ids = run_scripted_job(stack)
    stack.wait_projected(ids)
    url = f"http://127.0.0.1:{stack.config.WORKER_METRICS_PORT}/metrics"
    families = scrape(requests.get(url, timeout=5).text)
    tasks = {s.labels["task"] for s in families["platform_task_duration_seconds"]}
    assert {"metrics.project_job", "logs.project"} <= tasks
    sinks = {(s.labels["sink"], s.labels["operation"])
             for s in families["platform_sink_request_duration_seconds"]}
    assert ("mlflow", "log_batch") in sinks and ("loki", "push") in sinks


def test_logs_reach_loki_with_job_labels_even_after_an_outage(stack, loki):
    api = stack.actions
    job = api.create_job()
    lines = [f"{job['experiment_name']}-{n}" for n in (1, 2)]  # unique across stacks
    loki.failing = True
    try:
        event = api.callback(job, "logs", {"log_type": "stderr", "lines": lines})
        event_id = event.get_json()["event_id"]
        wait_until(lambda: stack.event(event_id)["attempts"] >= 1, timeout=30,
                   message="a failed push while Loki is down")
        assert not set(lines) & set(loki.lines_of(job["job_id"]))
    finally:
        loki.failing = False
    stack.wait_projected([event_id])
    assert [line for line in loki.lines_of(job["job_id"]) if line in lines] == lines
    stream = next(s["stream"] for p in loki.pushes for s in p["streams"]
                  if s["values"][0][1] == lines[0])
    assert stream == {"job_id": str(job["job_id"]), "log_type": "stderr", "source": "training"}


@pytest.fixture(scope="module")
def flower(stack, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}",
             "--address=127.0.0.1"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            env={**stack.env, "FLOWER_UNAUTHENTICATED_API": "true"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(f"{url}/api/workers", timeout=2).status_code == 200
        except requests.RequestException:
            return process.poll() is not None
    wait_until(up, timeout=60, message="Flower to answer")
    yield url
    os.killpg(process.pid, 15)
    process.wait(20)


def test_flower_lists_the_worker_and_a_finished_task_of_a_job(stack, flower):
    # Flower answers before its event receiver is connected: wait until it has seen a task
    # (the sweeper runs every second) so that the job's tasks cannot slip past it
    wait_until(lambda: requests.get(f"{flower}/api/tasks", timeout=5).json(), timeout=30,
               message="Flower to receive task events")
    job, ids = run_scripted_job(stack, epochs=1, complete=False)
    stack.wait_projected(ids)

    def job_tasks() -> list[dict]:
        tasks = requests.get(f"{flower}/api/tasks", timeout=5).json()
        shown = str({"job_id": job["job_id"]})  # Flower shows kwargs as their repr
        return [t for t in tasks.values() if t.get("kwargs") == shown
                and t.get("state") == "SUCCESS"]
    found = wait_until(job_tasks, timeout=30, message="Flower to list the job's tasks")
    assert {t["name"] for t in found} <= {"metrics.project_job", "logs.project"}
    workers = wait_until(lambda: requests.get(f"{flower}/api/workers", timeout=5).json(),
                         timeout=30, message="Flower to list the worker")
    assert all(name.startswith("celery@") for name in workers)  # Celery's default node name
