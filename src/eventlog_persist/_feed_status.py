"""``feed_status`` / ``afeed_status``: each consumer's backlog, lease and what holds it back.

Read-only: one REPEATABLE READ transaction reads the consumers' rows, counts each one's
pending events with the feed's own visibility rules (`_feed_sql`'s snapshots) and looks up
the transactions at the server's horizon in ``pg_stat_activity`` and ``pg_prepared_xacts``.
Also the checkpoint reset and the removal behind ``eventlog-persist feed reset`` and
``feed unregister``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Engine,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    cast,
    delete,
    false,
    func,
    not_,
    null,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist._failures import sqlstate_of
from eventlog_persist._feed import own_transaction
from eventlog_persist._feed_claims import claiming
from eventlog_persist._feed_schema import PgSnapshot, Xid8, consumers_table
from eventlog_persist._feed_sql import (
    EARLIEST,
    FeedStart,
    FeedStatements,
    Snapshot,
    check_consumer,
    check_start,
    register_values,
    session_part,
    since_snapshot,
)
from eventlog_persist._model import EventLogMixin
from eventlog_persist._partitions import mark_new_claim
from eventlog_persist._read_sql import event_table
from eventlog_persist._schema import XID_COLUMN
from eventlog_persist._urls import check_engine
from eventlog_persist.exceptions import (
    ConfigurationError,
    ConsumerNotFoundError,
    LeaseHeldError,
    MigrationSetupError,
)

__all__ = [
    "ConsumerStatus",
    "FeedBlocker",
    "ResetOutcome",
    "afeed_status",
    "feed_status",
    "list_consumers",
    "reset_consumer",
    "unregister_consumer",
]

# Undefined table, column or function: the feed's migration has not run (or PostgreSQL < 13).
_NOT_MIGRATED: Final = frozenset({"42P01", "42703", "42883"})
# The status is read in one transaction (`_status` makes it REPEATABLE READ READ ONLY), also
# on an engine in autocommit mode, whose connections never send BEGIN.
_ONE_SNAPSHOT: Final = {"isolation_level": "REPEATABLE READ"}
_ROWS_LOCK_TIMEOUT: Final = text("SET LOCAL lock_timeout = '2s'")
_LOCK_NOT_AVAILABLE: Final = "55P03"
_XID32: Final = 2**32


@dataclass(frozen=True, slots=True)
class FeedBlocker:
    """A transaction at the server's horizon: until it ends, a ``mode="horizon"`` feed
    delivers no event committed after it started.

    Never the query text: only who and since when.

    Attributes:
        pid: The backend's process id (``pg_stat_activity.pid``); None for a prepared
            transaction, which no backend runs.
        database: The database it runs in (any database of the server holds the horizon).
        application_name: Its ``application_name`` (None if not set).
        state: ``active``, ``idle in transaction``, ... or ``prepared`` (two-phase commit);
            None for another role's backend without ``pg_read_all_stats``.
        transaction_age: How long its transaction has been open; None for another role's
            backend without ``pg_read_all_stats``.
        gid: The prepared transaction's global id (``COMMIT PREPARED`` / ``ROLLBACK
            PREPARED`` it), else None.

    .. versionadded:: 0.3.0
    """

    pid: int | None
    database: str | None
    application_name: str | None
    state: str | None
    transaction_age: timedelta | None
    gid: str | None = None


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """Where one consumer (and part) of the feed stands, as `feed_status` read it.

    Attributes:
        consumer: The consumer's name.
        part: Its part, from 0 (a consumer not split in parts has part 0 of 1).
        parts: How many parts the consumer has.
        pending: Committed events not delivered yet: what fetching until an empty batch
            would deliver now (rows stored before the feed included, when the consumer
            asked for them).
        held: Of ``pending``, the events committed after the oldest transaction still
            running began: a ``mode="horizon"`` feed delivers them only once the
            ``holding_back`` transactions end (a snapshot-mode feed does not wait).
        oldest_pending_age: Now minus the earliest ``created_at`` of the pending events;
            None when none is pending.
        lag: Now minus ``committed_at``; None if no batch was ever committed.
        committed_at: When a worker last committed a batch (None: never).
        delivered: Events committed as delivered since the consumer was registered.
        owner: The worker holding (or last holding) the lease; None when released.
        lease_until: When that lease ends unless renewed; None when released.
        lease_live: Whether the lease is held now (``lease_until`` is in the future).
        generation: The lease generation (the fencing token; each takeover adds one).
        holding_back: The transactions at the server's horizon when ``held`` is above 0:
            their backend, database, application and transaction age; else empty.
        lost_events: How many events retention (`purge_events`, `drop_partitions`)
            removed before this part was delivered them; its fetches raise
            `FeedDataLostError` until the consumer is reset. 0: none.
        lost_before: The latest cutoff of those removals (events created before it).
        lost_at: When retention first removed such events.
        lost_by: Which retention removed them (``purge_events``, ``drop_partitions``,
            ``drop_partitions keep_detached``; comma-separated when several did).

    .. versionadded:: 0.3.0
    """

    consumer: str
    part: int
    parts: int
    pending: int
    held: int
    oldest_pending_age: timedelta | None
    lag: timedelta | None
    committed_at: datetime | None
    delivered: int
    owner: str | None
    lease_until: datetime | None
    lease_live: bool
    generation: int
    holding_back: tuple[FeedBlocker, ...]
    lost_events: int = 0
    lost_before: datetime | None = None
    lost_at: datetime | None = None
    lost_by: str | None = None


def _feed_table(model: type[EventLogMixin[Any]] | Table) -> Table:
    table = event_table(model)
    if XID_COLUMN not in table.c:
        raise ConfigurationError(
            f"{getattr(model, '__name__', model)!r} has no {XID_COLUMN} column: the feed "
            "needs a model that opted in, event_log_model(Base, feed=True) or "
            "__eventlog_feed__ = True, on a database migrated by the feed's revision "
            "evlfeed_0001 (see docs/feed.md)"
        )
    return table


def _translated(exc: DBAPIError) -> Exception:
    if sqlstate_of(exc) in _NOT_MIGRATED:
        return MigrationSetupError(
            f"the feed's schema is missing from this database ({exc.orig}); run its "
            "migration: add 'eventlog_persist:migrations_feed' to version_locations and "
            "'alembic upgrade heads' (linear mode: 'eventlog-persist linear-revision "
            "--feed'); the feed needs PostgreSQL 13 or later"
        )
    return exc


def _missing(name: str, *, listing: bool = False) -> ConsumerNotFoundError:
    every = ", or leave the name out to see every consumer" if listing else ""
    return ConsumerNotFoundError(
        f"consumer {name!r} is not registered; register it first (EventFeed(...).register() "
        f"or 'eventlog-persist feed register --consumer NAME'){every}; 'eventlog-persist feed "
        "list' lists the registered ones"
    )


# --- statements -----------------------------------------------------------------------------


def _consumers_query(consumers: Table, named: bool) -> Select[Any]:
    t = consumers.c
    query = select(
        t.consumer,
        t.part,
        t.parts,
        t.snapshot_done,
        t.snapshot_target,
        t.after_xid,
        t.after_id,
        t.backfill_since.is_not(None).label("backfill"),
        case((func.isfinite(t.backfill_since), t.backfill_since), else_=null()).label("since"),
        t.backfill_after,
        t.owner,
        t.lease_until,
        func.coalesce(t.lease_until > func.now(), false()).label("live"),
        t.generation,
        t.delivered,
        t.committed_at,
        (func.now() - t.committed_at).label("lag"),
        t.lost_events,
        t.lost_before,
        t.lost_at,
        t.lost_by,
    ).order_by(t.consumer, t.part)
    if named:
        query = query.where(t.consumer == bindparam("name", type_=t.consumer.type))
    return query


def _pending_query(
    table: Table, row: Any, horizon: int
) -> tuple[Select[int, int, Any], dict[str, Any]]:
    """Count, count above the horizon, and earliest ``created_at`` of a consumer's pending
    events: those a fetch would deliver from its checkpoint on (see `_feed_sql`)."""
    c = table.c
    params: dict[str, Any] = {"horizon": horizon}
    done = Snapshot.parse(row.snapshot_done)
    # Below done's xmin every transaction is finished in done: delivered. The bound keeps
    # the count on the (xid, id) index.
    params["low"], params["done"] = done.xmin, str(done)
    not_delivered: list[ColumnElement[bool]] = [
        c.xid >= bindparam("low", type_=Xid8()),
        not_(func.pg_visible_in_snapshot(c.xid, bindparam("done", type_=PgSnapshot()))),
    ]
    if row.snapshot_target is not None and row.after_xid is not None:
        # The batch in progress: its events up to (after_xid, after_id) were delivered.
        params["target"] = row.snapshot_target
        params["after_xid"], params["after_id"] = int(row.after_xid), row.after_id
        not_delivered.append(
            not_(
                and_(
                    func.pg_visible_in_snapshot(c.xid, bindparam("target", type_=PgSnapshot())),
                    tuple_(c.xid, c.id)
                    <= tuple_(
                        bindparam("after_xid", type_=Xid8()),
                        bindparam("after_id", type_=c.id.type),
                    ),
                )
            )
        )
    pending: ColumnElement[bool] = and_(*not_delivered)
    if row.backfill:
        pre_feed: list[ColumnElement[bool]] = [c.xid.is_(None)]
        if row.since is not None:
            params["since"] = row.since
            pre_feed.append(c.created_at >= bindparam("since", type_=c.created_at.type))
        if row.backfill_after is not None:
            params["backfill_after"] = row.backfill_after
            pre_feed.append(c.id > bindparam("backfill_after", type_=c.id.type))
        pending = pending | and_(*pre_feed)
    if row.parts > 1:  # a part's events only: those of its sessions
        pending = and_(pending, session_part(c.session_id, int(row.parts)) == int(row.part))
    query = select(
        func.count(),
        func.count().filter(c.xid >= bindparam("horizon", type_=Xid8())),
        func.min(c.created_at),
    ).where(pending)
    return query, params


_BLOCKERS: Final = text(
    "SELECT a.pid, a.datname, NULLIF(a.application_name, ''), a.state, "
    "now() - a.xact_start, NULL AS gid "
    "FROM pg_stat_activity a "
    "WHERE a.backend_xid IS NOT NULL AND a.backend_xid::text::bigint = :xid32 "
    "UNION ALL "
    "SELECT NULL, p.database, NULL, 'prepared', now() - p.prepared, p.gid "
    "FROM pg_prepared_xacts p WHERE p.transaction::text::bigint = :xid32 "
    "ORDER BY 1"
)


def _blockers(connection: Connection, horizon: int) -> tuple[FeedBlocker, ...]:
    rows = connection.execute(_BLOCKERS, {"xid32": horizon % _XID32}).all()
    return tuple(FeedBlocker(*row) for row in rows)


def _status(connection: Connection, table: Table, name: str | None) -> list[ConsumerStatus]:
    """Every consumer's status (or ``name``'s), in one REPEATABLE READ transaction."""
    consumers = consumers_table(table.metadata, schema=table.schema)
    connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
    now, current = connection.execute(
        select(func.now(), func.pg_current_snapshot(type_=PgSnapshot()))
    ).one()
    horizon = Snapshot.parse(current).xmin
    rows = connection.execute(
        _consumers_query(consumers, name is not None), {} if name is None else {"name": name}
    ).all()
    if name is not None and not rows:
        raise _missing(name, listing=True)
    blockers: tuple[FeedBlocker, ...] | None = None
    found = []
    for row in rows:
        query, params = _pending_query(table, row, horizon)
        pending, held, oldest = connection.execute(query, params).one()
        if held and blockers is None:
            blockers = _blockers(connection, horizon)
        found.append(
            ConsumerStatus(
                consumer=row.consumer,
                part=int(row.part),
                parts=int(row.parts),
                pending=int(pending),
                held=int(held),
                oldest_pending_age=None if oldest is None else now - oldest,
                lag=row.lag,
                committed_at=row.committed_at,
                delivered=int(row.delivered),
                owner=row.owner,
                lease_until=row.lease_until,
                lease_live=bool(row.live),
                generation=int(row.generation),
                holding_back=(blockers or ()) if held else (),
                lost_events=int(row.lost_events or 0),
                lost_before=row.lost_before,
                lost_at=row.lost_at,
                lost_by=row.lost_by,
            )
        )
    return found


# --- the public functions -------------------------------------------------------------------


def feed_status(
    model: type[EventLogMixin[Any]], engine: Engine, *, consumer: str | None = None
) -> list[ConsumerStatus]:
    """Read each feed consumer's backlog, lease, and what holds the feed back.

    One short read-only transaction: the counts, the lease and the horizon are read in one
    snapshot. ``pending`` counts the committed events a fetch would deliver from the
    consumer's checkpoint on, with the feed's own rules; counting is a range of the
    ``(xid, id)`` index from the checkpoint on, so it costs as much as the backlog is long.

    Any role sees a ``holding_back`` backend's pid, database and application; its state
    and transaction age, when it belongs to another role, need the privileges of
    ``pg_read_all_stats`` (e.g. the ``pg_monitor`` role), else they are None.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The engine of the host's database.
        consumer: Only this consumer (all its parts); default: every consumer.

    Returns:
        One `ConsumerStatus` per consumer and part, by name and part.

    Raises:
        ConfigurationError: ``model`` did not opt in to the feed, or ``engine`` is not an
            ``Engine``.
        ValidationError: ``consumer`` is not a usable name.
        ConsumerNotFoundError: ``consumer`` is not registered.
        MigrationSetupError: The database lacks the feed's schema.

    Example:
        >>> for status in feed_status(EventLog, engine):  # doctest: +SKIP
        ...     print(status.consumer, status.pending, status.oldest_pending_age)

    .. versionadded:: 0.3.0
    """
    table = _feed_table(model)
    name = None if consumer is None else check_consumer(consumer)
    check_engine(engine, api="feed_status", is_async=False)
    try:
        with (
            engine.connect() as own,
            own.execution_options(**_ONE_SNAPSHOT) as connection,
            connection.begin(),
        ):
            return _status(connection, table, name)
    except DBAPIError as exc:
        raise _translated(exc) from exc


async def afeed_status(
    model: type[EventLogMixin[Any]], engine: AsyncEngine, *, consumer: str | None = None
) -> list[ConsumerStatus]:
    """Read each feed consumer's backlog, lease, and what holds the feed back.

    One short read-only transaction: the counts, the lease and the horizon are read in one
    snapshot. ``pending`` counts the committed events a fetch would deliver from the
    consumer's checkpoint on, with the feed's own rules; counting is a range of the
    ``(xid, id)`` index from the checkpoint on, so it costs as much as the backlog is long.

    Any role sees a ``holding_back`` backend's pid, database and application; its state
    and transaction age, when it belongs to another role, need the privileges of
    ``pg_read_all_stats`` (e.g. the ``pg_monitor`` role), else they are None.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The ``AsyncEngine`` of the host's database.
        consumer: Only this consumer (all its parts); default: every consumer.

    Returns:
        One `ConsumerStatus` per consumer and part, by name and part.

    Raises:
        ConfigurationError: ``model`` did not opt in to the feed, or ``engine`` is not an
            ``AsyncEngine``.
        ValidationError: ``consumer`` is not a usable name.
        ConsumerNotFoundError: ``consumer`` is not registered.
        MigrationSetupError: The database lacks the feed's schema.

    Example:
        >>> for status in await afeed_status(EventLog, engine):  # doctest: +SKIP
        ...     print(status.consumer, status.pending, status.oldest_pending_age)

    .. versionadded:: 0.3.0
    """
    table = _feed_table(model)
    name = None if consumer is None else check_consumer(consumer)
    check_engine(engine, api="afeed_status", is_async=True)
    try:
        async with engine.connect() as own:
            connection = await own.execution_options(**_ONE_SNAPSHOT)
            async with connection.begin():
                return await connection.run_sync(lambda sync: _status(sync, table, name))
    except DBAPIError as exc:
        raise _translated(exc) from exc


# --- reset (the command line's) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResetOutcome:
    """What a reset or an unregister replaced: the consumer's parts, and the owners of the
    live leases it broke (``force``)."""

    parts: int
    broke_leases: tuple[str, ...]


def reset_consumer(
    table: Table, engine: Engine, *, consumer: str, to: FeedStart, force: bool
) -> ResetOutcome:
    """Move every part of ``consumer``'s checkpoint to ``to``, as ``register(start=to)``
    would set a new one.

    The batch in progress is dropped, the lease released and the generation raised, so a
    worker still holding a batch cannot commit it (`LeaseLostError`); the marks of events
    retention removed undelivered (``lost_*``) are cleared; ``delivered`` is kept. Refused
    with `LeaseHeldError` while a lease is live, unless ``force``.
    """
    name = check_consumer(consumer)
    start = check_start(to)
    model: Any = table  # FeedStatements takes the event_logs Table as well
    statements = FeedStatements(model)
    t = statements.consumers
    try:
        with own_transaction(engine) as connection:  # sees what it waited for
            if start != "latest":  # a claim on stored events: not while retention runs
                connection.execute(claiming(t))
                # Bounded: retention waits behind this claim, and a worker's commit in the
                # host's transaction may hold the rows as long as that transaction runs.
                connection.execute(_ROWS_LOCK_TIMEOUT)
            rows, live = _lock_parts(
                connection, t, name, force, again="reset again", fenced="LeaseLostError"
            )
            done: Snapshot | None = None
            if isinstance(start, datetime):
                first, now = connection.execute(
                    statements.first_xid_since(), {"since": start}
                ).one()
                done = since_snapshot(None if first is None else int(first), Snapshot.parse(now))
            elif start == "earliest":
                done = EARLIEST
            connection.execute(
                _reset_statement(t, start), {"name": name, **register_values(start, done)}
            )
            if start != "latest":
                since = start if isinstance(start, datetime) else None
                mark_new_claim(connection, table, t, name, since)
    except DBAPIError as exc:
        raise _translated(exc) from exc
    return ResetOutcome(len(rows), live)


def unregister_consumer(
    table: Table, engine: Engine, *, consumer: str, force: bool
) -> ResetOutcome:
    """Remove every part of ``consumer``: its checkpoint and lease, as ``unregister()`` does.

    Refused with `LeaseHeldError` while a lease is live, unless ``force``: the worker's next
    commit and fetch then raise `ConsumerNotFoundError`.
    """
    name = check_consumer(consumer)
    t = consumers_table(table.metadata, schema=table.schema)
    try:
        with own_transaction(engine) as connection:
            rows, live = _lock_parts(
                connection, t, name, force, again="unregister again", fenced="ConsumerNotFoundError"
            )
            connection.execute(delete(t).where(t.c.consumer == name))
    except DBAPIError as exc:
        raise _translated(exc) from exc
    return ResetOutcome(len(rows), live)


def _lock_parts(
    connection: Connection, t: Table, name: str, force: bool, *, again: str, fenced: str
) -> tuple[list[Any], tuple[str, ...]]:
    """Lock the consumer's rows; refuse a live lease unless ``force``.

    Returns the rows and the owners of the live leases that ``force`` breaks.
    """
    try:
        rows = list(
            connection.execute(
                select(t.c.owner, t.c.lease_until, t.c.lease_until > func.now())
                .where(t.c.consumer == name)
                .order_by(t.c.part)
                .with_for_update()
            ).all()
        )
    except DBAPIError as exc:
        if sqlstate_of(exc) != _LOCK_NOT_AVAILABLE:
            raise
        raise LeaseHeldError(
            f"consumer {name!r} is being committed by a worker whose transaction did "
            f"not end within 2 s (a batch committed in the host's transaction, say); {again} "
            "once it ends, or stop that worker first",
            owner=None,
            lease_until=None,
        ) from exc
    if not rows:
        raise _missing(name)
    live = [(owner, until) for owner, until, is_live in rows if is_live and owner]
    if live and not force:
        owner, until = live[0]
        raise LeaseHeldError(
            f"consumer {name!r} is leased to {owner!r} until {until.isoformat()}: a "
            f"worker is consuming it. Stop that worker (or wait until its lease ends) and "
            f"{again}, or pass --force: its next commit then raises {fenced} and moves "
            "nothing",
            owner=owner,
            lease_until=until,
        )
    return rows, tuple(dict.fromkeys(owner for owner, _until in live))


def _reset_statement(t: Table, start: FeedStart) -> Any:
    values: dict[str, Any] = {
        "snapshot_target": None,
        "after_xid": None,
        "after_id": None,
        "backfill_after": None,
        "owner": None,
        "lease_until": None,
        "generation": t.c.generation + 1,
        "lost_events": None,
        "lost_before": None,
        "lost_at": None,
        "lost_by": None,
    }
    if start == "latest":
        values["snapshot_done"] = func.pg_current_snapshot(type_=PgSnapshot())
        values["backfill_since"] = None
    else:
        values["snapshot_done"] = bindparam("done", type_=PgSnapshot())
        # Sent as text, so that it may be -infinity (every pre-feed row is pending).
        values["backfill_since"] = cast(
            bindparam("backfill_since", type_=String()), DateTime(timezone=True)
        )
    return (
        update(t).where(t.c.consumer == bindparam("name", type_=t.c.consumer.type)).values(values)
    )


def list_consumers(table: Table, engine: Engine) -> list[Any]:
    """The consumers' rows (no counting): name, part, parts, created, delivered, lease."""
    t = consumers_table(table.metadata, schema=table.schema).c
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    select(
                        t.consumer,
                        t.part,
                        t.parts,
                        t.created_at,
                        t.committed_at,
                        t.delivered,
                        t.owner,
                        func.coalesce(t.lease_until > func.now(), false()).label("live"),
                    ).order_by(t.consumer, t.part)
                ).all()
            )
    except DBAPIError as exc:
        raise _translated(exc) from exc
