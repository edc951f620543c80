"""Write many events at once: `write_events` / `awrite_events` and their `BulkResult`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from eventlog_persist._delivery import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_TCP_USER_TIMEOUT,
    AsyncConnector,
    AsyncTarget,
    Connector,
    Outcome,
    SourceError,
    Stream,
    Target,
    adeliver,
    check_timeout,
    deliver,
    report_dead_letters,
)
from eventlog_persist._events import DeadLetterHook, NewEvent
from eventlog_persist._model import EventLogMixin
from eventlog_persist._retry import DEFAULT_RETRY, RetryPolicy
from eventlog_persist._table import EventTable
from eventlog_persist.exceptions import ConfigurationError, EventWriteError

__all__ = ["DEFAULT_BATCH_SIZE", "BulkResult", "awrite_events", "write_events"]

DEFAULT_BATCH_SIZE: Final = 10_000


@dataclass(slots=True)
class BulkResult:
    """What a bulk write did.

    Attributes:
        written: Events now stored: inserted, or found already stored by an idempotent retry.
        duplicates: Of ``written``, the events that were already stored.
        dead_lettered: Events given up on, each with its `EventWriteError` (also passed to
            the hook); the driver's error is its ``__cause__``.
        retries: Failed attempts that were retried.
        read_only_retries: Of ``retries``, those the database refused because it accepted
            only reads (a standby, or a primary demoted by a failover).
    """

    written: int = 0
    duplicates: int = 0
    dead_lettered: list[tuple[NewEvent, EventWriteError]] = field(default_factory=list)
    retries: int = 0
    read_only_retries: int = 0


def _batches(events: Iterable[NewEvent], size: int) -> Iterator[Stream]:
    """The batches, each pulled from ``events`` while its first COPY runs (`Stream`).

    Nothing is opened for an empty iterable: the first event of each batch is taken first.
    """
    source = iter(events)
    for first in source:
        stream = Stream(first, source, size)
        yield stream


def _check_args(
    events: object,
    batch_size: int,
    retry: object,
    on_dead_letter: object,
    connect_timeout: object,
    tcp_user_timeout: object,
    lock_timeout: object,
) -> None:
    if isinstance(events, NewEvent):
        raise ConfigurationError("events is one NewEvent; pass an iterable of them: [event]")
    if not isinstance(events, Iterable):
        raise ConfigurationError(
            f"events must be an iterable of NewEvent (a list, a generator), got "
            f"{type(events).__name__}"
        )
    if on_dead_letter is not None and not callable(on_dead_letter):
        raise ConfigurationError(
            f"on_dead_letter={on_dead_letter!r} is not valid; pass a callable or None"
        )
    if type(batch_size) is not int or batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size!r} is not valid; use an int >= 1")
    if not isinstance(retry, RetryPolicy):
        raise ConfigurationError(f"retry={retry!r} is not valid; pass a RetryPolicy")
    check_timeout("connect_timeout", connect_timeout)
    check_timeout("lock_timeout", lock_timeout)
    check_timeout("tcp_user_timeout", tcp_user_timeout)


def _settle(outcome: Outcome, result: BulkResult, hook: DeadLetterHook | None) -> None:
    result.written += outcome.inserted + outcome.duplicates
    result.duplicates += outcome.duplicates
    result.dead_lettered.extend(outcome.dead)
    report_dead_letters(hook, outcome.dead)


def write_events(
    model: type[EventLogMixin[Any]],
    target: Target,
    events: Iterable[NewEvent],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_dead_letter: DeadLetterHook | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    tcp_user_timeout: float | None = DEFAULT_TCP_USER_TIMEOUT,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
) -> BulkResult:
    """Write events with binary COPY, ``batch_size`` per transaction.

    ``events`` is read as the COPY runs, so building the next events (a generator of
    `new_event` calls, say) overlaps with the server storing the ones before; a batch ends
    early after 2 seconds of copying, so a slow iterable never holds a transaction open for
    long. An exception raised by ``events`` rolls back the batch in progress (the batches
    before it stay committed) and propagates unchanged.

    Transient errors (a lost connection, a restart, a failover, a database that accepts only
    reads, a lock held past ``lock_timeout``) are retried on a new connection until the
    ``retry`` deadline, 30 s by default. Each batch is first copied straight into
    ``event_logs``. After a transient error (the
    commit's outcome may be unknown) or when an id is already stored, the batch is copied
    into a temporary staging table and moved with ``INSERT ... ON CONFLICT (id) DO NOTHING``,
    so no event is ever stored twice. A row the database refuses (a foreign key to a session
    deleted a moment ago, say) is isolated by bisecting the batch under savepoints: every
    other row is written, and the bad one goes to ``on_dead_letter``. A batch canceled by
    ``statement_timeout`` twice in a row is written in halves, down to single events.

    Args:
        model: The host's ``EventLog`` model.
        target: A libpq conninfo; a URL of any PostgreSQL driver (``postgresql://``,
            ``postgresql+asyncpg://``, ..., as a string or SQLAlchemy ``URL``), whose other
            drivers' parameters are translated to libpq's; a SQLAlchemy ``Engine`` (its URL
            is used); or an open psycopg connection (used as is, not reopened after a
            connection loss). docs/writing.md has the table.
        events: Events built with `new_event` (or a writer's ``event()``), any iterable.
        batch_size: Most events per transaction.
        retry: How transient errors are retried.
        on_dead_letter: Called with each event that is not written and its
            `EventWriteError`; without it such events are logged at ERROR level on the
            ``eventlog_persist`` logger.
        connect_timeout: Seconds to wait for a new connection (libpq ``connect_timeout``,
            whole seconds, at least 2); None: no limit. Not applied when the conninfo sets
            it, or to a connection you pass.
        tcp_user_timeout: Seconds sent data may stay unacknowledged before the connection
            counts as lost (libpq ``tcp_user_timeout``, on Linux); None: the system's.
        lock_timeout: Seconds one attempt waits for a row lock (the foreign-key checks lock
            the referenced session, user, project and agent rows) before it fails and is
            retried like any transient error; None: the role's or database's setting.

    Returns:
        Counts, and the dead-lettered events with their errors.

    Raises:
        ConfigurationError: An argument is not valid: ``target`` is not PostgreSQL, cannot
            be parsed, has a URL parameter with no libpq equivalent, or is an
            ``AsyncEngine`` (use `awrite_events`); ``events`` is not an iterable of events;
            ``on_dead_letter`` is not callable.

    .. versionchanged:: 0.3.0
       ``target`` takes a URL of any PostgreSQL driver and a SQLAlchemy ``URL``.
    .. versionchanged:: 0.3.0
       ``events`` is read while each batch is copied; a batch ends after 2 s of copying.
    .. versionchanged:: 0.3.0
       ``events`` and ``on_dead_letter`` are checked before anything is written.
    """
    _check_args(
        events, batch_size, retry, on_dead_letter, connect_timeout, tcp_user_timeout, lock_timeout
    )
    table = EventTable.of(model)
    result = BulkResult()
    connector = Connector(
        target,
        api="write_events",
        connect_timeout=connect_timeout,
        tcp_user_timeout=tcp_user_timeout,
        lock_timeout=lock_timeout,
    )

    def count_retry(_error: BaseException, read_only: bool) -> None:
        result.retries += 1
        result.read_only_retries += read_only

    failed: SourceError | None = None
    try:
        for batch in _batches(events, batch_size):
            _settle(
                deliver(connector, table, batch, retry, on_retry=count_retry),
                result,
                on_dead_letter,
            )
    except SourceError as exc:  # its batch was rolled back
        failed = exc
    finally:
        connector.close()
    if failed is not None:
        raise failed.error  # as the iterable raised it, outside this except clause
    return result


async def awrite_events(
    model: type[EventLogMixin[Any]],
    target: AsyncTarget,
    events: Iterable[NewEvent],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_dead_letter: DeadLetterHook | None = None,
    connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
    tcp_user_timeout: float | None = DEFAULT_TCP_USER_TIMEOUT,
    lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
) -> BulkResult:
    """Write events with binary COPY from async code; the same behavior as `write_events`.

    Args:
        model: The host's ``EventLog`` model.
        target: As in `write_events`, with a SQLAlchemy ``AsyncEngine`` (its URL is used)
            or an open psycopg ``AsyncConnection`` (used as is) instead of the sync ones.
        events: Events built with `new_event`, any (sync) iterable, read as each batch is
            copied, as in `write_events`.
        batch_size: Most events per transaction.
        retry: How transient errors are retried.
        on_dead_letter: Called with each event that is not written and its
            `EventWriteError`.
        connect_timeout: As in `write_events`.
        tcp_user_timeout: As in `write_events`.
        lock_timeout: As in `write_events`.

    Returns:
        Counts, and the dead-lettered events with their errors.

    Raises:
        ConfigurationError: An argument is not valid, as in `write_events`; a sync
            ``Engine`` or connection names `write_events`.
    """
    _check_args(
        events, batch_size, retry, on_dead_letter, connect_timeout, tcp_user_timeout, lock_timeout
    )
    table = EventTable.of(model)
    result = BulkResult()
    connector = AsyncConnector(
        target,
        api="awrite_events",
        connect_timeout=connect_timeout,
        tcp_user_timeout=tcp_user_timeout,
        lock_timeout=lock_timeout,
    )

    def count_retry(_error: BaseException, read_only: bool) -> None:
        result.retries += 1
        result.read_only_retries += read_only

    failed: SourceError | None = None
    try:
        for batch in _batches(events, batch_size):
            outcome = await adeliver(connector, table, batch, retry, on_retry=count_retry)
            _settle(outcome, result, on_dead_letter)
    except SourceError as exc:  # its batch was rolled back
        failed = exc
    finally:
        await connector.close()
    if failed is not None:
        raise failed.error  # as the iterable raised it, outside this except clause
    return result
