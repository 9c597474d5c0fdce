"""MLflow as a projection target: one experiment per experiment name, one run per job.

Every call here may run twice (at-least-once delivery, retries, the sweeper), so run
creation is create-or-find by the `platform.job_id` tag and metric points carry the
timestamp fixed when the callback was accepted, which MLflow stores once however often
the same point is logged.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pybreaker
from mlflow.entities import Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

from platform_app.metrics import sink_call
from platform_app.services.errors import SinkRejected, SinkUnavailable

JOB_ID_TAG = "platform.job_id"
JOB_UID_TAG = "platform.job_uid"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
LOG_BATCH_ENDPOINT = "/api/2.0/mlflow/runs/log-batch"  # MLflow's REST API, documented
HEALTH_ENDPOINT = "/health"  # the tracking server's liveness page
JSON_HEADERS = {"Content-Type": "application/json"}
_ILLEGAL = re.compile(r"[^/\w.\- ]")


def legal_metric_key(key: str) -> str:
    """A stable MLflow-legal name: parentheses dropped as Ultralytics' own MLflow callback
    does (`metrics/mAP50-95(B)` → `metrics/mAP50-95B`), other illegal characters become
    `_`, and path segments that MLflow refuses (empty, `.`, `..`) are dropped or replaced."""
    cleaned = _ILLEGAL.sub("_", key.replace("(", "").replace(")", ""))
    segments = [s if s != ".." else "_" for s in cleaned.split("/") if s not in ("", ".")]
    name = "/".join(segments)
    return name or "_"


@dataclass(frozen=True)
class RunSpec:
    job_id: int
    job_uid: str
    run_name: str
    tags: dict[str, str]
    params: dict[str, str]


@dataclass(frozen=True)
class Point:
    key: str
    # as the callback stored it: a number, or "NaN" / "Infinity" / "-Infinity" — which is
    # also how MLflow's REST API (proto3 JSON) spells a double that JSON cannot
    value: float | str
    step: int
    timestamp_ms: int


TERMINAL_RUN_STATUS = {
    "completed": RunStatus.to_string(RunStatus.FINISHED),
    "failed": RunStatus.to_string(RunStatus.FAILED),
    "cancelled": RunStatus.to_string(RunStatus.KILLED),
}


@contextmanager
def _classified(operation: str) -> Iterator[None]:
    """MLflow raises one exception type; tell data it refuses from outages. Timed and
    counted per operation for Prometheus."""
    try:
        with sink_call("mlflow", operation):
            yield
    except MlflowException as exc:
        status = exc.get_http_status_code()
        if 400 <= status < 500 and status not in (408, 429):
            raise SinkRejected(f"MLflow refused the request: {exc.message}") from exc
        raise SinkUnavailable(f"MLflow unavailable: {exc.message}") from exc
    except OSError as exc:
        raise SinkUnavailable(f"MLflow unreachable: {exc}") from exc


class TrackingService:
    def __init__(self, tracking_uri: str, timeout_s: int, max_retries: int,
                 outage_probe_s: float = 1.0) -> None:
        # The MLflow client reads these only from the environment. Its defaults (7 retries,
        # 120 s timeout) would hold a worker for minutes; the queue does the retrying.
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self._host_creds = _host_creds_source(self.client)
        # Opened by MLflow being unavailable, not by data it refuses or anything else.
        self._opened = _OpenedAt()
        self._outage = pybreaker.CircuitBreaker(
            fail_max=1, reset_timeout=outage_probe_s, throw_new_error_on_trip=False,
            exclude=[lambda exc: not isinstance(exc, SinkUnavailable)],
            listeners=[self._opened])

    @contextmanager
    def available(self) -> Iterator[None]:
        """Work that ends in MLflow writes, skipped at once while MLflow is known to be down.

        This process's last MLflow call found it unavailable: for `outage_probe_s` whatever
        runs under this fails with SinkUnavailable before it starts, then the next caller
        probes MLflow's health page before its work runs. During an outage every callback of
        a job could start a metrics task; each loaded the job's pending events and encoded
        them, only to be refused a connection (~0.45 of the 2 cores here with MLflow stopped
        in `make bench`'s half-load phase, cores MLflow's absence should have given back to
        the request path), and a probe that was the work itself still did so once per
        interval and process."""
        try:
            with self._outage.calling():
                if self._outage.current_state == pybreaker.STATE_HALF_OPEN:
                    self._probe()
                yield
        except pybreaker.CircuitBreakerError as exc:
            raise SinkUnavailable(
                f"MLflow unavailable: its last request failed, next probe within "
                f"{self._outage.reset_timeout:g} s") from exc

    def outage_left_s(self) -> float:
        """How long this process still treats MLflow as down without asking it: 0 when MLflow
        is not known to be down, or when its probe is due."""
        if self._outage.current_state != pybreaker.STATE_OPEN:
            return 0.0
        return max(0.0, self._opened.at + self._outage.reset_timeout - time.monotonic())

    def _probe(self) -> None:
        """Any answer but a server error means MLflow is back: a proxy in front of it may not
        serve the health page, and the work that follows finds out about the rest."""
        with _classified("health"):
            response = http_request(self._host_creds(), HEALTH_ENDPOINT, "GET",
                                    max_retries=0, raise_on_status=False)
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise SinkUnavailable(f"MLflow unavailable: its health page answered "
                                  f"{response.status_code}")

    def ensure_experiment(self, name: str) -> str:
        with _classified("ensure_experiment"):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            try:
                return self.client.create_experiment(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                return self.client.get_experiment_by_name(name).experiment_id

    def ensure_run(self, spec: RunSpec, experiment_id: str) -> str:
        """Find the job's run by its uid tag or create it; safe to repeat after a crash
        between creating the run and storing its id."""
        with _classified("ensure_run"):
            found = self.client.search_runs(
                [experiment_id], filter_string=f"tags.`{JOB_UID_TAG}` = '{spec.job_uid}'",
                max_results=1)
            if found:
                return found[0].info.run_id
            tags = {**spec.tags, JOB_ID_TAG: str(spec.job_id), JOB_UID_TAG: spec.job_uid}
            run = self.client.create_run(experiment_id, tags=tags, run_name=spec.run_name)
            params = [Param(k, _param_value(v)) for k, v in spec.params.items()]
            for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run.info.run_id,
                                      params=params[start:start + MAX_PARAMS_PER_BATCH])
            return run.info.run_id

    def log_points(self, run_id: str, points: Sequence[Point]) -> int:
        """Write points in as few requests as MLflow allows; returns the request count.

        Posted as the REST API's LogBatch body with MLflow's own request function (its
        retries, timeout and credentials), not through `MlflowClient.log_batch`: the
        client turns each metric into a protobuf message and the batch into indented JSON in
        pure Python, which cost the worker several times its own work per batch — CPU that
        MLflow, on the same cores, needs (`make bench`, mlflow.metrics_per_s)."""
        requests = 0
        with _classified("log_batch"):
            for start in range(0, len(points), MAX_METRICS_PER_BATCH):
                body = {"run_id": run_id, "metrics": [
                    {"key": p.key, "value": p.value, "timestamp": p.timestamp_ms,
                     "step": p.step} for p in points[start:start + MAX_METRICS_PER_BATCH]]}
                response = http_request(self._host_creds(), LOG_BATCH_ENDPOINT, "POST",
                                        data=json.dumps(body), extra_headers=JSON_HEADERS)
                verify_rest_response(response, LOG_BATCH_ENDPOINT)
                requests += 1
        return requests

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with _classified("set_tags"):
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def finish_run(self, run_id: str, job_status: str, end_ms: int) -> None:
        with _classified("set_terminated"):
            self.client.set_terminated(run_id, TERMINAL_RUN_STATUS[job_status], end_time=end_ms)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class _OpenedAt(pybreaker.CircuitBreakerListener):
    """When the breaker last opened (monotonic seconds); pybreaker keeps it only in its
    storage, in wall-clock time."""

    def __init__(self) -> None:
        self.at = 0.0

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: object,
                     new_state: pybreaker.CircuitBreakerState) -> None:
        if new_state.name == pybreaker.STATE_OPEN:
            self.at = time.monotonic()


def _host_creds_source(client: MlflowClient) -> Callable[[], MlflowHostCreds]:
    """The client's own source of server address and credentials (tracking URI, MLflow's
    environment variables: token, basic auth, TLS, auth plugins; asked per request, as the
    client does, so refreshed tokens apply), so that both ways of talking to the server
    authenticate alike. MLflow exposes it only on its store object."""
    return client._tracking_client.store.get_host_creds


def _param_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text[:MAX_PARAM_VALUE]
