"""The platform's one configuration object, read from the environment once per process.

Every setting lives here so that the API, the workers and the tests cannot disagree: the
worker builds the same app from the same variables. Parsing is strict (a typo in a boolean or
a number fails at start-up and names the variable) and secrets have no defaults.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


_PARSERS = {"int": int, "float": float, "str": str}


def _parse(name: str, raw: str, type_name: str, minimum: float | None) -> object:
    try:
        value = _PARSERS[type_name](raw)
    except ValueError:
        kind = "a whole number" if type_name == "int" else "a number"
        raise ConfigError(f"{name} must be {kind}, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _secret(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if len(value) < 16:
        raise ConfigError(
            f"{name} must be set to a secret of at least 16 characters "
            "(`make up` generates one in .run/secrets.env)"
        )
    return value


def setting(default: object, minimum: float | None = None) -> object:
    """A field with a default and, for numbers, the smallest value that makes sense."""
    return field(default=default, metadata={"minimum": minimum})


SECRETS = ("SECRET_KEY", "OPERATOR_API_KEY")


@dataclass(frozen=True)
class Config:
    """Typed settings. Field names are the environment variable names; the README's
    configuration table lists them with their meaning."""

    SECRET_KEY: str
    OPERATOR_API_KEY: str
    PLATFORM_DATA_DIR: str = ".run"
    DATABASE_URL: str = ""  # default: SQLite in PLATFORM_DATA_DIR
    DB_POOL_SIZE: int = setting(16, minimum=1)  # per process; PostgreSQL only
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    CELERY_BROKER_URL: str = ""  # default: REDIS_URL
    MLFLOW_TRACKING_URI: str = "http://127.0.0.1:5000"
    MLFLOW_HTTP_REQUEST_TIMEOUT: int = setting(10, minimum=1)
    MLFLOW_HTTP_REQUEST_MAX_RETRIES: int = setting(0, minimum=0)
    MLFLOW_OUTAGE_PROBE_SECONDS: float = setting(1.0, minimum=0)
    MLFLOW_OUTAGE_HOLD_SECONDS: float = setting(5.0, minimum=0)
    S3_ENDPOINT_URL: str = "http://127.0.0.1:8333"
    S3_ACCESS_KEY: str = ""
    S3_SECRET_KEY: str = ""
    S3_BUCKET: str = "training"
    S3_REGION: str = "us-east-1"
    S3_PUBLIC_ENDPOINT_URL: str = ""  # default: S3_ENDPOINT_URL
    UPLOAD_URL_EXPIRY_SECONDS: int = setting(3600, minimum=1)
    DOWNLOAD_URL_EXPIRY_SECONDS: int = setting(3600, minimum=1)
    MULTIPART_THRESHOLD_BYTES: int = setting(64 * 1024 ** 2, minimum=5 * 1024 ** 2)
    MULTIPART_PART_SIZE_BYTES: int = setting(8 * 1024 ** 2, minimum=5 * 1024 ** 2)
    MAX_UPLOAD_BYTES: int = setting(100 * 1024 ** 3, minimum=1)
    PUBLIC_BASE_URL: str = ""  # default: the host the request came to
    CALLBACK_TOKEN_TTL_SECONDS: int = setting(7 * 24 * 3600, minimum=60)
    VIEW_TOKEN_TTL_SECONDS: int = setting(600, minimum=10)
    WS_MAX_CONNECTIONS: int = setting(100, minimum=1)  # per process; < GUNICORN_WORKER_CONNECTIONS
    WS_HEARTBEAT_SECONDS: float = setting(20.0, minimum=0.5)
    WS_QUEUE_SIZE: int = setting(1000, minimum=1)
    MAX_CONTENT_LENGTH: int = setting(8 * 1024 * 1024, minimum=1024)
    OUTBOX_SWEEP_INTERVAL_SECONDS: float = setting(30.0, minimum=0.1)
    OUTBOX_STALE_AFTER_SECONDS: float = setting(120.0, minimum=0)
    OUTBOX_MAX_ATTEMPTS: int = setting(10, minimum=1)
    OUTBOX_RETRY_BACKOFF_SECONDS: float = setting(2.0, minimum=0)
    OUTBOX_RETRY_BACKOFF_MAX_SECONDS: float = setting(300.0, minimum=0)
    METRICS_BATCH_EVENTS: int = setting(500, minimum=1)
    BACKPRESSURE_LAG_SECONDS: float = setting(2.0, minimum=0)  # 0: never hold trainers back
    BACKPRESSURE_RETRY_AFTER_SECONDS: int = setting(1, minimum=1)  # the shortest hold
    BACKPRESSURE_MAX_RETRY_AFTER_SECONDS: int = setting(30, minimum=1)
    PROJECTION_LOCK_TTL_SECONDS: int = setting(60, minimum=5)
    CANCEL_GRACE_SECONDS: float = setting(600.0, minimum=0)
    LOKI_URL: str = ""  # e.g. http://loki:3100; empty: logs stay in the DB only
    WORKER_METRICS_PORT: int = setting(0, minimum=0)  # 0: workers serve no /metrics
    LOG_LEVEL: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {name: _secret(env, name) for name in SECRETS}
        for f in dataclasses.fields(cls):
            raw = env.get(f.name)
            if f.name not in SECRETS and raw not in (None, ""):
                values[f.name] = _parse(f.name, raw, f.type, f.metadata.get("minimum"))
        data_dir = str(Path(str(values.get("PLATFORM_DATA_DIR", cls.PLATFORM_DATA_DIR))).resolve())
        redis_url = values.get("REDIS_URL", cls.REDIS_URL)
        values.update(
            PLATFORM_DATA_DIR=data_dir,
            DATABASE_URL=values.get("DATABASE_URL") or f"sqlite:///{data_dir}/platform.db",
            CELERY_BROKER_URL=values.get("CELERY_BROKER_URL") or redis_url,
            PUBLIC_BASE_URL=str(values.get("PUBLIC_BASE_URL", "")).rstrip("/"),
            LOG_LEVEL=str(values.get("LOG_LEVEL", cls.LOG_LEVEL)).upper(),
        )
        return cls(**values)

    def as_environ(self) -> dict[str, str]:
        """The environment that reproduces this config in another process (a worker)."""
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)

    def flask_settings(self) -> dict:
        """The mapping handed to `app.config`: our fields plus the names Flask and its
        extensions look for."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        settings.update(
            SQLALCHEMY_DATABASE_URI=self.DATABASE_URL,
            SQLALCHEMY_ENGINE_OPTIONS=_engine_options(self.DATABASE_URL, self.DB_POOL_SIZE),
            API_TITLE="Training callback platform",
            API_VERSION="v1",
            OPENAPI_VERSION="3.0.3",
            OPENAPI_URL_PREFIX="/api/v1",
            OPENAPI_JSON_PATH="openapi.json",
        )
        return settings


def _engine_options(url: str, pool_size: int) -> dict:
    """SQLite waits for the writer lock instead of failing at once. PostgreSQL keeps a pool
    per process as large as the requests it runs at once — a connection opened beyond it is
    closed again after one request, and opening one costs more than the request. Dead
    connections (after a DB restart) are found by extensions._ping_if_idle, not by
    pool_pre_ping, whose round trip on every checkout cost the callback path ~10 %."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_size": pool_size, "max_overflow": pool_size}
