"""The delivery engine of the bulk and buffered writers: connections, COPY, idempotent
retries through a staging table, bisection of refused rows, dead-letter reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, overload

import psycopg
from psycopg import pq
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist._events import DeadLetterHook, NewEvent
from eventlog_persist._failures import (
    Action,
    Attempt,
    ErrorKind,
    Reason,
    RowEncodingError,
    classify_error,
    decide,
    is_read_only,
    server_text,
    sqlstate_of,
    write_error,
)
from eventlog_persist._feed_wakeup import notify_statement
from eventlog_persist._retry import RetryPolicy
from eventlog_persist._table import COLUMNS, EventTable
from eventlog_persist._urls import conninfo, refuse_other_flavour
from eventlog_persist.exceptions import ConfigurationError, EventWriteError

logger = logging.getLogger("eventlog_persist")

DEFAULT_CONNECT_TIMEOUT: Final = 10.0
"""Seconds the writers' own connections wait to be established (libpq ``connect_timeout``)."""
DEFAULT_TCP_USER_TIMEOUT: Final = 60.0
"""Seconds sent data may stay unacknowledged before the connection is dropped (Linux)."""
DEFAULT_LOCK_TIMEOUT: Final = 5.0
"""Seconds one attempt of a write waits for a row lock before it counts as failed."""
READ_ONLY_LOG_INTERVAL: Final = 30.0
"""Seconds between two log lines saying that a writer's database accepts only reads."""

Target = str | URL | Engine | psycopg.Connection[Any]
"""Where a sync writer connects: a conninfo or URL of any PostgreSQL driver, an ``Engine``, or
a connection."""
AsyncTarget = str | URL | AsyncEngine | psycopg.AsyncConnection[Any]
"""Where an async writer connects: a conninfo or URL, an ``AsyncEngine``, or an async
connection."""

_STAGING: Final = "_eventlog_staging"


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
        f"SELECT {_COLUMN_LIST} FROM moved ON CONFLICT {table.conflict_target} DO NOTHING"
    )


# Every statement runs with prepare=False: psycopg would otherwise prepare it on the server
# after a few runs, and behind a transaction pooler (PgBouncer) that prepared statement
# stays on a server connection that another client's transaction gets next.
# Savepoints are our own, not psycopg's nested transaction(): when the SAVEPOINT command
# itself fails (a statement timeout can cancel it), psycopg rolls back to the savepoint that
# was never made and logs a warning. Here a failed SAVEPOINT or ROLLBACK TO simply raises;
# the batch's transaction is rolled back and the attempt counts as failed.
_SAVEPOINT: Final = "SAVEPOINT eventlog_part"
_RELEASE: Final = "RELEASE SAVEPOINT eventlog_part"
_UNDO: Final = "ROLLBACK TO SAVEPOINT eventlog_part; RELEASE SAVEPOINT eventlog_part"
# The batch's transaction is ours too, on an autocommit connection: a statement timeout that
# fires as a statement ends can cancel the next command instead ("canceling statement due to
# user request"), and when that is psycopg's ROLLBACK, psycopg logs a warning and leaves the
# transaction open. Ours tries the ROLLBACK once more; the cancel is spent by then.
_ROLLBACK_TRIES: Final = 2


def _own_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the batch runs BEGIN ... COMMIT itself (an autocommit connection, idle),
    rather than through psycopg's ``transaction()`` (a connection the host gave that is
    not in autocommit mode or is inside a transaction)."""
    return conn.autocommit and not _in_transaction(conn)


def _in_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.info.transaction_status != pq.TransactionStatus.IDLE


def _opening(table: EventTable, *, staged: bool, lock_timeout: float | None) -> str:
    """The statements that open a batch's transaction up to its first savepoint.

    Sent as one query (with the ``BEGIN`` when the transaction is ours): every round trip
    costs the writer thread the GIL, which a busy request thread may hold for a whole
    switch interval (5 ms) before handing it back.
    """
    statements = []
    if lock_timeout is not None:
        statements.append(_lock_timeout_sql(lock_timeout))
    if staged:
        statements.append(_staging_sql(table))
    statements.append(_SAVEPOINT)
    return "; ".join(statements)


@contextlib.contextmanager
def _transaction(conn: psycopg.Connection[Any], opening: str) -> Iterator[None]:
    """One transaction for a batch, opened with ``opening``; see `_ROLLBACK_TRIES`."""
    if not _own_transaction(conn):
        with conn.transaction():
            conn.execute(opening, prepare=False)
            yield
        return
    try:
        conn.execute(f"BEGIN; {opening}", prepare=False)
        yield
        conn.execute("COMMIT", prepare=False)
    except BaseException:
        for _ in range(_ROLLBACK_TRIES):
            if conn.broken or conn.closed or not _in_transaction(conn):
                break
            try:
                conn.execute("ROLLBACK", prepare=False)
                break
            except psycopg.Error:
                continue
        raise


@contextlib.asynccontextmanager
async def _atransaction(conn: psycopg.AsyncConnection[Any], opening: str) -> AsyncIterator[None]:
    """`_transaction`, async."""
    if not _own_transaction(conn):
        async with conn.transaction():
            await conn.execute(opening, prepare=False)
            yield
        return
    try:
        await conn.execute(f"BEGIN; {opening}", prepare=False)
        yield
        await conn.execute("COMMIT", prepare=False)
    except BaseException:
        for _ in range(_ROLLBACK_TRIES):
            if conn.broken or conn.closed or not _in_transaction(conn):
                break
            try:
                await conn.execute("ROLLBACK", prepare=False)
                break
            except psycopg.Error:
                continue
        raise


def _lock_timeout_sql(seconds: float) -> str:
    return f"SET LOCAL lock_timeout = {max(1, round(seconds * 1000))}"


class _JsonbText(Dumper):
    """The payload column in binary COPY: the payload is already JSON text, so this is
    jsonb's binary form (version 1, then the text) without a ``dumps`` call."""

    format = pq.Format.BINARY
    oid = psycopg.postgres.types["jsonb"].oid

    def dump(self, obj: str) -> bytes:
        return b"\x01" + obj.encode()


@dataclass(slots=True)
class Outcome:
    """What the delivery of one batch did (shared with the buffered writers)."""

    inserted: int = 0
    duplicates: int = 0
    dead: list[tuple[NewEvent, EventWriteError]] = field(default_factory=list)

    def count(self, size: int, inserted: int) -> None:
        self.inserted += inserted
        self.duplicates += size - inserted

    def merge(self, other: Outcome) -> None:
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.dead.extend(other.dead)


class _NeedStaging(Exception):
    """Some id is already stored: write the batch again through the staging table."""


STREAM_SECONDS: Final = 2.0
"""Most seconds a `Stream` keeps pulling events into the COPY of one batch."""


class SourceError(Exception):
    """The events' iterable raised: the batch is rolled back and ``error`` is re-raised."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


class Stream(Sequence[NewEvent]):
    """One batch of `write_events`, pulled from the host's iterable while it is copied.

    The first iteration (the first attempt's COPY) takes events from ``source`` as the
    COPY writes them, so the host's code building the next events runs while the server
    stores the previous ones. It stops at ``size`` events, at the end of ``source``, or
    after `STREAM_SECONDS`, so a slow iterable never holds a transaction open for long.
    If that attempt does not finish (it failed), the batch is first filled up to ``size``
    events, as if it had been taken whole. From then on the batch is what was taken, and
    every retry or bisection sees exactly those events. An exception raised by ``source``
    is wrapped in `SourceError`.
    """

    __slots__ = ("_done", "_size", "_source", "_started", "taken")

    def __init__(self, first: NewEvent, source: Iterator[NewEvent], size: int) -> None:
        self.taken = [first]
        self._source = source
        self._size = size
        self._started = False
        self._done = False  # no more events join the batch

    def __iter__(self) -> Iterator[NewEvent]:
        if self._started or self._done:
            return iter(self._settled())
        self._started = True
        return self._pull()

    def _pull(self) -> Iterator[NewEvent]:
        taken = self.taken
        yield taken[0]
        size, source = self._size, self._source
        deadline = time.monotonic() + STREAM_SECONDS
        while not self._done and len(taken) < size and time.monotonic() < deadline:
            try:
                event = next(source)
            except StopIteration:
                break
            except Exception as exc:
                raise SourceError(exc) from exc
            taken.append(event)
            yield event
        self._done = True

    def _settled(self) -> list[NewEvent]:
        """The batch, filled up to ``size`` first unless the first iteration finished."""
        if not self._done:
            self._done = True
            taken, source = self.taken, self._source
            try:
                while len(taken) < self._size:
                    taken.append(next(source))
            except StopIteration:
                pass
            except Exception as exc:
                raise SourceError(exc) from exc
        return self.taken

    def __len__(self) -> int:
        return len(self._settled())

    @overload
    def __getitem__(self, index: int) -> NewEvent: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[NewEvent]: ...
    def __getitem__(self, index: int | slice) -> NewEvent | Sequence[NewEvent]:
        return self._settled()[index]


def _halves(events: Sequence[NewEvent]) -> tuple[Sequence[NewEvent], Sequence[NewEvent]]:
    middle = len(events) // 2
    return events[:middle], events[middle:]


class _PartStep(Enum):
    RAISE = "raise"  # not a row's fault: the whole transaction fails, `deliver` decides
    DEAD = "dead"  # the one event of the part is bad
    SPLIT = "split"  # some row is bad: bisect under savepoints


def _part_step(exc: Exception, *, staged: bool, size: int, broken: bool) -> _PartStep:
    """What a failed (sub-)batch inside the batch's transaction leads to."""
    if broken:
        return _PartStep.RAISE
    kind = classify_error(exc)
    if kind is ErrorKind.DUPLICATE and not staged:
        raise _NeedStaging from exc
    if kind is ErrorKind.ROW or kind is ErrorKind.DUPLICATE:
        return _PartStep.DEAD if size == 1 else _PartStep.SPLIT
    return _PartStep.RAISE


@dataclass(slots=True)
class _Part:
    """A (sub-)batch still to write, with its retry state."""

    events: Sequence[NewEvent]
    attempt: Attempt
    staged: bool = False


def _after_failure(
    part: _Part,
    exc: Exception,
    policy: RetryPolicy,
    pending: list[_Part],
    outcome: Outcome,
    *,
    broken: bool,
    stopping: bool,
    lock_timeout: float | None,
) -> float | None:
    """Apply `decide` to a failed part: requeue it, split it, or dead-letter its events.

    Returns:
        Seconds to wait before the retry, or None when nothing is retried.
    """
    decision = decide(
        part.attempt,
        exc,
        size=len(part.events),
        policy=policy,
        now=time.monotonic(),
        broken=broken,
        stopping=stopping,
    )
    if decision.action is Action.RETRY:
        part.staged = True  # the commit may have happened: only an idempotent write from now
        pending.append(part)
        logger.warning(
            "event write failed, retrying in %.2fs: %s",
            decision.delay,
            server_text(exc),
            extra={
                "batch_size": len(part.events),
                "sqlstate": sqlstate_of(exc),
                "retry_in": decision.delay,
            },
        )
        return decision.delay
    if decision.action is Action.SPLIT:
        first, second = _halves(part.events)
        now = time.monotonic()
        pending.append(_Part(second, Attempt(started=now), staged=True))
        pending.append(_Part(first, Attempt(started=now), staged=True))
        logger.warning(
            "writing %d events hit statement_timeout repeatedly; writing them in halves: %s",
            len(part.events),
            server_text(exc),
            extra={"batch_size": len(part.events), "sqlstate": sqlstate_of(exc)},
        )
        return None
    reason = decision.reason or Reason.UNEXPECTED
    attempts = part.attempt.retries + 1
    if reason is Reason.UNEXPECTED:
        logger.error(
            "unexpected error writing %d events",
            len(part.events),
            exc_info=exc,
            extra={"batch_size": len(part.events)},
        )
    outcome.dead.extend(
        (event, write_error(event, reason, exc, attempts=attempts, lock_timeout=lock_timeout))
        for event in part.events
    )
    return None


def log_fields(event: NewEvent) -> dict[str, str]:
    """The structured fields (``extra=``) of a log line about one event: ids, never content."""
    return {
        "event_id": str(event.id),
        "session_id": str(event.session_id),
        "event_type": event.event_type,
    }


def report_dead_letters(
    hook: DeadLetterHook | None, dead: Iterable[tuple[NewEvent, EventWriteError]]
) -> None:
    """Call the dead-letter hook (or log) for each event; never raises.

    Callers hold no lock: the hook may read the writer's counters or be slow.
    """
    for event, error in dead:
        if hook is None:
            # The message names the event; the fields let a JSON log be filtered by them.
            logger.error("%s", error, extra={**log_fields(event), "sqlstate": error.sqlstate})
            continue
        try:
            hook(event, error)
        except Exception:
            logger.exception(
                "the dead-letter hook failed for event %s", event.id, extra=log_fields(event)
            )


def check_timeout(name: str, value: object) -> None:
    """Raise `ConfigurationError` unless ``value`` is None or seconds > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
        raise ConfigurationError(
            f"{name}={value!r} is not valid; use seconds (a number > 0), or None to leave it "
            "to the connection's own setting"
        )


# libpq has tcp_user_timeout since version 12, and it works where TCP_USER_TIMEOUT exists.
_HAS_TCP_USER_TIMEOUT: Final = sys.platform == "linux" and psycopg.pq.version() >= 120000


def connect_conninfo(
    conninfo: str, connect_timeout: float | None, tcp_user_timeout: float | None
) -> str:
    """Add the writers' network timeouts to ``conninfo``, unless it sets them itself."""
    params = conninfo_to_dict(conninfo)
    extra: dict[str, Any] = {}
    if connect_timeout is not None and "connect_timeout" not in params:
        extra["connect_timeout"] = max(2, math.ceil(connect_timeout))  # whole seconds, >= 2
    if tcp_user_timeout is not None and "tcp_user_timeout" not in params and _HAS_TCP_USER_TIMEOUT:
        extra["tcp_user_timeout"] = max(1, round(tcp_user_timeout * 1000))  # milliseconds
    return make_conninfo(conninfo, **extra) if extra else conninfo


class _ConnectorBase:
    def __init__(
        self,
        target: object,
        given: type[Any],
        api: str,
        connect_timeout: float | None,
        tcp_user_timeout: float | None,
        lock_timeout: float | None,
    ) -> None:
        refuse_other_flavour(target, api=api, is_async=given is psycopg.AsyncConnection)
        self._owned = not isinstance(target, given)
        self._conninfo = ""
        if self._owned:
            raw = conninfo(target)
            self._conninfo = connect_conninfo(raw, connect_timeout, tcp_user_timeout)
        self.lock_timeout = lock_timeout
        self._read_only_logged = -math.inf
        self._forked = False  # a given connection left behind in the parent

    def forget(self) -> None:
        """Drop the connection unclosed: in a forked child it is the parent's (psycopg does
        not close a connection another process opened when it is collected)."""
        self._conn: Any = None
        self._forked = not self._owned

    def _given_is_gone(self) -> ConfigurationError:
        # Not a connection error: no retry can bring a given connection back.
        if self._forked:
            return ConfigurationError(
                "the psycopg connection given to the writer belongs to the parent process, "
                "which forked this one; in the child, give the writer a URL or an Engine "
                "(it then opens a connection of its own), or create the writer after the fork"
            )
        return ConfigurationError(
            "the psycopg connection given to the writer is closed (the server ended it, or "
            "it was closed), and a given connection is never reopened; give the writer a "
            "URL or an Engine, which it reconnects after a connection loss or a failover"
        )

    def failed(self, exc: BaseException) -> bool:
        """Note a failed attempt; True when the database refused it as read-only.

        Says so on the log at most once per `READ_ONLY_LOG_INTERVAL`: the events are kept
        and retried, but a writer pointed at a standby by mistake must not stay silent.
        """
        if not is_read_only(exc):
            return False
        now = time.monotonic()
        if now - self._read_only_logged >= READ_ONLY_LOG_INTERVAL:
            self._read_only_logged = now
            logger.error(
                "the database accepts only reads (%s); events are kept and retried until it "
                "accepts writes. If this lasts, the writer points at a standby: use the "
                "primary, or a multi-host conninfo with target_session_attrs=read-write",
                server_text(exc),
                extra={"sqlstate": sqlstate_of(exc)},
            )
        return True


# --- sync -------------------------------------------------------------------------------------


def _copy_part(
    conn: psycopg.Connection[Any], table: EventTable, events: Sequence[NewEvent], *, staged: bool
) -> int:
    with conn.cursor() as cur:
        cur.adapters.register_dumper(None, _JsonbText)
        with cur.copy(_copy_sql(table, staged=staged)) as copy:
            copy.set_types(table.copy_types)
            row = table.row
            for event in events:
                try:
                    copy.write_row(row(event))
                except psycopg.Error:
                    raise
                except Exception as exc:
                    raise RowEncodingError(f"cannot encode event {event.id}: {exc}") from exc
        if not staged:
            return len(events)
        cur.execute(_move_sql(table), prepare=False)
        return cur.rowcount


def _store_part(
    conn: psycopg.Connection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    outcome: Outcome,
    *,
    staged: bool,
    opened: bool = False,
) -> None:
    """Write ``events`` under a savepoint, halving them around a bad row.

    ``opened``: the batch's whole first part, whose savepoint the transaction's opening
    made and whose end releases it.
    """
    try:
        if not opened:
            conn.execute(_SAVEPOINT, prepare=False)
        try:
            inserted = _copy_part(conn, table, events, staged=staged)
        except Exception:
            if not conn.broken:
                conn.execute(_UNDO, prepare=False)
            raise
        if not opened:
            conn.execute(_RELEASE, prepare=False)
    except Exception as exc:
        step = _part_step(exc, staged=staged, size=len(events), broken=conn.broken)
        if step is _PartStep.RAISE:
            raise
        if step is _PartStep.DEAD:
            outcome.dead.append(
                (events[0], write_error(events[0], Reason.REFUSED, exc, attempts=1))
            )
        else:
            for half in _halves(events):
                _store_part(conn, table, half, outcome, staged=staged)
        return
    outcome.count(len(events), inserted)


def _store(
    conn: psycopg.Connection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    *,
    staged: bool,
    lock_timeout: float | None,
) -> Outcome:
    """Write ``events`` in one transaction; bad rows are found by bisection with savepoints."""
    outcome = Outcome()
    with _transaction(conn, _opening(table, staged=staged, lock_timeout=lock_timeout)):
        _store_part(conn, table, events, outcome, staged=staged, opened=True)
        if table.feed and outcome.inserted:
            conn.execute(notify_statement(), [table.qualified_name], prepare=False)
    return outcome


class Connector(_ConnectorBase):
    """Opens (and reopens) the connection a sync writer uses (shared with `BufferedWriter`)."""

    def __init__(
        self,
        target: Target,
        *,
        api: str,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        tcp_user_timeout: float | None = DEFAULT_TCP_USER_TIMEOUT,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        super().__init__(
            target, psycopg.Connection, api, connect_timeout, tcp_user_timeout, lock_timeout
        )
        self._conn: psycopg.Connection[Any] | None = (
            target if isinstance(target, psycopg.Connection) else None
        )

    def get(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if not self._owned:
            raise self._given_is_gone()
        self._conn = conn = psycopg.connect(self._conninfo, autocommit=True)
        return conn

    def broken(self) -> bool:
        conn = self._conn
        return self._owned and (conn is None or conn.broken or conn.closed)

    def discard(self) -> None:
        if self._owned and self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self.discard()


def deliver(
    connector: Connector,
    table: EventTable,
    events: Sequence[NewEvent],
    retry: RetryPolicy,
    stop: threading.Event | None = None,
    on_retry: Callable[[BaseException, bool], None] | None = None,
) -> Outcome:
    """Write one batch: retry, split after repeated statement timeouts, dead-letter the rest.

    A failed attempt never reuses its connection: the next one connects afresh, so a
    multi-host conninfo reaches the new primary after a failover. ``on_retry`` is given
    each retried failure, and whether it was the database refusing writes as read-only.
    Never raises for a failed write: every event ends up counted or in ``Outcome.dead``.
    """
    outcome = Outcome()
    pending = [_Part(events, Attempt(started=time.monotonic()))]
    while pending:
        part = pending.pop()
        try:
            conn = connector.get()
            outcome.merge(
                _store(
                    conn,
                    table,
                    part.events,
                    staged=part.staged,
                    lock_timeout=connector.lock_timeout,
                )
            )
            continue
        except _NeedStaging:
            part.staged = True
            pending.append(part)
            continue
        except SourceError:  # the host's iterable failed (`Stream`): not a write error
            raise
        except Exception as exc:
            broken = connector.broken()
            connector.discard()
            read_only = connector.failed(exc)
            failure = exc  # `exc` is unbound after the except clause
            stopping = stop is not None and stop.is_set()
            delay = _after_failure(
                part,
                exc,
                retry,
                pending,
                outcome,
                broken=broken,
                stopping=stopping,
                lock_timeout=connector.lock_timeout,
            )
        if delay is not None:
            if on_retry is not None:
                on_retry(failure, read_only)
            if stop is not None:
                stop.wait(delay)
            else:
                time.sleep(delay)
    return outcome


# --- async ------------------------------------------------------------------------------------


async def _acopy_part(
    conn: psycopg.AsyncConnection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    *,
    staged: bool,
) -> int:
    async with conn.cursor() as cur:
        cur.adapters.register_dumper(None, _JsonbText)
        async with cur.copy(_copy_sql(table, staged=staged)) as copy:
            copy.set_types(table.copy_types)
            row = table.row
            for event in events:
                try:
                    await copy.write_row(row(event))
                except psycopg.Error:
                    raise
                except Exception as exc:
                    raise RowEncodingError(f"cannot encode event {event.id}: {exc}") from exc
        if not staged:
            return len(events)
        await cur.execute(_move_sql(table), prepare=False)
        return cur.rowcount


async def _astore_part(
    conn: psycopg.AsyncConnection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    outcome: Outcome,
    *,
    staged: bool,
    opened: bool = False,
) -> None:
    """`_store_part`, async."""
    try:
        if not opened:
            await conn.execute(_SAVEPOINT, prepare=False)
        try:
            inserted = await _acopy_part(conn, table, events, staged=staged)
        except Exception:
            if not conn.broken:
                await conn.execute(_UNDO, prepare=False)
            raise
        if not opened:
            await conn.execute(_RELEASE, prepare=False)
    except Exception as exc:
        step = _part_step(exc, staged=staged, size=len(events), broken=conn.broken)
        if step is _PartStep.RAISE:
            raise
        if step is _PartStep.DEAD:
            outcome.dead.append(
                (events[0], write_error(events[0], Reason.REFUSED, exc, attempts=1))
            )
        else:
            for half in _halves(events):
                await _astore_part(conn, table, half, outcome, staged=staged)
        return
    outcome.count(len(events), inserted)


async def _astore(
    conn: psycopg.AsyncConnection[Any],
    table: EventTable,
    events: Sequence[NewEvent],
    *,
    staged: bool,
    lock_timeout: float | None,
) -> Outcome:
    outcome = Outcome()
    async with _atransaction(conn, _opening(table, staged=staged, lock_timeout=lock_timeout)):
        await _astore_part(conn, table, events, outcome, staged=staged, opened=True)
        if table.feed and outcome.inserted:
            await conn.execute(notify_statement(), [table.qualified_name], prepare=False)
    return outcome


class AsyncConnector(_ConnectorBase):
    """Opens (and reopens) the connection an async writer uses."""

    def __init__(
        self,
        target: AsyncTarget,
        *,
        api: str,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        tcp_user_timeout: float | None = DEFAULT_TCP_USER_TIMEOUT,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
    ) -> None:
        super().__init__(
            target,
            psycopg.AsyncConnection,
            api,
            connect_timeout,
            tcp_user_timeout,
            lock_timeout,
        )
        self._conn: psycopg.AsyncConnection[Any] | None = (
            target if isinstance(target, psycopg.AsyncConnection) else None
        )

    async def get(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if not self._owned:
            raise self._given_is_gone()
        self._conn = conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        return conn

    def broken(self) -> bool:
        conn = self._conn
        return self._owned and (conn is None or conn.broken or conn.closed)

    async def discard(self) -> None:
        if self._owned and self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def close(self) -> None:
        await self.discard()


async def adeliver(
    connector: AsyncConnector,
    table: EventTable,
    events: Sequence[NewEvent],
    retry: RetryPolicy,
    stop: asyncio.Event | None = None,
    on_retry: Callable[[BaseException, bool], None] | None = None,
) -> Outcome:
    """Async `deliver`: the same decisions, with awaits."""
    outcome = Outcome()
    pending = [_Part(events, Attempt(started=time.monotonic()))]
    while pending:
        part = pending.pop()
        try:
            conn = await connector.get()
            outcome.merge(
                await _astore(
                    conn,
                    table,
                    part.events,
                    staged=part.staged,
                    lock_timeout=connector.lock_timeout,
                )
            )
            continue
        except _NeedStaging:
            part.staged = True
            pending.append(part)
            continue
        except SourceError:  # the host's iterable failed (`Stream`): not a write error
            raise
        except Exception as exc:
            broken = connector.broken()
            await connector.discard()
            read_only = connector.failed(exc)
            failure = exc  # `exc` is unbound after the except clause
            stopping = stop is not None and stop.is_set()
            delay = _after_failure(
                part,
                exc,
                retry,
                pending,
                outcome,
                broken=broken,
                stopping=stopping,
                lock_timeout=connector.lock_timeout,
            )
        if delay is not None:
            if on_retry is not None:
                on_retry(failure, read_only)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
    return outcome
