"""The sync direct paths: statements on the DBAPI connection, when nothing would differ.

SQLAlchemy's ``exec_driver_sql`` builds a Result (metadata from the cursor description, a
Row per row) that the reader turns into records at once; on psycopg, with nobody observing
the execution, the driver's rows are the same values, so `fetch` takes them from the DBAPI
cursor itself and raises what ``exec_driver_sql`` would raise.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, NoReturn

import msgspec
from psycopg import Connection as PsycopgConnection
from psycopg.abc import Buffer
from psycopg.pq import Format
from psycopg.types.json import JsonbLoader
from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError

from eventlog_persist._json_deep import loads as deep_loads
from eventlog_persist._read_sql import PreparedQuery

__all__ = [
    "ENGINE_EVENTS",
    "EXECUTE_EVENTS",
    "TRANSACTION_EVENTS",
    "direct_sql",
    "driver_sql",
    "fetch",
    "fetch_autocommit",
    "raise_as_sqlalchemy",
    "unobserved",
]

EXECUTE_EVENTS: Final = (
    "before_execute",
    "after_execute",
    "before_cursor_execute",
    "after_cursor_execute",
)
"""Events an execution fires: OpenTelemetry's SQLAlchemy instrumentation listens to these."""

ENGINE_EVENTS: Final = (
    *EXECUTE_EVENTS,
    "engine_connect",
    "set_connection_execution_options",
    "begin",
    "rollback",
)
"""Also fired by the Engine path's checkout, autocommit option and autobegin."""

TRANSACTION_EVENTS: Final = (*ENGINE_EVENTS, "commit")
"""What a detached write's checkout, transaction and statements fire."""


def driver_sql(
    query: PreparedQuery, dialect: Dialect, options: Mapping[str, Any]
) -> tuple[str, Any] | None:
    """The cached driver SQL of ``query``, or None when only ``execute`` runs it correctly.

    ``exec_driver_sql`` runs SQL text as is, so a ``schema_translate_map`` (a host with a
    schema per tenant) would be ignored and another tenant's table read: with a map, the
    statement goes through ``execute``, which applies it (and caches per map, bounded).
    """
    if options.get("schema_translate_map"):
        return None
    return query.driver_sql(dialect)


def direct_sql(
    connection: Connection, query: PreparedQuery, dispatch: Any, events: tuple[str, ...]
) -> tuple[str, Any] | None:
    """The driver SQL of ``query`` when `fetch` may run it, else None.

    That is when ``exec_driver_sql`` may run it (psycopg, no schema_translate_map), no
    listener would see the execution (``events`` of ``dispatch``, the connection's or the
    engine's; the dialect's ``handle_error`` and ``do_execute``), and SQLAlchemy would not
    log it (``echo``, the ``sqlalchemy.engine`` logger at INFO).
    """
    if not unobserved(connection, dispatch, events):
        return None
    return driver_sql(query, connection.dialect, connection.get_execution_options())


def unobserved(connection: Connection | Engine, dispatch: Any, events: tuple[str, ...]) -> bool:
    """Whether SQLAlchemy would tell no one about a statement run on ``connection``.

    No listener for ``events`` on ``dispatch`` (the connection's, or the engine's for a
    connection just made or none at all), none for the dialect's ``handle_error`` and
    ``do_execute``, and no SQL logging (``echo``, the ``sqlalchemy.engine`` logger at INFO).
    """
    for name in events:
        if getattr(dispatch, name):
            return False
    dialect = connection.dialect
    if dialect.dispatch.handle_error or dialect.dispatch.do_execute:
        return False
    return not connection.engine.logger.isEnabledFor(logging.INFO)


def fetch(connection: Connection, sql: str, params: Any) -> Sequence[Any]:
    """Run ``sql`` on the connection's DBAPI cursor; errors as ``exec_driver_sql`` raises them.

    The caller checked `direct_sql`, and that ``connection`` is in a transaction (or in
    autocommit mode), as SQLAlchemy's autobegin would otherwise have to see the statement.
    """
    dbapi_connection: Any = connection.connection.dbapi_connection
    with dbapi_connection.cursor() as cursor:  # closed on an error too
        if _default_jsonb_loader(dbapi_connection):
            cursor.adapters.register_loader(_JSONB_OID, _PayloadLoader)
        try:
            cursor.execute(sql, params)
            rows: Sequence[Any] = cursor.fetchall()
        except BaseException as exc:
            raise_as_sqlalchemy(connection, exc, sql, params, dbapi_connection)
    return rows


def fetch_autocommit(connection: Connection, sql: str, params: Any) -> Sequence[Any]:
    """`fetch` in autocommit mode, on a connection just checked out of the engine's pool.

    What ``execution_options(isolation_level="AUTOCOMMIT")`` gives, without SQLAlchemy's
    isolation-level round of calls at checkout and again at return: the DBAPI connection's
    ``autocommit`` is set back here, or, if that fails, the connection is invalidated so the
    pool never hands it out in autocommit mode.
    """
    dbapi_connection: Any = connection.connection.dbapi_connection
    if dbapi_connection.autocommit:  # the engine's own isolation_level="AUTOCOMMIT"
        return fetch(connection, sql, params)
    dbapi_connection.autocommit = True
    try:
        return fetch(connection, sql, params)
    finally:
        if not connection.invalidated:
            try:
                dbapi_connection.autocommit = False
            except Exception as exc:  # pragma: no cover - a lost link fails the query first
                connection.invalidate(exc)


def raise_as_sqlalchemy(
    connection: Connection, exc: BaseException, sql: str, params: Any, dbapi_connection: Any
) -> NoReturn:
    """Raise what ``exec_driver_sql`` raises for ``exc``, and invalidate as it would.

    A driver error becomes SQLAlchemy's `DBAPIError` subclass (``OperationalError``, ...),
    caused by the driver's. A lost connection is handed to ``exec_driver_sql``, which finds
    it closed without sending anything, and invalidates it and the pool as it does for any
    statement of the host's. An interrupt (KeyboardInterrupt) leaves the connection in an
    unknown state: SQLAlchemy invalidates it, and so does this.
    """
    dialect = connection.dialect
    dbapi_error: Any = dialect.loaded_dbapi.Error
    if not isinstance(exc, dbapi_error):
        if not isinstance(exc, Exception) and not connection.invalidated:
            connection.invalidate()
        raise exc
    disconnect = dialect.is_disconnect(exc, dbapi_connection, None)
    if disconnect:
        with contextlib.suppress(DBAPIError):
            connection.exec_driver_sql(sql, params)
        if not connection.invalidated:  # pragma: no cover - exec_driver_sql did it
            connection.invalidate(exc)
    raise DBAPIError.instance(
        sql,
        params,
        exc,
        dbapi_error,
        hide_parameters=connection.engine.hide_parameters,
        connection_invalidated=disconnect,
        dialect=dialect,
    ) from exc


_JSONB_OID: Final = 3802
_decode: Final = msgspec.json.decode


class _PayloadLoader(JsonbLoader):
    """psycopg's JSONB loader with msgspec's decoder: the values ``json.loads`` gives, faster.

    msgspec reads every JSON number as ``json.loads`` does (ints of any size, floats
    correctly rounded) and refuses only what ``json.loads`` reads otherwise (a number beyond
    the float range, which it makes ``inf``): those documents go to ``json.loads``, and one
    nested past Python's recursion limit (stored by another tool) to `_json_deep.loads`.
    """

    def load(self, data: Buffer) -> Any:
        try:
            return _decode(data)
        except Exception:
            text = bytes(data).decode()
            try:
                return json.loads(text)
            except RecursionError:
                return deep_loads(text)


def _default_jsonb_loader(dbapi_connection: PsycopgConnection[Any]) -> bool:
    """Whether the connection reads JSONB with psycopg's own ``json.loads``.

    A host's ``create_engine(json_deserializer=...)`` or psycopg's ``set_json_loads`` (on
    the connection or for the whole process) chose another function: keep it.
    """
    loader = dbapi_connection.adapters.get_loader(_JSONB_OID, Format.TEXT)
    return loader is JsonbLoader and JsonbLoader(_JSONB_OID).loads is json.loads
