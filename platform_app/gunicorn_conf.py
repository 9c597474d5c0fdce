"""gunicorn settings for the API: `gunicorn -c platform_app/gunicorn_conf.py wsgi:app`.

gevent workers: short callbacks and long-lived WebSockets share one process, each request or
socket a greenlet on the process's one thread. WS_MAX_CONNECTIONS (per process) must stay
below GUNICORN_WORKER_CONNECTIONS so that sockets never take the last slots HTTP requests
need. Processes scale the CPU side (`WEB_CONCURRENCY`); connections scale the socket side.

Why not gthread (what this ran before): a request on a thread pool hands the GIL to another
thread at every socket call, ~20 context switches per callback against ~5 here; gevent
measured 15–35 % more callbacks/s at saturation and ~25 % less API CPU per callback at half
load (README, "Settings it chose").

The standard library is patched here, first, in the master: the app's imports (urllib3's
and botocore's `ssl` among them) must see the patched modules, or the first TLS context
recurses. So gunicorn loads this as a file, by path: as `python:platform_app.gunicorn_conf`
it would import the `platform_app` package before this line. Only gunicorn loads it
(loading it patches the process), so what its hooks do lives elsewhere.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402  (after the patch, as everything below)

from platform_app.metrics import archive_dead_process, clear_directory  # noqa: E402
from platform_app.process_hooks import freeze_loaded_objects  # noqa: E402

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "1000"))
# One SO_REUSEPORT socket per process: the kernel spreads connections across processes
# (one shared socket let the greediest process take a client's every keep-alive connection).
reuse_port = True
keepalive = 5
timeout = 60
graceful_timeout = 20


def on_starting(server) -> None:
    clear_directory()


def post_worker_init(worker) -> None:
    freeze_loaded_objects()


def child_exit(server, worker) -> None:
    archive_dead_process(worker.pid)
