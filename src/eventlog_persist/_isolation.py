"""A caller's connection at the isolation level a job needs, and its own level back after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection
from sqlalchemy.engine.interfaces import IsolationLevel

__all__ = ["at_level", "in_autocommit"]


def in_autocommit(connection: Connection) -> bool:
    """Whether ``connection`` runs each statement in a transaction of its own."""
    return getattr(connection.connection.dbapi_connection, "autocommit", False) is True


@contextmanager
def at_level(connection: Connection, level: IsolationLevel) -> Iterator[Connection]:
    """Run ``connection`` (no transaction begun) at ``level``, then at its own level again,
    ``AUTOCOMMIT`` included (which PostgreSQL does not report: the driver knows it)."""
    before: IsolationLevel
    before = "AUTOCOMMIT" if in_autocommit(connection) else connection.get_isolation_level()
    connection.execution_options(isolation_level=level)
    try:
        yield connection
    finally:
        if not connection.closed and not connection.invalidated:
            if connection.in_transaction():  # SQLAlchemy's autobegun marker; nothing is pending
                connection.rollback()
            connection.execution_options(isolation_level=before)
