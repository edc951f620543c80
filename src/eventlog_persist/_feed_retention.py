"""Retention and the feed: the consumer parts that had not been delivered what retention removes.

`purge_events` and `drop_partitions` call `feed_consumers` once per run: on a database
without the feed it finds nothing, and they run as before. With the feed, every removal
marks (``lost_*`` in ``event_log_consumers``) each part whose checkpoint had not passed one
of the removed events, in the same transaction as a purge batch's DELETE, and before a
partition is detached. A part's fetch then raises `FeedDataLostError` until it is reset.

An event was delivered to a part when its transaction is visible in ``snapshot_done``, or
it is in the batch in progress (visible in ``snapshot_target`` and at or before
``(after_xid, after_id)``); a row stored before the feed (``xid`` NULL) when it is not
pending in the part's backfill (created at or after ``backfill_since``, id after
``backfill_after``). With ``parts > 1``, only the events of the part's own sessions count.
Each part is judged by its row as it stands when the marking statement updates it (a
checkpoint that moved meanwhile is read again: PostgreSQL re-evaluates the statement's
conditions on the newer row), so a part that was delivered every removed event is never
marked, and one that was not always is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    DateTime,
    Delete,
    MetaData,
    Select,
    String,
    Table,
    TableClause,
    Update,
    Uuid,
    and_,
    any_,
    bindparam,
    case,
    column,
    exists,
    func,
    literal,
    not_,
    or_,
    select,
    table,
    text,
    tuple_,
    update,
)
from sqlalchemy.types import NullType

from eventlog_persist._feed_schema import Xid8, consumers_table
from eventlog_persist._feed_sql import consumer_option, session_part
from eventlog_persist._schema import CONSUMERS_TABLE, XID_COLUMN
from eventlog_persist._table import quoted_name
from eventlog_persist.exceptions import FeedDataLostError

__all__ = [
    "BY_DETACH",
    "BY_DROP",
    "BY_PURGE",
    "data_lost",
    "feed_consumers",
    "mark_partition",
    "purge_and_mark",
]

BY_PURGE: Final = "purge_events"
BY_DROP: Final = "drop_partitions"
BY_DETACH: Final = "drop_partitions keep_detached"

# The schema of event_logs when it has the feed: its xid column, and event_log_consumers
# beside it. No row: no feed (or no event_logs, which the caller's own statements report).
_FEED_SQL: Final = text(
    "SELECT n.nspname FROM pg_class e JOIN pg_namespace n ON n.oid = e.relnamespace "
    "WHERE e.oid = to_regclass(:events) "
    "AND EXISTS (SELECT FROM pg_attribute a WHERE a.attrelid = e.oid "
    "AND a.attname = :xid AND NOT a.attisdropped) "
    "AND EXISTS (SELECT FROM pg_class k WHERE k.relnamespace = e.relnamespace "
    "AND k.relname = :consumers AND k.relkind IN ('r', 'p'))"
)


def feed_consumers(connection: Connection, events: Table) -> Table | None:
    """``event_log_consumers`` beside ``events`` in the database, or None without the feed.

    Looked up in the database, not the model: a host whose model did not opt in may still
    run on a database migrated for the feed. The table is declared on a metadata of its
    own, never the host's.
    """
    name = quoted_name(events)
    schema = connection.execute(
        _FEED_SQL, {"events": name, "xid": XID_COLUMN, "consumers": CONSUMERS_TABLE}
    ).scalar()
    return None if schema is None else consumers_table(MetaData(), schema=str(schema))


# --- which rows a part was not delivered ---------------------------------------------------


def _not_delivered(g: Any, t: Any) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    """The conditions under which the event row ``g`` was not delivered to the part ``t``:
    one for rows with a transaction id, one for rows stored before the feed.

    ``xid >= pg_snapshot_xmin(snapshot_done)`` follows from the rest (below its xmin every
    transaction is finished in a snapshot); it bounds an index range on ``(xid, id)``.
    """
    in_batch = and_(
        t.snapshot_target.is_not(None),
        t.after_xid.is_not(None),
        func.pg_visible_in_snapshot(g.xid, t.snapshot_target),
        tuple_(g.xid, g.id) <= tuple_(t.after_xid, t.after_id),
    )
    mine = or_(t.parts == 1, session_part(g.session_id, t.parts) == t.part)
    fed = and_(
        g.xid >= func.pg_snapshot_xmin(t.snapshot_done, type_=Xid8()),
        not_(func.pg_visible_in_snapshot(g.xid, t.snapshot_done)),
        not_(in_batch),
        mine,
    )
    pre_feed = and_(
        g.xid.is_(None),
        t.backfill_since.is_not(None),
        g.created_at >= t.backfill_since,
        or_(t.backfill_after.is_(None), g.id > t.backfill_after),
        mine,
    )
    return fed, pre_feed


def _marks(t: Table, lost: ColumnElement[Any], by: str) -> dict[str, Any]:
    """The ``lost_*`` values of a part found to lack ``lost`` more removed events: the count
    adds up, the cutoff is the latest, the time the first, the paths each named once."""
    c = t.c
    path = literal(by, String())
    return {
        "lost_events": func.coalesce(c.lost_events, 0) + lost,
        "lost_before": func.greatest(
            c.lost_before, bindparam("cutoff", type_=DateTime(timezone=True))
        ),
        "lost_at": func.coalesce(c.lost_at, func.now()),
        "lost_by": case(
            (c.lost_by.is_(None), path),
            (path == func.any_(func.string_to_array(c.lost_by, ", ")), c.lost_by),
            else_=c.lost_by + ", " + path,
        ),
    }


def purge_and_mark(purge: Delete, events: Table, consumers: Table) -> Select[Any]:
    """One purge batch that also marks the parts it leaves without events: rows are the
    number of events deleted and the names of the consumers marked (one per part).

    The deleted rows go into arrays, a one-row relation in the UPDATE's FROM: when a
    checkpoint moved while the batch ran, PostgreSQL re-checks the part's row against the
    same arrays (a data-modifying CTE is never run again). Parameter: ``cutoff``.
    """
    c = events.c
    xid = column(XID_COLUMN, Xid8())  # the database's column, whether or not the model has it
    gone = purge.returning(xid, c.id, c.session_id, c.created_at).cte("gone")
    arrays = select(
        func.count().label("n"),
        func.array_agg(gone.c.xid).label("xids"),
        func.array_agg(gone.c.id).label("ids"),
        func.array_agg(gone.c.session_id).label("sessions"),
        func.array_agg(gone.c.created_at).label("times"),
        func.bool_or(gone.c.xid.is_(None)).label("pre_feed"),
    ).cte("gone_rows")
    g = (
        func.unnest(arrays.c.xids, arrays.c.ids, arrays.c.sessions, arrays.c.times)
        .table_valued(
            column("xid", Xid8()),
            column("id", Uuid()),
            column("session_id", NullType()),
            column("created_at", DateTime(timezone=True)),
        )
        .render_derived(name="g")
    )
    t = consumers
    fed, pre_feed = _not_delivered(g.c, t.c)
    missed = or_(fed, pre_feed)
    lost = select(func.count()).select_from(g).where(missed).correlate(t, arrays)
    marked = (
        update(t)
        .values(_marks(t, lost.scalar_subquery(), BY_PURGE))
        .where(
            arrays.c.n > 0,
            # A first look, without unnesting: a deleted xid at or above the xmin of the
            # part's snapshot_done, or a pre-feed row while the part's backfill is pending.
            or_(
                func.pg_snapshot_xmin(t.c.snapshot_done, type_=Xid8()) <= any_(arrays.c.xids),
                and_(arrays.c.pre_feed, t.c.backfill_since.is_not(None)),
            ),
            exists(lost.with_only_columns(literal(1))),
        )
        .returning(t.c.consumer)
        .cte("marked")
    )
    return select(
        select(func.count()).select_from(gone).scalar_subquery(),
        select(func.array_agg(marked.c.consumer)).scalar_subquery(),
    )


def mark_partition(
    schema: str | None,
    name: str,
    consumers: Table,
    *,
    by: str,
    bounded: bool = False,
    since: datetime | None = None,
) -> Update:
    """Mark the parts that were not delivered every event of partition ``name`` (about to
    be detached); RETURNING the names of the consumers marked. Parameter: ``cutoff``.

    Each part reads the partition's ``(xid, id)`` index from its checkpoint's xmin on (and
    its rows with no ``xid`` only while its backfill is pending): a part that is caught up
    reads nothing. ``bounded``: ``name`` is the partitioned table, read below ``cutoff`` and
    from ``since`` (None: a partition from MINVALUE), which prunes it to the one partition
    and needs the rights on the table only, not on the partition.
    """
    p: TableClause = table(
        name,
        column("xid", Xid8()),
        column("id", Uuid()),
        column("session_id", NullType()),
        column("created_at", DateTime(timezone=True)),
        schema=schema,
    )
    t = consumers
    fed, pre_feed = _not_delivered(p.c, t.c)
    where: list[ColumnElement[bool]] = []
    if bounded:
        where.append(p.c.created_at < bindparam("cutoff", type_=DateTime(timezone=True)))
        if since is not None:
            where.append(p.c.created_at >= since)
    counts = [
        select(func.count()).select_from(p).where(missed, *where).correlate(t).scalar_subquery()
        for missed in (fed, pre_feed)
    ]
    found = [
        exists(select(literal(1)).select_from(p).where(missed, *where).correlate(t))
        for missed in (fed, pre_feed)
    ]
    return (
        update(t)
        .values(_marks(t, counts[0] + counts[1], by))
        .where(or_(*found))
        .returning(t.c.consumer)
    )


# --- the consumer's side -------------------------------------------------------------------


def data_lost(
    consumer: str,
    part: int,
    parts: int,
    lost_events: int,
    lost_before: datetime | None,
    lost_at: datetime | None,
    lost_by: str | None,
) -> FeedDataLostError:
    """The error of a fetch from a part that retention marked."""
    which = f"consumer {consumer!r}" + (f" part {part}" if parts > 1 else "")
    cutoff = None if lost_before is None else lost_before.astimezone(UTC).isoformat()
    before = "" if cutoff is None else f" created before {cutoff}"
    when = "" if lost_at is None else f", first at {lost_at.astimezone(UTC).isoformat()}"
    to = cutoff or "latest"
    return FeedDataLostError(
        f"{which}: retention ({lost_by or 'unknown'}{when}) removed {lost_events} events"
        f"{before} that it had not been delivered; the feed cannot deliver them and does "
        "not skip them silently. Reset the consumer to go on: eventlog-persist feed reset "
        f"{consumer_option(consumer)} --to {to} (delivers what is stored from then on, some "
        "again: deduplicate on event.id; --to latest skips the rest), or unregister() and "
        "register(start=...) it. To keep it from happening, let consumers catch up before "
        "retention removes events (feed_status: oldest_pending_age below the retention age)",
        consumer=consumer,
        part=part,
        lost_events=int(lost_events),
        lost_before=lost_before,
        lost_at=lost_at,
        lost_by=lost_by,
    )
