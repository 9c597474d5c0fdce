"""Local service launchers shared by `make up` and the pytest fixtures.

Only the standard library and packages already in the venv: this must work on a fresh
developer machine or CI runner before anything else of the platform does.
"""

from .ports import free_port, free_ports, port_or_free
from .process import ManagedProcess, ServiceStartError, find_binary
from .readiness import S3Settings
from .services import (
    GUNICORN_CONFIG,
    WORKER_CONCURRENCY,
    celery_worker_command,
    create_database,
    mlflow_server,
    postgres_cluster,
    redis_server,
    seaweedfs,
)

__all__ = [
    "GUNICORN_CONFIG",
    "WORKER_CONCURRENCY",
    "celery_worker_command",
    "ManagedProcess",
    "S3Settings",
    "ServiceStartError",
    "create_database",
    "find_binary",
    "free_port",
    "free_ports",
    "mlflow_server",
    "port_or_free",
    "postgres_cluster",
    "redis_server",
    "seaweedfs",
]
