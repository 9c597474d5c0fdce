"""The background-priority launcher lowers the whole session it leads, and nothing else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from platform_app.devstack import celery_worker_command, mlflow_server
from platform_app.devstack.priority import background
from platform_app.devstack.services import SINK_NICE

# One line each, whatever the file holds: a task in the kernel's default autogroup (a
# session started from init without setsid, as a CI runner's may be) reads it as empty.
REPORT = 'echo "autogroup=$(cat /proc/self/autogroup 2>/dev/null)"; echo "nice=$(nice)"'
HAS_AUTOGROUP = Path("/proc/self/autogroup").exists()


def _launch(nice: int, **popen) -> tuple[str, int, str]:
    """(the autogroup line, the task's nice, stderr) as the launched shell sees them."""
    done = subprocess.run(background(["sh", "-c", REPORT], nice), capture_output=True,
                          text=True, check=True, timeout=10, **popen)
    report = dict(line.split("=", 1) for line in done.stdout.splitlines())
    return report["autogroup"], int(report["nice"]), done.stderr


def test_a_session_leader_lowers_its_autogroup_and_its_own_nice() -> None:
    autogroup, nice, _ = _launch(7, start_new_session=True)
    assert nice == 7
    if HAS_AUTOGROUP:
        assert autogroup.endswith(" nice 7")


def test_a_process_that_does_not_lead_its_session_leaves_the_callers_autogroup_alone() -> None:
    before = Path("/proc/self/autogroup").read_text() if HAS_AUTOGROUP else ""
    autogroup, nice, stderr = _launch(7)
    assert nice == 7
    assert autogroup == before.strip()
    assert "only the task's nice was set" in stderr
    if HAS_AUTOGROUP:
        assert Path("/proc/self/autogroup").read_text() == before


def _in_a_child(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=30).stdout.strip()


def test_without_an_autogroup_file_only_the_nice_is_set(tmp_path: Path) -> None:
    absent = tmp_path / "absent" / "autogroup"
    assert _in_a_child(
        "import os; from pathlib import Path; "
        "from platform_app.devstack.priority import lower_priority; os.setsid(); "
        f"print(lower_priority(3, Path({str(absent)!r})), os.getpriority(os.PRIO_PROCESS, 0))"
    ).split() == ["False", "3"]


def test_a_process_already_nicer_keeps_its_nice() -> None:
    assert _in_a_child(
        "import os; from platform_app.devstack.priority import lower_priority; os.nice(12); "
        "lower_priority(5); print(os.getpriority(os.PRIO_PROCESS, 0))") == "12"


def test_the_sink_side_runs_at_background_priority(tmp_path: Path) -> None:
    for command in (celery_worker_command(), mlflow_server(tmp_path, 1).command):
        assert command[:3] == background([], SINK_NICE)
