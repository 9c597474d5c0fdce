"""Smoke run of `make bench`: a tiny subset for a couple of seconds of load. It must start its
own stack, run, stop it and write valid JSON with every planned key; a load that got only
error answers (a broken comparison endpoint) is a failed figure, not a measured one. No
figure's value is asserted: the benchmark is not a timed test (its numbers depend on the
machine and its neighbours)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "noop,inline,accept",
         "--duration", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    report = json.loads(out.read_text())
    assert {"meta", "figures", "targets"} <= report.keys()
    figures = report["figures"]
    for key in ("noop.rps", "inline.rps", "accept.rps"):
        assert figures[key]["status"] == "measured", figures[key]
        assert isinstance(figures[key]["value"], int | float)
        assert figures[key]["rounds"]
    for key in ("accept.p99_ms_half_load", "sink_independence",
                "mlflow.metrics_per_s", "mlflow_ceiling.metrics_per_s",
                "mlflow.requests_per_callback", "freshness.p99_ms",
                "upload.50MiB.vs_raw", "upload.512MiB.vs_mlflow", "sdk.report_p99_ms",
                "sdk.cheaper_than_mlflow", "ws.p99_ms"):
        assert figures[key]["status"] == "skipped", figures[key]
    targets = {(t["key"], t["target"]) for t in report["targets"]}
    assert ("accept.rps", "≥ 0.2 × noop.rps") in targets
    assert report["meta"]["settings"]["gunicorn_args"]
    assert "| `accept.rps` |" in result.stdout
    workdir = report["meta"]["workdir"]
    assert not Path(workdir).exists()
    assert not _processes_mentioning(workdir), "the benchmark left services running"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found
