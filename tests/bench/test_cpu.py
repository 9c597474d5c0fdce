"""bench/cpu.py: CPU time per service, a service being its process and all descendants."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import cpu

TICK = cpu.TICKS_PER_S


def fake_process(proc: Path, pid: int, parent: int, title: str, ticks: int) -> None:
    """/proc/<pid>/stat and cmdline as Linux writes them (utime, stime: fields 14 and 15)."""
    (proc / str(pid)).mkdir()
    rest = ["S", str(parent)] + ["0"] * 9 + [str(ticks), str(ticks)] + ["0"] * 30
    (proc / str(pid) / "stat").write_text(f"{pid} ({title.split()[0][:15]}) {' '.join(rest)}\n")
    (proc / str(pid) / "cmdline").write_bytes(title.encode())


def test_a_service_counts_its_descendants_and_postgres_backends_their_database(tmp_path):
    proc = tmp_path
    fake_process(proc, 10, 1, "gunicorn: master [wsgi:app]", TICK)
    fake_process(proc, 11, 10, "gunicorn: worker [wsgi:app]", 2 * TICK)
    fake_process(proc, 12, 11, "a (strange) name", TICK)  # a grandchild, parentheses and all
    fake_process(proc, 20, 1, "postgres -D /data", TICK)
    fake_process(proc, 21, 20, "postgres: bench mlflow 127.0.0.1(40000) idle", 3 * TICK)
    fake_process(proc, 22, 20, "postgres: bench platform 127.0.0.1(40002) idle", TICK)
    fake_process(proc, 23, 20, "postgres: checkpointer", TICK)
    fake_process(proc, 30, 1, "redis-server 127.0.0.1:6379", TICK)  # not a service asked for
    used = cpu.cpu_seconds({"api": 10, "postgres": 20, "gone": 99},
                           {"mlflow": "mlflow-postgres"}, proc=proc)
    assert {k: v for k, v in used.items() if k != cpu.LOAD_GENERATOR} == {
        "api": 8.0, "postgres": 6.0, "mlflow-postgres": 6.0, "gone": 0.0}


def test_a_real_child_and_its_child_are_counted():
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {burn!r} + 'time.sleep(30)'])\n"
        f"{burn}time.sleep(30)\n")], start_new_session=True)
    try:
        time.sleep(0.1)
        deadline = time.monotonic() + 20
        while (used := cpu.cpu_seconds({"burner": parent.pid})["burner"]) < 0.55:
            assert time.monotonic() < deadline, used
            time.sleep(0.1)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the child too
        parent.wait()
    assert used < 5  # its own and its child's 0.3 s each, not the machine's


def test_cores_and_their_description():
    used = cpu.cores({"api": 1.0, "worker": 2.0}, {"api": 3.5, "worker": 2.3, "wrk": 0.4}, 2.0)
    assert used == pytest.approx({"api": 1.25, "worker": 0.15, "wrk": 0.2})
    # medians over rounds, busiest first, services that used nothing left out
    assert cpu.describe([used, {"api": 0.95, "worker": 0.25, "wrk": 0.0, "s3": 0.0}]) \
        == "api 1.10, worker 0.20, wrk 0.10"
