"""Group commit: the request threads of one process that arrive together share one batch.

Most of what a callback costs on the request path is paid per transaction and per statement,
not per row: a pooled connection, BEGIN, the statements, COMMIT, a Redis pipeline — and
SQLAlchemy's and psycopg's Python around each. So a thread hands its item to whichever thread
leads: the leader takes everything queued (its own item first), runs it as one batch, hands
every thread its own outcome and passes the lead to the first thread that queued meanwhile.
A lone item leads itself at once and waits for nobody, so at low load a request costs what it
did alone; under load batches grow with the number of requests in flight, with no timer and
no thread of its own. (Leader/follower, as databases do group commit of their own log.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class _Entry(Generic[T, R]):
    __slots__ = ("item", "result", "error", "resolved", "wake")

    def __init__(self, item: T) -> None:
        self.item = item
        self.result: R | None = None
        self.error: BaseException | None = None
        self.resolved = False  # set before `wake`: False on waking means "lead now"
        self.wake: threading.Event | None = None  # a follower's; a leader never waits

    def outcome(self) -> R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[T, R]):
    """`run(items)` returns one outcome per item, in order: a result, or an Exception for
    that item alone; if `run` itself raises, every item of the batch raises it.

    `then(outcomes)`, if given, runs after the batch's other threads have their answers and
    before the next batch starts: work that no answer waits for but that must stay in batch
    order (the outbox announces a committed batch there). The leading thread runs it, so
    only that thread's answer waits for it, and only that thread sees it raise."""

    def __init__(self, run: Callable[[list[T]], Sequence[R | Exception]], max_batch: int,
                 then: Callable[[Sequence[R | Exception]], None] | None = None) -> None:
        self._run = run
        self._then = then
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._queue: list[_Entry[T, R]] = []
        self._leading = False  # while False the queue is empty

    def submit(self, item: T) -> R:
        """Blocks until `item`'s batch has run; returns its result or raises its error."""
        entry: _Entry[T, R] = _Entry(item)
        with self._lock:
            self._queue.append(entry)
            if self._leading:
                entry.wake = threading.Event()
            self._leading = True
        if entry.wake is not None:
            entry.wake.wait()
        if not entry.resolved:  # leading: this entry is first in the queue
            self._lead_one_batch()
        return entry.outcome()

    def _lead_one_batch(self) -> None:
        with self._lock:
            batch = self._queue[:self._max_batch]
            del self._queue[:self._max_batch]
        outcomes: Sequence[R | Exception] | None = None
        try:
            outcomes = self._run([entry.item for entry in batch])
            for entry, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    entry.error = outcome
                else:
                    entry.result = outcome
        except Exception as exc:  # the batch failed as a whole: every item raises it
            outcomes = None
            for entry in batch:
                entry.error = exc
        finally:  # even if the leader is interrupted, no follower waits forever
            for entry in batch:
                if entry.result is None and entry.error is None:
                    entry.error = RuntimeError("the batch's leading request was interrupted")
                entry.resolved = True
                if entry.wake is not None:
                    entry.wake.set()
            try:
                if self._then is not None and outcomes is not None:
                    self._then(outcomes)
            finally:
                self._pass_the_lead()

    def _pass_the_lead(self) -> None:
        with self._lock:
            successor = self._queue[0] if self._queue else None
            self._leading = successor is not None
        if successor is not None and successor.wake is not None:  # it queued behind us
            successor.wake.set()
