"""Where the cores go during a measurement: CPU time per service of the bench's stack.

On one 2-core machine every figure of the latency phase depends on what else runs (the
drain, MLflow, the load generator), so each of its rounds says how many cores each service
used. Read from /proc: a service is its process and every descendant (gunicorn's and
Celery's workers, MLflow's server workers, PostgreSQL's backends — which lead sessions of
their own, so their process group would not find them). The PostgreSQL cluster is shared by
the platform and MLflow: a backend counts for the database its command line names. wrk is
a child of the benchmark and has exited by the end of its run, so it is counted from the
benchmark's reaped-children usage.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from pathlib import Path

from bench.stats import median

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
LOAD_GENERATOR = "wrk"


def process_table(proc: Path = PROC) -> dict[int, tuple[int, float]]:
    """pid → (parent pid, CPU seconds used so far) for every process that can be read."""
    table = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # the command name (2nd field) may hold spaces and parentheses: split after it
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        utime, stime = int(fields[11]), int(fields[12])
        table[int(entry.name)] = (int(fields[1]), (utime + stime) / TICKS_PER_S)
    return table


def cpu_seconds(roots: Mapping[str, int], postgres_databases: Mapping[str, str] | None = None,
                proc: Path = PROC) -> dict[str, float]:
    """CPU seconds used so far by each service in `roots` (name → its root pid) with all its
    descendants. Descendants of the service named "postgres" whose command line names a
    database in `postgres_databases` (database → service) count for that service instead."""
    table = process_table(proc)
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    used: dict[str, float] = {name: 0.0 for name in roots}
    used.update({name: 0.0 for name in (postgres_databases or {}).values()})
    for name, root in roots.items():
        stack = [root]
        while stack:
            pid = stack.pop()
            if pid not in table:
                continue
            stack.extend(children.get(pid, ()))
            owner = name
            if name == "postgres" and postgres_databases and pid != root:
                owner = _database_service(proc, pid, postgres_databases) or name
            used[owner] += table[pid][1]
    children_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    used[LOAD_GENERATOR] = children_usage.ru_utime + children_usage.ru_stime
    return used


def _database_service(proc: Path, pid: int, databases: Mapping[str, str]) -> str | None:
    """A backend's title is "postgres: <user> <database> <client> <state>"."""
    try:
        title = (proc / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return None
    return databases.get(title[2].decode()) if len(title) > 2 else None


def cores(before: Mapping[str, float], after: Mapping[str, float],
          seconds: float) -> dict[str, float]:
    """Cores used per service between two readings `seconds` apart."""
    return {name: max(0.0, after.get(name, 0.0) - before.get(name, 0.0)) / seconds
            for name in after}


def describe(rounds: list[Mapping[str, float]]) -> str:
    """Median cores per service over `rounds`, busiest first ("api 1.21, postgres 0.22, …")."""
    names = {name for used in rounds for name in used}
    medians = {name: median([used.get(name, 0.0) for used in rounds]) or 0.0
               for name in names}
    busiest = sorted(medians.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {value:.2f}" for name, value in busiest if value >= 0.005)
