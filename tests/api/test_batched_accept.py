"""Callbacks stored together (services/group_commit.py): each gets the outcome it would have
had alone, in arrival order, on both databases the platform runs on."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from platform_app import create_app, init_platform
from platform_app.devstack import create_database
from platform_app.errors import APIError
from platform_app.extensions import db
from platform_app.models import Event, EventKind, Job
from platform_app.services import outbox
from platform_app.services.jobstate import apply_completion, apply_progress
from tests.conftest import ApiActions


@pytest.fixture(params=["sqlite", "postgresql"])
def app_and_api(request, api_config):
    if request.param == "postgresql":
        url = create_database(request.getfixturevalue("postgres_admin_url"), "batched_accept",
                              replace=True)
        api_config = dataclasses.replace(api_config, DATABASE_URL=url)
    redis.Redis.from_url(api_config.REDIS_URL).flushdb()  # as api_app: no flags of other tests
    app = create_app(api_config)
    init_platform(app, bucket=False)
    yield app, ApiActions(app.test_client(), api_config)
    with app.app_context():
        db.engine.dispose()


def progress(job_id: int, epoch: int, key: str | None = None) -> outbox.Callback:
    return outbox.Callback(job_id, EventKind.PROGRESS,
                           {"current_epoch": epoch, "metrics": {"loss": 1.0 / (epoch + 1)}},
                           key, apply_progress)


def completion(job_id: int) -> outbox.Callback:
    return outbox.Callback(job_id, EventKind.COMPLETION,
                           {"status": "completed", "final_metrics": {"loss": 0.1}},
                           None, apply_completion)


def stored_events(job_id: int) -> list[tuple[str, int | None]]:
    events = db.session.scalars(db.select(Event).filter_by(job_id=job_id).order_by(Event.id))
    return [(event.kind.value, event.payload.get("current_epoch")) for event in events]


def test_each_callback_of_a_batch_gets_the_answer_it_would_have_had_alone(app_and_api):
    app, api = app_and_api
    job_a, job_b = api.create_job(), api.create_job()
    a, b = job_a["job_id"], job_b["job_id"]
    api.callback(job_b, "completion", {"status": "failed", "final_metrics": {}})
    batch = [progress(a, 1), progress(b, 1), progress(a, 2), completion(a), progress(a, 3),
             outbox.Callback(b, EventKind.LOGS, {"log_type": "stdout", "lines": ["bye"]}),
             progress(a + b + 100, 1)]
    with app.app_context():
        outcomes = outbox.store_all(batch)
        refused = {index: outcome.error_code for index, outcome in enumerate(outcomes)
                   if isinstance(outcome, APIError)}
        # b had finished before the batch; a finished within it, before its epoch 3
        assert refused == {1: "JOB_FINISHED", 4: "JOB_FINISHED", 6: "JOB_NOT_FOUND"}
        accepted = [outcomes[index].body for index in (0, 2, 3, 5)]
        assert [body["job_status"] for body in accepted] == ["running", "running",
                                                              "completed", "failed"]
        assert accepted[0]["event_id"] < accepted[1]["event_id"] < accepted[2]["event_id"]
        assert stored_events(a) == [("progress", 1), ("progress", 2), ("completion", None)]
        assert stored_events(b) == [("completion", None), ("logs", None)]
        job = db.session.get(Job, a)
        assert (job.status.value, job.current_epoch, job.latest_metrics) == (
            "completed", 2, {"loss": 1.0 / 3})


def test_a_repeated_key_in_a_batch_gets_its_first_answer_and_the_others_are_stored(app_and_api):
    app, api = app_and_api
    a = api.create_job()["job_id"]
    with app.app_context():
        first = outbox.store(a, EventKind.PROGRESS, progress(a, 1).payload, "epoch-1",
                             apply_progress)
        outcomes = outbox.store_all([progress(a, 2, "epoch-2"), progress(a, 1, "epoch-1"),
                                      progress(a, 3, "epoch-1"), progress(a, 3)])
        assert outcomes[1].replayed and outcomes[1].body == first.body
        assert isinstance(outcomes[2], APIError)
        assert outcomes[2].error_code == "IDEMPOTENCY_KEY_REUSED"
        assert not outcomes[0].replayed and not outcomes[3].replayed
        assert stored_events(a) == [("progress", 1), ("progress", 2), ("progress", 3)]


AWKWARD = ["it's", "''", "\\", "\\'", "%s", "%(job_id)s", "$1", "$$", "; DELETE FROM jobs; --",
           "E'\\n'", "line\nbreak\ttab", "é 日本 🚀", "nul \u0000 inside"]


def test_values_are_stored_as_sent_whatever_characters_they_hold(app_and_api):
    """The batch's statements are built once and sent to the driver by hand
    (services/statements.py): quotes, backslashes, placeholders and statement separators
    in the values must arrive as data, on both databases."""
    app, api = app_and_api
    a, b = api.create_job()["job_id"], api.create_job()["job_id"]
    logs = {"log_type": "stdout", "lines": AWKWARD}
    with app.app_context():
        outcomes = outbox.store_all([
            outbox.Callback(a, EventKind.LOGS, logs, "key-'; DROP TABLE events; --"),
            progress(b, 1, "%(id_0)s"),
        ])
        assert not any(isinstance(outcome, Exception) for outcome in outcomes), outcomes
        db.session.expire_all()
        stored = db.session.get(Event, outcomes[0].body["event_id"])
        assert (stored.payload, stored.idempotency_key) == (logs,
                                                            "key-'; DROP TABLE events; --")
        assert db.session.get(Event, outcomes[1].body["event_id"]).idempotency_key == "%(id_0)s"
        assert db.session.scalar(db.select(db.func.count()).select_from(Job)) == 2
        assert db.session.get(Job, b).current_epoch == 1
