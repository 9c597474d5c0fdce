"""A short transaction of Core statements, sent in as few round trips as the driver allows.

The request path's batch is: lock the jobs and read them, decide in Python, insert the events,
update the jobs, commit. Through SQLAlchemy on psycopg that is five round trips — psycopg
sends BEGIN on its own before the first statement — and each one, on a machine whose cores the
draining sink keeps busy, is a wait for a PostgreSQL backend to be scheduled. In psycopg's
pipeline mode the same transaction is two: BEGIN with the locking read, then the writes with
COMMIT. SQLAlchemy cannot read results in pipeline mode, so on psycopg the statements run on
the driver connection — still compiled by SQLAlchemy, with SQLAlchemy's own type processing
of parameters and results. Any other driver (SQLite in tests and development) runs the same
statements through a SQLAlchemy connection, one at a time.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Dialect


class Deferred(Protocol):
    def rows(self) -> list[tuple]:
        """The statement's rows; on a pipeline this waits for them (a round trip) unless a
        commit has already brought them back."""


class Transaction(Protocol):
    def rows(self, statement: sa.Executable, params: dict | None = None) -> list[tuple]:
        """Runs `statement` and returns its rows: the caller needs them to go on."""

    def queue(self, statement: sa.Executable, params: dict | None = None) -> Deferred:
        """Runs `statement` whenever the driver sends the next round trip."""

    def commit(self) -> None: ...


def transaction(engine: sa.Engine) -> contextlib.AbstractContextManager[Transaction]:
    """A transaction for statements built once (module constants or cached builders: their
    compiled form is cached by identity). Rolled back unless committed; a driver error
    leaves the `with` block as SQLAlchemy's exception on either path (in pipeline mode it
    may surface at a later call than the statement that caused it)."""
    if engine.dialect.driver == "psycopg":
        return _pipelined(engine)
    return _on_connection(engine)


@contextlib.contextmanager
def _on_connection(engine: sa.Engine) -> Iterator[Transaction]:
    with engine.connect() as connection:
        yield _ConnectionTransaction(connection)


class _Rows:
    def __init__(self, rows: list[tuple]) -> None:
        self._rows = rows

    def rows(self) -> list[tuple]:
        return self._rows


class _ConnectionTransaction:
    def __init__(self, connection: sa.Connection) -> None:
        self._connection = connection

    def rows(self, statement: sa.Executable, params: dict | None = None) -> list[tuple]:
        return self._connection.execute(statement, params or {}).all()

    def queue(self, statement: sa.Executable, params: dict | None = None) -> Deferred:
        result = self._connection.execute(statement, params or {})
        return _Rows(result.all() if result.returns_rows else [])

    def commit(self) -> None:
        self._connection.commit()


class _Compiled:
    """A statement's SQL for the driver and SQLAlchemy's processors for its parameters and
    result columns (enums to their values, JSON to text and back)."""

    def __init__(self, statement: sa.Executable, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self._compiled = compiled
        self._binds: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self._binds[name] = process
        columns = statement.exported_columns  # a SELECT's, or an INSERT's RETURNING
        self.returns_rows = bool(columns)
        self._results = [column.type.dialect_impl(dialect).result_processor(dialect, None)
                         for column in columns]

    def params(self, values: dict | None) -> dict:
        params = self._compiled.construct_params(values or {})
        for name, process in self._binds.items():
            if params.get(name) is not None:
                params[name] = process(params[name])
        return params

    def row(self, raw: Sequence) -> tuple:
        return tuple(value if process is None or value is None else process(value)
                     for value, process in zip(raw, self._results, strict=True))


@functools.lru_cache(maxsize=512)
def _compiled(statement: sa.Executable, dialect: Dialect) -> _Compiled:
    return _Compiled(statement, dialect)


class _PipelinedRows:
    def __init__(self, cursor: Any, compiled: _Compiled) -> None:
        self._cursor, self._compiled = cursor, compiled
        self._rows: list[tuple] | None = None

    def rows(self) -> list[tuple]:
        if self._rows is None:
            self._rows = [self._compiled.row(raw) for raw in self._cursor.fetchall()]
        return self._rows


class _PipelinedTransaction:
    def __init__(self, connection: Any, pipeline: Any, dialect: Dialect) -> None:
        self._connection, self._pipeline, self._dialect = connection, pipeline, dialect
        self._queued: list[_PipelinedRows] = []
        self.sent: list[str] = []  # the SQL so far, for the error message
        # on an autocommit connection: psycopg would otherwise send BEGIN and wait for it
        self._connection.execute(b"BEGIN")

    def rows(self, statement: sa.Executable, params: dict | None = None) -> list[tuple]:
        return self.queue(statement, params).rows()

    def queue(self, statement: sa.Executable, params: dict | None = None) -> Deferred:
        compiled = _compiled(statement, self._dialect)
        cursor = self._connection.cursor()
        self.sent.append(compiled.sql)
        cursor.execute(compiled.sql, compiled.params(params))
        queued = _PipelinedRows(cursor, compiled)
        if compiled.returns_rows:
            self._queued.append(queued)
        return queued

    def commit(self) -> None:
        self._connection.execute(b"COMMIT")
        self._pipeline.sync()  # the writes, the COMMIT and every result: one round trip
        for queued in self._queued:
            queued.rows()


@contextlib.contextmanager
def _pipelined(engine: sa.Engine) -> Iterator[Transaction]:
    import psycopg

    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    transaction = None
    try:
        driver.autocommit = True
        with driver.pipeline() as pipeline:
            transaction = _PipelinedTransaction(driver, pipeline, engine.dialect)
            yield transaction
    except psycopg.Error as error:
        # In pipeline mode psycopg reports a statement's error at whichever later call reads
        # its reply (a queue, the COMMIT, the sync): mapped here, once, to SQLAlchemy's own
        # class (IntegrityError, and so on), as a SQLAlchemy connection would raise it.
        sql = ";\n".join(transaction.sent) if transaction else "BEGIN"
        raise sa.exc.DBAPIError.instance(sql, None, error, psycopg.Error) from error
    finally:
        try:  # an uncommitted or failed transaction is rolled back
            if driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                driver.execute(b"ROLLBACK")
            driver.autocommit = False
        except Exception:
            pooled.invalidate()  # a connection in an unknown state is not given back
            raise
        finally:
            pooled.close()
