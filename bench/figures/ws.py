"""WebSocket live updates (`ws.*`): callback → event delivered to every connected browser.

100 clients follow one job over `WS /ws/jobs/{id}` (view token, as a browser would), spread
by the kernel over the API's gunicorn processes; callbacks for that job go out at a steady
rate from another thread. For every (client, event) pair the latency runs from just before
the callback's POST was sent to the moment the client read the event — so it includes the
request path itself and is an upper bound on "accept → delivery".

The clients share one asyncio loop in one thread: a browser reads its socket in its own
process, and 100 client threads here (200 with a sync client's reader threads) would
measure their own fight for this process's GIL rather than the server.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import requests
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.context import BenchContext
from bench.paced import PacedSender
from bench.platform_client import progress_body
from bench.progress import log
from bench.results import FigureSpec, Target, at_most
from bench.settings import BenchSettings
from bench.stats import percentile

NAMES = frozenset({"ws"})
CLIENTS = 100
RATE_PER_S = 20


def needs(selected: frozenset[str]) -> set[str]:
    return set()


def figures(settings: BenchSettings) -> list[FigureSpec]:
    what = f"callback sent → WebSocket delivery, {CLIENTS} clients, {RATE_PER_S} callbacks/s"
    return [FigureSpec("ws.p50_ms", "ms", what),
            FigureSpec("ws.p99_ms", "ms", "the same, 99th percentile")]


def targets(settings: BenchSettings) -> list[Target]:
    return [at_most("ws.p99_ms", 100, " ms")]


class Viewers:
    """`CLIENTS` browsers on one event loop in a background thread; each notes when every
    training_progress event reached it."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url
        self.arrivals: list[dict[int, float]] = [{} for _ in range(count)]
        self.connected = 0
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete,
                                        args=(self._main(),), daemon=True)

    def __enter__(self) -> Viewers:
        self._thread.start()
        if not self.ready.wait(60) or self.failed:
            raise RuntimeError(f"{self.connected} of {len(self.arrivals)} WebSocket clients "
                               f"got their snapshot: {self.failed or 'timed out'}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        followers = [asyncio.create_task(self._follow(arrivals)) for arrivals in self.arrivals]
        await self._stop.wait()
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)

    async def _follow(self, arrivals: dict[int, float]) -> None:
        try:
            async with connect(self.url, open_timeout=30, max_queue=None) as ws:
                async for data in ws:
                    message = json.loads(data)
                    if message["type"] == "training_progress":
                        arrivals[message["event_id"]] = time.perf_counter()
                    elif message["type"] == "snapshot":
                        self.connected += 1
                        if self.connected == len(self.arrivals):
                            self.ready.set()
                    elif message["type"] in ("error", "resync"):
                        log.warning("ws: a client got %s", message)
        except ConnectionClosed:
            pass
        except Exception as exc:  # noqa: BLE001 — reported by __enter__
            self.failed = exc
            self.ready.set()


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    job = ctx.own_job("ws")
    api = ctx.stack.api_url
    token = ctx.operator.session.post(
        f"{api}/api/v1/training/jobs/{job.job_id}/view-token", timeout=30).json()["token"]
    url = api.replace("http", "ws", 1) + f"/ws/jobs/{job.job_id}?token={token}"
    sent: dict[int, float] = {}
    headers = {"Authorization": f"Bearer {job.token}"}

    def send(index: int) -> None:
        started = time.perf_counter()
        response = requests.post(f"{api}/api/v1/training/jobs/{job.job_id}/callback/progress",
                                 json=progress_body(index + 1, index + 1), headers=headers,
                                 timeout=30)
        if response.status_code == 202:
            sent[response.json()["event_id"]] = started

    seconds = max(5.0, ctx.settings.load_seconds)
    with Viewers(url, CLIENTS) as viewers:
        log.info("ws: %d clients connected; sending %d callbacks/s", CLIENTS, RATE_PER_S)
        PacedSender(RATE_PER_S, seconds, send).run()
        time.sleep(2)  # let the last events arrive
    latencies = [(arrivals[event_id] - started) * 1000
                 for arrivals in viewers.arrivals for event_id, started in sent.items()
                 if event_id in arrivals]
    missing = len(sent) * CLIENTS - len(latencies)
    note = (f"{len(sent)} callbacks × {CLIENTS} clients over {seconds:.0f} s; "
            f"{missing} deliveries missing")
    ctx.results.measured("ws.p50_ms", [], percentile(latencies, 50), note=note)
    ctx.results.measured("ws.p99_ms", [], percentile(latencies, 99), note=note)
