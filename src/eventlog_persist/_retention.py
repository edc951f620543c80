"""Retention: delete events older than a cutoff in short batches, one transaction each.

On a database with the feed, each batch also marks the consumer parts it leaves without
events they had not been delivered (`_feed_retention`), in the same transaction. Each batch
declares itself a retention (``SET LOCAL eventlog.erasure = 'retention'``), which the audit's
guard requires and records; without the audit the setting is an unused placeholder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, Delete, Engine, Select, Table, delete, func, select, text, tuple_
from sqlalchemy.engine.interfaces import IsolationLevel
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Session

from eventlog_persist._feed_claims import retaining
from eventlog_persist._feed_retention import feed_consumers, purge_and_mark
from eventlog_persist._isolation import at_level
from eventlog_persist._model import EventLogMixin
from eventlog_persist._read_sql import check_key, event_table
from eventlog_persist._urls import shown
from eventlog_persist.exceptions import (
    ConfigurationError,
    ValidationError,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "PurgeResult",
    "count_purgeable",
    "purge_events",
    "purge_statement",
]

logger = logging.getLogger("eventlog_persist")

DEFAULT_BATCH_SIZE: Final = 5000
MAX_SLEEP: Final = 86400.0
"""Longest pause between batches, in seconds (one day): longer is a typo, not a pause."""
_MAX_BATCH_SIZE: Final = 2**63 - 1

# The audit's declaration (docs/audit.md, "The guard"), ended by the batch's commit. Declared
# whatever the database or the model says: PostgreSQL accepts a dotted name as a placeholder
# setting without the audit (nothing reads it then), a model need not declare the audit its
# database has, and the statement costs one round trip per batch of thousands of deletes.
_DECLARE_RETENTION: Final = text("SET LOCAL eventlog.erasure = 'retention'")
_READ_COMMITTED: Final[IsolationLevel] = "READ COMMITTED"


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What `purge_events` did.

    Attributes:
        deleted: Events deleted.
        batches: Batches that deleted at least one event, each in its own transaction.
    """

    deleted: int
    batches: int


def check_cutoff(older_than: object, *, goes: str) -> None:
    """Refuse a cutoff that is naive, or after now, where it would take what is being
    written (``goes`` says what)."""
    if not isinstance(older_than, datetime) or older_than.utcoffset() is None:
        raise ValidationError(
            f"older_than must be a time-zone aware datetime, got {older_than!r}; e.g. "
            "datetime.now(UTC) - timedelta(days=90)"
        )
    if older_than > datetime.now(UTC):
        raise ValidationError(
            f"older_than={older_than.isoformat()} is in the future, so {goes}; pass a past "
            "cutoff such as datetime.now(UTC) - timedelta(days=90) (a sign slip?), or "
            "datetime.now(UTC) itself if that is what you mean"
        )


def _conditions(
    table: Table, older_than: datetime, user_id: object, project_id: object
) -> list[Any]:
    check_cutoff(older_than, goes="every event would be deleted, those being written too")
    c = table.c
    conditions = [c.created_at < older_than]
    for name, value in (("user_id", user_id), ("project_id", project_id)):
        if value is not None:
            check_key(table, name, value)
            conditions.append(c[name] == value)
    return conditions


def purge_statement(
    table: Table,
    *,
    older_than: datetime,
    user_id: object = None,
    project_id: object = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Delete:
    """Build one batch: delete up to ``batch_size`` events created before ``older_than``.

    The ids come from a ``LIMIT`` subquery that locks its rows with ``SKIP LOCKED``, so a
    batch never waits on rows another transaction holds. Scoped to a user or project, the
    ``(user_id, created_at)`` or ``(project_id, created_at)`` index finds the rows; unscoped,
    a sequential scan stops after ``batch_size`` matches, which in an append-mostly table are
    near its start.
    """
    c = table.c
    # By (id, created_at), not id alone: the partitioned layout's key, where one id may be
    # stored at two times, and only the copy before the cutoff is this batch's.
    victims = (
        select(c.id, c.created_at)
        .where(*_conditions(table, older_than, user_id, project_id))
        .limit(batch_size)
        .with_for_update(skip_locked=True)
    )
    return delete(table).where(tuple_(c.id, c.created_at).in_(victims))


@contextmanager
def _read_committed(bind: Engine | Connection) -> Iterator[None]:
    """Run a ``Connection`` passed in at READ COMMITTED for the purge, whatever its level, and
    give it its own back after (`_transaction` sets an Engine's connections)."""
    if isinstance(bind, Engine):
        yield
    else:
        with at_level(bind, _READ_COMMITTED):
            yield


@contextmanager
def _transaction(bind: Engine | Connection) -> Iterator[Connection]:
    """One batch's transaction at READ COMMITTED: each statement must see what committed
    before it (`_feed_claims`), and the batch must be one transaction, which autocommit
    would not give. An Engine's connection is checked out per batch, so a pause between
    batches holds none (and a connection closed meanwhile is the pool's to replace)."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            connection.execution_options(isolation_level=_READ_COMMITTED)
            with connection.begin():
                yield connection
    else:
        with bind.begin():
            yield bind


def _check_sync(bind: object) -> None:
    if isinstance(bind, (AsyncEngine, AsyncConnection)):
        raise ConfigurationError(
            f"purge needs a sync sqlalchemy Engine or Connection, got {shown(bind)}; there is "
            "no async twin: from async code, run it in a thread (asyncio.to_thread) with an "
            "Engine of a sync driver, e.g. create_engine('postgresql+psycopg://...')"
        )


def _check_bind(bind: object) -> None:
    if isinstance(bind, Engine):
        return
    _check_sync(bind)
    if not isinstance(bind, Connection):
        raise ConfigurationError(
            f"purge needs a sqlalchemy Engine or Connection, got {shown(bind)}; pass "
            "create_engine(url) for a URL. It commits each batch itself, so it cannot run "
            "inside an ORM Session's transaction"
        )
    if bind.in_transaction():
        raise ConfigurationError(
            "the connection is already in a transaction; purge_events commits each batch on "
            "its own, so pass an Engine or a connection with no transaction begun"
        )


def count_purgeable(
    model: type[EventLogMixin[Any]] | Table,
    bind: Engine | Connection,
    *,
    older_than: datetime,
    user_id: Any = None,
    project_id: Any = None,
) -> int:
    """Count the events `purge_events` would delete with the same arguments (a dry run).

    Raises:
        ConfigurationError: ``bind`` is not a sync SQLAlchemy ``Engine``, ``Connection`` or
            ``Session``.
        ValidationError: ``older_than`` is naive or in the future, or a key has the wrong
            type.

    .. versionchanged:: 0.3.0
       A cutoff in the future raises `ValidationError`, as in `purge_events`.
    """
    _check_sync(bind)
    if not isinstance(bind, (Engine, Connection, Session)):
        raise ConfigurationError(
            f"count_purgeable needs a sqlalchemy Engine, Connection or Session, got "
            f"{shown(bind)}; pass create_engine(url) for a URL"
        )
    table = event_table(model)
    statement = select(func.count()).where(*_conditions(table, older_than, user_id, project_id))
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return int(connection.execute(statement).scalar_one())
    return int(bind.execute(statement).scalar_one())


def purge_events(
    model: type[EventLogMixin[Any]] | Table,
    bind: Engine | Connection,
    *,
    older_than: datetime,
    user_id: Any = None,
    project_id: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_batches: int | None = None,
    sleep: float = 0.0,
    on_batch: Callable[[PurgeResult], object] | None = None,
) -> PurgeResult:
    """Delete events created before ``older_than``, in batches of short transactions.

    Each batch deletes at most ``batch_size`` events and commits, so no lock is held long
    and no transaction grows large on a live table. Events created at or after
    ``older_than`` are never touched. Rows locked by other transactions are skipped and left
    for the next run.

    On a database with the feed, each batch marks, in its own transaction, every consumer
    part that had not been delivered one of the events it deletes: that part's fetches then
    raise `FeedDataLostError` (never skipping them silently) until the consumer is reset.
    A consumer registered or reset meanwhile waits for the batch in progress.

    Each batch runs at READ COMMITTED, whatever the level of ``bind`` (a ``Connection``
    passed in gets its own back after).

    Each batch declares ``SET LOCAL eventlog.erasure = 'retention'`` in its transaction, so
    on a database with the audit every deleted event gets a ``retention`` tombstone in
    ``event_log_erasures``; the declaration ends with the batch (nothing is left set on a
    ``Connection`` passed in).

    Args:
        model: The host's ``EventLog`` model class, or a reflected ``event_logs`` Table.
        bind: An ``Engine``, or a ``Connection`` with no transaction begun.
        older_than: Cutoff instant (time-zone aware, exclusive).
        user_id: Only this user's events.
        project_id: Only this project's events.
        batch_size: Most events per batch (up to ``2**63 - 1``).
        max_batches: Stop after this many batches (``None``: until nothing is left).
        sleep: Seconds to wait between batches, to leave room for other work (at most
            86400).
        on_batch: Called after each batch that deleted events, once it is committed, with
            the totals so far; for progress reports. An exception it raises ends the purge
            (the batches committed before stay deleted).

    Returns:
        How many events were deleted, in how many batches.

    Raises:
        ConfigurationError: ``bind`` cannot be used, a batching option is out of range, or
            ``on_batch`` is not callable.
        ValidationError: ``older_than`` is naive or in the future (a sign slip would delete
            every event; ``datetime.now(UTC)`` itself is taken), or a key has the wrong type.

    Example:
        >>> purge_events(EventLog, engine, older_than=cutoff)  # doctest: +SKIP
        PurgeResult(deleted=12000, batches=3)

    .. versionchanged:: 0.3.0
       ``on_batch`` added; ``sleep`` must be finite and at most a day; feed consumers not
       delivered the deleted events are marked; each batch declares retention for the
       audit's guard; a cutoff in the future raises `ValidationError`; ``batch_size``
       past ``2**63 - 1`` raises `ConfigurationError`; batches run at READ COMMITTED.
    """
    _check_bind(bind)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or not 1 <= batch_size <= _MAX_BATCH_SIZE
    ):
        raise ConfigurationError(
            f"batch_size must be an int from 1 to 2**63 - 1 (its LIMIT is a bigint), got "
            f"{batch_size!r}"
        )
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches < 1
    ):
        raise ConfigurationError(
            f"max_batches must be a positive int or None (no limit), got {max_batches!r}"
        )
    # The chained comparison refuses NaN and infinity too (every comparison with NaN is False).
    if (
        isinstance(sleep, bool)
        or not isinstance(sleep, (int, float))
        or not 0 <= sleep <= MAX_SLEEP
    ):
        raise ConfigurationError(
            f"sleep must be a number of seconds from 0 to {MAX_SLEEP:.0f}, got {sleep!r}"
        )
    if on_batch is not None and not callable(on_batch):
        raise ConfigurationError(
            f"on_batch must be a callable taking a PurgeResult, or None, got {on_batch!r}"
        )
    table = event_table(model)
    purge = purge_statement(
        table,
        older_than=older_than,
        user_id=user_id,
        project_id=project_id,
        batch_size=batch_size,
    )
    statement: Delete | Select[Any] = purge
    looked = False  # for the feed's consumers: once, in the first batch
    marked: set[str] = set()
    deleted = batches = 0
    consumers: Table | None = None
    try:
        with _read_committed(bind):
            while True:
                with _transaction(bind) as connection:
                    connection.execute(_DECLARE_RETENTION)
                    if not looked:
                        consumers = feed_consumers(connection, table)
                        looked = True
                        if consumers is not None:
                            statement = purge_and_mark(purge, table, consumers)
                    if consumers is not None:
                        connection.execute(retaining(consumers))
                        count, names = connection.execute(statement, {"cutoff": older_than}).one()
                        marked.update(names or ())
                    else:
                        count = connection.execute(statement).rowcount
                if count:
                    deleted += count
                    batches += 1
                    if on_batch is not None:
                        on_batch(PurgeResult(deleted, batches))
                if count < batch_size or batches == max_batches:
                    break
                if sleep:
                    time.sleep(sleep)
    finally:
        if marked:
            logger.warning(
                "purge_events removed events that feed consumers %s had not been delivered "
                "yet; their fetches raise FeedDataLostError until they are reset (see "
                "'eventlog-persist feed status')",
                ", ".join(repr(name) for name in sorted(marked)),
            )
    return PurgeResult(deleted, batches)
