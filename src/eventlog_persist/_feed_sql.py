"""What both feeds build: snapshots, checkpoints, batch plans and their statements.

A batch is PgQ's: the events whose transaction is finished in the batch's target snapshot
and was not in the consumer's last completed one (``snapshot_done``). Both sets are known
from the two snapshots alone, so no event of a transaction that was in flight is skipped,
whatever the order transactions commit in:

* the transactions ``snapshot_done`` saw in flight (its ``xip``) that the target sees
  finished: looked up by ``xid = ANY(...)``;
* every transaction from ``snapshot_done``'s ``xmax`` up to the target's: an index range
  ``xmax(done) <= xid < xmax(target)``, filtered by ``pg_visible_in_snapshot``.

Both bounds are parameters, so the ``(xid, id)`` index serves the range, in ``(xid, id)``
order, which also orders a batch and pages through it (``(xid, id) > (after_xid, after_id)``).
Ordering and comparisons use ``xid8`` (and Python ints), never text: as text, ``10000``
sorts before ``9999``.
"""

from __future__ import annotations

import re
import shlex
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Concatenate, Final, Literal, ParamSpec, TypeAlias, TypeVar

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    CompoundSelect,
    DateTime,
    Delete,
    Insert,
    Integer,
    Interval,
    Select,
    SmallInteger,
    String,
    Table,
    Text,
    Update,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    null,
    or_,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert

from eventlog_persist._feed_schema import OWNER_LENGTH, PgSnapshot, Xid8, consumers_table
from eventlog_persist._model import EventLogMixin
from eventlog_persist._read_sql import event_table, record_columns
from eventlog_persist._read_types import EventRecord, event_records
from eventlog_persist._schema import CONSUMER_NAME_LENGTH, XID_COLUMN
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EARLIEST",
    "MAX_BATCH_SIZE",
    "Checkpoint",
    "FeedMode",
    "FeedStart",
    "FeedStatements",
    "PagePlan",
    "PageScope",
    "Snapshot",
    "check_consumer",
    "check_lease",
    "check_limit",
    "check_mode",
    "check_owner",
    "check_parts",
    "check_start",
    "consumer_option",
    "horizon_target",
    "plan_page",
    "records",
    "register_values",
    "session_part",
    "since_snapshot",
]

FeedMode: TypeAlias = Literal["snapshot", "horizon"]
"""How a feed picks a batch's target snapshot: the current one, or the horizon below it."""
PageScope: TypeAlias = Literal["all", "session", "session_owner", "project", "project_owner"]
"""Which events a page reads: all, or one session's (or project's), maybe of one user only
(parameters ``scope_key`` and ``owner``)."""
FeedStart: TypeAlias = Literal["earliest", "latest"] | datetime
"""Where a new consumer starts: every stored event, only events committed from now on, or
the events from a time on."""

DEFAULT_BATCH_SIZE: Final = 500
MAX_BATCH_SIZE: Final = 10_000
MAX_PARTS: Final = 1024
_MAX_LEASE: Final = 24 * 3600.0
_MIN_LEASE: Final = 0.001  # shorter, a lease would end before the statement that takes it
_UNSENDABLE: Final = re.compile(r"[\x00\ud800-\udfff]")
# backfill_since of a consumer that takes every pre-feed row, whatever its created_at; NULL
# means no pre-feed row is pending. Python has no -infinity, so the value travels as text.
_MINUS_INFINITY: Final = "-infinity"


def _timestamp_text(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value


def _timestamp(name: str) -> ColumnElement[Any]:
    """A ``timestamptz`` parameter sent as text, so that it may be ``-infinity``."""
    return cast(bindparam(name, type_=String()), DateTime(timezone=True))


# --- snapshots ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A ``pg_snapshot``: transactions below ``xmin`` finished, from ``xmax`` on not yet
    started, ``xip`` in progress (sorted)."""

    xmin: int
    xmax: int
    xip: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Snapshot:
        """Read the text form ``xmin:xmax:xip1,xip2,...``."""
        xmin, xmax, xip = text.split(":")
        return cls(int(xmin), int(xmax), tuple(sorted(int(x) for x in xip.split(",") if x)))

    def __str__(self) -> str:
        return f"{self.xmin}:{self.xmax}:{','.join(map(str, self.xip))}"

    def visible(self, xid: int) -> bool:
        """Whether transaction ``xid`` is finished in this snapshot (``pg_visible_in_snapshot``)."""
        return xid < self.xmax and xid not in self.xip


EARLIEST: Final = Snapshot(1, 1)
"""A snapshot in which no transaction is finished: from it, every event is pending."""


def _of_visible(xmax: int, running: Sequence[int]) -> Snapshot:
    """The snapshot in which every transaction below ``xmax`` is finished but ``running``."""
    xip = tuple(sorted(x for x in running if x < xmax))
    return Snapshot(xip[0] if xip else xmax, xmax, xip)


def horizon_target(done: Snapshot, current: Snapshot) -> Snapshot:
    """The horizon mode's target: finished in ``done``, or below ``current``'s xmin.

    Below the xmin of the current snapshot every transaction is finished, and no transaction
    can ever start there again. Whatever ``done`` saw finished stays so (a consumer switched
    from snapshot mode keeps its progress).
    """
    horizon = current.xmin
    return _of_visible(max(done.xmax, horizon), [x for x in done.xip if x >= horizon])


def since_snapshot(first_xid: int | None, current: Snapshot) -> Snapshot:
    """The ``snapshot_done`` of a consumer that starts at a time.

    ``first_xid`` is the smallest transaction id among events created at or after that
    time, read in ``current``: everything from it on is pending, and so is every transaction
    in flight in ``current`` (its events were not visible to that read).
    """
    if first_xid is None:
        return current
    return _of_visible(min(first_xid, current.xmax), current.xip)


# --- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A consumer's position, as its row in ``event_log_consumers`` holds it.

    Attributes:
        done: Every event visible in this snapshot was delivered.
        target: The batch in progress (its pages so far were delivered), or None.
        after: The last event delivered of the batch in progress: ``(xid, id)``.
        backfill: Rows stored before the feed (``xid`` NULL) are still to be delivered.
        backfill_since: Only those created at or after this time (None: all of them).
        backfill_after: The last of them delivered, by id.
    """

    done: Snapshot
    target: Snapshot | None = None
    after: tuple[int, uuid.UUID] | None = None
    backfill: bool = False
    backfill_since: datetime | None = None
    backfill_after: uuid.UUID | None = None

    def values(self) -> dict[str, Any]:
        """The checkpoint's columns, for the commit statement."""
        since = None
        if self.backfill:
            since = _MINUS_INFINITY if self.backfill_since is None else self.backfill_since
        return {
            "snapshot_done": str(self.done),
            "snapshot_target": None if self.target is None else str(self.target),
            "after_xid": None if self.after is None else self.after[0],
            "after_id": None if self.after is None else self.after[1],
            "backfill_since": _timestamp_text(since),
            "backfill_after": self.backfill_after,
        }


@dataclass(frozen=True, slots=True)
class PagePlan:
    """One page to read: its statement's parameters and what the checkpoint becomes.

    ``target`` is the batch's target snapshot (for pre-feed rows, which have none, the
    consumer's ``done``, unused).
    """

    kind: Literal["backfill", "range"]
    start: Checkpoint
    target: Snapshot
    late: tuple[int, ...]
    params: dict[str, Any]
    limit: int

    @property
    def shape(self) -> tuple[str, ...]:
        """Which variant of the page statement the parameters belong to."""
        if self.kind == "backfill":
            return (
                "backfill",
                "since" if self.start.backfill_since is not None else "all",
                "after" if self.start.backfill_after is not None else "first",
            )
        return (
            "range",
            "late" if self.late else "plain",
            "after" if self.start.after is not None else "first",
        )

    def next_checkpoint(self, rows: Sequence[Sequence[Any]]) -> Checkpoint:
        """Where the consumer stands once the page's rows (last column: ``xid``) are done."""
        start = self.start
        full = len(rows) >= self.limit
        if self.kind == "backfill":
            if full:
                return replace(start, backfill_after=rows[-1][0])
            return replace(start, backfill=False, backfill_since=None, backfill_after=None)
        if full:
            last = rows[-1]
            return replace(start, target=self.target, after=(int(last[-1]), last[0]))
        return replace(start, done=self.target, target=None, after=None)


def plan_page(start: Checkpoint, current: Snapshot, *, mode: FeedMode, limit: int) -> PagePlan:
    """The next page of a consumer at ``start``, ``current`` being the snapshot of now."""
    if start.backfill:
        params: dict[str, Any] = {"limit": limit}
        if start.backfill_since is not None:
            params["since"] = start.backfill_since
        if start.backfill_after is not None:
            params["after_id"] = start.backfill_after
        return PagePlan("backfill", start, start.done, (), params, limit)
    target = start.target
    if target is None:
        target = current if mode == "snapshot" else horizon_target(start.done, current)
    done = start.done
    late = tuple(x for x in done.xip if target.visible(x))
    params = {"low": done.xmax, "high": target.xmax, "target": str(target), "limit": limit}
    if late:
        params["late"] = list(late)
    if start.after is not None:
        params["after_xid"], params["after_id"] = start.after
    return PagePlan("range", start, target, late, params, limit)


# --- argument checks ------------------------------------------------------------------------


def consumer_option(name: str) -> str:
    """``--consumer NAME`` as a shell takes it in a command the messages give (``=`` before a
    name that begins with ``-``, which argparse would read as an option)."""
    quoted = shlex.quote(name)
    return f"--consumer={quoted}" if name.startswith("-") else f"--consumer {quoted}"


def check_consumer(consumer: object) -> str:
    """The consumer's name, or `ValidationError` naming what is wrong with it."""
    if not isinstance(consumer, str) or not consumer.strip():
        raise ValidationError(
            f"consumer must be a non-empty name (str), got {consumer!r}; e.g. consumer='warehouse'"
        )
    if len(consumer) > CONSUMER_NAME_LENGTH or _UNSENDABLE.search(consumer):
        raise ValidationError(
            f"consumer={consumer[:40]!r}... is not a usable name: at most "
            f"{CONSUMER_NAME_LENGTH} characters, without NUL or lone surrogates"
        )
    return consumer


def check_owner(owner: object) -> str:
    """The lease owner's name, or `ConfigurationError`."""
    if (
        not isinstance(owner, str)
        or not owner.strip()
        or len(owner) > OWNER_LENGTH
        or _UNSENDABLE.search(owner)
    ):
        raise ConfigurationError(
            f"owner must be a non-empty str of at most {OWNER_LENGTH} characters naming this "
            f"worker (default: host, pid and a random part), got {owner!r}"
        )
    return owner


def check_lease(lease: object) -> timedelta:
    """The lease duration in seconds as a ``timedelta``, or `ConfigurationError`."""
    if (
        isinstance(lease, bool)
        or not isinstance(lease, (int, float))
        or not (_MIN_LEASE <= lease <= _MAX_LEASE)
    ):
        raise ConfigurationError(
            f"lease must be a number of seconds from {_MIN_LEASE:g} to {_MAX_LEASE:g} (a day), "
            f"got {lease!r}; it bounds how long a crashed worker keeps others waiting"
        )
    return timedelta(seconds=float(lease))


def check_mode(mode: object) -> FeedMode:
    """``"snapshot"`` or ``"horizon"``, or `ConfigurationError`."""
    if mode not in ("snapshot", "horizon"):
        raise ConfigurationError(
            f"mode must be 'snapshot' (batches never wait for a long transaction) or "
            f"'horizon' (strictly below every transaction still running), got {mode!r}"
        )
    return mode


def session_part(
    session_id: ColumnElement[Any], parts: int | ColumnElement[Any]
) -> ColumnElement[Any]:
    """The part, 0 to ``parts - 1``, that the events of ``session_id`` belong to (SQL);
    ``parts`` a number or a column (a consumer row's ``parts``)."""
    hashed = func.hashtextextended(
        cast(session_id, Text()), literal(0, BigInteger()), type_=BigInteger()
    )
    count = literal(parts, BigInteger()) if isinstance(parts, int) else cast(parts, BigInteger())
    return (hashed % count + count) % count


def check_parts(parts: object, part: object) -> tuple[int, int | None]:
    """The number of parts and the part this worker sticks to (None: any free one), or
    `ConfigurationError`."""
    if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= MAX_PARTS:
        raise ConfigurationError(
            f"parts must be an int from 1 to {MAX_PARTS} (how many workers may consume the "
            f"consumer at once, each with the sessions of one part), got {parts!r}"
        )
    if part is None:
        return parts, None
    if isinstance(part, bool) or not isinstance(part, int) or not 0 <= part < parts:
        raise ConfigurationError(
            f"part must be None (take any free part) or an int from 0 to {parts - 1} "
            f"(parts={parts}), got {part!r}"
        )
    return parts, part


def check_limit(limit: object) -> int:
    """A batch size from 1 to `MAX_BATCH_SIZE`, or `ValidationError`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BATCH_SIZE:
        raise ValidationError(
            f"limit must be an int from 1 to {MAX_BATCH_SIZE} (events per batch), got {limit!r}"
        )
    return limit


def check_start(start: object) -> FeedStart:
    """``"earliest"``, ``"latest"`` or an aware datetime, or `ValidationError`."""
    if isinstance(start, datetime):
        if start.tzinfo is None or start.utcoffset() is None:
            raise ValidationError(
                f"start={start.isoformat()} is a naive datetime, which PostgreSQL would read "
                "in the session's time zone; pass an aware one, e.g. datetime.now(UTC)"
            )
        return start
    if start not in ("earliest", "latest"):
        raise ValidationError(
            f"start must be 'earliest' (every stored event), 'latest' (events committed from "
            f"now on) or an aware datetime (events from that time on), got {start!r}"
        )
    return start


# --- statements -----------------------------------------------------------------------------

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _once(
    build: Callable[Concatenate[FeedStatements, _P], _R],
) -> Callable[Concatenate[FeedStatements, _P], _R]:
    """Build a statement once per arguments: a fetch runs several, and building one (not
    compiling it: SQLAlchemy caches that) cost a third of an empty fetch's CPU."""

    def built(self: FeedStatements, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        key = (build.__name__, *args, *sorted(kwargs.items()))
        found = self._built.get(key)
        if found is None:
            found = self._built[key] = build(self, *args, **kwargs)
        return typing.cast("_R", found)

    return built


class FeedStatements:
    """The statements of one model's feed: its ``event_logs`` and ``event_log_consumers``.

    Raises:
        ConfigurationError: The model did not opt in to the feed.
    """

    __slots__ = ("_built", "_pages", "consumers", "parts", "table")

    def __init__(self, model: type[EventLogMixin[Any]], *, parts: int = 1) -> None:
        table = event_table(model)
        if XID_COLUMN not in table.c:
            raise ConfigurationError(
                f"{getattr(model, '__name__', model)!r} has no {XID_COLUMN} column: the feed "
                "needs a model that opted in, event_log_model(Base, feed=True) or "
                "__eventlog_feed__ = True, on a database migrated by the feed's revision "
                "evlfeed_0001 (see docs/feed.md)"
            )
        self.table = table
        self.consumers: Table = consumers_table(table.metadata, schema=table.schema)
        self.parts = parts
        self._pages: dict[tuple[str, ...], Select[Any] | CompoundSelect[Any]] = {}
        self._built: dict[tuple[Any, ...], Any] = {}

    # Rows: the record's fields in order, then xid (the range pages' keyset).
    def page(self, plan: PagePlan, scope: PageScope = "all") -> Select[Any] | CompoundSelect[Any]:
        """The statement of a page (built once per shape and scope)."""
        shape = (*plan.shape, scope)
        statement = self._pages.get(shape)
        if statement is None:
            statement = self._build_page(shape)
            self._pages[shape] = statement
        return statement

    def part_of(self) -> ColumnElement[Any]:
        """The part of the consumer an event belongs to: a hash of its session, 0 to parts-1.

        ``hashtextextended`` of the key as text is what hash partitioning uses, so it stays
        the same across PostgreSQL versions and upgrades; text makes UUID and integer keys
        alike. The modulo is made non-negative (the hash is a signed bigint).
        """
        return session_part(self.table.c.session_id, self.parts)

    def _build_page(self, shape: tuple[str, ...]) -> Select[Any] | CompoundSelect[Any]:
        c = self.table.c
        columns = [*record_columns(self.table), c.xid]
        limit = bindparam("limit", type_=Integer())
        # Every page of a consumer in parts reads its own part's sessions only.
        mine: list[ColumnElement[bool]] = []
        if self.parts > 1:
            mine.append(self.part_of() == bindparam("the_part", type_=BigInteger()))
        scope = shape[3]
        if scope.startswith("session"):
            mine.append(c.session_id == bindparam("scope_key", type_=c.session_id.type))
        elif scope.startswith("project"):
            mine.append(c.project_id == bindparam("scope_key", type_=c.project_id.type))
        if scope.endswith("_owner"):
            mine.append(c.user_id == bindparam("owner", type_=c.user_id.type))
        if shape[0] == "backfill":
            conditions: list[ColumnElement[bool]] = [c.xid.is_(None), *mine]
            if shape[1] == "since":
                conditions.append(c.created_at >= bindparam("since", type_=c.created_at.type))
            if shape[2] == "after":
                conditions.append(c.id > bindparam("after_id", type_=c.id.type))
            return select(*columns).where(*conditions).order_by(c.id).limit(limit)
        after: list[ColumnElement[bool]] = []
        if shape[2] == "after":
            after.append(
                tuple_(c.xid, c.id)
                > tuple_(
                    bindparam("after_xid", type_=Xid8()), bindparam("after_id", type_=c.id.type)
                )
            )
        in_range = (
            select(*columns)
            .where(
                c.xid >= bindparam("low", type_=Xid8()),
                c.xid < bindparam("high", type_=Xid8()),
                func.pg_visible_in_snapshot(c.xid, bindparam("target", type_=PgSnapshot())),
                *mine,
                *after,
            )
            .order_by(c.xid, c.id)
            .limit(limit)
        )
        if shape[1] == "plain":
            return in_range
        # Transactions the last snapshot saw in flight, finished now: all below the range.
        late = (
            select(*columns)
            .where(c.xid.in_(bindparam("late", expanding=True, type_=Xid8())), *mine, *after)
            .order_by(c.xid, c.id)
            .limit(limit)
        )
        both = union_all(late, in_range).subquery("batch")
        return select(*both.c).order_by(both.c.xid, both.c.id).limit(limit)

    @_once
    def lease(self, *, fixed: bool) -> Update:
        """Take or renew the lease of a part; returns the part, its checkpoint, the
        snapshot of now and what retention removed before it was delivered (``lost_*``).

        The part is ``part`` when ``fixed``; else the one this owner holds (the lowest if
        several), or else the lowest free one (never leased, released, or its lease ended);
        either way a part that retention left behind (``lost_events``) only when no other
        is free, so that it does not keep a worker from the parts that can go on.
        Rows that another transaction is leasing at this moment are skipped. Only a part of
        a consumer registered with this many parts is taken. A new owner bumps the
        generation (the fencing token); the same owner keeps it. The snapshot is the
        statement's own, taken before this transaction has an id.
        """
        t = self.consumers
        me = bindparam("me", type_=t.c.owner.type)
        name = bindparam("name", type_=t.c.consumer.type)
        free = or_(t.c.owner.is_(None), t.c.owner == me, t.c.lease_until < func.now())
        pick = select(t.c.part).where(
            t.c.consumer == name, t.c.parts == literal(self.parts, SmallInteger()), free
        )
        if fixed:
            pick = pick.where(t.c.part == bindparam("the_part", type_=SmallInteger()))
        pick = (
            pick.order_by(
                t.c.lost_events.is_(None).desc(),
                t.c.owner.is_not_distinct_from(me).desc(),
                t.c.part,
            )
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        return (
            update(t)
            .where(t.c.consumer == name, t.c.part == pick.scalar_subquery(), free)
            .values(
                generation=case(
                    (t.c.owner.is_distinct_from(me), t.c.generation + 1), else_=t.c.generation
                ),
                owner=me,
                lease_until=func.now() + bindparam("lease", type_=Interval()),
            )
            .returning(
                t.c.part,
                t.c.generation,
                t.c.snapshot_done,
                t.c.snapshot_target,
                t.c.after_xid,
                t.c.after_id,
                t.c.backfill_since.is_not(None).label("backfill"),
                case((func.isfinite(t.c.backfill_since), t.c.backfill_since), else_=null()).label(
                    "since"
                ),
                t.c.backfill_after,
                func.pg_current_snapshot(type_=PgSnapshot()).label("now"),
                t.c.lost_events,
                t.c.lost_before,
                t.c.lost_at,
                t.c.lost_by,
            )
        )

    @_once
    def holder(self) -> Select[Any]:
        """Who holds the lease of each part of the consumer now, its generation, and whether
        the lease is live (not ended)."""
        t = self.consumers
        return (
            select(
                t.c.owner,
                t.c.lease_until,
                t.c.generation,
                t.c.part,
                t.c.parts,
                func.coalesce(t.c.lease_until > func.now(), False).label("live"),
            )
            .where(t.c.consumer == bindparam("name", type_=t.c.consumer.type))
            .order_by(t.c.part)
        )

    @_once
    def registration_lock(self) -> Select[Any]:
        """Wait for any other registration of the consumer to commit (a lock until this
        transaction ends), so that check-then-insert registers one shape of parts."""
        name = bindparam("name", type_=self.consumers.c.consumer.type)
        key = func.hashtextextended(literal("eventlog_persist feed registration ") + name, 0)
        return select(func.pg_advisory_xact_lock(key))

    @_once
    def registered_parts(self) -> Select[Any]:
        """How many parts the consumer was registered with (no row: not registered)."""
        t = self.consumers
        return (
            select(t.c.parts)
            .where(t.c.consumer == bindparam("name", type_=t.c.consumer.type))
            .limit(1)
        )

    @_once
    def commit(self) -> Update:
        """Move the checkpoint, fenced: only the owner of the batch's generation can, and
        only from where the batch started (``start_*``, `Checkpoint.values`): a batch
        committed again, or after a later one, moves nothing."""
        t = self.consumers

        def snapshot(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
            # pg_snapshot has no equality operator: compare the texts PostgreSQL prints.
            given = cast(bindparam(name, type_=PgSnapshot()), Text())
            return cast(column, Text()).is_not_distinct_from(given)

        return (
            update(t)
            .where(
                t.c.consumer == bindparam("name", type_=t.c.consumer.type),
                t.c.part == bindparam("the_part", type_=SmallInteger()),
                t.c.owner == bindparam("me", type_=t.c.owner.type),
                t.c.generation == bindparam("gen", type_=t.c.generation.type),
                snapshot(t.c.snapshot_done, "start_snapshot_done"),
                snapshot(t.c.snapshot_target, "start_snapshot_target"),
                t.c.after_xid.is_not_distinct_from(bindparam("start_after_xid", type_=Xid8())),
                t.c.after_id.is_not_distinct_from(
                    bindparam("start_after_id", type_=t.c.after_id.type)
                ),
                t.c.backfill_since.is_not_distinct_from(_timestamp("start_backfill_since")),
                t.c.backfill_after.is_not_distinct_from(
                    bindparam("start_backfill_after", type_=t.c.backfill_after.type)
                ),
            )
            .values(
                snapshot_done=bindparam("snapshot_done", type_=PgSnapshot()),
                snapshot_target=bindparam("snapshot_target", type_=PgSnapshot()),
                after_xid=bindparam("after_xid", type_=Xid8()),
                after_id=bindparam("after_id", type_=t.c.after_id.type),
                backfill_since=_timestamp("backfill_since"),
                backfill_after=bindparam("backfill_after", type_=t.c.backfill_after.type),
                delivered=t.c.delivered + bindparam("count", type_=t.c.delivered.type),
                # The statement's time, not the transaction's: a commit in the host's
                # transaction (``connection=``) renews the lease from when it ran.
                committed_at=func.statement_timestamp(),
                lease_until=func.statement_timestamp() + bindparam("lease", type_=Interval()),
            )
        )

    @_once
    def release(self) -> Update:
        """Give up the leases this owner holds (they stay with nobody until a worker fetches)."""
        t = self.consumers
        return (
            update(t)
            .where(
                t.c.consumer == bindparam("name", type_=t.c.consumer.type),
                t.c.owner == bindparam("me", type_=t.c.owner.type),
            )
            .values(owner=None, lease_until=None)
        )

    @_once
    def now(self) -> Select[Any]:
        """The snapshot of now."""
        return select(func.pg_current_snapshot(type_=PgSnapshot()))

    @_once
    def first_xid_since(self) -> Select[Any, Any]:
        """The smallest transaction id of an event created at or after ``since``, and the
        snapshot that read it."""
        c = self.table.c
        return select(
            func.min(c.xid).label("first"), func.pg_current_snapshot(type_=PgSnapshot())
        ).where(c.created_at >= bindparam("since", type_=c.created_at.type))

    @_once
    def register(self, start: Literal["earliest", "latest", "since"]) -> Insert:
        """Insert the consumer's rows, one per part, unless they exist; RETURNING rows when
        they were created (every part starts at the same checkpoint).

        Parameters: ``name``; ``done`` unless ``latest`` (which takes the statement's own
        snapshot); ``backfill_since`` unless ``latest`` (`register_values`).
        """
        t = self.consumers
        done: ColumnElement[Any]
        if start == "latest":
            done = func.pg_current_snapshot(type_=PgSnapshot())
        else:
            done = bindparam("done", type_=PgSnapshot())
        series = (
            func.generate_series(0, self.parts - 1, type_=SmallInteger())
            .table_valued("n")
            .render_derived()
        )
        values: dict[str, ColumnElement[Any]] = {
            "consumer": bindparam("name", type_=t.c.consumer.type),
            "part": cast(series.c.n, SmallInteger()),
            "parts": literal(self.parts, SmallInteger()),
            "snapshot_done": done,
        }
        if start != "latest":
            values["backfill_since"] = _timestamp("backfill_since")
        rows = select(*(value.label(key) for key, value in values.items())).select_from(series)
        return (
            pg_insert(t)
            .from_select(list(values), rows)
            .on_conflict_do_nothing(index_elements=[t.c.consumer, t.c.part])
            .returning(t.c.consumer)
        )

    @_once
    def unregister(self) -> Delete:
        """Remove the consumer's row: its checkpoint and lease."""
        t = self.consumers
        return delete(t).where(t.c.consumer == bindparam("name", type_=t.c.consumer.type))


def records(rows: Sequence[Sequence[Any]]) -> tuple[EventRecord[Any], ...]:
    """The events of a page's rows (the last column, ``xid``, left out)."""
    return event_records(row[:-1] for row in rows)


def register_values(start: FeedStart, done: Snapshot | None) -> dict[str, Any]:
    """The parameters of `FeedStatements.register` besides the name."""
    if start == "latest":
        return {}
    since = start if isinstance(start, datetime) else _MINUS_INFINITY
    return {"done": str(done), "backfill_since": _timestamp_text(since)}
