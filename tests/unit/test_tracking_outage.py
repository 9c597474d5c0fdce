"""While MLflow is known to be down, work bound for it is skipped at once (services/tracking.py
`TrackingService.available`), and after the interval one caller probes MLflow's health page
before its work runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from platform_app.services.errors import SinkRejected, SinkUnavailable
from platform_app.services.tracking import TrackingService

PROBE_S = 0.3


class HealthPage:
    """A stand-in for the tracking server's health page, answering `status`."""

    def __init__(self) -> None:
        self.status, self.requests = 200, 0
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                page.requests += 1
                self.send_response(page.status if self.path == "/health" else 404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def health() -> Iterator[HealthPage]:
    page = HealthPage()
    yield page
    page.server.shutdown()


@pytest.fixture()
def tracking(health: HealthPage) -> TrackingService:
    return TrackingService(health.url, timeout_s=1, max_retries=0, outage_probe_s=PROBE_S)


def attempt(tracking: TrackingService, error: Exception | None = None) -> bool:
    """Whether the guarded work ran (it raises `error` when given one)."""
    ran = False
    with tracking.available():
        ran = True
        if error is not None:
            raise error
    return ran


def test_after_an_outage_work_is_refused_without_running_until_the_probe(tracking):
    with pytest.raises(SinkUnavailable):
        attempt(tracking, SinkUnavailable("MLflow unreachable"))
    ran = []
    with pytest.raises(SinkUnavailable, match="next probe within 0.3 s"):
        with tracking.available():
            ran.append(True)
    assert ran == []
    time.sleep(PROBE_S + 0.05)
    assert attempt(tracking)  # the probe runs, succeeds, and the way is open again
    assert attempt(tracking)


def test_a_failed_probe_closes_the_way_again(tracking):
    with pytest.raises(SinkUnavailable):
        attempt(tracking, SinkUnavailable("MLflow unreachable"))
    time.sleep(PROBE_S + 0.05)
    with pytest.raises(SinkUnavailable, match="still down"):
        attempt(tracking, SinkUnavailable("still down"))
    with pytest.raises(SinkUnavailable, match="next probe"):
        attempt(tracking)


@pytest.mark.parametrize("error", [SinkRejected("bad metric"), ValueError("a bug"), KeyError()])
def test_only_an_unavailable_mlflow_closes_the_way(tracking, error):
    with pytest.raises(type(error)):
        attempt(tracking, error)
    assert attempt(tracking)


def test_the_probe_asks_the_health_page_before_the_work_runs(tracking, health):
    assert tracking.outage_left_s() == 0
    with pytest.raises(SinkUnavailable):
        attempt(tracking, SinkUnavailable("MLflow unreachable"))
    assert 0 < tracking.outage_left_s() <= PROBE_S
    time.sleep(PROBE_S + 0.05)
    assert tracking.outage_left_s() == 0  # due: the next caller probes
    health.status = 503
    ran = []
    with pytest.raises(SinkUnavailable, match="health page answered 503"):
        with tracking.available():
            ran.append(True)
    assert ran == [] and health.requests == 1
    assert 0 < tracking.outage_left_s() <= PROBE_S  # the failed probe starts a new interval
    time.sleep(PROBE_S + 0.05)
    health.status = 200
    assert attempt(tracking)
    assert attempt(tracking) and health.requests == 2  # closed again: no probe per call
    assert tracking.outage_left_s() == 0


def test_a_server_without_a_health_page_counts_as_back(health):
    """A proxy in front of MLflow may answer 404 there; only server errors mean down."""
    behind_a_proxy = TrackingService(health.url + "/mlflow", timeout_s=1, max_retries=0,
                                     outage_probe_s=PROBE_S)
    with pytest.raises(SinkUnavailable):
        attempt(behind_a_proxy, SinkUnavailable("MLflow unreachable"))
    time.sleep(PROBE_S + 0.05)
    assert attempt(behind_a_proxy) and health.requests == 1


def test_an_unreachable_server_fails_the_probe():
    unreachable = TrackingService("http://127.0.0.1:9", timeout_s=1, max_retries=0,
                                  outage_probe_s=PROBE_S)
    with pytest.raises(SinkUnavailable):
        attempt(unreachable, SinkUnavailable("MLflow unreachable"))
    time.sleep(PROBE_S + 0.05)
    with pytest.raises(SinkUnavailable, match="Connection refused"):
        attempt(unreachable)
    assert unreachable.outage_left_s() > 0
