"""`.run/bench/latest.json` and the markdown table printed at the end.

The JSON keeps every round of every figure, the verdict of every target and what the run
looked like (settings, versions, the machine's load average before and after: the cores are
shared, and a busy neighbour shows up there first).
"""

from __future__ import annotations

import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

from bench.results import Figure, Results, Status, Verdict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
VERSIONED = ("gunicorn", "flask", "celery", "mlflow", "sqlalchemy", "psycopg", "boto3")


def environment() -> dict:
    """Facts about the machine and software that explain a figure moving between runs."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"commit": commit, "cpus": os.cpu_count(), "versions": versions}


def write_json(path: Path, meta: dict, results: Results, verdicts: list[Verdict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "meta": meta,
        "figures": {key: figure.as_dict() for key, figure in results.figures.items()},
        "targets": [{"key": v.key, "target": v.text, "observed": v.observed,
                     "passed": v.passed} for v in verdicts],
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def format_value(figure: Figure) -> str:
    if figure.status == Status.SKIPPED:
        return "— (not selected)"
    if figure.value is None:
        return "✘ failed"
    value, unit = figure.value, figure.unit
    if unit in ("req/s", "metrics/s"):
        text = f"{value:,.0f}"
    elif unit == "ms":
        text = f"{value:,.1f}"
    elif unit == "req/callback":
        text = f"{value:.3f}"
    else:
        text = f"{value:,.2f}"
    return f"{text} {unit}".replace(",", " ")


def _verdict_text(verdicts: list[Verdict]) -> str:
    parts = []
    for v in verdicts:
        mark = {True: "✔", False: "✘", None: "–"}[v.passed]
        parts.append(f"{v.text}: {v.observed} {mark}" if v.observed else f"{v.text} {mark}")
    return "<br>".join(parts)


def markdown(results: Results, verdicts: list[Verdict], meta: dict) -> str:
    by_key: dict[str, list[Verdict]] = {}
    for verdict in verdicts:
        by_key.setdefault(verdict.key, []).append(verdict)
    settings = meta["settings"]
    lines = [
        f"## make bench — {meta['finished_at']} ({settings['profile']}, "
        f"{meta['duration_s'] / 60:.1f} min, commit {meta['environment']['commit'] or '?'})",
        "",
        f"gunicorn `{' '.join(settings['gunicorn_args'])}`; Celery prefork "
        f"×{settings['worker_concurrency']}; wrk {settings['wrk_threads']} thread, "
        f"{settings['connections']} connections; median of {settings['rounds']} round(s); "
        f"load average {meta['load_before']} → {meta['load_after']} on "
        f"{meta['environment']['cpus']} cores",
        "",
        "| figure | value | baseline in this run | target |",
        "|---|---|---|---|",
    ]
    for key, figure in results.figures.items():
        lines.append(f"| `{key}` | {format_value(figure)} | {figure.baseline} | "
                     f"{_verdict_text(by_key.get(key, []))} |")
    passed = sum(v.passed is True for v in verdicts)
    failed = sum(v.passed is False for v in verdicts)
    unknown = sum(v.passed is None for v in verdicts)
    lines += ["", f"Targets: {passed} ✔, {failed} ✘, {unknown} not measured.", "", "Notes:"]
    for key, figure in results.figures.items():
        if figure.status == Status.MEASURED or figure.status == Status.FAILED:
            text = f"- `{key}` ({figure.what})"
            if figure.rounds and len(figure.rounds) > 1:
                text += f"; rounds {', '.join(f'{r:g}' for r in figure.rounds)}"
            if figure.note:
                text += f": {figure.note}"
            lines.append(text)
    return "\n".join(lines) + "\n"
