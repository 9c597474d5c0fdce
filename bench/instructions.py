"""Instructions per progress callback in the API process, counted by callgrind.

Machines of this kind drift ±20 % in speed within one run, so a request-path change worth a
few per cent cannot be seen in req/s; valgrind's instruction count moves far less (the same
commit: 4.052, 4.064 and once 4.268 M — timing-dependent work such as the pool's ping after
a second idle is counted too), so compare old and new run side by side, twice.
What is counted is the API's own Python (Flask's test client: no gunicorn; PostgreSQL and
Redis are other processes, private to this command, on free ports): the difference between
a short and a long run of the same loop, so that imports and set-up cancel out.

`python -m bench.instructions` (needs valgrind, ~4 minutes) prints one line; run it on the
code before and after a change.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.platform_client import JOBS_PATH, METRIC_KEYS, PROGRESS_PATH, job_body, progress_body
from bench.services import PROJECT_ROOT
from platform_app.devstack import create_database, free_port, postgres_cluster, redis_server

JOBS = 50
WARMUP = 50  # callbacks before the counted ones, in both runs
_COLLECTED = re.compile(r"Collected : (\d+)")


def run_callbacks(count: int) -> None:
    """The loop valgrind counts: `count` progress callbacks over JOBS jobs, after the same
    set-up and warm-up in every run. Config comes from the environment."""
    from platform_app import create_app, init_platform

    app = create_app()
    init_platform(app, bucket=False)
    client = app.test_client()
    jobs = [client.post(JOBS_PATH, json=job_body("instructions"),
                        headers={"X-API-Key": app.config["OPERATOR_API_KEY"]}).json
            for _ in range(JOBS)]
    for n in range(WARMUP + count):
        job = jobs[n % JOBS]
        answer = client.post(PROGRESS_PATH.format(job_id=job["job_id"]),
                             data=json.dumps(progress_body(n, n // JOBS)),
                             content_type="application/json",
                             headers={"Authorization": f"Bearer {job['callback_token']}"})
        if answer.status_code != 202:
            raise RuntimeError(f"callback refused: {answer.status_code} {answer.json}")


def count_instructions(count: int, env: dict[str, str], workdir: Path) -> int:
    command = ["valgrind", "--tool=callgrind",
               f"--callgrind-out-file={workdir / f'callgrind.{count}.out'}",
               sys.executable, "-m", "bench.instructions", "--inner", str(count)]
    done = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run of {count} callbacks failed:\n{done.stderr[-3000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", type=int, default=50, help="callbacks in the short run")
    parser.add_argument("--long", type=int, default=250, help="callbacks in the long run")
    parser.add_argument("--inner", type=int, help=argparse.SUPPRESS)  # the counted process
    args = parser.parse_args()
    if args.inner is not None:
        logging.disable(logging.WARNING)  # what is counted is the callbacks, not log lines
        run_callbacks(args.inner)
        return
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed: `apt-get install -y valgrind`")
    with tempfile.TemporaryDirectory(prefix="platform-instructions-") as tmp:
        workdir = Path(tmp)
        postgres = postgres_cluster(workdir / "postgres", free_port()).start_and_wait()
        redis = redis_server(workdir / "redis", free_port()).start_and_wait()
        try:
            totals = {}
            for db_index, count in enumerate((args.short, args.long)):
                print(f"counting {count} callbacks under valgrind…", flush=True)
                env = {**os.environ, "PYTHONHASHSEED": "0", "LOG_LEVEL": "WARNING",
                       "SECRET_KEY": "instructions-" * 3, "OPERATOR_API_KEY": "operator-" * 4,
                       "PLATFORM_DATA_DIR": str(workdir / "platform"),
                       # no workers take the jobs up here: their wait would grow past the
                       # backpressure threshold within the slow valgrind run and bring 429s
                       "BACKPRESSURE_LAG_SECONDS": "0",
                       "DATABASE_URL": create_database(postgres.uri or "", f"run{count}",
                                                       replace=True),
                       "REDIS_URL": (redis.uri or "").rsplit("/", 1)[0] + f"/{db_index}"}
                totals[count] = count_instructions(count, env, workdir)
        finally:
            redis.stop()
            postgres.stop()
    per_callback = (totals[args.long] - totals[args.short]) / (args.long - args.short)
    print(f"{per_callback / 1e6:.3f} M instructions per progress callback "
          f"({len(METRIC_KEYS)} metrics, {JOBS} jobs; runs of {args.short} and {args.long})")


if __name__ == "__main__":
    main()
