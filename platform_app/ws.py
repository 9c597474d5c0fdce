"""`WS /ws/jobs/{job_id}`: a job's live events for browsers and tools.

Browsers cannot set headers on a WebSocket, so they pass a short-lived view token
(`?token=`, from `POST /api/v1/training/jobs/{id}/view-token`); other clients may send the
operator key as `X-API-Key`. On connect the socket gets a snapshot, then — with
`since=<event_id>` — every event it missed, read from the DB, then live events, with no gap
and no duplicate: the Redis subscription starts before the DB read, and live copies of
replayed events are skipped.

Each socket holds one of its process's connections (a greenlet, gevent workers) for its
lifetime; `WS_MAX_CONNECTIONS` per process keeps connections free for HTTP requests.
"""

from __future__ import annotations

import json
import queue

import sqlalchemy as sa
from flask import current_app, request
from simple_websocket import ConnectionClosed

from platform_app.auth import check_operator_key, verify_view_token
from platform_app.errors import APIError
from platform_app.extensions import db, sock
from platform_app.models import Event, Job
from platform_app.schemas import JobSchema
from platform_app.services.events import CALLBACK_TYPES, RESYNC, message_of

job_schema = JobSchema()
REPLAY_PAGE = 500


def _send(ws, message: dict) -> None:
    ws.send(json.dumps(message, separators=(",", ":")))


def _authenticate(job_id: int) -> None:
    token = request.args.get("token")
    if token:
        verify_view_token(token, job_id)
    else:
        check_operator_key(request.headers.get("X-API-Key", ""))


@sock.route("/ws/jobs/<int:job_id>")
def job_events(ws, job_id: int) -> None:
    hub = current_app.extensions["live_hub"]
    try:
        _authenticate(job_id)
        if hub.connections >= current_app.config["WS_MAX_CONNECTIONS"]:
            raise APIError("RATE_LIMITED", "this API process holds its maximum of sockets; "
                           "retry (another process may take it)")
        since = _since()
        job = db.session.get(Job, job_id)
        if job is None:
            raise APIError.not_found("job", job_id=job_id)
    except APIError as error:
        _send(ws, {"type": "error", "error_code": error.error_code, "message": error.message})
        return
    subscription = hub.subscribe(job_id)
    try:
        _stream(ws, job, since, subscription)
    except ConnectionClosed:
        pass
    finally:
        hub.unsubscribe(subscription)
        db.session.remove()


def _since() -> int | None:
    raw = request.args.get("since")
    if raw is None:
        return None
    if not raw.isdigit():
        raise APIError.validation("since", "must be an event id (a whole number)")
    return int(raw)


def _stream(ws, job: Job, since: int | None, subscription) -> None:
    last_id = db.session.scalar(sa.select(sa.func.max(Event.id)).where(Event.job_id == job.id))
    _send(ws, {"type": "snapshot", "job_id": job.id, "event_id": last_id,
               "data": job_schema.dump(job)})
    delivered = last_id or 0
    if since is not None:
        delivered = _replay(ws, job.id, since)
    db.session.remove()  # give the connection back: the socket may live for hours
    heartbeat = current_app.config["WS_HEARTBEAT_SECONDS"]
    while True:
        try:
            message = subscription.inbox.get(timeout=heartbeat)
        except queue.Empty:
            _send(ws, {"type": "heartbeat", "job_id": job.id})
            continue
        if message is RESYNC:
            _send(ws, {"type": "resync", "job_id": job.id, "event_id": delivered,
                       "data": {"reason": "this socket fell behind; reconnect with since"}})
            return
        if message.data["type"] in CALLBACK_TYPES:
            if message.data["event_id"] <= delivered:
                continue  # already sent by the replay
            delivered = message.data["event_id"]
        ws.send(message.text)


def _replay(ws, job_id: int, since: int) -> int:
    """Send the job's events after `since` from the DB; returns the last id sent."""
    last = since
    while True:
        events = db.session.scalars(sa.select(Event).where(
            Event.job_id == job_id, Event.id > last).order_by(Event.id).limit(REPLAY_PAGE)
        ).all()
        for event in events:
            _send(ws, message_of(event))
            last = event.id
        if len(events) < REPLAY_PAGE:
            return last
