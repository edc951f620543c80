"""Record single events: in the caller's transaction, or detached on their own connection."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from functools import partial
from typing import Any, Final, Generic, NoReturn, TypeVar, cast, overload

from sqlalchemy import Connection, Dialect, Engine, Insert, Text, bindparam, select, text
from sqlalchemy import cast as sql_cast
from sqlalchemy import event as sql_event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import UnboundExecutionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, configure_mappers
from sqlalchemy.orm.instrumentation import ClassManager, manager_of_class
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn
from typing_extensions import Unpack

from eventlog_persist._events import EventBuilder, EventFields, NewEvent
from eventlog_persist._failures import (
    Action,
    Attempt,
    ErrorKind,
    Reason,
    classify_error,
    decide,
    is_missing_partition,
    write_error,
)
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._payload import DEFAULT_POLICY, PayloadPolicy
from eventlog_persist._read_direct import (
    TRANSACTION_EVENTS,
    raise_as_sqlalchemy,
    unobserved,
)
from eventlog_persist._retry import DETACHED_RETRY, RetryPolicy
from eventlog_persist._table import COLUMNS, EventTable
from eventlog_persist._urls import check_engine
from eventlog_persist._vocabulary import DEFAULT_FIELD_RULES, EventFieldRules
from eventlog_persist.exceptions import ConfigurationError

ModelT = TypeVar("ModelT", bound=EventLogMixin[Any])
_UuidModelT = TypeVar("_UuidModelT", bound=EventLogMixin[uuid.UUID])
_IntModelT = TypeVar("_IntModelT", bound=EventLogMixin[int])

__all__ = ["EventWriter", "event_row"]


def _insert_statement(table: EventTable, lock_timeout: float | None) -> Insert:
    """The detached write as one statement, one bind parameter per column::

        INSERT INTO event_logs (...) SELECT <values>
        WHERE set_config('lock_timeout', '<ms>', true) IS NOT NULL
        ON CONFLICT (<primary key>) DO NOTHING

    The statement sets the lock timeout for its own transaction before its foreign-key
    checks lock the referenced rows, so in autocommit mode it needs no ``BEGIN``, ``SET
    LOCAL`` or ``COMMIT``: one round trip.
    """
    values: list[Any] = [bindparam(name, type_=table.table.c[name].type) for name in COLUMNS]
    # The payload is JSON text already: cast it instead of encoding it a second time.
    values[COLUMNS.index("payload")] = sql_cast(bindparam("payload", type_=Text()), JSONB)
    row = select(*(value.label(name) for value, name in zip(values, COLUMNS, strict=True)))
    if lock_timeout is not None:
        # set_config takes no bind parameters here; the value is a validated number of ms.
        milliseconds = max(1, round(lock_timeout * 1000))
        row = row.where(text(f"set_config('lock_timeout', '{milliseconds}ms', true) IS NOT NULL"))
    return (
        pg_insert(table.table)
        .from_select(list(COLUMNS), row)
        .on_conflict_do_nothing(index_elements=list(table.key_columns))
    )


def _params(event: NewEvent) -> dict[str, object]:
    return dict(zip(COLUMNS, EventTable.row(event), strict=True))


def event_row(model: type[ModelT], event: NewEvent, payload: Any) -> ModelT:
    """A new, unsaved row of the host's model holding ``event`` (``payload``: its JSON value)."""
    values = {
        "id": event.id,
        "session_id": event.session_id,
        "user_id": event.user_id,
        "event_type": event.event_type,
        "payload": payload,
        "project_id": event.project_id,
        "agent_id": event.agent_id,
        "error_code": event.error_code,
        "tool_name": event.tool_name,
        "approval_status": event.approval_status,
        "created_at": event.created_at,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "span_id": event.span_id,
    }
    manager = manager_of_class(model)
    if _observed(manager):
        return model(**values)
    # The values are checked already and nothing watches them being set: the row is made as
    # the ORM makes a loaded one, which is 10x cheaper than 14 instrumented assignments.
    # An INSERT takes a pending row's values from its __dict__, so the row flushes the same.
    if not manager.mapper.configured:
        configure_mappers()  # what the constructor's own init listener would do
    row = manager.new_instance()
    row.__dict__.update(values)
    return row


def _observed(manager: ClassManager[Any]) -> bool:
    """Whether building a row by its constructor could run host code: its own __init__, an
    init or attribute-set listener, or a validator."""
    if manager.original_init is not EventLogMixin.__init__ or manager.dispatch.init_failure:
        return True
    # The mapper's own init listener configures mappers, which event_row does itself.
    if any(_host_code(listener) for listener in manager.dispatch.init):
        return True
    mapper = manager.mapper
    if mapper.validators or mapper.polymorphic_on is not None:
        return True
    dispatches = _DISPATCHES.get(manager)
    if dispatches is None:
        dispatches = _DISPATCHES[manager] = tuple(manager[key].dispatch for key in _ROW_KEYS)
    return any(dispatch.set for dispatch in dispatches)


# The attributes' event dispatchers of each model (they live as long as its class manager).
_DISPATCHES: weakref.WeakKeyDictionary[ClassManager[Any], tuple[Any, ...]] = (
    weakref.WeakKeyDictionary()
)


def _note_missing_partitions(session: Session | AsyncSession, model: type[Any]) -> None:
    """Once per engine: the error of the caller's flush for an event that no partition of
    the partitioned ``event_logs`` holds gets a note naming the fix (PEP 678)."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    try:
        engine = sync.get_bind(mapper=model.__mapper__).engine
    except UnboundExecutionError:  # the flush will say so
        return
    if engine in _NOTING:
        return
    _NOTING.add(engine)
    sql_event.listen(engine, "handle_error", partial(_note_missing_partition, model.__table__.name))


_NOTING: weakref.WeakSet[Engine] = weakref.WeakSet()


def _note_missing_partition(table: str, context: ExceptionContext) -> None:
    error = context.sqlalchemy_exception
    if error is None or not is_missing_partition(error):
        return
    diag = getattr(context.original_exception, "diag", None)
    if getattr(diag, "table_name", None) != table:
        return
    error.add_note(
        f"eventlog-persist: {table} is partitioned and no partition holds the created_at of "
        "an event in this flush: create partitions ahead of time with ensure_partitions() or "
        "'eventlog-persist partitions ensure' (see 'Partition maintenance' in "
        "docs/adoption.md), or check the clock that set created_at"
    )


def _host_code(listener: object) -> bool:
    return (getattr(listener, "__module__", None), getattr(listener, "__name__", None)) != (
        "sqlalchemy.orm.mapper",
        "_event_on_init",
    )


_ROW_KEYS: Final = (
    "id",
    "session_id",
    "user_id",
    "event_type",
    "payload",
    "project_id",
    "agent_id",
    "error_code",
    "tool_name",
    "approval_status",
    "created_at",
    "request_id",
    "trace_id",
    "span_id",
)


def _at_server_defaults(driver: Any) -> bool:
    """Whether the ``driver`` connection runs transactions as the server's defaults say.

    Then the detached insert may run in autocommit mode, a transaction of its own. Not if
    the host set an isolation level, read-only or deferrable on it: those take SQLAlchemy's
    ``begin``, which lets psycopg write its ``BEGIN``.
    """
    return driver.isolation_level is None and driver.read_only is None and driver.deferrable is None


def _rolled_back(driver: Any, autocommit: bool) -> bool:
    """After an error on the direct path: roll back what is left and put ``autocommit`` back.

    False if that failed on a live connection, which must then never go back to the pool
    (in autocommit mode, the host's next session on it would commit each statement).
    """
    if driver.closed or driver.broken:
        return True  # nothing to put back: the error's handling invalidates it
    try:
        driver.rollback()
        driver.autocommit = autocommit
    except Exception:  # pragma: no cover - a live connection's ROLLBACK failed
        return False
    return True


async def _arolled_back(driver: Any, autocommit: bool) -> bool:
    """`_rolled_back` on psycopg's async connection."""
    if driver.closed or driver.broken:
        return True
    try:
        await driver.rollback()
        await driver.set_autocommit(autocommit)
    except BaseException:  # pragma: no cover - as in _rolled_back, or cancelled again
        return False
    return True


_ENGINE_FIX: Final = (
    "it writes through the engine's connection pool, so pass the application's engine (for "
    "a URL, the engine made from it once at start-up)"
)


class EventWriter(Generic[ModelT, KeyT]):
    """Builds checked events for one host model and records them.

    * `record` adds the event to the caller's ``Session`` or ``AsyncSession``: it is
      committed or rolled back with the caller's own changes.
    * `record_detached` / `arecord_detached` write it at once in a short transaction of its
      own, so it survives a rollback of the caller (log errors and failed tool calls this
      way). Transient errors are retried; ``ON CONFLICT (id) DO NOTHING`` makes the retry
      of a commit whose outcome is unknown harmless. The transaction sets ``lock_timeout``,
      so a row lock held by the caller's own transaction (``SELECT ... FOR UPDATE`` on the
      chat session) raises `EventWriteError` instead of waiting forever.

    Every event's ``created_at`` is the client's clock at build time unless given.

    Args:
        model: The host's ``EventLog`` model.
        payload_policy: How payloads are converted, redacted and capped.
        field_rules: Which ``event_type`` and column values are allowed.
        retry: How the detached writes retry transient errors (a lost connection, a
            restart, a failover, a database that accepts only reads); default
            `DETACHED_RETRY`, 10 s. Each retry takes a new connection from the pool: the
            one that failed is invalidated.
        lock_timeout: Most seconds a detached write waits for a row lock (the foreign-key
            check locks the referenced rows ``FOR KEY SHARE``); None: the server's setting.
            Default 5.

    Raises:
        ConfigurationError: An argument is not valid.

    Example:
        >>> writer = EventWriter(EventLog)  # doctest: +SKIP
        >>> writer.record(session, session_id=s.id, user_id=u.id, event_type="user_message",
        ...               payload={"text": "hi"})  # doctest: +SKIP
    """

    @overload
    def __init__(
        self: EventWriter[_UuidModelT, uuid.UUID],
        model: type[_UuidModelT],
        *,
        payload_policy: PayloadPolicy = ...,
        field_rules: EventFieldRules = ...,
        retry: RetryPolicy = ...,
        lock_timeout: float | None = ...,
    ) -> None: ...
    @overload
    def __init__(
        self: EventWriter[_IntModelT, int],
        model: type[_IntModelT],
        *,
        payload_policy: PayloadPolicy = ...,
        field_rules: EventFieldRules = ...,
        retry: RetryPolicy = ...,
        lock_timeout: float | None = ...,
    ) -> None: ...
    def __init__(
        self,
        model: type[Any],
        *,
        payload_policy: PayloadPolicy = DEFAULT_POLICY,
        field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
        retry: RetryPolicy = DETACHED_RETRY,
        lock_timeout: float | None = 5.0,
    ) -> None:
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry={retry!r} is not valid; pass a RetryPolicy")
        if lock_timeout is not None and (
            isinstance(lock_timeout, bool)
            or not isinstance(lock_timeout, (int, float))
            or not 0 < lock_timeout < 86_400
        ):
            raise ConfigurationError(
                f"lock_timeout={lock_timeout!r} is not valid; use seconds (a number > 0 and "
                "< 86400), or None for the server's setting"
            )
        self._builder: EventBuilder[KeyT] = EventBuilder.of(
            model, payload_policy=payload_policy, field_rules=field_rules
        )
        self.model: type[ModelT] = model
        self.retry = retry
        self.lock_timeout = lock_timeout
        self._insert = _insert_statement(self._builder.table, lock_timeout)
        self._compiled: weakref.WeakKeyDictionary[Dialect, str] = weakref.WeakKeyDictionary()

    @property
    def payload_policy(self) -> PayloadPolicy:
        """How this writer converts, redacts and caps payloads."""
        return self._builder.payload_policy

    @property
    def field_rules(self) -> EventFieldRules:
        """Which ``event_type`` and column values this writer allows."""
        return self._builder.field_rules

    def event(self, **fields: Unpack[EventFields[KeyT]]) -> NewEvent:
        """Build a checked event with this writer's rules; see `new_event` for the arguments.

        Raises:
            ValidationError: A field or key is not acceptable.
            PayloadError: The payload cannot be stored; ``path`` says where.
        """
        return self._builder.event(fields)

    @overload
    def record(self, session: Session | AsyncSession, event: NewEvent, /) -> ModelT: ...
    @overload
    def record(
        self, session: Session | AsyncSession, /, **fields: Unpack[EventFields[KeyT]]
    ) -> ModelT: ...
    def record(
        self, session: Session | AsyncSession, event: NewEvent | None = None, /, **fields: Any
    ) -> ModelT:
        """Add an event to the caller's session, in the caller's transaction.

        Nothing is sent yet: the row is inserted at the session's next flush and stored only
        if the caller commits. Adding needs no I/O, so this plain method also serves an
        ``AsyncSession`` (``await session.flush()`` to surface database errors early).

        Args:
            session: The caller's ``Session`` or ``AsyncSession``.
            event: An event built with `new_event` or `event`; or instead:
            **fields: The event's fields, as the keyword arguments of `new_event`.

        Returns:
            The new row, an instance of the host's model, already holding its ``id``.

        Raises:
            ValidationError: A field or key is not acceptable.
            PayloadError: The payload cannot be stored; ``path`` says where.
        """
        if event is None:
            event, prepared = self._builder.build(cast("EventFields[KeyT]", fields))
            payload = prepared.value
        else:
            event = self._builder.given(event, cast("EventFields[KeyT]", fields))
            payload = json.loads(event.payload_json)
        row = event_row(self.model, event, payload)
        if self.model.__eventlog_partitioned__:
            _note_missing_partitions(session, self.model)
        session.add(row)
        return row

    @overload
    def record_detached(self, engine: Engine, event: NewEvent, /) -> NewEvent: ...
    @overload
    def record_detached(
        self, engine: Engine, /, **fields: Unpack[EventFields[KeyT]]
    ) -> NewEvent: ...
    def record_detached(
        self, engine: Engine, event: NewEvent | None = None, /, **fields: Any
    ) -> NewEvent:
        """Write an event at once, in a short transaction of its own on ``engine``.

        Takes a built event or its fields, like `record`. The event is stored even if the
        caller's own transaction later rolls back; a retry after a commit whose outcome was
        unknown never stores it twice.

        Returns:
            The stored event (also when an earlier attempt had stored it already).

        Raises:
            ConfigurationError: ``engine`` is not an ``Engine`` (an ``AsyncEngine`` names
                `arecord_detached`).
            ValidationError: A field or key is not acceptable (nothing is written).
            PayloadError: The payload cannot be stored (nothing is written).
            EventWriteError: The event was not written: the database refused it for good,
                a row it references stayed locked past ``lock_timeout`` (the caller's own
                transaction holds it), or an unexpected error persisted. ``sqlstate`` and
                the ``__cause__`` give the database's error.
            RetriesExhaustedError: Transient errors lasted longer than the retry policy (an
                `EventWriteError` too).
        """
        check_engine(engine, api="record_detached", is_async=False, fix=_ENGINE_FIX)
        event = self._builder.given(event, cast("EventFields[KeyT]", fields))
        params = _params(event)
        attempt = Attempt(started=time.monotonic())
        while True:
            try:
                self._write_detached(engine, params)
                return event
            except Exception as exc:
                delay = self._retry_delay(event, exc, attempt)
            time.sleep(delay)

    @overload
    async def arecord_detached(self, engine: AsyncEngine, event: NewEvent, /) -> NewEvent: ...
    @overload
    async def arecord_detached(
        self, engine: AsyncEngine, /, **fields: Unpack[EventFields[KeyT]]
    ) -> NewEvent: ...
    async def arecord_detached(
        self, engine: AsyncEngine, event: NewEvent | None = None, /, **fields: Any
    ) -> NewEvent:
        """Async `record_detached`: write an event at once, in a transaction of its own.

        Returns:
            The stored event (also when an earlier attempt had stored it already).

        Raises:
            ConfigurationError: ``engine`` is not an ``AsyncEngine`` (an ``Engine`` names
                `record_detached`).
            ValidationError: A field or key is not acceptable (nothing is written).
            PayloadError: The payload cannot be stored (nothing is written).
            EventWriteError: The event was not written: the database refused it for good,
                a row it references stayed locked past ``lock_timeout`` (the caller's own
                transaction holds it), or an unexpected error persisted. ``sqlstate`` and
                the ``__cause__`` give the database's error.
            RetriesExhaustedError: Transient errors lasted longer than the retry policy (an
                `EventWriteError` too).
        """
        check_engine(engine, api="arecord_detached", is_async=True, fix=_ENGINE_FIX)
        event = self._builder.given(event, cast("EventFields[KeyT]", fields))
        params = _params(event)
        attempt = Attempt(started=time.monotonic())
        while True:
            try:
                await self._awrite_detached(engine, params)
                return event
            except Exception as exc:
                delay = self._retry_delay(event, exc, attempt)
            await asyncio.sleep(delay)

    def _write_detached(self, engine: Engine, params: dict[str, object]) -> None:
        """One attempt of a detached write.

        When nobody observes the engine (`unobserved`: no listener, no SQL logging) and the
        connection runs at the server's defaults (`_at_server_defaults`), the insert runs on
        the pooled psycopg connection itself, in autocommit mode: one round trip, where an
        insert and a commit take three. Otherwise it runs through a ``Connection``
        (`_write_through`), which is also what raises an error of the direct path as
        SQLAlchemy raises it.
        """
        sql = self._direct_sql(engine)
        if sql is None:
            self._write_through(engine, None, params)
            return
        pooled = engine.raw_connection()  # its errors are retried as engine.connect()'s are
        driver: Any = pooled.driver_connection
        if not _at_server_defaults(driver):
            self._write_through(engine, pooled, params)
            return
        autocommit = driver.autocommit
        try:
            if not autocommit:
                driver.autocommit = True
            with driver.cursor() as cursor:
                cursor.execute(sql, params)
            if not autocommit:
                driver.autocommit = False
        except BaseException as exc:
            self._failed(engine, pooled, exc, sql, params, _rolled_back(driver, autocommit))
        pooled.close()

    async def _awrite_detached(self, engine: AsyncEngine, params: dict[str, object]) -> None:
        """`_write_detached` on an ``AsyncEngine``: the direct path awaits psycopg's async
        connection; the rest is the sync code, run as SQLAlchemy's asyncio extension runs
        it (`greenlet_spawn`)."""
        sync_engine = engine.sync_engine
        sql = self._direct_sql(sync_engine)
        if sql is None:
            await greenlet_spawn(self._write_through, sync_engine, None, params)
            return
        pooled = await engine.raw_connection()
        driver: Any = pooled.driver_connection
        if not _at_server_defaults(driver):
            await greenlet_spawn(self._write_through, sync_engine, pooled, params)
            return
        autocommit = driver.autocommit
        try:
            if not autocommit:
                await driver.set_autocommit(True)
            async with driver.cursor() as cursor:
                await cursor.execute(sql, params)
            if not autocommit:
                await driver.set_autocommit(False)
        except BaseException as exc:
            clean = await _arolled_back(driver, autocommit)
            await greenlet_spawn(self._failed, sync_engine, pooled, exc, sql, params, clean)
        await greenlet_spawn(pooled.close)  # the pool's reset awaits psycopg

    def _write_through(
        self, engine: Engine, pooled: PoolProxiedConnection | None, params: dict[str, object]
    ) -> None:
        """The detached write through a SQLAlchemy ``Connection``, where listeners see it:
        around ``pooled`` if given, else a new one from the pool."""
        with engine.connect() if pooled is None else Connection(engine, pooled) as conn:
            try:
                driver_sql = self._driver_sql(conn)
                with conn.begin():
                    if driver_sql is None:
                        conn.execute(self._insert, params)
                    else:
                        conn.exec_driver_sql(driver_sql, params)
            except Exception as exc:
                if classify_error(exc) is ErrorKind.TRANSIENT:
                    conn.invalidate()  # never retried on: it may reach a standby
                raise

    @staticmethod
    def _failed(
        engine: Engine,
        pooled: PoolProxiedConnection,
        exc: BaseException,
        sql: str,
        params: dict[str, object],
        clean: bool,
    ) -> NoReturn:
        """Raise the direct path's error as SQLAlchemy would, and invalidate as it would.

        A ``Connection`` around ``pooled`` converts it (`raise_as_sqlalchemy`); a lost
        connection invalidates the pool, a transient error or an unclean connection
        (`_rolled_back`) invalidates ``pooled``, anything else returns it to the pool.
        """
        with Connection(engine, pooled) as conn:
            try:
                raise_as_sqlalchemy(conn, exc, sql, params, pooled.driver_connection)
            except Exception as error:
                if not conn.invalidated and (
                    not clean or classify_error(error) is ErrorKind.TRANSIENT
                ):
                    conn.invalidate()  # never retried on: it may reach a standby
                raise

    def _direct_sql(self, engine: Engine) -> str | None:
        """The INSERT's driver SQL if a detached write on ``engine`` may skip SQLAlchemy's
        ``Connection``: nobody would see it (an engine-level execution option such as an
        isolation level is applied by a listener, so it counts), else None."""
        if not unobserved(engine, engine.dispatch, TRANSACTION_EVENTS):
            return None
        return self._driver_sql(engine)

    def _driver_sql(self, conn: Connection | Engine) -> str | None:
        """The INSERT as psycopg's SQL text, compiled once per dialect; else None.

        ``exec_driver_sql`` skips the statement cache lookup and the bind processing, which
        psycopg does not need for these columns (the payload is JSON text already, cast in
        SQL). With a ``schema_translate_map`` the statement goes through ``execute``.
        """
        dialect = conn.dialect
        if dialect.driver != "psycopg" or conn.get_execution_options().get("schema_translate_map"):
            return None
        sql = self._compiled.get(dialect)
        if sql is None:
            compiled = self._insert.compile(dialect=dialect)
            # Values go to the driver as they are: only if no column type converts them.
            converts = any(
                bind.type.bind_processor(dialect) is not None for bind in compiled.binds.values()
            )
            sql = self._compiled[dialect] = "" if converts else compiled.string
        return sql or None

    def _retry_delay(self, event: NewEvent, exc: Exception, attempt: Attempt) -> float:
        """Return how long to wait before retrying, or raise the error to give the caller."""
        decision = decide(
            attempt, exc, size=1, policy=self.retry, now=time.monotonic(), lock_wait_is_final=True
        )
        if decision.action is Action.RETRY:
            return decision.delay
        error = write_error(
            event,
            decision.reason or Reason.UNEXPECTED,
            exc,
            attempts=attempt.retries + 1,
            lock_timeout=self.lock_timeout,
        )
        raise error from error.__cause__
