"""A fixed-rate sender in Python, for figures that must see every single answer.

wrk reports latency percentiles but not when each request was accepted; freshness needs
exactly that (accept → readable in MLflow) per callback. At the few dozen callbacks a second
involved, Python threads keep the schedule easily. Open loop: the schedule does not wait for
answers (up to `max_in_flight` requests at once).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")


class PacedSender(Generic[T]):
    def __init__(self, rate: float, seconds: float, send: Callable[[int], T],
                 max_in_flight: int = 32) -> None:
        self.rate = rate
        self.seconds = seconds
        self.send = send
        self.max_in_flight = max_in_flight
        self.skipped = 0  # slots dropped because max_in_flight requests were outstanding

    def run(self) -> list[T]:
        slots = threading.BoundedSemaphore(self.max_in_flight)
        futures: list[Future[T]] = []

        def call(index: int) -> T:
            try:
                return self.send(index)
            finally:
                slots.release()

        with ThreadPoolExecutor(max_workers=self.max_in_flight,
                                thread_name_prefix="paced") as pool:
            start = time.monotonic()
            count = int(self.rate * self.seconds)
            for index in range(count):
                delay = start + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if not slots.acquire(blocking=False):
                    self.skipped += 1
                    continue
                futures.append(pool.submit(call, index))
        return [f.result() for f in futures]
