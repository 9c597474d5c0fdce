"""SDK fixtures: the real platform API served over a socket (werkzeug, in a thread, on a
free port; SQLite, no worker), a scripted server for failures, and a client factory that
closes every client it made."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.conftest import ApiActions
from tests.sdk.servers import LiveServer, ScriptedServer
from trainer_sdk import Client


@pytest.fixture()
def live(api_app) -> Iterator[LiveServer]:
    server = LiveServer(api_app).start()
    yield server
    server.stop()


@pytest.fixture()
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


@pytest.fixture()
def make_client(tmp_path) -> Iterator:
    """`make_client(url, token, job_id, **options)` with test-friendly timings."""
    made: list[Client] = []

    def make(url: str, token: str = "token-for-tests", job_id: int = 1, **options) -> Client:
        settings = dict(spool_dir=tmp_path / "spool", retry_base_delay=0.05,
                        retry_max_delay=0.3, log_interval=0.2, close_timeout=5,
                        timeout=(1.0, 5.0), call_timeout=10)
        settings.update(options)
        client = Client(url, token, job_id, **settings)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=1)


@pytest.fixture()
def job(api: ApiActions, live: LiveServer) -> dict:
    """A job on the live platform, with the callback URL pointing at the live server."""
    created = api.create_job()
    created["callback_url"] = f"{live.url}/api/v1"
    return created


@pytest.fixture()
def job_client(job: dict, make_client):
    def make(**options) -> Client:
        return make_client(job["callback_url"], job["callback_token"], job["job_id"], **options)
    return make


@pytest.fixture(autouse=True)
def _sdk_debug_logs(caplog) -> None:
    caplog.set_level(logging.INFO, logger="trainer_sdk")
