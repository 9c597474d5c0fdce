"""Process groups we did not start ourselves, seen through /proc (Linux only).

`make down` runs in a different process from `make up`, so it cannot wait() for what it
stops: it finds and watches the stack's process groups by pid and start time instead.
"""

from __future__ import annotations

import os
import signal
import time

from .process import POLL_INTERVAL, signal_group


def _proc_table() -> dict[int, tuple[int, bytes]]:
    """pid -> (process group, state) for every process, read from /proc."""
    table: dict[int, tuple[int, bytes]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry)] = (int(fields[2]), fields[0])
    return table


def pid_alive(pid: int) -> bool:
    """True for a live process; a zombie counts as gone (it can do nothing any more)."""
    entry = _proc_table().get(pid)
    return entry is not None and entry[1] != b"Z"


def group_alive(pgid: int) -> bool:
    return any(group == pgid and state != b"Z" for group, state in _proc_table().values())


def start_time(pid: int) -> int | None:
    """Clock ticks after boot at which `pid` started: with the pid, an identity that
    survives pid reuse, so a recorded process is never confused with a later one."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop_group(pgid: int, timeout: float, sig: int = signal.SIGTERM) -> bool:
    """Stop a process group that is not our child (so there is no wait()): signal, poll,
    then SIGKILL. Returns False if it had to be killed."""
    if not signal_group(pgid, sig):
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(POLL_INTERVAL)
    signal_group(pgid, signal.SIGKILL)
    return False


def same_group_alive(pgid: int, started: int) -> bool:
    """Is the group recorded as (leader pid, leader start time) still there and still ours?
    A pid is not handed out again while a group of that id exists, so a group whose leader
    has exited is still the recorded one; a live leader must match its start time."""
    now = start_time(pgid)
    if now is None:
        return group_alive(pgid)
    return now == started
