"""services/statements.py on PostgreSQL: wherever psycopg's pipeline reports a statement's
error, the caller sees SQLAlchemy's exception (the outbox's repeated-Idempotency-Key
fallback catches `IntegrityError`), and nothing of the transaction stays behind."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa

from platform_app.devstack import create_database
from platform_app.services import statements

metadata = sa.MetaData()
keys = sa.Table("keys", metadata, sa.Column("key", sa.String, primary_key=True))
INSERT = sa.insert(keys).values(key=sa.bindparam("key"))
COUNT = sa.select(sa.func.count()).select_from(keys)


@pytest.fixture
def engine(postgres_admin_url):
    engine = sa.create_engine(create_database(postgres_admin_url, "statements", replace=True))
    assert engine.dialect.driver == "psycopg"  # the pipelined path, not the SQLite one
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(INSERT, {"key": "taken"})
    yield engine
    engine.dispose()


def rows_left(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.execute(COUNT).scalar_one()


@pytest.mark.parametrize("reply_arrived_first", [False, True],
                         ids=["error-at-the-sync", "error-while-sending-the-commit"])
def test_a_statement_error_is_sqlalchemys_wherever_the_pipeline_reports_it(
        engine, reply_arrived_first):
    with pytest.raises(sa.exc.IntegrityError):
        with statements.transaction(engine) as transaction:
            transaction.queue(INSERT, {"key": "new"})
            transaction.queue(INSERT, {"key": "taken"})
            if reply_arrived_first:  # psycopg reads the error while it sends the COMMIT
                time.sleep(0.3)
            transaction.commit()
    assert rows_left(engine) == 1  # "new" was rolled back with the rest
    with statements.transaction(engine) as transaction:  # the pooled connection still works
        transaction.queue(INSERT, {"key": "after"})
        transaction.commit()
    assert rows_left(engine) == 2
