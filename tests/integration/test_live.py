"""Live updates over WebSocket, across API processes, with replay on reconnect."""

from __future__ import annotations

import json
import threading
from contextlib import ExitStack

import pytest
import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.conftest import wait_until


class Viewer:
    """A WebSocket client collecting a job's messages in the background."""

    def __init__(self, server, job_id: int, token: str, since: int | None = None) -> None:
        url = server.url.replace("http", "ws") + f"/ws/jobs/{job_id}?token={token}"
        if since is not None:
            url += f"&since={since}"
        self._exit = ExitStack()
        self.ws = self._exit.enter_context(connect(url, open_timeout=10))
        self.messages: list[dict] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for data in self.ws:
                self.messages.append(json.loads(data))
        except ConnectionClosed:
            pass

    def of_type(self, *types: str) -> list[dict]:
        return [m for m in self.messages if m["type"] in types]

    def close(self) -> None:
        self._exit.close()


def view_token(server, stack, job) -> str:
    response = requests.post(f"{server.url}/api/v1/training/jobs/{job['job_id']}/view-token",
                             headers=stack.actions.operator, timeout=10)
    assert response.status_code == 201, response.text
    return response.json()["token"]


def post(server, job, kind: str, body: dict) -> int:
    response = requests.post(
        f"{server.url}/api/v1/training/jobs/{job['job_id']}/callback/{kind}", json=body,
        headers={"Authorization": f"Bearer {job['callback_token']}"}, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["event_id"]


def test_event_accepted_by_one_process_reaches_a_socket_on_another(stack, api_servers):
    a, b = api_servers
    job = stack.actions.create_job()
    viewer = Viewer(a, job["job_id"], view_token(a, stack, job))
    wait_until(lambda: viewer.of_type("snapshot"), message="the snapshot")
    assert viewer.of_type("snapshot")[0]["data"]["status"] == "pending"
    event_id = post(b, job, "progress", {"current_epoch": 1, "metrics": {"loss": 0.5}})
    wait_until(lambda: viewer.of_type("training_progress"), message="the live event")
    live = viewer.of_type("training_progress")[0]
    assert live["event_id"] == event_id and live["job_id"] == job["job_id"]
    assert live["data"]["metrics"] == {"loss": 0.5}
    wait_until(lambda: [m for m in viewer.of_type("projected") if m["event_id"] == event_id],
               timeout=30, message="the 'in MLflow' notice")
    wait_until(lambda: viewer.of_type("heartbeat"), message="a heartbeat on a quiet socket")
    viewer.close()


def test_reconnect_with_since_replays_without_gap_or_duplicate(stack, api_servers):
    a, b = api_servers
    job = stack.actions.create_job()
    token = view_token(a, stack, job)
    first = Viewer(a, job["job_id"], token)
    wait_until(lambda: first.of_type("snapshot"), message="the snapshot")
    seen = [post(b, job, "progress", {"current_epoch": e, "metrics": {"loss": e}})
            for e in (1, 2)]
    wait_until(lambda: len(first.of_type("training_progress")) == 2, message="two events")
    first.close()
    missed = [post(b, job, "progress", {"current_epoch": e, "metrics": {"loss": e}})
              for e in (3, 4)]
    missed.append(post(b, job, "logs", {"lines": ["while away"]}))
    second = Viewer(b, job["job_id"], token, since=seen[-1])
    wait_until(lambda: len(second.of_type("training_progress", "log")) == 3,
               message="the replayed events")
    later = post(a, job, "progress", {"current_epoch": 5, "metrics": {"loss": 5}})
    wait_until(lambda: len(second.of_type("training_progress", "log")) == 4,
               message="the live event after the replay")
    ids = [m["event_id"] for m in second.of_type("training_progress", "log")]
    assert ids == missed + [later]
    second.close()


def test_a_socket_that_never_reads_holds_back_nobody(stack, api_servers):
    a, b = api_servers
    job = stack.actions.create_job()
    token = view_token(a, stack, job)
    stalled = ExitStack()
    stalled.enter_context(connect(a.url.replace("http", "ws") + f"/ws/jobs/{job['job_id']}"
                                  f"?token={token}", max_queue=1))  # connected, never read
    reader = Viewer(a, job["job_id"], token)
    wait_until(lambda: reader.of_type("snapshot"), message="the snapshot")
    lines = ["x" * 4000] * 50  # ~200 KB per event: the stalled socket's buffers fill fast
    ids = [post(b, job, "logs", {"lines": lines}) for _ in range(120)]
    wait_until(lambda: len(reader.of_type("log")) == len(ids), timeout=60,
               message="every event at the reading socket")
    assert [m["event_id"] for m in reader.of_type("log")] == ids
    reader.close()
    stalled.close()


@pytest.mark.parametrize("case", ["forged", "other job", "none"])
def test_sockets_need_a_view_token_of_their_job(stack, api_servers, case):
    a, _ = api_servers
    job, other = stack.actions.create_job(), stack.actions.create_job()
    token = {"forged": "x.y.z", "other job": view_token(a, stack, other), "none": ""}[case]
    with connect(a.url.replace("http", "ws") + f"/ws/jobs/{job['job_id']}?token={token}") as ws:
        message = json.loads(ws.recv(timeout=10))
        assert message["type"] == "error"
        assert message["error_code"] == {"forged": "INVALID_TOKEN", "other job": "FORBIDDEN",
                                         "none": "UNAUTHENTICATED"}[case]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


def test_callback_token_is_not_a_view_token(stack, api_servers):
    a, _ = api_servers
    job = stack.actions.create_job()
    with connect(a.url.replace("http", "ws") +
                 f"/ws/jobs/{job['job_id']}?token={job['callback_token']}") as ws:
        assert json.loads(ws.recv(timeout=10))["error_code"] == "INVALID_TOKEN"
