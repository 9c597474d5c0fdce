"""`up`, `down` and `status`: honcho runs the stack detached, this module watches over it.

honcho keeps every service in its own session and stops them all when any one exits, so a
service that crashes at start-up takes the stack down with it; `up` reads honcho's log to
name the culprit instead of reporting whichever probe happened to time out next. The pid and
start time of honcho and of each service are recorded so that `down` can still stop services
that outlived a killed honcho.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .pgroups import pid_alive, same_group_alive, start_time, stop_group
from .process import POLL_INTERVAL, ServiceStartError, log_tail, probe, signal_group
from .stack import (
    PROJECT_ROOT,
    SERVICE_ORDER,
    START_TIMEOUTS,
    RunDir,
    StackConfigError,
    display_target,
    plan_stack,
    read_env_file,
    read_procfile_names,
    stack_probes,
    write_stack_files,
)

HONCHO_STOP_TIMEOUT = 20.0
SERVICE_STOP_TIMEOUT = 10.0
_STARTED_LINE = re.compile(rb"\| (?P<name>[\w-]+)\.\d+ started \(pid=(?P<pid>\d+)\)")
_STOPPED_LINE = re.compile(rb"\| (?P<name>[\w-]+)\.\d+ stopped \(rc=(?P<rc>-?\d+)\)")


def say(line: str = "") -> None:
    print(line, flush=True)


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read()
    except FileNotFoundError:
        return b""


# --- honcho and the recorded processes ---------------------------------------------------


def honcho_pid(run: RunDir) -> int | None:
    """The recorded honcho, if it is still that process (pids get reused)."""
    try:
        pid = int(run.pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"honcho" in cmdline and pid_alive(pid) else None


def launch_honcho(run: RunDir) -> subprocess.Popen[bytes]:
    """Fully detached (own session, no terminal) so that it outlives `make up`."""
    with open(run.log("honcho"), "ab") as logfile:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "honcho",
                "start",
                "--no-colour",
                "-f",
                str(run.procfile),
                "-e",
                str(run.stack_env),
            ],  # fmt: skip
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    run.pid_file.write_text(f"{proc.pid}\n")
    _record(run, {"honcho": proc.pid})
    return proc


def _record(run: RunDir, pids: Mapping[str, int]) -> None:
    with open(run.pids_file, "a") as fh:
        for name, pid in pids.items():
            fh.write(f"{name} {pid} {start_time(pid) or 0}\n")


def record_services(
    run: RunDir, honcho: subprocess.Popen[bytes], names: list[str], offset: int
) -> None:
    """honcho logs each service's pid as it forks it (each one leads its own group)."""
    deadline = time.monotonic() + 10
    pending = set(names)
    while pending and honcho.poll() is None and time.monotonic() < deadline:
        found = {
            m["name"].decode(): int(m["pid"])
            for m in _STARTED_LINE.finditer(_read_from(run.log("honcho"), offset))
            if m["name"].decode() in pending
        }
        _record(run, found)
        pending -= set(found)
        time.sleep(POLL_INTERVAL)


def recorded_groups(run: RunDir) -> dict[str, tuple[int, int]]:
    """Recorded groups that still exist and are still ours: name -> (group, start time)."""
    groups: dict[str, tuple[int, int]] = {}
    try:
        lines = run.pids_file.read_text().splitlines()
    except FileNotFoundError:
        return groups
    for line in lines:
        try:
            name, pid, started = line.split()
        except ValueError:
            continue
        if same_group_alive(int(pid), int(started)):
            groups[name] = (int(pid), int(started))
    return groups


@dataclass
class Stopped:
    honcho_pid: int | None
    strays: list[str] = field(default_factory=list)  # services that outlived honcho
    clean: bool = True  # nothing needed SIGKILL


def stop_stack(run: RunDir) -> Stopped:
    """SIGTERM to honcho's group (honcho then stops each service), SIGKILL after 20 s; then
    any recorded service that outlived honcho (e.g. honcho was SIGKILLed) is stopped itself."""
    groups = recorded_groups(run)
    result = Stopped(honcho_pid(run))
    if result.honcho_pid is not None:
        result.clean = stop_group(result.honcho_pid, HONCHO_STOP_TIMEOUT)
    for name, (group, started) in groups.items():
        if name != "honcho" and same_group_alive(group, started):
            result.strays.append(name)
            result.clean = stop_group(group, SERVICE_STOP_TIMEOUT) and result.clean
    if "honcho" in groups and same_group_alive(*groups["honcho"]):
        # honcho's per-service reader processes ignore SIGTERM; their services are gone now.
        signal_group(groups["honcho"][0], signal.SIGKILL)
    run.pid_file.unlink(missing_ok=True)
    run.pids_file.unlink(missing_ok=True)
    return result


def first_stopped(run: RunDir, offset: int) -> tuple[str, int] | None:
    """The first service honcho saw exit since `offset`: the one that brought it down."""
    match = _STOPPED_LINE.search(_read_from(run.log("honcho"), offset))
    return (match["name"].decode(), int(match["rc"])) if match else None


# --- commands --------------------------------------------------------------------------


@dataclass
class Failure:
    service: str
    reason: str
    log: Path


def _wait_for_stack(
    run: RunDir,
    honcho: subprocess.Popen[bytes],
    probes: Mapping[str, Callable[[], bool]],
    env: Mapping[str, str],
    offset: int,
) -> Failure | None:
    """Probe the services in dependency order; fail fast when honcho reports an exit."""
    started = time.monotonic()
    for name in SERVICE_ORDER:
        while True:
            stopped = first_stopped(run, offset)
            if stopped is not None:
                culprit, rc = stopped
                return Failure(culprit, f"exited with code {rc}", run.log(culprit))
            if honcho.poll() is not None:
                return Failure("honcho", f"exited with code {honcho.returncode}", run.log("honcho"))
            if probe(probes[name]):
                break
            if time.monotonic() - started > START_TIMEOUTS[name]:
                return Failure(
                    name, f"did not answer within {START_TIMEOUTS[name]} s", run.log(name)
                )
            time.sleep(POLL_INTERVAL)
        say(f"✔ {name:<7} {display_target(env, name)}  ({time.monotonic() - started:.1f} s)")
    return None


def prepare_database(run: RunDir, env: Mapping[str, str], local_s3: bool) -> bool:
    """Create the platform's tables (and an external store's bucket) once, before several
    API and worker processes start. The local SeaweedFS creates its bucket itself."""
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "init"]
    done = subprocess.run(
        command + (["--no-bucket"] if local_s3 else []), cwd=PROJECT_ROOT,
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        say("✘ init: creating tables and bucket failed")
        for line in (done.stdout + done.stderr).splitlines()[-30:]:
            say(f"    {line}")
        return False
    say(f"✔ init    tables in {env.get('DATABASE_URL', '')}, bucket {env.get('S3_BUCKET', '')}")
    return True


def up(run: RunDir) -> int:
    pid = honcho_pid(run)
    if pid is not None:
        say(f"stack already running (honcho pid {pid}); settings in {run.stack_env}")
        return 0
    run.create()
    leftovers = stop_stack(run).strays
    if leftovers:
        say(f"stopped {', '.join(leftovers)} left over from an earlier run")
    try:
        plan = plan_stack(run)
    except (StackConfigError, ServiceStartError) as exc:
        say(f"✘ cannot start the stack: {exc}")
        return 1
    write_stack_files(run, plan)
    if not prepare_database(run, plan.env, local_s3="s3" in plan.procfile):
        return 1
    for name in plan.external:
        say(f"• {name:<7} {display_target(plan.env, name)}  (external, not started)")
    probes = stack_probes(run, plan.env, since=time.time())
    honcho_log = run.log("honcho")
    offset = honcho_log.stat().st_size if honcho_log.exists() else 0
    honcho = launch_honcho(run)
    say(f"starting {', '.join(plan.procfile)} under honcho (pid {honcho.pid}); logs in {run.logs}")
    record_services(run, honcho, list(plan.procfile), offset)

    failure = _wait_for_stack(run, honcho, probes, plan.env, offset)
    if failure is not None:
        say(f"✘ {failure.service} {failure.reason}; last lines of {failure.log}:")
        for line in log_tail(failure.log).splitlines():
            say(f"    {line}")
        say("stopping the stack")
        stop_stack(run)
        return 1
    say(f"stack is up; settings in {run.stack_env} (`make down` stops it)")
    return 0


def down(run: RunDir) -> int:
    names = ", ".join(read_procfile_names(run)) or "its processes"
    stopped = stop_stack(run)
    if stopped.honcho_pid is None and not stopped.strays:
        say("stack is not running")
        return 0
    if stopped.honcho_pid is not None:
        say(f"stopped honcho (pid {stopped.honcho_pid}) and {names}")
    if stopped.strays:
        say(f"stopped {', '.join(stopped.strays)}, which had outlived honcho")
    if not stopped.clean:
        say("(some processes did not stop in time and were killed)")
    return 0


def status(run: RunDir) -> int:
    pid = honcho_pid(run)
    env = read_env_file(run.stack_env)
    if pid is None or not env:
        say("stack is not running (`make up` starts it)")
        return 1
    say(f"honcho pid {pid}; settings in {run.stack_env}")
    probes = stack_probes(run, env, since=run.pid_file.stat().st_mtime - 1)
    managed = set(read_procfile_names(run))
    all_up = True
    for name in SERVICE_ORDER:
        ok = probe(probes[name])
        all_up &= ok
        origin = "" if name in managed else "  (external)"
        say(f"{'✔' if ok else '✘'} {name:<7} {display_target(env, name)}{origin}")
    return 0 if all_up else 1
