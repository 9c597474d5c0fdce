"""WebSocket live updates (`ws.*`): callback → event delivered to every connected browser.

100 clients follow one job over `WS /ws/jobs/{id}` (view token, as a browser would), spread
by the kernel over the API's gunicorn processes; callbacks for that job go out at a steady
rate from another thread. For every (client, event) pair the latency runs from just before
the callback's POST was sent to the moment the client read the event — so it includes the
request path itself and is an upper bound on "accept → delivery".
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack

import requests
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from bench.context import BenchContext
from bench.paced import PacedSender
from bench.platform_client import progress_body
from bench.progress import log
from bench.results import FigureSpec, Target, at_most
from bench.settings import BenchSettings
from bench.stats import percentile

NAMES = frozenset({"ws"})
BUILT = True
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


class Viewer(threading.Thread):
    """One browser: notes when each training_progress event arrived."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.exit = ExitStack()
        self.ws = self.exit.enter_context(connect(url, open_timeout=30))
        self.arrivals: dict[int, float] = {}
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            for data in self.ws:
                message = json.loads(data)
                if message["type"] == "snapshot":
                    self.ready.set()
                elif message["type"] == "training_progress":
                    self.arrivals[message["event_id"]] = time.perf_counter()
                elif message["type"] in ("error", "resync"):
                    log.warning("ws: a client got %s", message)
        except ConnectionClosed:
            pass


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    job = ctx.jobs[0]
    api = ctx.stack.api_url
    token = ctx.operator.session.post(
        f"{api}/api/v1/training/jobs/{job.job_id}/view-token", timeout=30).json()["token"]
    url = api.replace("http", "ws", 1) + f"/ws/jobs/{job.job_id}?token={token}"
    viewers = [Viewer(url) for _ in range(CLIENTS)]
    for viewer in viewers:
        viewer.start()
    if not all(viewer.ready.wait(30) for viewer in viewers):
        raise RuntimeError("not every WebSocket client got its snapshot")
    log.info("ws: %d clients connected; sending %d callbacks/s", CLIENTS, RATE_PER_S)

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
    PacedSender(RATE_PER_S, seconds, send).run()
    time.sleep(2)  # let the last events arrive
    latencies = [(viewer.arrivals[event_id] - started) * 1000
                 for viewer in viewers for event_id, started in sent.items()
                 if event_id in viewer.arrivals]
    missing = len(sent) * CLIENTS - len(latencies)
    for viewer in viewers:
        viewer.exit.close()
    note = (f"{len(sent)} callbacks × {CLIENTS} clients over {seconds:.0f} s; "
            f"{missing} deliveries missing")
    ctx.results.measured("ws.p50_ms", [], percentile(latencies, 50), note=note)
    ctx.results.measured("ws.p99_ms", [], percentile(latencies, 99), note=note)
