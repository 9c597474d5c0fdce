"""The sender against a scripted server: retries with backoff keep order, 429 Retry-After is
honoured, refusals are final, proxy pages parse, a stop request reaches the trainer."""

from __future__ import annotations

import threading

import pytest
import requests

from tests.sdk.servers import Reply
from trainer_sdk import APIError, transport
from trainer_sdk.errors import parse_retry_after
from trainer_sdk.transport import backoff_delay

PROGRESS = "/callback/progress"


def progress_requests(server) -> list[dict]:
    return [r.json() | {"_key": r.headers["Idempotency-Key"], "_at": r.at}
            for r in server.matching(PROGRESS)]


def test_5xx_is_retried_with_backoff_and_order_is_kept(scripted, make_client, monkeypatch):
    backoffs: list[int] = []

    def recording_backoff(attempt: int, base: float, cap: float) -> float:
        backoffs.append(attempt)
        return backoff_delay(attempt, base, cap)

    monkeypatch.setattr(transport, "backoff_delay", recording_backoff)
    # the adapter retries 500/502/504 twice at once; the sender then backs off
    scripted.script(PROGRESS, [Reply(503, {"error_code": "DEPENDENCY_UNAVAILABLE",
                                           "message": "db down", "details": {}})] * 3
                    + [Reply(500, {"error_code": "INTERNAL_ERROR", "message": "x"})] * 3)
    client = make_client(f"{scripted.url}/api/v1", retry_base_delay=0.1, retry_max_delay=1)
    for epoch in (1, 2, 3):
        client.report_progress(epoch, {"loss": float(epoch)})
    assert client.flush(15)

    seen = progress_requests(scripted)
    assert len(seen) == 3 + 3 + 3
    first_key = seen[0]["_key"]
    attempts_of_first = [r for r in seen if r["_key"] == first_key]
    assert len(attempts_of_first) == 7  # 3 × 503, 1 + 2 adapter retries of 500, success
    assert all(r["current_epoch"] == 1 for r in attempts_of_first)
    delivered = [r["current_epoch"] for r in seen[len(attempts_of_first) - 1:]]
    assert delivered == [1, 2, 3]  # nothing overtook the event being retried
    # the sender backs off between its attempts, with growing attempt numbers
    assert backoffs[:3] == [1, 2, 3]


def test_429_retry_after_is_honoured(scripted, make_client, caplog):
    scripted.script(PROGRESS, [Reply(429, {"error_code": "RATE_LIMITED", "message": "slow"},
                                     headers={"Retry-After": "1"})])
    client = make_client(f"{scripted.url}/api/v1")
    client.report_progress(1, {"loss": 1.0})
    assert client.flush(10)
    first, second = scripted.matching(PROGRESS)
    assert "retrying in 1.0 s" in caplog.text  # the wait the sender chose: the server's
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


def test_4xx_refusals_are_final_and_logged(scripted, make_client, caplog):
    scripted.script(PROGRESS, [Reply(422, {"error_code": "VALIDATION_ERROR",
                                           "message": "request body failed validation",
                                           "details": {"metrics": ["bad"]}})])
    client = make_client(f"{scripted.url}/api/v1")
    client.report_progress(1, {"loss": 1.0})
    client.report_progress(2, {"loss": 1.0})
    assert client.flush(5)
    assert [r.json()["current_epoch"] for r in scripted.matching(PROGRESS)] == [1, 2]
    assert "VALIDATION_ERROR" in caplog.text and "dropped" in caplog.text


def test_stop_request_in_an_answer_sets_stop_requested(scripted, make_client):
    scripted.script(PROGRESS, [Reply(202, {"event_id": 1, "job_status": "running"}),
                               Reply(202, {"event_id": 2, "job_status": "running",
                                           "stop_requested": True})])
    client = make_client(f"{scripted.url}/api/v1")
    client.report_progress(1, {})
    assert client.flush(5) and client.stop_requested is False
    client.report_progress(2, {})
    assert client.flush(5) and client.stop_requested is True
    client.complete()  # after a stop request the end is reported as cancelled
    completion = scripted.matching("/callback/completion")[-1].json()
    assert completion["status"] == "cancelled"


def test_job_finished_as_cancelled_also_stops(scripted, make_client):
    scripted.script(PROGRESS, [Reply(409, {"error_code": "JOB_FINISHED", "message": "done",
                                           "details": {"job_id": 1, "status": "cancelled"}})])
    client = make_client(f"{scripted.url}/api/v1")
    client.report_progress(5, {})
    assert client.flush(5)
    assert client.stop_requested is True
    assert len(scripted.matching(PROGRESS)) == 1  # not retried


def finishes(action) -> bool:
    """Runs `action` in a thread; False if it is still running after 30 s (a hang guard for
    calls that must not wait on the platform, not a stopwatch)."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(30)
    return not thread.is_alive()


def test_a_hanging_platform_blocks_neither_the_loop_nor_close(scripted, make_client):
    """The platform takes the first POST and never answers: every report_progress still
    returns at once and keeps its event, and close() gives up as told and spools them."""
    answer = threading.Event()
    scripted.script(PROGRESS, [Reply(202, hold=answer)])
    client = make_client(f"{scripted.url}/api/v1", timeout=(1.0, 60.0))
    try:
        assert finishes(lambda: [client.report_progress(epoch, {"loss": 1.0})
                                 for epoch in range(1, 51)])
        assert len(scripted.matching(PROGRESS)) <= 1  # the held one; the others wait behind it
        assert client.pending() == 50
        closed: list[bool] = []
        assert finishes(lambda: closed.append(client.close(timeout=1)))
        assert closed == [False]
        assert len(client.spool_path.read_text().splitlines()) == 50
    finally:
        answer.set()


def test_report_progress_from_many_threads(scripted, make_client):
    client = make_client(f"{scripted.url}/api/v1")

    def report(base: int) -> None:
        for i in range(25):
            client.report_progress(base + i, {"loss": 1.0})

    threads = [threading.Thread(target=report, args=(n * 100,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert client.flush(20)
    sent = [r.json()["current_epoch"] for r in scripted.matching(PROGRESS)]
    assert sorted(sent) == sorted(n * 100 + i for n in range(4) for i in range(25))
    for n in range(4):  # each thread's own events stay in its order
        mine = [e for e in sent if n * 100 <= e < n * 100 + 100]
        assert mine == sorted(mine)


def test_api_error_parses_the_platform_body_and_proxy_pages():
    def response(status: int, body: bytes, content_type: str, headers=None):
        r = requests.Response()
        r.status_code = status
        r._content = body
        r.headers["Content-Type"] = content_type
        r.headers.update(headers or {})
        r.reason = "Bad Gateway"
        return r

    error = APIError.from_response(response(
        409, b'{"error_code": "JOB_FINISHED", "message": "job 3 has already finished", '
             b'"details": {"job_id": 3, "status": "completed"}}', "application/json"))
    assert (error.status, error.error_code, error.details["status"]) == (
        409, "JOB_FINISHED", "completed")
    assert not error.transient

    page = APIError.from_response(response(
        502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html",
        {"Retry-After": "7"}))
    assert page.status == 502 and page.error_code == "HTTP_502"
    assert "Bad Gateway" in page.message and page.transient and page.retry_after == 7

    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert parse_retry_after("soon") is None


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses(status):
    assert APIError(status, "X", "m").transient
