"""Live job events: published on Redis pub/sub, fanned out to the WebSockets of every API
process.

A callback is published right after it is committed, and again (as `projected`) when a worker
has written it to its sink. Publishing is best effort: a browser that missed something
reconnects with `since=<event_id>` and gets it from the DB, which stays the source of truth.
Each API process holds one Redis subscription and hands messages to per-socket bounded
queues, so a slow socket only ever fills its own queue.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis

from platform_app.models import Event, EventKind, EventState
from platform_app.services.redis_client import redis_client

log = logging.getLogger(__name__)
CHANNEL_PREFIX = "platform:job:"
TYPE_BY_KIND = {
    EventKind.PROGRESS: "training_progress",
    EventKind.LOGS: "log",
    EventKind.VALIDATION: "validation_result",
    EventKind.COMPLETION: "status",
    EventKind.UPLOAD: "checkpoint",
}
CALLBACK_TYPES = frozenset(TYPE_BY_KIND.values()) | {"artifact"}
SUMMARY_DROPS = ("image_results", "confusion_matrix")  # can be megabytes; fetch by GET


def channel(job_id: int) -> str:
    return f"{CHANNEL_PREFIX}{job_id}"


@dataclass(frozen=True)
class StoredEvent:
    """A just-accepted event as it is announced and published: the columns its INSERT
    returned plus what the callback sent (reading the row back, payload and all, cost more
    CPU than the INSERT)."""

    id: int
    job_id: int
    kind: EventKind
    payload: dict
    state: EventState
    accepted_ms: int
    task_id: str


def message_of(event: Event | StoredEvent) -> dict:
    """The live form of an accepted callback — the same whether published or replayed."""
    payload = {k: v for k, v in event.payload.items() if k not in SUMMARY_DROPS}
    kind_type = TYPE_BY_KIND[event.kind]
    if event.kind == EventKind.UPLOAD and payload.get("purpose") == "artifact":
        kind_type = "artifact"
    payload.pop("parts", None)
    return {"type": kind_type, "job_id": event.job_id, "event_id": event.id,
            "data": {**payload, "state": event.state.value, "accepted_ms": event.accepted_ms}}


def projected_message(event: Event, details: dict | None = None) -> dict:
    return {"type": "projected", "job_id": event.job_id, "event_id": event.id,
            "data": {"kind": event.kind.value, "state": event.state.value, **(details or {})}}


def publish_on(pipe: redis.client.Pipeline, message: dict) -> None:
    pipe.publish(channel(message["job_id"]), json.dumps(message, separators=(",", ":")))


def publish(redis_url: str, messages: Iterable[dict]) -> None:
    """Best effort: a lost publish is recovered by a reconnect with `since`."""
    try:
        pipe = redis_client(redis_url).pipeline(transaction=False)
        for message in messages:
            publish_on(pipe, message)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("live events not published (Redis unavailable): %s", exc)


RESYNC = object()


@dataclass(frozen=True)
class LiveMessage:
    data: dict
    text: str


class Subscription:
    """One socket's inbox: bounded; on overflow it is emptied and told to resync."""

    def __init__(self, job_id: int, size: int) -> None:
        self.job_id = job_id
        self.inbox: queue.Queue = queue.Queue(maxsize=size)

    def offer(self, message: object) -> None:
        try:
            self.inbox.put_nowait(message)
        except queue.Full:
            while True:
                try:
                    self.inbox.get_nowait()
                except queue.Empty:
                    break
            self.inbox.put_nowait(RESYNC)


class LiveHub:
    """The process's single Redis subscription, dispatching to its sockets."""

    def __init__(self, redis_url: str, inbox_size: int) -> None:
        self.redis_url = redis_url
        self.inbox_size = inbox_size
        self._subscriptions: dict[int, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._listening = threading.Event()

    def subscribe(self, job_id: int, timeout: float = 5.0) -> Subscription:
        """Returns once the Redis subscription is live, so that nothing published after
        this call can be missed."""
        subscription = Subscription(job_id, self.inbox_size)
        with self._lock:
            self._subscriptions.setdefault(job_id, set()).add(subscription)
            if self._thread is None or not self._thread.is_alive():
                self._listening.clear()
                self._thread = threading.Thread(target=self._run, name="live-hub", daemon=True)
                self._thread.start()
        if not self._listening.wait(timeout):
            self.unsubscribe(subscription)
            raise ConnectionError("live events unavailable: Redis subscription not ready")
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            subscribers = self._subscriptions.get(subscription.job_id, set())
            subscribers.discard(subscription)
            if not subscribers:
                self._subscriptions.pop(subscription.job_id, None)

    @property
    def connections(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subscriptions.values())

    def _run(self) -> None:
        while True:
            try:
                pubsub = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2,
                                              health_check_interval=30).pubsub(
                                                  ignore_subscribe_messages=True)
                pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                pubsub.get_message(timeout=2)  # the subscribe confirmation
                self._listening.set()
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except (redis.RedisError, OSError) as exc:
                self._listening.clear()
                log.warning("live events: Redis subscription lost (%s); resubscribing", exc)
                self._resync_all()  # what was published meanwhile is lost to them
                time.sleep(1.0)

    def _dispatch(self, message: dict) -> None:
        job_id = int(message["channel"].decode().rsplit(":", 1)[1])
        with self._lock:
            subscribers = list(self._subscriptions.get(job_id, ()))
        if subscribers:
            # parsed once for the sockets' bookkeeping; the text as published is what they
            # send, so a hundred sockets do not serialize the same message a hundred times
            live = LiveMessage(json.loads(message["data"]), message["data"].decode())
            for subscription in subscribers:
                subscription.offer(live)

    def _resync_all(self) -> None:
        with self._lock:
            subscribers = [s for group in self._subscriptions.values() for s in group]
        for subscription in subscribers:
            subscription.offer(RESYNC)
