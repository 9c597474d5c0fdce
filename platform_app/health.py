"""Liveness and readiness for load balancers and `make up`."""

from __future__ import annotations

import sqlalchemy as sa
from celery import current_app as celery_app
from flask import Blueprint

from platform_app.extensions import db

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """The process answers; says nothing about its dependencies."""
    return {"status": "ok"}


@bp.get("/ready")
def ready():
    """Ready to accept callbacks: the DB and the broker answer (MLflow and the object
    store are not needed on the request path, so they do not make the API unready)."""
    checks = {"database": _check_database(), "broker": _check_broker()}
    ok = all(value == "ok" for value in checks.values())
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503


def _check_database() -> str:
    try:
        db.session.execute(sa.text("SELECT 1"))
        return "ok"
    except Exception as exc:
        db.session.rollback()
        return f"error: {exc.__class__.__name__}"


def _check_broker() -> str:
    try:
        with celery_app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
        return "ok"
    except Exception as exc:
        return f"error: {exc.__class__.__name__}"
