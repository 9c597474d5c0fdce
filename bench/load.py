"""wrk as the load generator: saturation (closed loop) or a fixed offered rate.

wrk (Debian's package) is C and LuaJIT, so it costs the 2 shared cores far less than any
Python generator would, which matters when the thing measured is CPU-bound on the same box.
wrk has no fixed-rate mode (wrk2 does, but is not packaged): the Lua script's `delay()` hands
each free connection the next time slot of a fixed schedule, which is open-loop as long as a
connection is free when its slot comes; slots sent late are counted and reported, so a
"half load" figure that could not actually be offered shows up as such.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.platform_client import METRIC_KEYS
from bench.progress import log

LUA_SCRIPT = Path(__file__).resolve().parent / "lua" / "callbacks.lua"
WRK_TIMEOUT_S = 10


class LoadError(RuntimeError):
    """wrk could not run or produced no summary."""


def ensure_wrk() -> str:
    """wrk is in Debian; install it when missing (the bench, not the test suite, needs it)."""
    found = shutil.which("wrk")
    if found:
        return found
    prefix: list[str] = []
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            raise LoadError("wrk is not installed and neither root nor sudo is available: "
                            "install it with `apt-get install -y wrk`")
        prefix = ["sudo", "-n"]
    log.info("wrk is not installed: running `%s apt-get install -y wrk`", " ".join(prefix))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*prefix, "apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env).returncode != 0:
        log.info("apt-get install failed; updating the package lists once and retrying")
        subprocess.run([*prefix, "apt-get", "update", "-q"], env=env)
        subprocess.run(install, env=env)
    found = shutil.which("wrk")
    if not found:
        raise LoadError("could not install wrk with apt-get; install it by hand "
                        "(`apt-get install -y wrk`) and run the benchmark again")
    return found


@dataclass(frozen=True)
class LoadResult:
    """One wrk run. Latencies are wrk's (from sending a request to its full response)."""

    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    late: int  # fixed rate only: slots that were already past when a connection got free
    scheduled: int
    offered_rps: float | None
    held: int = 0  # 429s (backpressure) received

    @property
    def rps(self) -> float:
        """Successful (2xx/3xx) responses per second."""
        return (self.requests - self.errors.get("status", 0)) / self.duration_s

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def late_fraction(self) -> float:
        return self.late / self.scheduled if self.scheduled else 0.0

    @classmethod
    def from_summary(cls, data: dict, offered_rps: float | None) -> LoadResult:
        lat = data["latency_us"]
        return cls(requests=data["requests"], duration_s=data["duration_us"] / 1e6,
                   errors=data["errors"], p50_ms=lat["p50"] / 1000, p90_ms=lat["p90"] / 1000,
                   p99_ms=lat["p99"] / 1000, p999_ms=lat["p999"] / 1000,
                   max_ms=lat["max"] / 1000, mean_ms=lat["mean"] / 1000, late=data["late"],
                   scheduled=data["scheduled"], offered_rps=offered_rps,
                   held=data.get("held", 0))

    def describe(self) -> str:
        text = (f"{self.rps:,.0f} req/s, p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms")
        if self.offered_rps:
            text += f" (offered {self.offered_rps:,.0f}/s, {self.late_fraction:.1%} late)"
        if self.held:
            text += f", {self.held:,} held back (429)"
        if self.error_count - self.held:
            text += f", errors {self.errors}"
        return text


@dataclass
class LoadSpec:
    """What to send: a path template over a jobs file, to one base URL."""

    base_url: str
    path: str  # "{job_id}" is replaced per request
    jobs_file: Path
    connections: int = 16
    threads: int = 1
    step_offset: int = 0
    honour_retry_after: bool = False  # a 429 holds its job back, as the trainer SDK does


class WrkRun:
    """A wrk process running in the background; `wait()` returns its summary."""

    def __init__(self, spec: LoadSpec, seconds: float, rate: float | None = None) -> None:
        self.spec = spec
        self.rate = rate
        self._dir = Path(tempfile.mkdtemp(prefix="bench-wrk-"))
        self._out = self._dir / "summary.json"
        env = {
            **os.environ,
            "BENCH_JOBS_FILE": str(spec.jobs_file),
            "BENCH_PATH": spec.path,
            "BENCH_KEYS": "\n".join(METRIC_KEYS),
            "BENCH_NONCE": uuid.uuid4().hex[:12],
            "BENCH_STEP_OFFSET": str(spec.step_offset),
            "BENCH_THREADS": str(spec.threads),
            "BENCH_OUT": str(self._out),
        }
        if rate:
            env["BENCH_RATE"] = f"{rate:.3f}"
        if spec.honour_retry_after:
            env["BENCH_RETRY_AFTER"] = "1"
        command = [
            ensure_wrk(),
            f"-t{spec.threads}", f"-c{max(spec.connections, spec.threads)}",
            f"-d{max(1, round(seconds))}s", f"--timeout={WRK_TIMEOUT_S}s",
            "-s", str(LUA_SCRIPT), spec.base_url,
        ]  # fmt: skip
        self._proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)

    def wait(self) -> LoadResult:
        try:
            output, _ = self._proc.communicate(timeout=None)
            if not self._out.exists():
                raise LoadError(f"wrk exited with {self._proc.returncode} and no summary:\n"
                                f"{output[-2000:]}")
            result = LoadResult.from_summary(json.loads(self._out.read_text()), self.rate)
            if result.requests and result.requests == result.errors.get("status", 0):
                raise LoadError(f"every one of {result.requests} requests to "
                                f"{self.spec.path} got an error status (see the API's log)")
            return result
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def run_wrk(spec: LoadSpec, seconds: float, rate: float | None = None) -> LoadResult:
    run = WrkRun(spec, seconds, rate)
    try:
        return run.wait()
    except BaseException:
        run.kill()
        raise
