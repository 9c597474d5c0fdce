"""The SDK against the real platform API over a socket: what the platform stores is what the
trainer sent, in order, once — also across an outage, a spool and a replay."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import sqlalchemy as sa

from platform_app.extensions import db
from platform_app.models import Event
from tests.conftest import wait_until
from trainer_sdk import APIError, Client


def stored(app, job_id: int, kind: str | None = None) -> list[Event]:
    with app.app_context():
        query = sa.select(Event).where(Event.job_id == job_id).order_by(Event.id)
        events = db.session.scalars(query).all()
        db.session.expunge_all()
    return [e for e in events if kind is None or e.kind.value == kind]


def epochs(events: list[Event]) -> list[int]:
    return [e.payload["current_epoch"] for e in events]


def test_progress_logs_and_completion_arrive_in_order(api_app, api, job, job_client):
    client = job_client(log_batch_lines=1000)
    for epoch in range(1, 31):
        client.log([f"epoch {epoch} line {i}" for i in range(3)])
        client.report_progress(epoch, {"train/box_loss": 1 / epoch, "metrics/mAP50(B)": None,
                                       "lr/pg0": float("nan")}, total_epochs=30)
    assert client.complete({"metrics/mAP50-95(B)": 0.5}) is True

    events = stored(api_app, job["job_id"])
    kinds = [e.kind.value for e in events]
    assert kinds == ["logs", "progress"] * 30 + ["completion"]
    assert epochs([e for e in events if e.kind.value == "progress"]) == list(range(1, 31))
    lines = [line for e in events if e.kind.value == "logs" for line in e.payload["lines"]]
    assert lines == [f"epoch {n} line {i}" for n in range(1, 31) for i in range(3)]
    assert events[1].payload["metrics"] == {"train/box_loss": 1.0, "metrics/mAP50(B)": None,
                                            "lr/pg0": "NaN"}
    assert all(e.idempotency_key for e in events)
    assert len({e.idempotency_key for e in events}) == len(events)
    finished = api.job(job["job_id"])
    assert finished["status"] == "completed"
    assert finished["final_metrics"] == {"metrics/mAP50-95(B)": 0.5}
    assert finished["current_epoch"] == 30 and finished["total_epochs"] == 30


def test_logs_are_batched_by_count_and_by_time(api_app, job, job_client):
    client = job_client(log_batch_lines=100, log_interval=0.3)
    client.log("\n".join(f"line {i}" for i in range(250)))
    assert client.flush(10)
    batches = [len(e.payload["lines"]) for e in stored(api_app, job["job_id"], "logs")]
    assert batches == [250]  # flush() cuts what is buffered, in one batch

    counted = job_client(log_batch_lines=100, log_interval=600)  # the timer stays out of it
    counted.log([f"counted {i}" for i in range(100)])  # a full batch goes without a flush
    wait_until(lambda: len(stored(api_app, job["job_id"], "logs")) > len(batches), timeout=30,
               message="the batch cut by its line count")
    batches = [len(e.payload["lines"]) for e in stored(api_app, job["job_id"], "logs")]
    assert batches == [250, 100]

    client.log(["one", "two"])  # no flush: the interval sends it
    wait_until(lambda: len(stored(api_app, job["job_id"], "logs")) > len(batches), timeout=5,
               message="the time-batched log lines")
    assert stored(api_app, job["job_id"], "logs")[-1].payload["lines"] == ["one", "two"]


def test_outage_spools_to_disk_and_replays_without_loss_or_duplicates(
        api_app, live, job, job_client, tmp_path):
    client = job_client(spool_after=0.2)
    for epoch in range(1, 4):
        client.report_progress(epoch, {"loss": epoch})
    assert client.flush(10)

    live.stop()  # connection refused from now on
    for epoch in range(4, 21):
        client.report_progress(epoch, {"loss": epoch})
        client.log([f"line {epoch}"])
    wait_until(lambda: client.spool_path.exists() and client.spool_path.stat().st_size > 0,
               timeout=10, message="events to be spooled")
    assert client.pending() > 0
    assert client.flush(0.5) is False

    live.start()
    assert client.flush(30), "the spool was not replayed"
    progress = stored(api_app, job["job_id"], "progress")
    assert epochs(progress) == list(range(1, 21))  # nothing lost, nothing twice, in order
    logs = stored(api_app, job["job_id"], "logs")
    assert [line for e in logs for line in e.payload["lines"]] == [
        f"line {n}" for n in range(4, 21)]
    assert client.spool_path.stat().st_size == 0  # emptied once replayed


def test_a_replayed_spool_stores_nothing_twice(api_app, live, job, job_client, tmp_path):
    """A spool left by a run that died after delivering part of it is replayed by the next
    client for the job: the idempotency keys make the platform store each event once."""
    first = job_client(spool_after=0.1)
    live.stop()
    for epoch in range(1, 11):
        first.report_progress(epoch, {"loss": epoch})
    wait_until(lambda: first.spool_path.exists() and first.spool_path.stat().st_size > 0,
               timeout=10, message="events to be spooled")
    assert first.close(timeout=0.5) is False  # bounded; the spool file stays
    spooled = first.spool_path
    copy = tmp_path / "copy.jsonl"
    shutil.copyfile(spooled, copy)

    live.start()
    second = job_client()
    assert second.spool_path == spooled
    assert second.flush(20)
    assert epochs(stored(api_app, job["job_id"], "progress")) == list(range(1, 11))
    second.close()

    shutil.copyfile(copy, spooled)  # as if the replaying process died before noting it
    third = job_client()
    assert third.flush(20)
    assert epochs(stored(api_app, job["job_id"], "progress")) == list(range(1, 11))


def test_reports_during_an_outage_are_all_kept(live, job, job_client):
    """How long report_progress takes is the benchmark's business (`sdk.*`); here: with the
    platform gone, every report is accepted and ends up in the spool, none lost."""
    client = job_client(spool_after=0.2)
    metrics = {f"metric/{i}": float(i) for i in range(20)}
    live.stop()
    for epoch in range(1, 501):
        client.report_progress(epoch, metrics, total_epochs=500)
        if epoch % 100 == 0:
            time.sleep(0.3)  # let the sender fail, back off and spool meanwhile
    assert client.close(timeout=1) is False
    spooled = [json.loads(line) for line in client.spool_path.read_text().splitlines()]
    assert [event["body"]["current_epoch"] for event in spooled] == list(range(1, 501))


def test_close_is_bounded_and_keeps_what_it_could_not_send(live, job, job_client):
    client = job_client(spool_after=60)  # the outage is too short to spool on its own
    live.stop()
    for epoch in range(1, 6):
        client.report_progress(epoch, {"loss": 1.0})
    assert client.close(timeout=1) is False
    lines = client.spool_path.read_text().splitlines()
    assert len(lines) == 5


def test_transport_errors_never_raise_into_training(make_client, tmp_path):
    closed = "http://127.0.0.1:9/api/v1"  # discard port: connection refused
    client = make_client(closed, call_timeout=0.5, close_timeout=0.5)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    client.report_progress(1, {"loss": 1.0})
    client.log("a line")
    assert client.upload_checkpoint(checkpoint, "best") is None
    assert client.upload_artifact(checkpoint, "validation_plot") is None
    client.send_validation({"epoch": 1, "task_type": "detection"}, timeout=0.3)
    assert client.complete(timeout=0.3) is False
    assert client.stop_requested is False
    assert client.close() is False  # what it could not send stays in the spool


def test_finished_job_drops_progress_and_carries_on(api_app, api, job, job_client, caplog):
    client = job_client()
    client.report_progress(1, {"loss": 1.0})
    assert client.complete()
    client.report_progress(2, {"loss": 0.5})  # 409 JOB_FINISHED: dropped, not retried
    client.log("after the end")               # logs are still accepted
    assert client.flush(5)
    assert epochs(stored(api_app, job["job_id"], "progress")) == [1]
    assert stored(api_app, job["job_id"], "logs")[-1].payload["lines"] == ["after the end"]
    assert "already finished" in caplog.text


def test_context_manager_reports_the_traceback_and_reraises(api, job, make_client):
    with pytest.raises(ZeroDivisionError):
        with make_client(job["callback_url"], job["callback_token"], job["job_id"]) as client:
            client.report_progress(1, {"loss": 1.0})
            1 / 0  # noqa: B018
    failed = api.job(job["job_id"])
    assert failed["status"] == "failed"
    assert "ZeroDivisionError" in failed["error_message"]
    assert "Traceback" in failed["error_message"]


def test_send_validation_arrives_and_refused_data_raises(api, job, job_client):
    client = job_client()
    client.send_validation({"epoch": 3, "task_type": "detection",
                            "class_names": ["rectangle", "ellipse"],
                            "confusion_matrix": [[3, 0, 1], [0, 2, 0], [1, 0, 0]],
                            "primary_metric_name": "metrics/mAP50-95(B)",
                            "primary_metric_value": 0.4})
    with pytest.raises(APIError) as refused:
        client.send_validation({"epoch": 4, "task_type": "detection",
                                "confusion_matrix": [[1, 2]]})
    assert refused.value.status == 422
    assert refused.value.error_code == "VALIDATION_ERROR"
    assert "confusion_matrix" in refused.value.details
    assert api.job(job["job_id"])["status"] == "pending"  # validation moves no job state


def test_bad_arguments_raise_at_once(make_client):
    client = make_client("http://127.0.0.1:9/api/v1")
    with pytest.raises(TypeError):
        client.report_progress(1, {"loss": "high"})
    with pytest.raises(TypeError):
        client.report_progress(True, {})
    with pytest.raises(ValueError):
        client.report_progress(-1, {})
    with pytest.raises(TypeError):
        client.report_progress(1, [("loss", 1.0)])
    with pytest.raises(ValueError):
        client.log(["x"], log_type="Not A Type")
    with pytest.raises(ValueError):
        client.upload_checkpoint(__file__, "final")
    with pytest.raises(FileNotFoundError):
        client.upload_checkpoint("/no/such/file.pt", "best")
    with pytest.raises(ValueError):
        client.send_validation({"epoch": 1})
    with pytest.raises(ValueError):
        Client("ftp://example", "token", 1)
    with pytest.raises(ValueError, match="CALLBACK_TOKEN"):
        Client.from_env({"CALLBACK_URL": "http://127.0.0.1:9/api/v1", "JOB_ID": "1"})


def test_an_operator_cancel_reaches_the_trainer(api, job, job_client):
    client = job_client()
    client.report_progress(1, {"loss": 1.0})
    assert client.flush(5)
    response = api.client.post(f"/api/v1/training/jobs/{job['job_id']}/cancel",
                               headers=api.operator)
    assert response.status_code == 202, response.get_json()
    client.report_progress(2, {"loss": 0.9})
    assert client.flush(5)
    assert client.stop_requested is True
    assert client.complete()
    assert api.job(job["job_id"])["status"] == "cancelled"
