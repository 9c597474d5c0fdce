"""The platform's one configuration object, read from the environment once per process.

Every setting lives here so that the API, the workers and the tests cannot disagree: the
worker builds the same app from the same variables. Parsing is strict (a typo in a boolean or
a number fails at start-up and names the variable) and secrets have no defaults.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def _float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value


def _str(environ: Mapping[str, str], name: str, default: str) -> str:
    return environ.get(name) or default


def _secret(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if len(value) < 16:
        raise ConfigError(
            f"{name} must be set to a secret of at least 16 characters "
            "(`make up` generates one in .run/secrets.env)"
        )
    return value


@dataclass(frozen=True)
class Config:
    """Typed settings. Field names are the environment variable names."""

    SECRET_KEY: str
    OPERATOR_API_KEY: str
    PLATFORM_DATA_DIR: str = ".run"
    DATABASE_URL: str = ""
    REDIS_URL: str = "redis://127.0.0.1:6379/0"
    CELERY_BROKER_URL: str = ""
    MLFLOW_TRACKING_URI: str = "http://127.0.0.1:5000"
    MLFLOW_HTTP_REQUEST_TIMEOUT: int = 10
    MLFLOW_HTTP_REQUEST_MAX_RETRIES: int = 0
    S3_ENDPOINT_URL: str = "http://127.0.0.1:8333"
    S3_ACCESS_KEY: str = ""
    S3_SECRET_KEY: str = ""
    S3_BUCKET: str = "training"
    S3_REGION: str = "us-east-1"
    PUBLIC_BASE_URL: str = ""
    CALLBACK_TOKEN_TTL_SECONDS: int = 7 * 24 * 3600
    MAX_CONTENT_LENGTH: int = 8 * 1024 * 1024
    OUTBOX_SWEEP_INTERVAL_SECONDS: float = 30.0
    OUTBOX_STALE_AFTER_SECONDS: float = 120.0
    OUTBOX_MAX_ATTEMPTS: int = 10
    OUTBOX_RETRY_BACKOFF_SECONDS: float = 2.0
    OUTBOX_RETRY_BACKOFF_MAX_SECONDS: float = 300.0
    METRICS_BATCH_EVENTS: int = 500
    PROJECTION_LOCK_TTL_SECONDS: int = 60
    LOG_LEVEL: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        data_dir = str(Path(_str(env, "PLATFORM_DATA_DIR", ".run")).resolve())
        redis_url = _str(env, "REDIS_URL", cls.REDIS_URL)
        return cls(
            SECRET_KEY=_secret(env, "SECRET_KEY"),
            OPERATOR_API_KEY=_secret(env, "OPERATOR_API_KEY"),
            PLATFORM_DATA_DIR=data_dir,
            DATABASE_URL=_str(env, "DATABASE_URL", f"sqlite:///{data_dir}/platform.db"),
            REDIS_URL=redis_url,
            CELERY_BROKER_URL=_str(env, "CELERY_BROKER_URL", redis_url),
            MLFLOW_TRACKING_URI=_str(env, "MLFLOW_TRACKING_URI", cls.MLFLOW_TRACKING_URI),
            MLFLOW_HTTP_REQUEST_TIMEOUT=_int(
                env, "MLFLOW_HTTP_REQUEST_TIMEOUT", cls.MLFLOW_HTTP_REQUEST_TIMEOUT, 1
            ),
            MLFLOW_HTTP_REQUEST_MAX_RETRIES=_int(
                env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", cls.MLFLOW_HTTP_REQUEST_MAX_RETRIES
            ),
            S3_ENDPOINT_URL=_str(env, "S3_ENDPOINT_URL", cls.S3_ENDPOINT_URL),
            S3_ACCESS_KEY=_str(env, "S3_ACCESS_KEY", ""),
            S3_SECRET_KEY=_str(env, "S3_SECRET_KEY", ""),
            S3_BUCKET=_str(env, "S3_BUCKET", cls.S3_BUCKET),
            S3_REGION=_str(env, "S3_REGION", cls.S3_REGION),
            PUBLIC_BASE_URL=_str(env, "PUBLIC_BASE_URL", "").rstrip("/"),
            CALLBACK_TOKEN_TTL_SECONDS=_int(
                env, "CALLBACK_TOKEN_TTL_SECONDS", cls.CALLBACK_TOKEN_TTL_SECONDS, 60
            ),
            MAX_CONTENT_LENGTH=_int(env, "MAX_CONTENT_LENGTH", cls.MAX_CONTENT_LENGTH, 1024),
            OUTBOX_SWEEP_INTERVAL_SECONDS=_float(
                env, "OUTBOX_SWEEP_INTERVAL_SECONDS", cls.OUTBOX_SWEEP_INTERVAL_SECONDS
            ),
            OUTBOX_STALE_AFTER_SECONDS=_float(
                env, "OUTBOX_STALE_AFTER_SECONDS", cls.OUTBOX_STALE_AFTER_SECONDS
            ),
            OUTBOX_MAX_ATTEMPTS=_int(env, "OUTBOX_MAX_ATTEMPTS", cls.OUTBOX_MAX_ATTEMPTS, 1),
            OUTBOX_RETRY_BACKOFF_SECONDS=_float(
                env, "OUTBOX_RETRY_BACKOFF_SECONDS", cls.OUTBOX_RETRY_BACKOFF_SECONDS
            ),
            OUTBOX_RETRY_BACKOFF_MAX_SECONDS=_float(
                env, "OUTBOX_RETRY_BACKOFF_MAX_SECONDS", cls.OUTBOX_RETRY_BACKOFF_MAX_SECONDS
            ),
            METRICS_BATCH_EVENTS=_int(env, "METRICS_BATCH_EVENTS", cls.METRICS_BATCH_EVENTS, 1),
            PROJECTION_LOCK_TTL_SECONDS=_int(
                env, "PROJECTION_LOCK_TTL_SECONDS", cls.PROJECTION_LOCK_TTL_SECONDS, 5),
            LOG_LEVEL=_str(env, "LOG_LEVEL", cls.LOG_LEVEL).upper(),
        )

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
            SQLALCHEMY_ENGINE_OPTIONS=_engine_options(self.DATABASE_URL),
            API_TITLE="Training callback platform",
            API_VERSION="v1",
            OPENAPI_VERSION="3.0.3",
            OPENAPI_URL_PREFIX="/api/v1",
            OPENAPI_JSON_PATH="openapi.json",
        )
        return settings


def _engine_options(url: str) -> dict:
    """SQLite waits for the writer lock instead of failing at once; PostgreSQL keeps a
    small pool per process and drops dead connections before use (after a DB restart)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
