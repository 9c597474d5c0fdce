"""The background sender: callbacks leave the training loop at once and arrive in order.

`Sender.submit()` appends an event (a JSON-ready dict with its own idempotency key) to an
in-memory queue and returns; one daemon thread POSTs the events one at a time, oldest
first. Log lines are buffered and cut into `logs` events by count and by age, and before
any other event, so the platform sees lines and progress in the order they happened.

When a POST fails for a reason that may pass (no connection, timeout, 408, 429, 5xx) the
event stays at the head of the queue and is retried with exponential backoff, or after
`Retry-After` when the platform says so. If the platform stays unreachable for
`spool_after` seconds (or the queue grows past `max_memory_events`) the queued events are
appended to a JSONL spool file, and so is everything submitted while the outage lasts;
once the platform answers again the spool is replayed from its start, then the memory
queue. Every event keeps its idempotency key across retries, spooling and replays, so the
platform stores each one once. A spool left behind by a process that died is replayed by
the next sender for the same job and platform.

Answers that retrying cannot change (401, 403, 404, 409, 422…) drop the event with a log
line; `on_refused` lets the client react (409 JOB_FINISHED on progress is expected after a
cancel). Nothing here raises into the caller.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from trainer_sdk.errors import APIError, TransportError
from trainer_sdk.transport import Transport, retry_delay

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

log = logging.getLogger("trainer_sdk")

MAX_LINES_PER_CALL = 10_000
MAX_CHARS_PER_CALL = 1 << 20  # JSON escaping may grow this; the platform takes 8 MiB


def new_key() -> str:
    return uuid.uuid4().hex


class Spool:
    """An append-only JSONL file of events with a read offset; owned by one process."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+b")  # noqa: SIM115 - kept open for the sender's life
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another live process spools for this job: use our own file
                handle.close()
                path = path.with_name(f"{path.stem}-{os.getpid()}-{new_key()[:8]}.jsonl")
                handle = open(path, "a+b")  # noqa: SIM115
        self.path = path
        self._handle = handle
        self._offset = 0
        self._lock = threading.Lock()
        handle.seek(0)
        self.pending = sum(1 for line in handle if line.strip())

    def append(self, events: list[dict]) -> None:
        data = b"".join(json.dumps(e, allow_nan=True, separators=(",", ":")).encode() + b"\n"
                        for e in events)
        with self._lock:
            self._handle.write(data)
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self.pending += len(events)

    def peek(self) -> dict | None:
        """The oldest unsent event (skipping torn or unreadable lines), or None."""
        with self._lock:
            while self.pending > 0:
                self._handle.seek(self._offset)
                line = self._handle.readline()
                if not line:
                    self.pending = 0
                    return None
                if not line.strip():
                    self._offset = self._handle.tell()
                    continue
                try:
                    event = json.loads(line)
                    if isinstance(event, dict) and {"path", "body", "key"} <= event.keys():
                        return event
                except ValueError:
                    pass
                log.warning("skipping an unreadable line in the spool %s", self.path)
                self._offset = self._handle.tell()
                self.pending -= 1
            return None

    def advance(self) -> None:
        """Mark the event `peek()` returned as delivered; empty the file once all are."""
        with self._lock:
            self._handle.seek(self._offset)
            self._handle.readline()
            self._offset = self._handle.tell()
            self.pending -= 1
            if self.pending <= 0:
                self.pending = 0
                self._handle.truncate(0)
                self._offset = 0

    def close(self, remove_if_empty: bool = True) -> None:
        with self._lock:
            empty = self.pending == 0
            self._handle.close()
        if empty and remove_if_empty:
            try:
                self.path.unlink()
            except OSError:
                pass


class Sender:
    """One daemon thread delivering submitted events in order. See the module docstring."""

    def __init__(self, transport: Transport, *, spool_path: Path | None,
                 on_answer: Callable[[dict, dict], None] | None = None,
                 on_refused: Callable[[dict, APIError], None] | None = None,
                 log_batch_lines: int = 500, log_interval: float = 2.0,
                 spool_after: float = 5.0, max_memory_events: int = 10_000,
                 base_delay: float = 0.5, max_delay: float = 30.0) -> None:
        self._transport = transport
        self._on_answer = on_answer or (lambda event, answer: None)
        self._on_refused = on_refused or (lambda event, error: None)
        self.log_batch_lines = max(1, min(int(log_batch_lines), MAX_LINES_PER_CALL))
        self.log_interval = float(log_interval)
        self.spool_after = float(spool_after)
        self.max_memory_events = int(max_memory_events)
        self.base_delay = float(base_delay)
        self.max_delay = float(max_delay)

        self._cond = threading.Condition()
        self._memory: collections.deque[dict] = collections.deque()
        self._log_path: str | None = None
        self._log_type: str | None = None
        self._log_lines: list[str] = []
        self._log_since = 0.0
        self._in_transit = 0          # events on their way from memory to the spool
        self._failures = 0            # consecutive failed attempts of the head event
        self._failing_since: float | None = None
        self._next_attempt = 0.0
        self._closing = False
        self._deadline = float("inf")
        self._abandoned = False

        self._spool: Spool | None = None
        if spool_path is not None:
            try:
                self._spool = Spool(spool_path)
            except OSError as exc:
                log.warning("cannot use the spool file %s (%s): undelivered events stay in "
                            "memory only", spool_path, exc)
        if self._spool and self._spool.pending:
            log.info("replaying %d events left in %s by an earlier run",
                     self._spool.pending, self._spool.path)
        self._thread = threading.Thread(target=self._run, name="trainer_sdk-sender",
                                        daemon=True)
        self._thread.start()

    # -- producer side (any thread; never blocks on I/O) -------------------------------

    @property
    def spool_path(self) -> Path | None:
        return self._spool.path if self._spool else None

    def submit(self, kind: str, path: str, body: dict, key: str | None = None) -> str:
        event = {"kind": kind, "path": path, "body": body, "key": key or new_key()}
        with self._cond:
            if self._closing and not self._thread.is_alive():
                log.warning("client is closed: %s event not sent", kind)
                return event["key"]
            self._cut_logs()
            self._memory.append(event)
            self._cond.notify_all()
        return event["key"]

    def add_log_lines(self, path: str, log_type: str, lines: list[str]) -> None:
        with self._cond:
            if self._log_lines and (log_type != self._log_type or path != self._log_path):
                self._cut_logs()
            first = not self._log_lines
            if first:
                self._log_since = time.monotonic()
            self._log_path, self._log_type = path, log_type
            self._log_lines.extend(lines)
            if first or len(self._log_lines) >= self.log_batch_lines:
                self._cond.notify_all()  # the thread (re)arms its timer or sends now

    def pending(self) -> int:
        """Events (and buffered log batches) not delivered yet."""
        with self._cond:
            return self._pending_locked()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is delivered (or dropped); False on
        timeout. Buffered log lines go out at once."""
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._cut_logs()
            self._cond.notify_all()
            while self._pending_locked():
                remaining = end - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(remaining)
            return True

    def close(self, timeout: float) -> bool:
        """Deliver what is queued for up to `timeout` seconds, then spool the rest to disk
        and stop the thread. Returns True when nothing was left undelivered."""
        with self._cond:
            if not self._closing:
                self._cut_logs()
                self._closing = True
                self._deadline = time.monotonic() + max(0.0, timeout)
            self._cond.notify_all()
        self._thread.join(max(0.0, timeout) + 2.0)
        if self._thread.is_alive():
            # stuck in a request that outlives its timeout: leave it and save what is left
            with self._cond:
                self._abandoned = True
                leftover = list(self._memory)
                self._memory.clear()
            self._save_leftovers(leftover)
        with self._cond:
            left = self._pending_locked()
        return left == 0

    # -- the sender thread ---------------------------------------------------------------

    def _pending_locked(self) -> int:
        spooled = self._spool.pending if self._spool else 0
        return (len(self._memory) + spooled + self._in_transit
                + (1 if self._log_lines else 0))

    def _cut_logs(self) -> None:
        """Turn the buffered lines into `logs` events (at most 10 000 lines / ~1 MiB each)."""
        lines, self._log_lines = self._log_lines, []
        start = 0
        while start < len(lines):
            end, chars = start, 0
            while (end < len(lines) and end - start < MAX_LINES_PER_CALL
                   and (end == start or chars + len(lines[end]) <= MAX_CHARS_PER_CALL)):
                chars += len(lines[end])
                end += 1
            self._memory.append({"kind": "logs", "path": self._log_path,
                                 "body": {"log_type": self._log_type,
                                          "lines": lines[start:end]},
                                 "key": new_key()})
            start = end

    def _logs_due(self, now: float) -> bool:
        return bool(self._log_lines) and (
            len(self._log_lines) >= self.log_batch_lines
            or now - self._log_since >= self.log_interval or self._closing)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # never expected; keep the process alive and say so
            log.exception("trainer_sdk sender stopped unexpectedly")
        finally:
            with self._cond:
                self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            to_spool: list[dict] = []
            with self._cond:
                if self._abandoned:
                    return
                now = time.monotonic()
                if self._logs_due(now):
                    self._cut_logs()
                if not self._memory and not (self._spool and self._spool.pending):
                    if self._log_lines:  # lines buffered, not due yet
                        self._cond.wait(max(0.01, self.log_interval - (now - self._log_since)))
                        continue
                    self._cond.notify_all()
                    if self._closing:
                        break
                    self._cond.wait()
                    continue
                if self._closing and now >= self._deadline:
                    break
                if now < self._next_attempt:
                    wait = min(self._next_attempt, self._deadline) - now
                    if self._log_lines:
                        wait = min(wait, self.log_interval - (now - self._log_since))
                    self._cond.wait(max(0.01, wait))
                    continue
                if self._memory and self._spool and self._should_spool(now):
                    to_spool = list(self._memory)
                    self._memory.clear()
                    self._in_transit += len(to_spool)
            if to_spool:
                self._write_spool(to_spool)
                continue

            from_spool = bool(self._spool and self._spool.pending)
            event = self._spool.peek() if from_spool else None
            if from_spool and event is None:
                continue  # the spool held only unreadable lines
            if event is None:
                with self._cond:
                    if not self._memory:
                        continue
                    event = self._memory[0]

            outcome, delay = self._attempt(event)
            with self._cond:
                if self._abandoned:
                    return
                now = time.monotonic()
                if outcome == "retry":
                    if self._failing_since is None:
                        self._failing_since = now
                    self._failures += 1
                    self._next_attempt = now + delay
                else:
                    if self._failing_since is not None:
                        log.warning("platform reachable again after %.0f s; sending the "
                                    "queued events", now - self._failing_since)
                    self._failures, self._failing_since, self._next_attempt = 0, None, 0.0
                    if from_spool:
                        self._spool.advance()
                    else:
                        self._memory.popleft()
                self._cond.notify_all()

        # closing: whatever could not be delivered in time goes to disk
        with self._cond:
            leftover = list(self._memory)
            self._memory.clear()
            self._in_transit += len(leftover)
        if leftover:
            if self._spool:
                self._write_spool(leftover)
            else:
                self._lose(leftover)
        self._finish()

    def _lose(self, events: list[dict]) -> None:
        log.error("%d events could not be delivered before close and there is no spool file",
                  len(events))
        with self._cond:
            self._in_transit -= len(events)
            self._cond.notify_all()

    def _should_spool(self, now: float) -> bool:
        outage = (self._failing_since is not None
                  and now - self._failing_since >= self.spool_after)
        return outage or len(self._memory) > self.max_memory_events

    def _write_spool(self, events: list[dict]) -> None:
        try:
            self._spool.append(events)
            log.info("platform unreachable: %d events spooled to %s", len(events),
                     self._spool.path)
            with self._cond:
                self._in_transit -= len(events)
                self._cond.notify_all()
        except (OSError, ValueError) as exc:
            log.warning("cannot write the spool %s (%s): keeping events in memory",
                        self._spool.path, exc)
            with self._cond:
                self._in_transit -= len(events)
                self._memory.extendleft(reversed(events))
                self._cond.notify_all()

    def _save_leftovers(self, events: list[dict]) -> None:
        if not events:
            return
        if self._spool is None:
            log.error("%d events could not be delivered and there is no spool file",
                      len(events))
            return
        try:
            self._spool.append(events)
        except (OSError, ValueError) as exc:
            log.error("%d events could not be delivered nor spooled: %s", len(events), exc)
            return
        log.warning("%d events not delivered; kept in %s (replayed by the next client for "
                    "this job)", len(events), self._spool.path)

    def _finish(self) -> None:
        if self._spool is None:
            return
        left = self._spool.pending
        self._spool.close(remove_if_empty=True)
        if left:
            log.warning("%d events not delivered before close; kept in %s (replayed by the "
                        "next client for this job)", left, self._spool.path)

    def _attempt(self, event: dict) -> tuple[str, float]:
        """POST one event: ("ok"|"drop", 0) or ("retry", seconds to wait)."""
        try:
            answer = self._transport.post(event["path"], event["body"],
                                          idempotency_key=event["key"])
        except (APIError, TransportError) as exc:
            error = exc
            delay = retry_delay(exc, self._failures + 1, self.base_delay, self.max_delay)
            if delay is None:
                self._on_refused(event, exc)
                return "drop", 0.0
        except Exception:  # a bug: don't wedge the queue on one event
            log.exception("unexpected error sending a %s event; dropped", event.get("kind"))
            return "drop", 0.0
        else:
            try:
                self._on_answer(event, answer)
            except Exception:
                log.exception("error handling the answer to a %s event", event.get("kind"))
            return "ok", 0.0
        if self._failures == 0:
            log.warning("could not send %s event (%s); retrying in %.1f s, training goes on",
                        event.get("kind"), error, delay)
        else:
            log.debug("retry %d of %s event failed (%s); next in %.1f s",
                      self._failures, event.get("kind"), error, delay)
        return "retry", delay
