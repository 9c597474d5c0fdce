"""Run a command at background CPU priority: `python platform_app/devstack/priority.py N cmd…`.

On one machine the sink side (Celery workers, MLflow) must yield the CPU to the request path:
trainers wait on callbacks, the queue absorbs the rest. `nice` alone does not do that on a
kernel with autogroup scheduling (Debian's default: /proc/sys/kernel/sched_autogroup_enabled
is 1). There every session is a scheduling group of its own, and the CPU is shared fairly
between groups whatever the nice of their tasks — and every service of the local stack leads
a session of its own (ManagedProcess and honcho start them with setsid). So this sets the
nice of the command's autogroup, which ranks the whole session against the others, as well
as the task's own nice (all that counts where autogroup is off), then execs the command.
Measured with the bench's half-load p99 (README, "Settings it chose").

Run as a file, not with -m, and with the standard library only: `-m` would import the
platform_app package (Flask, SQLAlchemy, Celery: ~2 s) just to exec something else.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

PROG = "priority.py"
AUTOGROUP = Path("/proc/self/autogroup")
RETRIES = 5  # the kernel refuses autogroup changes closer than 0.1 s apart (EAGAIN)


def background(command: Sequence[str], nice: int) -> list[str]:
    """`command` prefixed so that it runs at `nice`, its session's autogroup included."""
    return [sys.executable, str(Path(__file__).resolve()), str(nice), *command]


def lower_priority(nice: int, autogroup: Path = AUTOGROUP) -> bool:
    """Raise this process's nice and its autogroup's to `nice`; False where only the task's
    nice could be set: no autogroup in this kernel, or a session this process does not lead
    (its autogroup is its caller's too — a terminal's, say — and is left alone)."""
    os.setpriority(os.PRIO_PROCESS, 0, max(nice, os.getpriority(os.PRIO_PROCESS, 0)))
    if os.getsid(0) != os.getpid():
        return False
    for attempt in range(RETRIES):
        try:
            autogroup.write_text(f"{nice}\n")
            return True
        except BlockingIOError:
            time.sleep(0.1 * (attempt + 1))
        except OSError:  # no such file: a kernel built without CONFIG_SCHED_AUTOGROUP
            return False
    return False


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2 or not argv[0].isdigit():
        sys.exit(f"usage: {PROG} NICE COMMAND [ARG…]")
    if not lower_priority(int(argv[0])):
        print(f"{PROG}: only the task's nice was set (no autogroup of its own)",
              file=sys.stderr)
    os.execvp(argv[1], list(argv[1:]))


if __name__ == "__main__":
    main(sys.argv[1:])
