"""gunicorn settings for the API: `gunicorn -c python:platform_app.gunicorn_conf wsgi:app`.

gthread workers: short callbacks and long-lived WebSockets share one process, each socket
holding one thread. WS_MAX_CONNECTIONS (per process) must stay below GUNICORN_THREADS so
that sockets never take the last threads HTTP requests need. Processes scale the CPU side
(`WEB_CONCURRENCY`); threads scale the socket side.
"""

import gc
import os

from platform_app.metrics import archive_dead_process, clear_directory

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "128"))
# One SO_REUSEPORT socket per process: the kernel spreads connections across processes
# (one shared socket let the greediest process take a client's every keep-alive connection).
reuse_port = True
keepalive = 5
timeout = 60
graceful_timeout = 20


def on_starting(server) -> None:
    clear_directory()


def post_worker_init(worker) -> None:
    """What the app allocated while loading (Flask, SQLAlchemy, MLflow's client: ~320 000
    objects) lives as long as the process: frozen out of the collector's sight. Otherwise a
    full collection walks all of it — a ~150 ms pause of every request in the process, the
    half-load p99 of a run that caught one."""
    gc.freeze()


def child_exit(server, worker) -> None:
    archive_dead_process(worker.pid)
