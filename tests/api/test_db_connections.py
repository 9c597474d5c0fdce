"""A pooled PostgreSQL connection that died while idle (a DB restart, an admin's kill) is
replaced before use; one in steady use is not pinged at all."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from platform_app import extensions
from platform_app.devstack import create_database

BACKEND_PID = sa.text("SELECT pg_backend_pid()")


@pytest.fixture()
def engine(postgres_admin_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(create_database(postgres_admin_url, "pool_checks"),
                              pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(BACKEND_PID).scalar_one()


def _terminate(admin_url: str, pid: int) -> None:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_an_idle_connection_killed_server_side_is_replaced(engine, postgres_admin_url,
                                                            monkeypatch):
    monkeypatch.setattr(extensions, "PING_AFTER_IDLE_S", 0.0)  # every pooled one counts as idle
    first = _backend_pid(engine)
    _terminate(postgres_admin_url, first)
    assert _backend_pid(engine) != first


def test_a_connection_in_steady_use_is_not_pinged(engine, postgres_admin_url, monkeypatch):
    """The other side of the trade: without the idle ping the dead connection reaches the
    caller (whose request fails once and invalidates the pool), which is why the ping is
    there — and shows the test above passes because of it."""
    monkeypatch.setattr(extensions, "PING_AFTER_IDLE_S", 3600.0)
    first = _backend_pid(engine)
    _terminate(postgres_admin_url, first)
    with pytest.raises(OperationalError):
        _backend_pid(engine)
    assert _backend_pid(engine) != first  # the pool replaced it after the failure
