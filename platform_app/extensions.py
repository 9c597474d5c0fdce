"""Extension objects, created unbound and bound to an app in `create_app`."""

from __future__ import annotations

import time

from celery import Celery, Task
from flask import Flask
from flask_migrate import Migrate
from flask_smorest import Api
from flask_sock import Sock
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import Pool


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
rest_api = Api()
# render_as_batch: SQLite can only ALTER a table by copying it; Alembic's batch mode does that
migrate = Migrate(render_as_batch=True)
sock = Sock()


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets pollers read while a worker writes; without it every read waits on writes."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


# A pooled connection idle for longer than this is checked before use.
PING_AFTER_IDLE_S = 1.0


@event.listens_for(Pool, "checkin")
def _mark_idle(_dbapi_connection, record) -> None:
    record.info["idle_since"] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    """Pessimistic disconnect handling, only where it can matter: a connection that sat in
    the pool may have died with a DB restart, one in steady use would have failed already.
    (pool_pre_ping pinged on every checkout: a round trip per request.) Raising
    DisconnectionError makes the pool replace the connection — SQLAlchemy's documented
    recipe for a custom ping."""
    idle_since = record.info.get("idle_since")
    if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
        return
    try:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT 1")
        finally:
            cursor.close()
        dbapi_connection.rollback()  # end the transaction the ping began
    except Exception as exc:  # any failure means this connection cannot be trusted
        raise DisconnectionError(str(exc)) from exc


def celery_init_app(app: Flask) -> Celery:
    """Bind a Celery app to the Flask app, so every task runs inside an app context with
    the same config (and DB session) as the API. Pattern from Flask's Celery guide."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object("celeryconfig")
    celery_app.conf.update(
        broker_url=app.config["CELERY_BROKER_URL"],
        beat_schedule={
            "outbox-sweep": {
                "task": "outbox.sweep",
                "schedule": app.config["OUTBOX_SWEEP_INTERVAL_SECONDS"],
            }
        },
    )
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
