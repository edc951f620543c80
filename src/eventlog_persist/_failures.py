"""Why a write failed and what happens next: error classes, retry/split/dead-letter decisions,
and the messages of the errors handed to callers and dead-letter hooks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Final

import psycopg
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import InterfaceError as SAInterfaceError
from sqlalchemy.exc import OperationalError as SAOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from eventlog_persist._retry import RetryPolicy
from eventlog_persist._schema import PK_NAME
from eventlog_persist.exceptions import ConfigurationError, EventWriteError, RetriesExhaustedError

if TYPE_CHECKING:
    from eventlog_persist._events import NewEvent


class RowEncodingError(ValueError):
    """The client could not encode one event's values for COPY (e.g. an int for a UUID key)."""


class ErrorKind(Enum):
    """What a failed write means for the events in it."""

    TRANSIENT = "transient"
    """The server or the connection failed; the same write may succeed later."""
    DUPLICATE = "duplicate"
    """An event id is already stored: an earlier attempt committed after all."""
    ROW = "row"
    """Some row's data was refused (foreign key, check, value); the other rows are fine."""
    BATCH = "batch"
    """The write can never work as set up (missing table, no permission); retrying won't help."""
    UNEXPECTED = "unexpected"
    """Not a known database or connection error (a bug, or an unknown driver's error)."""


# SQLSTATE classes and codes after which the same statement may succeed on a new attempt:
# connection exceptions, transaction rollbacks (serialization, deadlock), insufficient
# resources, operator intervention (shutdown, cancel), system errors, lock not available.
_TRANSIENT_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_CODES: Final = frozenset({"55P03", "55006", "XX000"})
# Data exceptions, integrity violations and program limits (e.g. a value too large): one
# row's content is to blame.
_ROW_CLASSES: Final = frozenset({"22", "23", "54"})
STATEMENT_TIMEOUT: Final = "57014"
LOCK_NOT_AVAILABLE: Final = "55P03"
# A standby, a primary demoted by a failover, or default_transaction_read_only: an outage of
# the primary, not a bad setup, so it is retried on a new connection.
READ_ONLY: Final = "25006"
# undefined_table, undefined_column: the code is newer than the schema.
_NOT_MIGRATED: Final = frozenset({"42P01", "42703"})
# invalid_column_reference: no unique index matches ON CONFLICT (the model's primary key).
_NO_CONFLICT_KEY: Final = "42P10"


def sqlstate_of(exc: BaseException | None) -> str | None:
    """Return the SQLSTATE of a database error, looking through wrappers; else None.

    Reads psycopg's ``sqlstate``, psycopg2's ``pgcode`` and asyncpg's ``sqlstate``, through
    SQLAlchemy's ``DBAPIError.orig`` and `EventWriteError`'s cause.
    """
    seen = 0
    while exc is not None and seen < 8:
        seen += 1
        if isinstance(exc, EventWriteError):
            if exc.sqlstate:
                return exc.sqlstate
            exc = exc.__cause__
            continue
        if isinstance(exc, DBAPIError):
            exc = exc.orig
            continue
        for name in ("sqlstate", "pgcode"):
            state = getattr(exc, name, None)
            if isinstance(state, str) and len(state) == 5:
                return state
        return None
    return None


def classify_error(exc: BaseException) -> ErrorKind:
    """Say whether a write error is transient, a duplicate id, a bad row or a bad setup.

    SQLAlchemy's ``DBAPIError`` is looked through to the driver error it wraps, and its
    SQLSTATE is read whatever the driver (psycopg, psycopg2, asyncpg). SQLAlchemy's pool
    timeout, disconnects and invalidated connections, and driver errors of the connection
    kind without a SQLSTATE, are transient. A value the client cannot encode
    (`RowEncodingError`) is a bad row. Anything else is ``UNEXPECTED``: never blamed on the
    data, retried a few times, then given up on with the real error.

    Args:
        exc: The exception raised by a write.

    Returns:
        The error's kind.
    """
    if isinstance(exc, RowEncodingError):
        return ErrorKind.ROW
    if isinstance(exc, ConfigurationError):  # a given connection that is closed, say
        return ErrorKind.BATCH
    if isinstance(exc, (PoolTimeoutError, DisconnectionError)):
        return ErrorKind.TRANSIENT
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return ErrorKind.TRANSIENT
        if isinstance(exc.orig, psycopg.Error):
            exc = exc.orig
        else:
            state = sqlstate_of(exc)
            if state is not None:
                return _kind_of_state(
                    state,
                    constraint=getattr(exc.orig, "constraint_name", None),
                    table=getattr(exc.orig, "table_name", None),
                )
            if isinstance(exc, (SAOperationalError, SAInterfaceError)):
                return ErrorKind.TRANSIENT
            return ErrorKind.UNEXPECTED
    if isinstance(exc, psycopg.Error):
        state = exc.sqlstate
        if state is None:
            # Raised by the client (libpq): connection lost, refused, closed.
            if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                return ErrorKind.TRANSIENT
            return ErrorKind.BATCH
        return _kind_of_state(state, constraint=exc.diag.constraint_name, table=exc.diag.table_name)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return ErrorKind.TRANSIENT
    return ErrorKind.UNEXPECTED


def is_read_only(exc: BaseException) -> bool:
    """True when the database refused a write because it accepts only reads (25006)."""
    return sqlstate_of(exc) == READ_ONLY


# PostgreSQL's name for the primary-key index of a partition it creates: "<partition>_pkey",
# the partition's name cut to fit 63 bytes, a digit added if the name is taken.
_PARTITION_KEY: Final = re.compile(r"(.+)_pkey[0-9]*")


def is_primary_key(constraint: object, table: object) -> bool:
    """Whether a unique violation's constraint is the primary key of ``event_logs``.

    ``pk_event_logs`` in the plain layout. In the partitioned layout the violation is
    reported by the partition (``table``) with its own copy of the key, which PostgreSQL
    names ``<partition>_pkey``; ``event_logs`` has no other unique index.
    """
    if constraint == PK_NAME:
        return True
    if not (isinstance(constraint, str) and isinstance(table, str)):
        return False
    match = _PARTITION_KEY.fullmatch(constraint)
    return match is not None and table.startswith(match.group(1))


def is_missing_partition(exc: BaseException) -> bool:
    """Whether the write failed because no partition of ``event_logs`` holds a row's
    ``created_at`` (SQLSTATE 23514 without a constraint: a CHECK violation names one)."""
    if sqlstate_of(exc) != "23514":
        return False
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    diag = getattr(cause, "diag", None)
    constraint = getattr(diag, "constraint_name", getattr(cause, "constraint_name", None))
    return constraint is None


def _kind_of_state(state: str, *, constraint: object, table: object = None) -> ErrorKind:
    if state == "23505" and is_primary_key(constraint, table):
        return ErrorKind.DUPLICATE
    if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES or state == READ_ONLY:
        return ErrorKind.TRANSIENT
    if state[:2] in _ROW_CLASSES:
        return ErrorKind.ROW
    return ErrorKind.BATCH


# --- what to do after a failed write: one decision for every writer, sync and async ---------

TIMEOUTS_BEFORE_SPLIT: Final = 2
"""Statement timeouts (57014) in a row after which a batch is halved (one event: given up)."""
UNEXPECTED_ATTEMPTS: Final = 3
"""Most attempts after ``UNEXPECTED`` errors, whatever the retry policy allows."""


class Action(Enum):
    """The next step for a (sub-)batch whose write failed."""

    RETRY = "retry"
    """Wait `Decision.delay` seconds and write the same events again, idempotently."""
    SPLIT = "split"
    """Write each half on its own (a batch that keeps hitting ``statement_timeout``)."""
    GIVE_UP = "give_up"
    """Dead-letter every event with `write_error` for `Decision.reason`."""


class Reason(Enum):
    """Why events were given up on; picks the message and type of `write_error`."""

    REFUSED = "refused"
    SETUP = "setup"
    EXHAUSTED = "exhausted"
    STATEMENT_TIMEOUT = "statement_timeout"
    LOCK_TIMEOUT = "lock_timeout"
    UNEXPECTED = "unexpected"


@dataclass(slots=True)
class Attempt:
    """The retry state of one (sub-)batch, updated by `decide`."""

    started: float
    retries: int = 0
    timeouts: int = 0
    unexpected: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """What `decide` chose: the action, the wait before a retry, the reason to give up."""

    action: Action
    delay: float = 0.0
    reason: Reason | None = None


def decide(
    attempt: Attempt,
    exc: BaseException,
    *,
    size: int,
    policy: RetryPolicy,
    now: float,
    broken: bool = False,
    stopping: bool = False,
    lock_wait_is_final: bool = False,
) -> Decision:
    """Decide what follows a failed write of ``size`` events: retry, split or give up.

    Pure except for counting into ``attempt``; shared by the detached, bulk and buffered
    writers, sync and async.

    Args:
        attempt: The (sub-)batch's retry state.
        exc: The error of the failed attempt.
        size: Events in the (sub-)batch.
        policy: The retry policy.
        now: ``time.monotonic()``.
        broken: The connection was lost: whatever the error says, retry on a new one.
        stopping: The writer is closing: give up instead of waiting.
        lock_wait_is_final: ``lock_timeout`` (55P03) ends the write: the detached path sets
            its own ``lock_timeout``, and waiting again would wait for the same lock.
    """
    kind = ErrorKind.TRANSIENT if broken else classify_error(exc)
    state = None if broken else sqlstate_of(exc)
    if kind in (ErrorKind.ROW, ErrorKind.DUPLICATE):
        return Decision(Action.GIVE_UP, reason=Reason.REFUSED)
    if kind is ErrorKind.BATCH:
        return Decision(Action.GIVE_UP, reason=Reason.SETUP)
    if state == LOCK_NOT_AVAILABLE and lock_wait_is_final:
        return Decision(Action.GIVE_UP, reason=Reason.LOCK_TIMEOUT)
    if state == STATEMENT_TIMEOUT:
        attempt.timeouts += 1
        if attempt.timeouts >= TIMEOUTS_BEFORE_SPLIT:
            if size > 1:
                return Decision(Action.SPLIT)
            return Decision(Action.GIVE_UP, reason=Reason.STATEMENT_TIMEOUT)
    else:
        attempt.timeouts = 0
    give_up = Reason.UNEXPECTED if kind is ErrorKind.UNEXPECTED else Reason.EXHAUSTED
    if kind is ErrorKind.UNEXPECTED:
        attempt.unexpected += 1
        if attempt.unexpected >= UNEXPECTED_ATTEMPTS:
            return Decision(Action.GIVE_UP, reason=give_up)
    delay = None if stopping else policy.delay(attempt.retries, now - attempt.started)
    if delay is None:
        return Decision(Action.GIVE_UP, reason=give_up)
    attempt.retries += 1
    return Decision(Action.RETRY, delay=delay)


# The server's DETAIL is kept only where it names keys; elsewhere it can quote the row, payload
# included ("Failing row contains (...)" of a check or not-null violation, a JSON token).
_KEY_DETAILS: Final = frozenset({"23503", "23505"})


def server_text(exc: BaseException) -> str:
    """The database error of ``exc`` in one line, without the row's values.

    The primary message, the DETAIL only when it names keys (foreign key and unique
    violations), and the HINT. Never the CONTEXT or a "Failing row contains" detail: those
    copy the event's payload into log lines and error messages.
    """
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    state = sqlstate_of(cause)
    diag = getattr(cause, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary is not None:  # psycopg and psycopg2
        parts = [primary]
        detail = getattr(diag, "message_detail", None)
        if detail and state in _KEY_DETAILS:
            parts.append(f"DETAIL: {detail}")
        hint = getattr(diag, "message_hint", None)
        if hint:
            parts.append(f"HINT: {hint}")
        text = " ".join(parts)
    else:
        text = str(cause)
        if state not in _KEY_DETAILS:
            text = text.split("\nDETAIL:", 1)[0].split("\nCONTEXT:", 1)[0]
    return " ".join(text.split()) or "no message"


def write_error(
    event: NewEvent,
    reason: Reason,
    exc: BaseException,
    *,
    attempts: int,
    lock_timeout: float | None = None,
) -> EventWriteError:
    """Build the error that reports ``event`` as not written.

    The message says what failed, why, and how to fix it; the driver's error (``exc``, or
    the one a SQLAlchemy ``DBAPIError`` wraps) is the ``__cause__``.
    """
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    detail = f"{type(cause).__name__}: {server_text(cause)}"
    state = sqlstate_of(exc)
    what = f"event {event.id} ({event.event_type}) was not written"
    error_type: type[EventWriteError] = EventWriteError
    if reason is Reason.REFUSED:
        if isinstance(exc, RowEncodingError):
            fix = (
                "a key or value does not fit its column's type; build events with the "
                "writer's event() (or EventWriter.event), which checks keys against the model"
            )
        elif is_missing_partition(exc):
            fix = (
                f"event_logs is partitioned and no partition holds its created_at "
                f"({event.created_at.isoformat()}): create partitions ahead of time (see "
                "'Partitioned layout' in docs/adoption.md), or check the clock that set "
                "created_at"
            )
        elif state == "23503":
            fix = (
                "the session, user, project or agent it references does not exist, or "
                "exists only in a transaction that has not committed yet (the caller's own, "
                "for a detached write); record it in that transaction with record(), or "
                "after the commit"
            )
        else:
            fix = "check the event's values against the table's constraints"
        message = f"{what}: the database refused it ({detail}); {fix}"
    elif reason is Reason.SETUP and isinstance(cause, ConfigurationError):
        message = (
            f"{what}: {cause}. If the connection was lost during a commit, the event may be "
            "stored: replaying it (write_events) is safe, an id already stored is skipped"
        )
    elif reason is Reason.SETUP:
        if state in _NOT_MIGRATED:
            fix = (
                "the database lacks a table or column of this package version: run its "
                "migrations before deploying the code ('alembic upgrade heads'; in linear "
                "mode 'eventlog-persist linear-revision' first), then retry"
            )
        elif state == _NO_CONFLICT_KEY:
            fix = (
                "the EventLog model's layout does not match event_logs: set "
                "__eventlog_partitioned__ = True (or event_log_model(..., partitioned=True)) "
                "exactly when the host ran the partitioned revision evlpart_0001"
            )
        else:
            fix = "check that the table is migrated and that the role may insert into it"
        message = f"{what}: the write cannot work as set up ({detail}); {fix}"
    elif reason is Reason.EXHAUSTED:
        error_type = RetriesExhaustedError
        message = (
            f"{what}: {attempts} attempts failed with transient errors, the last: {detail}; "
            f"{_outage_fix(state, lock_timeout)}, or allow more time with "
            "RetryPolicy(max_elapsed=...). Replaying it (write_events) is safe: an id "
            "already stored is skipped"
        )
    elif reason is Reason.STATEMENT_TIMEOUT:
        message = (
            f"{what}: writing it, even alone, was canceled by statement_timeout "
            f"{TIMEOUTS_BEFORE_SPLIT} times ({detail}); raise the role's or database's "
            "statement_timeout, or look for slow triggers or lock waits on event_logs"
        )
    elif reason is Reason.LOCK_TIMEOUT:
        limit = "" if lock_timeout is None else f" ({lock_timeout:g} s)"
        message = (
            f"{what}: it waited longer than lock_timeout{limit} for a lock on a row it "
            "references (its chat session, user, project or agent). Usually the caller's "
            "own open transaction holds that lock: it ran SELECT ... FOR UPDATE on the row, "
            "or updated or deleted it, and a detached write cannot wait past the caller. "
            "Record the event in the caller's transaction with record(session, ...), or "
            "record it detached after the commit; if another transaction holds the lock "
            f"for long, raise EventWriter(lock_timeout=...). ({detail})"
        )
    else:
        message = (
            f"{what}: an unexpected error failed the write (attempts: {attempts}; {detail}); "
            "this is not a known database or connection error, so it may be a bug or an "
            "environment problem. Replaying the event (write_events) is safe: an id "
            "already stored is skipped"
        )
    error = error_type(message, event=event, sqlstate=state)
    error.__cause__ = cause
    return error


def _outage_fix(state: str | None, lock_timeout: float | None) -> str:
    """What to do about the transient error that outlasted the retries."""
    if state == READ_ONLY:
        return (
            "the database accepts only reads (a standby, a primary demoted by a failover, or "
            "default_transaction_read_only = on): point the writer at the primary; a "
            "multi-host conninfo with target_session_attrs=read-write follows a failover"
        )
    if state == LOCK_NOT_AVAILABLE:
        limit = "" if lock_timeout is None else f" ({lock_timeout:g} s)"
        return (
            f"every attempt waited longer than lock_timeout{limit} for a lock on a row it "
            "references (its chat session, user, project or agent): find the transaction "
            "that holds it (pg_locks, pg_stat_activity)"
        )
    return "check that the database is reachable"
