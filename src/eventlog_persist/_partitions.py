"""Partition maintenance of the partitioned layout: create ahead, list, detach and drop old."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.engine.interfaces import IsolationLevel

from eventlog_persist._audit_partitions import (
    audited,
    guard_partition,
    record_retention,
    unguard,
)
from eventlog_persist._feed_claims import retaining, retaining_ended
from eventlog_persist._feed_retention import BY_DETACH, BY_DROP, feed_consumers, mark_partition
from eventlog_persist._isolation import at_level
from eventlog_persist._model import EventLogMixin
from eventlog_persist._read_sql import event_table
from eventlog_persist._retention import check_cutoff
from eventlog_persist._schema import quote_identifier
from eventlog_persist._table import quoted_name
from eventlog_persist._urls import shown
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = [
    "DEFAULT_AHEAD",
    "DEFAULT_PARTITION_LOCK_TIMEOUT",
    "MAX_AHEAD",
    "DropResult",
    "PartitionInfo",
    "PartitionInterval",
    "drop_partitions",
    "ensure_partitions",
    "list_partitions",
]

PartitionInterval = Literal["week", "month"]
"""How much time one partition holds: a week (from Monday, UTC) or a calendar month (UTC)."""

DEFAULT_AHEAD: Final = 4
"""Partitions `ensure_partitions` keeps after the current one, as revision evlpart_0001."""
MAX_AHEAD: Final = 52
DEFAULT_PARTITION_LOCK_TIMEOUT: Final = 2.0
"""Seconds an ATTACH, a plain DETACH or a DROP waits for its locks before it fails.

Short, because other sessions queue behind a waiting lock: a DROP of a detached partition
takes ACCESS EXCLUSIVE locks on the tables its foreign keys reference (users, chat_sessions,
user_projects, user_agents), an ATTACH SHARE ROW EXCLUSIVE ones."""
_TO_DROP: Final = "eventlog-persist: detached by drop_partitions, to be dropped"
"""The comment set on a partition before it is detached to be dropped: a run that detached
it but could not drop it (a lock timeout, a lost connection) leaves it for the next run.
With the feed, it also says that the consumers were marked for its events."""
_TO_KEEP: Final = "eventlog-persist: detached by drop_partitions, kept"
"""With the feed, the comment set (with the consumers' marks) on a partition to detach and
keep; cleared once it is detached."""

logger = logging.getLogger("eventlog_persist")

# Session advisory locks of this package's partition maintenance: this constant in the high 32
# bits, the parent table's oid in the low 32, so that two cron runs on one table take turns.
_LOCK_SPACE: Final = 0x45564C50  # "EVLP"
# ensure_partitions' ``now``: 52 months ahead (and a period back) stay within datetime's range.
_NOW_RANGE: Final = (datetime(2, 1, 1, tzinfo=UTC), datetime(9990, 12, 31, tzinfo=UTC))


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of ``event_logs``, as `list_partitions` found it.

    Attributes:
        name: The partition's table name (``event_logs_pYYYYMMDD`` when this package made it).
        schema: Its schema (the parent's, unless another tool attached it from elsewhere:
            maintenance leaves such a partition alone).
        lower: First instant it holds; ``None`` for ``MINVALUE`` (and a DEFAULT partition).
        upper: First instant it no longer holds; ``None`` for ``MAXVALUE`` (and DEFAULT).
        default: It is a DEFAULT partition (holds what no other partition holds).
        estimated_rows: PostgreSQL's row estimate (``pg_class.reltuples``); ``None`` before
            the partition was first vacuumed or analyzed.
        total_bytes: Its size on disk, indexes and TOAST included.
        detach_pending: A ``DETACH ... CONCURRENTLY`` was interrupted; the next
            `drop_partitions` finishes it (``DETACH ... FINALIZE``).

    .. versionadded:: 0.3.0
    """

    name: str
    schema: str
    lower: datetime | None
    upper: datetime | None
    default: bool
    estimated_rows: int | None
    total_bytes: int
    detach_pending: bool


@dataclass(frozen=True, slots=True)
class DropResult:
    """What `drop_partitions` did, each tuple oldest first.

    Attributes:
        dropped: Partitions detached and dropped.
        detached: Partitions detached and kept as plain tables (``keep_detached=True``, or a
            pending detach finished for a partition newer than the cutoff).
        finalized: Partitions whose interrupted detach this run finished (they are in
            ``dropped`` or ``detached`` too).
        erasures: With the audit: the ``retention`` tombstones written, one per event of
            the partitions dropped or detached.

    .. versionadded:: 0.3.0
    """

    dropped: tuple[str, ...] = ()
    detached: tuple[str, ...] = ()
    finalized: tuple[str, ...] = ()
    erasures: int = 0


# --- SQL -------------------------------------------------------------------------------------

_PARENT_SQL: Final = text(
    "SELECT c.oid::bigint, c.relkind::text, n.nspname, c.relname FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:name)"
)
# The bounds are cast back in the session that printed them, so its TimeZone does not matter
# (psycopg reads the timestamptz in DateStyle ISO only: docs/operations.md); MINVALUE and
# MAXVALUE match no quoted literal and come back NULL.
_LEFT_TO_DROP_SQL: Final = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = :schema AND c.relkind = 'r' AND NOT c.relispartition "
    "AND obj_description(c.oid, 'pg_class') = :comment ORDER BY c.relname"
)
# Partitions a drop run marked (telling the feed's consumers) and left attached: it failed
# before their detach, and the run that finishes them marks no one again.
_MARKED_SQL: Final = text(
    "SELECT "
    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), "
    "'FROM \\(''([^'']*)''\\) TO'))[1]::timestamptz, "
    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), "
    "' TO \\(''([^'']*)''\\)$'))[1]::timestamptz, obj_description(c.oid, 'pg_class') "
    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = to_regclass(:events) AND NOT i.inhdetachpending "
    "AND obj_description(c.oid, 'pg_class') IN (:drop, :keep) ORDER BY c.relname"
)
_FOREIGN_KEYS_SQL: Final = text(
    "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(:name) AND contype = 'f' "
    "ORDER BY conname"
)
_PARTITIONS: Final = (
    "SELECT c.relname, n.nspname, "
    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), "
    "'FROM \\(''([^'']*)''\\) TO'))[1]::timestamptz AS lower, "
    "(regexp_match(pg_get_expr(c.relpartbound, c.oid), "
    "' TO \\(''([^'']*)''\\)$'))[1]::timestamptz AS upper, "
    "pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' AS is_default, "
    "c.reltuples::bigint, {size}, i.inhdetachpending "
    "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE i.inhparent = CAST(:parent AS oid) ORDER BY lower NULLS FIRST, c.relname"
)


@dataclass(frozen=True, slots=True)
class _Parent:
    oid: int
    schema: str
    name: str

    @property
    def qualified(self) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(self.name)}"

    def child(self, name: str) -> str:
        return f"{quote_identifier(self.schema)}.{quote_identifier(name)}"

    @property
    def lock_key(self) -> int:
        # A positive bigint, _LOCK_SPACE being under 2**31: pg_locks shows it as classid
        # _LOCK_SPACE, objid the oid, objsubid 1 (docs/adoption.md).
        return (_LOCK_SPACE << 32) | self.oid


def _parent(connection: Connection, table: Table) -> _Parent:
    """The partitioned ``event_logs`` of the model, or a `ConfigurationError` naming the fix."""
    row = connection.execute(_PARENT_SQL, {"name": quoted_name(table)}).one_or_none()
    where = f"schema {table.schema!r}" if table.schema else "the search_path"
    if row is None:
        raise ConfigurationError(
            f"there is no {table.name} table in {where} of that database; run the migrations "
            "('alembic upgrade heads'), or pass the model (or schema) that names it"
        )
    oid, kind, schema, relname = row
    if kind != "p":
        raise ConfigurationError(
            f"{schema}.{relname} is not partitioned, so it has no partitions to maintain; "
            "opt in to the partitioned layout (revision evlpart_0001, or the online "
            "conversion of a table that holds rows; see 'Partitioned layout' in "
            "docs/adoption.md), or delete old events with purge_events "
            "('eventlog-persist purge')"
        )
    return _Parent(int(oid), str(schema), str(relname))


_OID_SQL: Final = text("SELECT to_regclass(:name)::oid::bigint")
_SIZED_PARTITIONS_SQL: Final = text(_PARTITIONS.format(size="pg_total_relation_size(c.oid)"))
# Sizes cost a stat() of every file of every partition and index: only listing shows them.
_PARTITIONS_SQL: Final = text(_PARTITIONS.format(size="0"))


def _partitions(connection: Connection, parent: int, *, sized: bool = False) -> list[PartitionInfo]:
    """The partitions of the table whose oid is ``parent``; ``total_bytes`` is 0 unless
    ``sized``."""
    statement = _SIZED_PARTITIONS_SQL if sized else _PARTITIONS_SQL
    rows = connection.execute(statement, {"parent": parent})
    return [
        PartitionInfo(
            name=name,
            schema=schema,
            lower=lower,
            upper=upper,
            default=bool(is_default),
            estimated_rows=None if tuples < 0 else int(tuples),
            total_bytes=int(size),
            detach_pending=bool(pending),
        )
        for name, schema, lower, upper, is_default, tuples, size, pending in rows
    ]


def _in_its_schema(parent: _Parent, found: Sequence[PartitionInfo]) -> list[PartitionInfo]:
    """The partitions in ``event_logs``' own schema, the ones maintenance handles; another
    tool may attach one from elsewhere, which is left alone (with a warning)."""
    for partition in found:
        if partition.schema != parent.schema:
            logger.warning(
                "partition %s.%s of %s is in another schema than its table: partition "
                "maintenance leaves it alone (drop_partitions neither detaches nor drops it); "
                "detach and drop it by hand, or move it (ALTER TABLE ... SET SCHEMA %s)",
                quote_identifier(partition.schema),
                quote_identifier(partition.name),
                parent.qualified,
                quote_identifier(parent.schema),
            )
    return [partition for partition in found if partition.schema == parent.schema]


def _check_bind(bind: object) -> None:
    if isinstance(bind, Engine):
        return
    if not isinstance(bind, Connection):
        raise ConfigurationError(
            f"partition maintenance needs a sync sqlalchemy Engine or Connection, got "
            f"{shown(bind)}; pass create_engine(url) for a URL (from async code, run it in a "
            "thread with an Engine of a sync driver, e.g. create_engine('postgresql+psycopg://"
            "...'))"
        )
    if bind.in_transaction():
        raise ConfigurationError(
            "the connection is already in a transaction; partition maintenance commits on its "
            "own (DETACH ... CONCURRENTLY cannot run in a transaction block), so pass an "
            "Engine or a connection with no transaction begun"
        )


@contextmanager
def _connection(bind: Engine | Connection, *, autocommit: bool = False) -> Iterator[Connection]:
    """A connection of ``bind`` with no transaction begun, in autocommit mode if asked, else
    at READ COMMITTED (whose ``begin()`` is a transaction, as in autocommit mode it is not)."""
    _check_bind(bind)
    level: IsolationLevel = "AUTOCOMMIT" if autocommit else "READ COMMITTED"
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            connection.execution_options(isolation_level=level)
            yield connection
        return
    with at_level(bind, level):
        yield bind


@contextmanager
def _advisory_lock(connection: Connection, parent: _Parent) -> Iterator[None]:
    """Take this table's maintenance lock for the session; waits for another run to finish."""
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": parent.lock_key})
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": parent.lock_key})


def mark_new_claim(
    connection: Connection, events: Table, consumers: Table, name: str, start: datetime | None
) -> None:
    """Mark the parts of consumer ``name``, just registered or reset (`claiming` held), that
    claim events of a partition a drop run marked and left attached: its detach is decided,
    so the claim is judged as the run judged the others. From a ``start`` time, only the
    events it promises count (created at or after it), not the older ones of a transaction
    that straddles it, which come along but were never asked for."""
    marked = connection.execute(
        _MARKED_SQL, {"events": quoted_name(events), "drop": _TO_DROP, "keep": _TO_KEEP}
    ).all()
    for lower, upper, comment in marked:
        bounds = [bound for bound in (lower, start) if bound is not None]
        since = max(bounds) if bounds else None  # the later of the two; None: no lower end
        statement = mark_partition(
            events.schema,
            events.name,
            consumers,
            by=BY_DETACH if comment == _TO_KEEP else BY_DROP,
            bounded=True,
            since=since,
        )
        connection.execute(statement.where(consumers.c.consumer == name), {"cutoff": upper})


@contextmanager
def _retaining(connection: Connection, consumers: Table | None) -> Iterator[None]:
    """With the feed, hold off its new claims on stored events (`_feed_claims`) for the run:
    from before a partition's marking until its detach has committed (autocommit
    ``connection``)."""
    if consumers is None:
        yield
        return
    connection.execute(retaining(consumers, session=True))
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            connection.execute(retaining_ended(consumers))


@contextmanager
def _one_transaction(connection: Connection) -> Iterator[None]:
    """One transaction on the autocommit ``connection``, which is in autocommit after it."""
    if connection.in_transaction():  # SQLAlchemy's autobegun marker; nothing is pending
        connection.rollback()
    connection.execution_options(isolation_level="READ COMMITTED")
    try:
        with connection.begin():
            yield
    finally:
        if not connection.closed and not connection.invalidated:
            connection.execution_options(isolation_level="AUTOCOMMIT")


def _mark_consumers(
    connection: Connection,
    parent: _Parent,
    partition: PartitionInfo,
    consumers: Table,
    *,
    keep: bool,
    lock_timeout: float | None,
) -> list[str]:
    """Before ``partition`` is detached: mark the feed's consumer parts that were not
    delivered all its events, and comment it as marked, in one transaction; a partition
    commented so by an earlier run (whose detach failed) is not counted twice. Returns the
    consumers marked."""
    name = parent.child(partition.name)
    comment = _TO_KEEP if keep else _TO_DROP
    found = connection.execute(
        text("SELECT obj_description(to_regclass(:name), 'pg_class')"), {"name": name}
    ).scalar()
    if found in (_TO_DROP, _TO_KEEP):
        if found != comment:
            connection.execute(text(f"COMMENT ON TABLE {name} IS '{comment}'"))
        return []
    statement = mark_partition(
        parent.schema, partition.name, consumers, by=BY_DETACH if keep else BY_DROP
    )
    with _lock_timeout(connection, lock_timeout), _one_transaction(connection):
        marked = connection.execute(statement, {"cutoff": partition.upper}).scalars().all()
        connection.execute(text(f"COMMENT ON TABLE {name} IS '{comment}'"))
    return list(marked)


@contextmanager
def _lock_timeout(connection: Connection, seconds: float | None) -> Iterator[None]:
    """Set the session's ``lock_timeout`` (autocommit connection) and restore it after."""
    if seconds is None:
        yield
        return
    before = connection.execute(text("SELECT current_setting('lock_timeout')")).scalar_one()
    connection.execute(
        text("SELECT set_config('lock_timeout', :value, false)"),
        {"value": f"{max(1, round(seconds * 1000))}ms"},
    )
    try:
        yield
    finally:
        if not connection.closed and not connection.invalidated:
            connection.execute(
                text("SELECT set_config('lock_timeout', :value, false)"), {"value": before}
            )


def _drop_foreign_keys(connection: Connection, table: str) -> None:
    """Drop the foreign keys of the detached ``table`` (quoted, qualified) in a statement of
    their own.

    ``DROP TABLE`` would drop them too, but it holds the ACCESS EXCLUSIVE locks that removing
    their triggers takes on the referenced host tables (``users``, ``chat_sessions``, ...)
    until it commits, and at commit the file system frees the table's files: tens of
    milliseconds for a week of events, more where the file system discards freed blocks
    online. Dropped first, those tables are locked only for the catalog change."""
    keys = connection.execute(_FOREIGN_KEYS_SQL, {"name": table}).scalars().all()
    if keys:
        drops = ", ".join(f"DROP CONSTRAINT {quote_identifier(key)}" for key in keys)
        connection.execute(text(f"ALTER TABLE {table} {drops}"))


def _comment(connection: Connection, table: str) -> str | None:
    """The comment on ``table`` (schema-qualified and quoted), if any."""
    comment = connection.execute(
        text("SELECT obj_description(to_regclass(:name), 'pg_class')"), {"name": table}
    ).scalar()
    return None if comment is None else str(comment)


_UNFINISHED_SQL: Final = text(
    "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relkind = 'r' AND NOT "
    "c.relispartition AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = "
    "CAST(:parent AS regclass)) AND obj_description(c.oid, 'pg_class') IN (:to_drop, :to_keep) "
    "UNION ALL SELECT i.inhrelid::regclass::text FROM pg_inherits i JOIN pg_class c ON c.oid = "
    "i.inhrelid WHERE i.inhparent = CAST(:parent AS regclass) AND i.inhdetachpending AND "
    "c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = CAST(:parent AS regclass)) "
    "LIMIT 1"
)
_MAINTAINED_SQL: Final = text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND classid = :space "
    "AND objid = CAST(:parent AS regclass)::oid AND objsubid = 1 AND granted)"
)


def unfinished_removal(connection: Connection, events: Table) -> tuple[str, bool] | None:
    """A partition whose removal `drop_partitions` has begun and not recorded yet (detach
    pending, or detached and marked; in ``event_logs``' schema, the one maintenance
    handles), and whether a maintenance run holds the table now."""
    version = connection.dialect.server_version_info
    if version is not None and version < (14,):  # no DETACH ... CONCURRENTLY
        return None
    parent = quoted_name(events)
    found = connection.execute(
        _UNFINISHED_SQL, {"to_drop": _TO_DROP, "to_keep": _TO_KEEP, "parent": parent}
    ).scalar()
    if found is None:
        return None
    running = connection.execute(_MAINTAINED_SQL, {"space": _LOCK_SPACE, "parent": parent})
    return str(found), bool(running.scalar())


def _finish(
    connection: Connection,
    parent: _Parent,
    name: str,
    *,
    audit: bool,
    drop: bool,
    tagged: bool,
    lock_timeout: float | None,
    detach: str | None = None,
) -> int:
    """After its detach: drop the table ``name`` (its foreign keys first, see
    `_drop_foreign_keys`), or keep it (clearing the comment of a table tagged for this run).
    With the audit, in one transaction with a ``retention`` tombstone
    for each of its events (and the plain ``detach`` still to run, if any), so that each is
    recorded exactly once, after it left ``event_logs``. Returns the tombstones written."""
    table = parent.child(name)
    with _lock_timeout(connection, lock_timeout):
        if drop and detach is None:
            _drop_foreign_keys(connection, table)
        if not audit:
            if drop:
                connection.execute(text(f"DROP TABLE {table}"))
            elif tagged:  # kept (after all): no later run may drop it
                connection.execute(text(f"COMMENT ON TABLE {table} IS NULL"))
            return 0
        with _one_transaction(connection):
            if detach is not None:
                connection.execute(text(detach))
            erased = record_retention(connection, parent.schema, name)
            if drop:
                connection.execute(text(f"DROP TABLE {table}"))
            else:
                unguard(connection, parent.schema, name)
                if tagged:
                    connection.execute(text(f"COMMENT ON TABLE {table} IS NULL"))
    return erased


# --- the calendar ----------------------------------------------------------------------------


def period_start(moment: datetime, interval: PartitionInterval) -> datetime:
    """The start of the week (Monday) or month that holds ``moment``, midnight UTC."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(start: datetime, interval: PartitionInterval) -> datetime:
    """The start of the period after the one that starts at ``start``."""
    if interval == "week":
        return start + timedelta(days=7)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def bounded_partitions(connection: Connection, table: str) -> int:
    """How many partitions of ``table`` (quoted, maybe qualified) have both bounds."""
    partitions = _partitions(connection, connection.execute(_OID_SQL, {"name": table}).scalar_one())
    return sum(p.lower is not None and p.upper is not None for p in partitions)


def interval_of_partitions(connection: Connection, table: str) -> PartitionInterval | None:
    """The interval of the newest bounded partition of ``table`` (quoted, maybe qualified):
    ``None`` if it has none, or if that partition is neither a week nor a calendar month."""
    partitions = _partitions(connection, connection.execute(_OID_SQL, {"name": table}).scalar_one())
    if all(p.lower is None or p.upper is None for p in partitions):
        return None
    try:
        return _interval_of(partitions)
    except ConfigurationError:
        return None


def free_ranges(
    connection: Connection, table: str, planned: Sequence[tuple[str, datetime, datetime]]
) -> list[tuple[str, datetime, datetime]]:
    """Of ``planned`` ``(name, from, to)``, those no partition of ``table`` (quoted, maybe
    qualified) holds any of, whatever its name (pg_partman names its own otherwise)."""
    oid = connection.execute(_OID_SQL, {"name": table}).scalar_one()
    taken = [(p.lower, p.upper) for p in _partitions(connection, oid)]
    return [item for item in planned if _gaps(item[1], item[2], taken) == [(item[1], item[2])]]


def _interval_of(partitions: Sequence[PartitionInfo]) -> PartitionInterval:
    """The interval of the newest bounded partition: a week or a month long; else a week."""
    bounded = [
        (p.upper.astimezone(UTC), p.lower.astimezone(UTC), p.name)
        for p in partitions
        if p.lower is not None and p.upper is not None
    ]
    if not bounded:
        return _interval_after_legacy(partitions)
    upper, lower, name = max(bounded)
    if upper - lower == timedelta(days=7):
        return "week"
    if lower.day == 1 and upper == next_period(lower, "month"):
        return "month"
    raise ConfigurationError(
        f"cannot tell the partition interval from the newest partition {name} "
        f"({lower.isoformat()} to {upper.isoformat()}): it is neither a week nor a calendar "
        "month; pass interval='week' or interval='month' (CLI: --interval)"
    )


def _interval_after_legacy(partitions: Sequence[PartitionInfo]) -> PartitionInterval:
    """With no bounded partition: a week, unless a conversion's legacy partition (from
    MINVALUE) ends where only a month starts; refused where both could (a Monday the 1st)."""
    ends = [p.upper.astimezone(UTC) for p in partitions if p.lower is None and p.upper]
    if not ends:
        return "week"
    bound = max(ends)
    weekly = bound == period_start(bound, "week")
    monthly = bound == period_start(bound, "month")
    if monthly and not weekly:
        return "month"
    if weekly and monthly:
        raise ConfigurationError(
            f"cannot tell the partition interval: the only partition ends at "
            f"{bound.isoformat()}, where a week and a month both start (a conversion stopped "
            "before its first partitions); pass interval='week' or interval='month' (CLI: "
            "--interval), the one the conversion was given"
        )
    return "week"


def _gaps(
    start: datetime, end: datetime, taken: Sequence[tuple[datetime | None, datetime | None]]
) -> list[tuple[datetime, datetime]]:
    """The parts of ``[start, end)`` that no range of ``taken`` (``None``: unbounded) holds."""
    pieces = [(start, end)]
    for low, high in taken:
        rest = []
        for a, b in pieces:
            if (high is not None and high <= a) or (low is not None and low >= b):
                rest.append((a, b))
                continue
            if low is not None and low > a:
                rest.append((a, low))
            if high is not None and high < b:
                rest.append((high, b))
        pieces = rest
    return pieces


def _planned(
    now: datetime,
    interval: PartitionInterval,
    ahead: int,
    existing: Sequence[PartitionInfo],
    table_name: str,
) -> list[tuple[str, datetime, datetime]]:
    """``(name, from, to)`` of each partition to create so that the current period and
    ``ahead`` more are covered; ranges that existing partitions hold in part are trimmed."""
    taken = [(p.lower, p.upper) for p in existing if not p.default]
    names = {p.name for p in existing}
    planned = []
    start = period_start(now, interval)
    for _ in range(ahead + 1):
        end = next_period(start, interval)
        for low, high in _gaps(start, end, taken):
            name = f"{table_name}_p{low:%Y%m%d}"
            if name in names:  # a period cut by a partition starting the same day
                name = f"{table_name}_p{low:%Y%m%d_%H%M%S}"
            planned.append((name, low, high))
            names.add(name)
        start = end
    return planned


# --- the API ---------------------------------------------------------------------------------


def _check_seconds(name: str, value: object) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 < value <= 3600
    ):
        raise ConfigurationError(
            f"{name}={value!r} is not valid; use seconds above 0, at most 3600 (e.g. 5), or "
            "None for the session's own setting"
        )


def list_partitions(
    model: type[EventLogMixin[Any]] | Table, bind: Engine | Connection
) -> list[PartitionInfo]:
    """Return the partitions of the partitioned ``event_logs``, oldest first.

    Detached tables (kept by ``drop_partitions(keep_detached=True)``) are no partitions and
    are not listed; a partition whose ``DETACH ... CONCURRENTLY`` was interrupted is, with
    ``detach_pending`` set.

    Args:
        model: The host's ``EventLog`` model class, or a reflected ``event_logs`` Table.
        bind: An ``Engine``, or a ``Connection`` with no transaction begun.

    Raises:
        ConfigurationError: ``bind`` cannot be used, or ``event_logs`` is missing or not
            partitioned.

    .. versionadded:: 0.3.0
    """
    table = event_table(model)
    with _connection(bind) as connection, connection.begin():
        return _partitions(connection, _parent(connection, table).oid, sized=True)


def ensure_partitions(
    model: type[EventLogMixin[Any]] | Table,
    bind: Engine | Connection,
    *,
    ahead: int = DEFAULT_AHEAD,
    interval: PartitionInterval | None = None,
    lock_timeout: float | None = DEFAULT_PARTITION_LOCK_TIMEOUT,
    now: datetime | None = None,
) -> tuple[str, ...]:
    """Create the partition of the current week (or month) and ``ahead`` more, if missing.

    Idempotent, and safe to run from several cron jobs at once: runs on one table take
    turns on an advisory lock, and each creates only what is missing. Each partition is
    created as a plain table and then attached, which locks ``event_logs`` only in SHARE
    UPDATE EXCLUSIVE mode (writes and reads go on), for one short transaction. A period that
    an existing partition holds in part (the legacy partition of a converted table, one you
    made yourself) gets a partition for the rest of it only; a DEFAULT partition is left as
    it is (PostgreSQL scans it for rows of each new partition's range).

    With the audit (revision ``evlaudit_0001``), every partition that lacks the guard's
    statement triggers gets them in the same transaction: the partitions it creates, and
    those another tool created (pg_partman's, say).

    Args:
        model: The host's ``EventLog`` model class, or a reflected ``event_logs`` Table.
        bind: An ``Engine``, or a ``Connection`` with no transaction begun.
        ahead: Partitions after the current one, 0 to 52 (default 4).
        interval: ``"week"`` (weeks start on Monday, UTC) or ``"month"``; default: that of
            the newest partition, else a week.
        lock_timeout: Seconds the transaction waits for its locks (``event_logs`` and, for
            the foreign keys, the tables they reference) before it fails; ``None`` for the
            session's setting. A run that fails is harmless: run it again later.
        now: The instant whose period is current (default: now); for tests and backfills.

    Returns:
        The names of the partitions created, oldest first (none when all existed).

    Raises:
        ConfigurationError: ``bind`` cannot be used, an argument is out of range, or
            ``event_logs`` is missing or not partitioned.
        ValidationError: ``now`` is naive, or outside 0002-01-01 to 9990-12-31 (UTC).

    .. versionadded:: 0.3.0
    """
    if isinstance(ahead, bool) or not isinstance(ahead, int) or not 0 <= ahead <= MAX_AHEAD:
        raise ConfigurationError(
            f"ahead={ahead!r} is not valid; use a whole number from 0 to {MAX_AHEAD} (default "
            f"{DEFAULT_AHEAD}): every partition adds to the cost of cascading deletes and of "
            "planning queries that do not bound created_at"
        )
    if interval is not None and interval not in get_args(PartitionInterval):
        raise ConfigurationError(
            f"interval={interval!r} is not valid; use 'week' or 'month', or None for that of "
            "the newest partition"
        )
    _check_seconds("lock_timeout", lock_timeout)
    if now is not None and (not isinstance(now, datetime) or now.utcoffset() is None):
        raise ValidationError(f"now must be a time-zone aware datetime, got {now!r}")
    if now is not None and not _NOW_RANGE[0] <= now <= _NOW_RANGE[1]:
        raise ValidationError(
            f"now={now.isoformat()} is out of range; pass a time from "
            f"{_NOW_RANGE[0].date()} to {_NOW_RANGE[1].date()} (UTC), or None for the clock"
        )
    table = event_table(model)
    moment = now or datetime.now(UTC)
    with _connection(bind) as connection, connection.begin():
        parent = _parent(connection, table)
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": parent.lock_key})
        if lock_timeout is not None:
            connection.execute(
                text("SELECT set_config('lock_timeout', :value, true)"),
                {"value": f"{max(1, round(lock_timeout * 1000))}ms"},
            )
        existing = _partitions(connection, parent.oid)
        chosen = interval or _interval_of(existing)
        planned = _planned(moment, chosen, ahead, existing, parent.name)
        for name, low, high in planned:
            # LIKE copies the columns with their NOT NULLs, defaults and CHECK constraints
            # (a host's own: ATTACH refuses a table without them); ATTACH adds the primary
            # key, the indexes and the foreign keys of event_logs.
            connection.execute(
                text(
                    f"CREATE TABLE {parent.child(name)} "
                    f"(LIKE {parent.qualified} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
                )
            )
            connection.execute(
                text(
                    f"ALTER TABLE {parent.qualified} ATTACH PARTITION {parent.child(name)} "
                    f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
                )
            )
        if audited(connection, parent.schema):
            # The audit's guard on every partition that lacks it: those just created, and
            # those another tool (pg_partman) created.
            for partition in _partitions(connection, parent.oid):
                if not partition.detach_pending:
                    guard_partition(
                        connection, parent.schema, partition.name, in_schema=partition.schema
                    )
    return tuple(name for name, _, _ in planned)


def _refuse_concurrently_beside_default(
    parent: _Parent, found: Sequence[PartitionInfo], concurrently: bool
) -> None:
    if concurrently and any(p.default for p in found):
        raise ConfigurationError(
            f"{parent.schema}.{parent.name} has a DEFAULT partition, and PostgreSQL "
            "cannot detach a partition concurrently beside one; pass "
            "concurrently=False (CLI: --no-concurrently; a plain DETACH locks the "
            "table for a moment), or move the DEFAULT partition's rows into ranged "
            "partitions and drop it"
        )


def planned_drop(
    model: type[EventLogMixin[Any]] | Table,
    bind: Engine | Connection,
    *,
    older_than: datetime,
    keep_detached: bool = False,
    concurrently: bool = True,
) -> DropResult:
    """What `drop_partitions` with these arguments would do now, doing nothing (the CLI's
    ``--dry-run``); ``erasures`` stays 0. Raises what it would raise before its first change."""
    check_cutoff(older_than, goes="partitions being written would go")
    table = event_table(model)
    dropped: list[str] = []
    detached: list[str] = []
    finalized: list[str] = []
    with _connection(bind, autocommit=True) as connection:
        parent = _parent(connection, table)
        dropped += connection.execute(
            _LEFT_TO_DROP_SQL, {"schema": parent.schema, "comment": _TO_DROP}
        ).scalars()
        if audited(connection, parent.schema):
            detached += connection.execute(
                _LEFT_TO_DROP_SQL, {"schema": parent.schema, "comment": _TO_KEEP}
            ).scalars()
        found = _partitions(connection, parent.oid)
        _refuse_concurrently_beside_default(parent, found, concurrently)
        for partition in _in_its_schema(parent, found):
            old = partition.upper is not None and partition.upper <= older_than
            if partition.detach_pending:
                finalized.append(partition.name)
                marked = _comment(connection, parent.child(partition.name)) == _TO_DROP
                drop = not keep_detached and (old or marked)
            elif old and not partition.default:
                drop = not keep_detached
            else:
                continue
            (dropped if drop else detached).append(partition.name)
        acted_on = [parent.qualified, *map(parent.child, {*dropped, *detached, *finalized})]
        if len(acted_on) > 1:
            _refuse_not_owned(connection, acted_on)
    return DropResult(tuple(dropped), tuple(detached), tuple(finalized))


def _refuse_not_owned(connection: Connection, tables: list[str]) -> None:
    """A dry run refuses what the run would: DETACH and DROP are for the tables' owner."""
    not_owned = (
        connection.execute(
            text(
                "SELECT c.oid::regclass::text FROM pg_class c WHERE c.oid = ANY "
                "(SELECT to_regclass(name) FROM unnest(CAST(:tables AS text[])) AS name) "
                "AND NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1"
            ),
            {"tables": tables},
        )
        .scalars()
        .all()
    )
    if not_owned:
        role = connection.scalar(text("SELECT current_user"))
        raise ConfigurationError(
            f"the role {role!r} does not own {', '.join(not_owned)}: the run would fail "
            '("must be owner of table"); run it as the owner of event_logs (the role that '
            "ran the migrations)"
        )


def drop_partitions(
    model: type[EventLogMixin[Any]] | Table,
    bind: Engine | Connection,
    *,
    older_than: datetime,
    keep_detached: bool = False,
    concurrently: bool = True,
    lock_timeout: float | None = DEFAULT_PARTITION_LOCK_TIMEOUT,
) -> DropResult:
    """Detach, and drop unless kept, every partition whose upper bound is at or before
    ``older_than``: it holds only events older than the cutoff.

    The partition that straddles the cutoff stays; `purge_events` deletes its older events.
    ``DETACH PARTITION ... CONCURRENTLY`` (the default) locks ``event_logs`` only in SHARE
    UPDATE EXCLUSIVE mode, so writes and reads go on, and waits for the transactions that
    use the partition; it runs outside a transaction block, on an autocommit connection. If
    it is interrupted (a cancel, a lost connection), the partition stays in the "detach
    pending" state (`PartitionInfo.detach_pending`), and the next run finishes it first with
    ``DETACH ... FINALIZE``. Runs on one table take turns on an advisory lock.

    On a database with the audit (revision ``evlaudit_0001``), each event of a partition
    detached gets a ``retention`` tombstone (its first-written leaf, as the guard writes
    them), so that `verify_audit` counts it as a legitimate erasure: once the partition is
    out of ``event_logs``, in the transaction that drops it (or keeps it, dropping its guard
    triggers: it is an archive), so each event is recorded exactly once, by this run or, if
    it stops in between, the next. After a ``DETACH ... CONCURRENTLY`` a verification that
    runs before that transaction commits sees the events missing; a plain DETACH runs in that
    transaction. The role needs INSERT on ``event_log_erasures`` (the owner has it).

    On a database with the feed, before a partition is detached (to drop or to keep), every
    consumer part that had not been delivered all its events is marked: its fetches then
    raise `FeedDataLostError` until the consumer is reset. A partition is marked once, even
    when its detach fails and a later run detaches it (a consumer registered or reset in
    between is marked when it claims the events). A consumer registered or reset during the
    run waits for it.

    Args:
        model: The host's ``EventLog`` model class, or a reflected ``event_logs`` Table.
        bind: An ``Engine``, or a ``Connection`` with no transaction begun.
        older_than: Cutoff instant (time-zone aware).
        keep_detached: Detach only, keeping each partition as a table of its own (to archive
            it, e.g. with pg_dump, and drop it yourself).
        concurrently: ``DETACH ... CONCURRENTLY``. ``False``: a plain ``DETACH``, which
            takes an ACCESS EXCLUSIVE lock on ``event_logs`` for a moment (needed when the
            table has a DEFAULT partition, which PostgreSQL cannot detach beside
            concurrently).
        lock_timeout: Seconds a plain DETACH and each DROP wait for their locks before they
            fail; ``None`` for the session's setting. A detached partition's foreign keys
            are dropped first, in a statement of their own: that one locks the tables they
            reference, the ``DROP TABLE`` (which frees the files) only the partition.
            ``DETACH ... CONCURRENTLY`` and ``FINALIZE`` keep the session's setting: their
            waits do not block other sessions.

    Returns:
        The partitions dropped, detached and kept, and those whose detach was finished.

    Raises:
        ConfigurationError: ``bind`` cannot be used, an argument is not valid, or
            ``event_logs`` is missing, not partitioned, or has a DEFAULT partition while
            ``concurrently`` is set.
        ValidationError: ``older_than`` is not a time-zone aware datetime, or is in the
            future (the partitions being written would go; ``datetime.now(UTC)`` is taken).
        sqlalchemy.exc.DBAPIError: The database failed a step (a lock timeout, a cancel, a
            lost connection). What was done stays done; a detach left pending, or a
            partition detached to be dropped but not dropped (it is marked with a
            comment), is finished by the next run.

    .. versionadded:: 0.3.0
    """
    check_cutoff(older_than, goes="partitions being written would go")
    for name, flag in (("keep_detached", keep_detached), ("concurrently", concurrently)):
        if not isinstance(flag, bool):
            raise ConfigurationError(f"{name} must be True or False, got {flag!r}")
    _check_seconds("lock_timeout", lock_timeout)
    table = event_table(model)
    dropped: list[str] = []
    detached: list[str] = []
    finalized: list[str] = []
    behind: set[str] = set()  # consumers marked
    erased = 0
    with _connection(bind, autocommit=True) as connection:
        parent = _parent(connection, table)
        consumers = feed_consumers(connection, table)
        audit = audited(connection, parent.schema)
        with _advisory_lock(connection, parent), _retaining(connection, consumers):
            found = _partitions(connection, parent.oid)
            _refuse_concurrently_beside_default(parent, found, concurrently)
            found = _in_its_schema(parent, found)
            # Detached by an earlier run that could not drop them (audit: nor record them).
            for name in connection.execute(
                _LEFT_TO_DROP_SQL, {"schema": parent.schema, "comment": _TO_DROP}
            ).scalars():
                erased += _finish(
                    connection,
                    parent,
                    name,
                    audit=audit,
                    drop=True,
                    tagged=True,
                    lock_timeout=lock_timeout,
                )
                dropped.append(name)
            if audit:
                # Detached to be kept by an earlier run that could not record them.
                for name in connection.execute(
                    _LEFT_TO_DROP_SQL, {"schema": parent.schema, "comment": _TO_KEEP}
                ).scalars():
                    erased += _finish(
                        connection,
                        parent,
                        name,
                        audit=audit,
                        drop=False,
                        tagged=True,
                        lock_timeout=lock_timeout,
                    )
                    detached.append(name)
            for partition in found:
                old = partition.upper is not None and partition.upper <= older_than
                marked = tagged = False
                detach = None  # a plain DETACH left for the audit's transaction
                if partition.detach_pending:
                    comment = _comment(connection, parent.child(partition.name))
                    marked = comment == _TO_DROP
                    tagged = comment in (_TO_DROP, _TO_KEEP)
                    if audit and not tagged:
                        # Its events are recorded after the FINALIZE; the comment lets the
                        # next run record them if this one stops in between.
                        connection.execute(
                            text(f"COMMENT ON TABLE {parent.child(partition.name)} IS '{_TO_KEEP}'")
                        )
                        tagged = True
                    connection.execute(
                        text(
                            f"ALTER TABLE {parent.qualified} DETACH PARTITION "
                            f"{parent.child(partition.name)} FINALIZE"
                        )
                    )
                    finalized.append(partition.name)
                elif old and not partition.default:
                    if consumers is not None:
                        behind.update(
                            _mark_consumers(
                                connection,
                                parent,
                                partition,
                                consumers,
                                keep=keep_detached,
                                lock_timeout=lock_timeout,
                            )
                        )
                        tagged = keep_detached
                    elif not keep_detached:
                        # Without the feed there is no audit either (evlaudit_0001 depends
                        # on evlfeed_0001), so only a table to drop needs the comment.
                        connection.execute(
                            text(f"COMMENT ON TABLE {parent.child(partition.name)} IS '{_TO_DROP}'")
                        )
                    elif _comment(connection, parent.child(partition.name)) == _TO_DROP:
                        # An earlier run marked it to be dropped and failed before its
                        # detach; kept now, so no later run may finish that drop.
                        connection.execute(
                            text(f"COMMENT ON TABLE {parent.child(partition.name)} IS NULL")
                        )
                    detach = (
                        f"ALTER TABLE {parent.qualified} DETACH PARTITION "
                        f"{parent.child(partition.name)}"
                    )
                    if concurrently or not audit:
                        # CONCURRENTLY cannot run in a transaction block.
                        timeout = None if concurrently else lock_timeout
                        how = " CONCURRENTLY" if concurrently else ""
                        with _lock_timeout(connection, timeout):
                            connection.execute(text(detach + how))
                        detach = None
                else:
                    continue
                drop = not keep_detached and (old or marked)
                erased += _finish(
                    connection,
                    parent,
                    partition.name,
                    audit=audit,
                    drop=drop,
                    tagged=tagged,
                    lock_timeout=lock_timeout,
                    detach=detach,
                )
                (dropped if drop else detached).append(partition.name)
    if behind:
        logger.warning(
            "drop_partitions removed events that feed consumers %s had not been delivered "
            "yet; their fetches raise FeedDataLostError until they are reset (see "
            "'eventlog-persist feed status')",
            ", ".join(repr(name) for name in sorted(behind)),
        )
    return DropResult(tuple(dropped), tuple(detached), tuple(finalized), erased)
