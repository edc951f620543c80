"""Write many events at once with binary COPY: idempotent retries, bad rows isolated."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg.types.json import set_json_dumps
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist.events import COLUMNS, DeadLetterHook, EventTable, NewEvent
from eventlog_persist.exceptions import ConfigurationError
from eventlog_persist.model import EventLogMixin
from eventlog_persist.retry import (
    DEFAULT_RETRY,
    ErrorKind,
    RetriesExhaustedError,
    RetryPolicy,
    classify_error,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "AsyncTarget",
    "BulkResult",
    "Target",
    "awrite_events",
    "conninfo_of",
    "write_events",
]

logger = logging.getLogger("eventlog_persist")

DEFAULT_BATCH_SIZE: Final = 10_000

Target = str | Engine | psycopg.Connection[Any]
"""Where a sync writer connects: a libpq conninfo/URL, a SQLAlchemy ``Engine`` or a connection."""
AsyncTarget = str | AsyncEngine | psycopg.AsyncConnection[Any]
"""Where an async writer connects: a conninfo/URL, an ``AsyncEngine`` or an async connection."""

_STAGING: Final = "_eventlog_staging"


@dataclass(slots=True)
class BulkResult:
    """What a bulk write did.

    Attributes:
        written: Events now stored: inserted, or found already stored by an idempotent retry.
        duplicates: Of ``written``, the events that were already stored.
        dead_lettered: Events given up on, each with its error (also passed to the hook).
        retries: Transient failures that were retried.
    """

    written: int = 0
    duplicates: int = 0
    dead_lettered: list[tuple[NewEvent, BaseException]] = field(default_factory=list)
    retries: int = 0


def conninfo_of(engine: Engine | AsyncEngine) -> str:
    """Return a libpq connection URL for the database of a SQLAlchemy engine.

    Only the URL is used: ``connect_args`` given to ``create_engine`` are not, so pass a
    conninfo string to the writers when you need them (SSL settings, options).
    """
    url = engine.url
    if url.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"the writers need a PostgreSQL engine, got the {url.get_backend_name()!r} dialect"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


# --- SQL, shared by the sync and async paths ------------------------------------------------

_COLUMN_LIST: Final = ", ".join(COLUMNS)


def _copy_sql(table: EventTable, *, staged: bool) -> str:
    into = _STAGING if staged else table.qualified_name
    return f"COPY {into} ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"


def _staging_sql(table: EventTable) -> str:
    return (
        f"CREATE TEMP TABLE IF NOT EXISTS {_STAGING} "
        f"(LIKE {table.qualified_name} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    )


def _move_sql(table: EventTable) -> str:
    # Empties the staging table too, so the next sub-batch of a bisection starts clean.
    return (
        f"WITH moved AS (DELETE FROM {_STAGING} RETURNING *) "
        f"INSERT INTO {table.qualified_name} ({_COLUMN_LIST}) "
        f"SELECT {_COLUMN_LIST} FROM moved ON CONFLICT (id) DO NOTHING"
    )


def _json_text(text: str) -> str:
    """``dumps`` for the payload column: the payload is already JSON text."""
    return text


@dataclass(slots=True)
class _Outcome:
    inserted: int = 0
    duplicates: int = 0
    dead: list[tuple[NewEvent, BaseException]] = field(default_factory=list)


class _NeedStaging(Exception):
    """Some id is already stored: write the batch again through the staging table."""


def _halves(events: Sequence[NewEvent]) -> tuple[Sequence[NewEvent], Sequence[NewEvent]]:
    middle = len(events) // 2
    return events[:middle], events[middle:]


def _row_failure(exc: Exception, staged: bool) -> bool:
    """Whether the failure of a (sub-)batch is to be narrowed down to rows; else re-raise."""
    kind = classify_error(exc)
    if kind is ErrorKind.DUPLICATE and not staged:
        raise _NeedStaging from exc
    return kind is ErrorKind.ROW or (kind is ErrorKind.DUPLICATE and staged)


# --- sync -------------------------------------------------------------------------------------


def _copy_part(
    conn: psycopg.Connection[Any], table: EventTable, events: Sequence[NewEvent], *, staged: bool
) -> int:
    with conn.cursor() as cur:
        set_json_dumps(_json_text, cur)
        with cur.copy(_copy_sql(table, staged=staged)) as copy:
            copy.set_types(table.copy_types)
            row = table.row
            for event in events:
                copy.write_row(row(event))
        if not staged:
            return len(events)
        cur.execute(_move_sql(table))
        return cur.rowcount


def _store_part(
    conn: psycopg.Connection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    outcome: _Outcome,
    *,
    staged: bool,
) -> None:
    try:
        with conn.transaction():
            inserted = _copy_part(conn, table, events, staged=staged)
    except Exception as exc:
        if conn.broken or not _row_failure(exc, staged):
            raise
        if len(events) == 1:
            outcome.dead.append((events[0], exc))
            return
        for half in _halves(events):
            _store_part(conn, table, half, outcome, staged=staged)
        return
    outcome.inserted += inserted
    outcome.duplicates += len(events) - inserted


def _store(
    conn: psycopg.Connection[Any], table: EventTable, events: Sequence[NewEvent], *, staged: bool
) -> _Outcome:
    """Write ``events`` in one transaction; bad rows are found by bisection with savepoints."""
    outcome = _Outcome()
    with conn.transaction():
        if staged:
            conn.execute(_staging_sql(table))
        _store_part(conn, table, events, outcome, staged=staged)
    return outcome


class _Connector:
    """Opens (and reopens) the connection a sync writer uses."""

    def __init__(self, target: Target) -> None:
        self._owned = not isinstance(target, psycopg.Connection)
        self._conninfo = (
            ""
            if isinstance(target, psycopg.Connection)
            else conninfo_of(target)
            if isinstance(target, Engine)
            else target
        )
        self._conn: psycopg.Connection[Any] | None = None if self._owned else target  # type: ignore[assignment]

    def get(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if not self._owned:
            raise psycopg.OperationalError("the connection given to the writer is closed")
        self._conn = conn = psycopg.connect(self._conninfo, autocommit=True)
        return conn

    def broken(self) -> bool:
        conn = self._conn
        return conn is None or conn.broken or conn.closed

    def discard(self) -> None:
        if self._owned and self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.discard()


def _deliver(
    connector: _Connector,
    table: EventTable,
    events: Sequence[NewEvent],
    retry: RetryPolicy,
    stop: threading.Event | None = None,
    on_retry: Callable[[], None] | None = None,
) -> _Outcome:
    """Write one batch, retrying transient failures; raise what cannot be retried."""
    staged = False
    retries = 0
    started = time.monotonic()
    while True:
        try:
            return _store(connector.get(), table, events, staged=staged)
        except _NeedStaging:
            staged = True
            continue
        except Exception as exc:
            broken = connector.broken()
            if broken:
                connector.discard()
            if classify_error(exc) is not ErrorKind.TRANSIENT and not broken:
                raise
            # The commit may have happened: only an idempotent write is safe from now on.
            staged = True
            delay = retry.delay(retries, time.monotonic() - started)
            if delay is None or (stop is not None and stop.is_set()):
                raise RetriesExhaustedError(
                    f"writing {len(events)} events failed {retries + 1} times with transient "
                    f"errors, the last: {exc}; check that the database is reachable, or "
                    "allow more time with RetryPolicy(max_attempts=..., max_elapsed=...)"
                ) from exc
            logger.warning("event write failed, retrying in %.2fs: %s", delay, exc)
            retries += 1
            if on_retry is not None:
                on_retry()
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)


def _report(hook: DeadLetterHook | None, event: NewEvent, error: BaseException) -> None:
    """Call the dead-letter hook (or log) without ever raising."""
    if hook is None:
        logger.error("event %s was not written: %s", event.id, error)
        return
    try:
        hook(event, error)
    except Exception:
        logger.exception("the dead-letter hook failed for event %s", event.id)


def _batches(events: Iterable[NewEvent], size: int) -> Iterable[list[NewEvent]]:
    batch: list[NewEvent] = []
    for event in events:
        batch.append(event)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_args(batch_size: int, retry: object) -> None:
    if type(batch_size) is not int or batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size!r} is not valid; use an int >= 1")
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry={retry!r} is not valid; pass a RetryPolicy")


def _settle(outcome: _Outcome, result: BulkResult, hook: DeadLetterHook | None) -> None:
    result.written += outcome.inserted + outcome.duplicates
    result.duplicates += outcome.duplicates
    _dead_letter(outcome.dead, result, hook)


def _dead_letter(
    dead: Iterable[tuple[NewEvent, BaseException]], result: BulkResult, hook: DeadLetterHook | None
) -> None:
    for event, error in dead:
        result.dead_lettered.append((event, error))
        _report(hook, event, error)


def write_events(
    target: Target,
    model: type[EventLogMixin[Any]],
    events: Iterable[NewEvent],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_dead_letter: DeadLetterHook | None = None,
) -> BulkResult:
    """Write events with binary COPY, ``batch_size`` per transaction.

    Each batch is first copied straight into ``event_logs``. After a transient error (the
    commit's outcome may be unknown) or when an id is already stored, the batch is copied
    into a temporary staging table and moved with ``INSERT ... ON CONFLICT (id) DO NOTHING``,
    so no event is ever stored twice. A row the database refuses (a foreign key to a session
    deleted a moment ago, say) is isolated by bisecting the batch under savepoints: every
    other row is written, and the bad one goes to ``on_dead_letter`` with its error.

    Args:
        target: A libpq conninfo or URL, a SQLAlchemy ``Engine`` (its URL is used), or an
            open psycopg connection (used as is, not reopened after a connection loss).
        model: The host's ``EventLog`` model.
        events: Events built with `new_event` (or a writer's ``event()``).
        batch_size: Events per transaction.
        retry: How transient errors are retried.
        on_dead_letter: Called with each event that is not written and its error; without
            it such events are logged at ERROR level on the ``eventlog_persist`` logger.

    Returns:
        Counts, and the dead-lettered events with their errors.

    Raises:
        ConfigurationError: An argument is not valid.
    """
    _check_args(batch_size, retry)
    table = EventTable.of(model)
    result = BulkResult()
    connector = _Connector(target)

    def count_retry() -> None:
        result.retries += 1

    try:
        for batch in _batches(events, batch_size):
            try:
                outcome = _deliver(connector, table, batch, retry, on_retry=count_retry)
            except Exception as exc:
                _dead_letter([(event, exc) for event in batch], result, on_dead_letter)
            else:
                _settle(outcome, result, on_dead_letter)
    finally:
        connector.close()
    return result


# --- async ------------------------------------------------------------------------------------


async def _acopy_part(
    conn: psycopg.AsyncConnection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    *,
    staged: bool,
) -> int:
    async with conn.cursor() as cur:
        set_json_dumps(_json_text, cur)
        async with cur.copy(_copy_sql(table, staged=staged)) as copy:
            copy.set_types(table.copy_types)
            row = table.row
            for event in events:
                await copy.write_row(row(event))
        if not staged:
            return len(events)
        await cur.execute(_move_sql(table))
        return cur.rowcount


async def _astore_part(
    conn: psycopg.AsyncConnection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    outcome: _Outcome,
    *,
    staged: bool,
) -> None:
    try:
        async with conn.transaction():
            inserted = await _acopy_part(conn, table, events, staged=staged)
    except Exception as exc:
        if conn.broken or not _row_failure(exc, staged):
            raise
        if len(events) == 1:
            outcome.dead.append((events[0], exc))
            return
        for half in _halves(events):
            await _astore_part(conn, table, half, outcome, staged=staged)
        return
    outcome.inserted += inserted
    outcome.duplicates += len(events) - inserted


async def _astore(
    conn: psycopg.AsyncConnection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    *,
    staged: bool,
) -> _Outcome:
    outcome = _Outcome()
    async with conn.transaction():
        if staged:
            await conn.execute(_staging_sql(table))
        await _astore_part(conn, table, events, outcome, staged=staged)
    return outcome


class _AsyncConnector:
    """Opens (and reopens) the connection an async writer uses."""

    def __init__(self, target: AsyncTarget) -> None:
        self._owned = not isinstance(target, psycopg.AsyncConnection)
        self._conninfo = (
            ""
            if isinstance(target, psycopg.AsyncConnection)
            else conninfo_of(target)
            if isinstance(target, AsyncEngine)
            else target
        )
        self._conn: psycopg.AsyncConnection[Any] | None = (
            None if self._owned else target  # type: ignore[assignment]
        )

    async def get(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        if not self._owned:
            raise psycopg.OperationalError("the connection given to the writer is closed")
        self._conn = conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        return conn

    def broken(self) -> bool:
        conn = self._conn
        return conn is None or conn.broken or conn.closed

    async def discard(self) -> None:
        if self._owned and self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def close(self) -> None:
        await self.discard()


async def _adeliver(
    connector: _AsyncConnector,
    table: EventTable,
    events: Sequence[NewEvent],
    retry: RetryPolicy,
    stop: asyncio.Event | None = None,
    on_retry: Callable[[], None] | None = None,
) -> _Outcome:
    staged = False
    retries = 0
    started = time.monotonic()
    while True:
        try:
            return await _astore(await connector.get(), table, events, staged=staged)
        except _NeedStaging:
            staged = True
            continue
        except Exception as exc:
            broken = connector.broken()
            if broken:
                await connector.discard()
            if classify_error(exc) is not ErrorKind.TRANSIENT and not broken:
                raise
            staged = True
            delay = retry.delay(retries, time.monotonic() - started)
            if delay is None or (stop is not None and stop.is_set()):
                raise RetriesExhaustedError(
                    f"writing {len(events)} events failed {retries + 1} times with transient "
                    f"errors, the last: {exc}; check that the database is reachable, or "
                    "allow more time with RetryPolicy(max_attempts=..., max_elapsed=...)"
                ) from exc
            logger.warning("event write failed, retrying in %.2fs: %s", delay, exc)
            retries += 1
            if on_retry is not None:
                on_retry()
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


async def awrite_events(
    target: AsyncTarget,
    model: type[EventLogMixin[Any]],
    events: Iterable[NewEvent],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_dead_letter: DeadLetterHook | None = None,
) -> BulkResult:
    """Write events with binary COPY from async code; the same behavior as `write_events`.

    Args:
        target: A libpq conninfo or URL, a SQLAlchemy ``AsyncEngine`` (its URL is used), or
            an open psycopg ``AsyncConnection`` (used as is).
        model: The host's ``EventLog`` model.
        events: Events built with `new_event`.
        batch_size: Events per transaction.
        retry: How transient errors are retried.
        on_dead_letter: Called with each event that is not written and its error.

    Returns:
        Counts, and the dead-lettered events with their errors.

    Raises:
        ConfigurationError: An argument is not valid.
    """
    _check_args(batch_size, retry)
    table = EventTable.of(model)
    result = BulkResult()
    connector = _AsyncConnector(target)

    def count_retry() -> None:
        result.retries += 1

    try:
        for batch in _batches(events, batch_size):
            try:
                outcome = await _adeliver(connector, table, batch, retry, on_retry=count_retry)
            except Exception as exc:
                _dead_letter([(event, exc) for event in batch], result, on_dead_letter)
            else:
                _settle(outcome, result, on_dead_letter)
    finally:
        await connector.close()
    return result
