"""One probe per service, shared by the pytest fixtures and `python -m platform_app.devstack up`.

Each probe answers "does this service do its job right now?" with the cheapest request that
proves it: a listening port is not enough (SeaweedFS's S3 port answers before a volume can
take writes; MLflow's port opens before its database is migrated).
"""

from __future__ import annotations

import glob
import io
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests

from .process import find_binary

if TYPE_CHECKING:
    from minio import Minio

PROBE_TIMEOUT = 2.0


@dataclass(frozen=True)
class S3Settings:
    """What a client needs to reach the object store; mirrors the S3_* variables."""

    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    region: str = "us-east-1"

    def client(self) -> Minio:
        from minio import Minio  # lazily: only S3 users pay for the import

        parts = urlsplit(self.endpoint_url)
        return Minio(
            parts.netloc,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=parts.scheme == "https",
            region=self.region,
        )


def redis_ready(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(
        url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


def s3_ready(settings: S3Settings) -> bool:
    """A real write: creating the bucket if needed doubles as the first-run setup."""
    client = settings.client()
    if not client.bucket_exists(settings.bucket):
        client.make_bucket(settings.bucket)
    key = f".devstack-probe/{uuid.uuid4().hex}"
    client.put_object(settings.bucket, key, io.BytesIO(b"ok"), 2)
    client.remove_object(settings.bucket, key)
    return True


def http_ok(url: str) -> bool:
    return requests.get(url, timeout=PROBE_TIMEOUT).status_code == 200


def mlflow_ready(tracking_uri: str) -> bool:
    return http_ok(tracking_uri.rstrip("/") + "/health")


def postgres_ready(url: str) -> bool:
    import psycopg

    with psycopg.connect(url, connect_timeout=2) as conn:
        conn.execute("SELECT 1")
    return True


class LogMarker:
    """Ready once `needle` shows up in the log after this object was made: for processes
    with no port (Celery worker and beat), and blind to older runs appended to the log."""

    def __init__(self, path: Path, needle: str) -> None:
        self.path = Path(path)
        self.needle = needle.encode()
        try:
            self.offset = os.path.getsize(self.path)
        except OSError:
            self.offset = 0

    def __call__(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                return self.needle in fh.read()
        except FileNotFoundError:
            return False


def celery_ping(app: str, env: Mapping[str, str], cwd: Path) -> bool:
    """Asks the workers themselves over the broker; slow (imports the app): throttle it."""
    result = subprocess.run(
        [find_binary("celery"), "-A", app, "inspect", "ping", "--timeout", "2"],
        env={**os.environ, **env},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    return result.returncode == 0


def files_touched_since(pattern: str, since: float) -> bool:
    return any(os.path.getmtime(p) >= since for p in glob.glob(pattern))


def any_of(*checks: Callable[[], bool]) -> Callable[[], bool]:
    def check() -> bool:
        return any(c() for c in checks)

    return check


def throttled(check: Callable[[], bool], interval: float) -> Callable[[], bool]:
    """Run an expensive probe at most every `interval` s; in between it reports 'not yet'."""
    last = [float("-inf")]

    def wrapper() -> bool:
        if time.monotonic() - last[0] < interval:
            return False
        last[0] = time.monotonic()
        return check()

    return wrapper
