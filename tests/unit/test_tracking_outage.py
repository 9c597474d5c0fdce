"""While MLflow is known to be down, work bound for it is skipped at once (services/tracking.py
`TrackingService.available`), and one caller probes again after the interval."""

from __future__ import annotations

import time

import pytest

from platform_app.services.errors import SinkRejected, SinkUnavailable
from platform_app.services.tracking import TrackingService

PROBE_S = 0.3


@pytest.fixture()
def tracking() -> TrackingService:
    return TrackingService("http://127.0.0.1:9", timeout_s=1, max_retries=0,
                           outage_probe_s=PROBE_S)


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
