"""A projection's failed attempt is counted on its event (services/outbox.record_failure),
and only while the event is pending: a task whose event was projected or failed elsewhere
meanwhile must not retry it nor report the failure as its own."""

from __future__ import annotations

from datetime import timedelta

from platform_app.extensions import db
from platform_app.models import Event, EventKind, EventState, utcnow
from platform_app.services import outbox


def stored_event(api) -> int:
    job = api.create_job()
    accepted = outbox.store(job["job_id"], EventKind.LOGS,
                            {"log_type": "stdout", "lines": ["hello"]}, None)
    return accepted.event.id


def fail(event_id: int, *, retryable: bool = True, max_attempts: int = 3):
    return outbox.record_failure(event_id, "MLflow unavailable", retryable=retryable,
                                 max_attempts=max_attempts, retry_in_s=60)


def event(event_id: int) -> Event:
    db.session.expire_all()
    return db.session.get(Event, event_id)


def test_a_retryable_failure_is_counted_and_the_retry_is_due_later(api_app, api):
    with api_app.app_context():
        event_id = stored_event(api)
        assert fail(event_id) == outbox.RecordedFailure(attempts=1, final=False)
        stored = event(event_id)
        assert stored.state == EventState.PENDING
        assert stored.last_error == "MLflow unavailable"
        # the sweeper leaves it alone until the queue's retry is due
        due = stored.enqueued_at.replace(tzinfo=None)  # SQLite gives it back naive, in UTC
        assert due > utcnow().replace(tzinfo=None) + timedelta(seconds=50)


def retry_is_due(event_id: int) -> None:
    stored = event(event_id)
    stored.enqueued_at = utcnow()
    db.session.commit()


def test_a_failure_while_the_retry_is_scheduled_is_not_counted(api_app, api):
    """Another delivery of the same projection (a job's second metrics task, a sweep)
    failing before the scheduled retry: that retry stands for both."""
    with api_app.app_context():
        event_id = stored_event(api)
        assert fail(event_id).attempts == 1
        assert fail(event_id) is None
        assert event(event_id).attempts == 1
        retry_is_due(event_id)
        assert fail(event_id) == outbox.RecordedFailure(attempts=2, final=False)


def test_the_last_attempt_fails_the_event_for_good(api_app, api):
    with api_app.app_context():
        event_id = stored_event(api)
        assert fail(event_id, max_attempts=2).final is False
        retry_is_due(event_id)
        assert fail(event_id, max_attempts=2) == outbox.RecordedFailure(attempts=2, final=True)
        assert event(event_id).state == EventState.FAILED


def test_data_refused_fails_the_event_even_while_a_retry_is_scheduled(api_app, api):
    with api_app.app_context():
        event_id = stored_event(api)
        assert fail(event_id).final is False
        assert fail(event_id, retryable=False) == outbox.RecordedFailure(attempts=2, final=True)


def test_a_failure_retrying_cannot_help_is_final_at_once(api_app, api):
    with api_app.app_context():
        event_id = stored_event(api)
        assert fail(event_id, retryable=False) == outbox.RecordedFailure(attempts=1, final=True)
        assert event(event_id).state == EventState.FAILED


def test_an_event_no_longer_pending_records_nothing(api_app, api):
    with api_app.app_context():
        projected, failed = stored_event(api), stored_event(api)
        for event_id, state in ((projected, EventState.PROJECTED), (failed, EventState.FAILED)):
            stored = event(event_id)
            stored.state = state
            db.session.commit()
            assert fail(event_id) is None
            after = event(event_id)
            assert (after.state, after.attempts, after.last_error) == (state, 0, None)
        assert fail(10_000_000) is None  # no such event
