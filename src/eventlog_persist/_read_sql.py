"""How the readers' SQL is built: timelines, counts, buckets and token sums, keyset conditions,
and the per-table cache of compiled driver SQL. Shared by the sync and the async reader."""

from __future__ import annotations

import functools
import json
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, Literal, get_args

from sqlalchemy import (
    ARRAY,
    BindParameter,
    ColumnElement,
    CompoundSelect,
    DateTime,
    Dialect,
    FromClause,
    Integer,
    Interval,
    Numeric,
    Select,
    String,
    Table,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    or_,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.dialects.postgresql import JSONB

from eventlog_persist._cursor import decode_cursor, encode_cursor
from eventlog_persist._genai import INPUT_TOKENS, OUTPUT_TOKENS, REQUEST_MODEL, RESPONSE_MODEL
from eventlog_persist._ids import ID_TIME_WINDOW, id_time
from eventlog_persist._model import EventLogMixin
from eventlog_persist._read_types import (
    ANY_ERROR,
    UNSCOPED,
    CalendarUnit,
    CountField,
    EventFilter,
    Order,
    Page,
    TokenGroup,
    check_range,
    event_records,
    instant_key,
)
from eventlog_persist._schema import CREATED_AT_MAX, CREATED_AT_MIN
from eventlog_persist._table import COLUMNS, check_key_fits, key_sql_type
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "PreparedQuery",
    "TimelineQuery",
    "bucket_query",
    "check_key",
    "count_query",
    "event_query",
    "event_table",
    "record_columns",
    "timeline_query",
    "token_usage_query",
    "total_query",
]

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 1000
"""The most events one timeline page holds (``limit=``)."""
MAX_OFFSET: Final = 10_000
"""The largest ``offset=`` a timeline takes: an offset reads and discards every event before
the page, so deeper pages are read with cursors, whose cost does not grow with depth."""

# The key columns a timeline or an aggregate can be narrowed to, and their shape tokens.
_NARROWINGS: Final = {
    "user_id": "user",
    "project_id": "project",
    "agent_id": "agent",
    "session_id": "session",
}


# date_bin buckets line up with this instant: a Monday at midnight UTC, so 7-day buckets are weeks.
_BIN_ORIGIN: Final = datetime.fromisoformat("2001-01-01T00:00:00+00:00")
# Longer buckets put a bin's start before what a timestamp holds (4714 BC): an error from
# date_bin. A thousand years is more than any chart needs; one total is a count.
_MAX_BUCKET: Final = timedelta(days=365_250)
# IANA zones with daylight saving whose names PostgreSQL reads first as the abbreviations of
# its default set, fixed offsets (date_trunc('day', t, 'CET') cuts at 23:00 UTC in July),
# and a region to pass instead.
_ABBREVIATED_ZONES: Final = {
    "CET": "Europe/Paris",
    "MET": "Europe/Paris",
    "EET": "Europe/Athens",
    "WET": "Europe/Lisbon",
}


_NO_FILTER: Final = EventFilter()


def event_table(model: type[EventLogMixin[Any]] | Table) -> Table:
    """Return the ``event_logs`` table of a host's ``EventLog`` model (or the table itself).

    Raises:
        ConfigurationError: ``model`` is not a mapped ``EventLogMixin`` class or a ``Table``
            with the event log's columns.
    """
    table = model if isinstance(model, Table) else getattr(model, "__table__", None)
    if not isinstance(table, Table) or not set(COLUMNS) <= set(table.c.keys()):
        raise ConfigurationError(
            f"expected the host's EventLog model class (built with event_log_model() or "
            f"EventLogMixin) or the event_logs Table, got {model!r}"
        )
    return table


def check_key(table: Table, name: str, value: object) -> None:
    """Raise `ValidationError` unless ``value`` fits the key column ``name`` of ``table``.

    An int for a UUID column (or the reverse) would otherwise reach the database and come
    back as the driver's "operator does not exist" error.
    """
    sql_type = key_sql_type(table.c[name].type)
    if isinstance(value, bool) or not isinstance(value, (uuid.UUID, int)):
        convert = "uuid.UUID(...)" if sql_type == "uuid" else "int(...)"
        raise ValidationError(
            f"{name} must be a uuid.UUID or an int (the host's primary-key type), got "
            f"{type(value).__name__} {value!r}"
            + (f"; convert it with {convert}" if isinstance(value, str) else "")
        )
    check_key_fits(name, sql_type, value)


# Times are returned within what Python reads back in any session time zone. A row that
# another tool or an older version stored beyond (year 10000, 'infinity', 4713 BC) comes back
# at the nearest bound instead of failing the whole call; see `_readable`.
_FIRST_READABLE: Final = literal_column(
    f"TIMESTAMPTZ '{CREATED_AT_MIN.isoformat()}'", DateTime(timezone=True)
)
_LAST_READABLE: Final = literal_column(
    f"TIMESTAMPTZ '{CREATED_AT_MAX.isoformat()}'", DateTime(timezone=True)
)


_EARLIEST: Final = literal_column("TIMESTAMPTZ '-infinity'", DateTime(timezone=True))
_LATEST: Final = literal_column("TIMESTAMPTZ 'infinity'", DateTime(timezone=True))

# Timelines whose open range sides are bound on the partitioned layout. With ``since``
# alone (or no bound), PostgreSQL estimates that the generic plan reads a third of every
# partition, so it plans each call again over every partition in range; with both sides
# bound it keeps the generic plan and prunes at executor start-up. That is faster for a
# user's, project's or agent's page (history spread over the partitions), slower for a
# session's: its generic plan locks every partition on each call, and a session page
# bounded by its first day is measured better off planned (docs/benchmarks/scaleout.md).
_OPEN_SIDES_BOUND: Final = frozenset({"user_id", "project_id", "agent_id"})


def _partitioned(table: Table) -> bool:
    return bool(table.dialect_options["postgresql"].get("partition_by"))


def _readable(value: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """``value`` moved into ``CREATED_AT_MIN`` .. ``CREATED_AT_MAX``: what Python can load.

    The bounds are constants in the SQL text, so the compiled statement is cached as before;
    ordering and keyset conditions keep using the column itself, so its index still serves
    them. Every value the writers accept lies inside the bounds and comes back unchanged.
    """
    timestamptz = DateTime(timezone=True)
    return func.least(
        func.greatest(value, _FIRST_READABLE, type_=timestamptz), _LAST_READABLE, type_=timestamptz
    )


def _show_key(value: object) -> list[object]:
    """A key as JSON-ready values that keep its type: ``UUID`` 1 and int 1 differ."""
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    if isinstance(value, Enum):
        return [type(value).__name__, value.value]
    return [type(value).__name__, value]


def _filter_shape(filters: EventFilter, params: dict[str, Any]) -> list[str]:
    """Shape tokens and parameter values of a filter's conditions, except its time range."""
    shape = []
    if filters.event_types is not None:
        shape.append("types")
        params["event_types"] = sorted(filters.event_types)
    if filters.error_code is ANY_ERROR:
        shape.append("error:any")
    elif filters.error_code is not None:
        shape.append("error")
        params["error_code"] = filters.error_code
    if filters.tool_name is not None:
        shape.append("tool")
        params["tool_name"] = filters.tool_name
    if filters.approval_status is not None:
        shape.append("approval")
        params["approval_status"] = filters.approval_status
    return shape


def _conditions(table: FromClause, shape: tuple[str, ...]) -> list[ColumnElement[bool]]:
    """The WHERE conditions a shape names, each with a bind parameter of a fixed name."""
    c = table.c

    def param(name: str, column: str | None = None) -> BindParameter[Any]:
        return bindparam(name, type_=c[column or name].type)

    makers: dict[str, Callable[[], ColumnElement[bool]]] = {
        "user": lambda: c.user_id == param("user_id"),
        "project": lambda: c.project_id == param("project_id"),
        "agent": lambda: c.agent_id == param("agent_id"),
        "session": lambda: c.session_id == param("session_id"),
        # VARCHAR[] without the column's length: a cast to VARCHAR(64)[] would cut a longer
        # value to a stored one (PostgreSQL truncates on explicit casts).
        "types": lambda: c.event_type == any_(bindparam("event_types", type_=ARRAY(String()))),
        "error:any": lambda: c.error_code.is_not(None),
        "error": lambda: c.error_code == param("error_code"),
        "tool": lambda: c.tool_name == param("tool_name"),
        "approval": lambda: c.approval_status == param("approval_status"),
        "since": lambda: c.created_at >= param("since", "created_at"),
        "until": lambda: c.created_at < param("until", "created_at"),
        # An open side as a parameter that is always NULL: the condition holds for every
        # row, but PostgreSQL's generic plan sees a range between two parameters (see
        # `_OPEN_SIDES_BOUND`).
        "since:open": lambda: (
            c.created_at >= func.coalesce(param("since", "created_at"), _EARLIEST)
        ),
        "until:open": lambda: c.created_at <= func.coalesce(param("until", "created_at"), _LATEST),
    }
    conditions = []
    for token in shape:
        if token.startswith("key:"):
            conditions.append(c[token[4:]] == param("key", token[4:]))
        elif token.startswith("after:"):
            resume_at: ColumnElement[datetime] = param("after_created_at", "created_at")
            if token.endswith(":edge"):
                resume_at = func.coalesce(_stored_created_at(table, shape), resume_at)
            position = tuple_(c.created_at, c.id)
            after = tuple_(resume_at, param("after_id", "id"))
            newest = token.startswith("after:newest")
            conditions.append(position < after if newest else position > after)
            if not token.endswith(":edge"):
                # Implied by the row comparison; stated so that partitions past the
                # cursor are pruned (PostgreSQL prunes on plain comparisons only).
                column = c.created_at
                conditions.append(column <= resume_at if newest else column >= resume_at)
        elif token in makers:
            conditions.append(makers[token]())
    return conditions


def _stored_created_at(table: FromClause, shape: tuple[str, ...]) -> ColumnElement[datetime]:
    """The stored ``created_at`` of the cursor's event, looked up by its id (the primary key).

    A page that ends on a row whose time lies beyond what Python reads (see `_readable`)
    gives a cursor at a bound, not at the row's real time; resuming from the real time, and
    only within the same timeline, keeps every such row exactly once. The event is looked
    up under every condition of the timeline, so a cursor naming any other event (anyone
    can build one) tells nothing of it. If the event is gone (purged meanwhile), ``COALESCE``
    falls back to the bound. An id stored twice beyond the same bound (SQL can do it on
    the partitioned layout, whose key is ``(id, created_at)``) resumes past both of those
    rows: the cursor cannot tell which one ended the page, and resuming before the farther
    one could return the nearer one for ever. A copy within the bounds is not looked at.
    """
    row = table.alias("cursor_event")
    own = tuple(token for token in shape if not token.startswith("after:"))
    pick = func.min if "order:newest" in shape else func.max
    resume_at = bindparam("after_created_at", type_=table.c.created_at.type)
    at_bound = _readable(row.c.created_at) == resume_at
    return (
        select(pick(row.c.created_at))
        .where(
            row.c.id == bindparam("after_id", type_=table.c.id.type),
            at_bound,  # a copy of the id at a time Python reads ended no page at the bound
            *_conditions(row, own),
        )
        .scalar_subquery()
    )


@dataclass(frozen=True, slots=True)
class PreparedQuery:
    """A statement as its shape (what its SQL text depends on) and its parameter values.

    The SQL text of a shape is compiled once per dialect and kept in the table's ``info``
    (no module-level cache), so repeated calls skip statement building and compilation.
    """

    table: Table
    shape: tuple[str, ...]
    params: dict[str, Any]
    builder: Callable[[Table, tuple[str, ...]], Select[Any] | CompoundSelect[Any]]

    def statement(self) -> Select[Any] | CompoundSelect[Any]:
        """The SQLAlchemy statement; execute it with `params`."""
        return self.builder(self.table, self.shape)

    def driver_sql(self, dialect: Dialect) -> tuple[str, Any] | None:
        """``(sql, parameters)`` for ``exec_driver_sql``, or None when the driver is not psycopg.

        psycopg needs no SQLAlchemy bind or result processing for these columns, so its
        rows come straight from the driver; other drivers go through ``execute``. The text
        names the table as the model does: a connection with a ``schema_translate_map``
        must run `statement` through ``execute`` instead (the readers do).
        """
        if dialect.driver != "psycopg":
            return None
        cache: dict[tuple[Any, ...], tuple[str, tuple[str, ...] | None]]
        cache = self.table.info.setdefault(_SQL_CACHE, {})
        key = (dialect.name, dialect.driver, dialect.paramstyle, self.builder, self.shape)
        entry = cache.get(key)
        if entry is None:
            compiled = self.statement().compile(dialect=dialect)
            order = compiled.positiontup
            entry = (compiled.string, tuple(order) if order is not None else None)
            cache[key] = entry
        sql, positions = entry
        if positions is None:
            return sql, self.params
        return sql, tuple(self.params[name] for name in positions)


_SQL_CACHE: Final = "eventlog_persist.sql"


def record_columns(table: Table) -> list[ColumnElement[Any]]:
    """The columns of an `EventRecord`, in field order, ``created_at`` made readable."""
    c = table.c
    return [
        _readable(c.created_at).label(name) if name == "created_at" else c[name] for name in COLUMNS
    ]


def _timeline_select(table: Table, shape: tuple[str, ...]) -> Select[Any]:
    c = table.c
    columns = record_columns(table)
    statement = select(*columns).where(*_conditions(table, shape))
    if "order:newest" in shape:
        statement = statement.order_by(c.created_at.desc(), c.id.desc())
    else:
        statement = statement.order_by(c.created_at.asc(), c.id.asc())
    statement = statement.limit(bindparam("limit", type_=Integer()))
    if "offset" in shape:
        statement = statement.offset(bindparam("offset", type_=Integer()))
    return statement


@dataclass(frozen=True, slots=True)
class TimelineQuery:
    """A timeline query ready to run, and what turns its rows into a `Page`."""

    query: PreparedQuery
    limit: int
    query_key: str

    def page(self, rows: Sequence[Sequence[Any]]) -> Page[Any]:
        """Build the page from the rows the statement returned (``limit + 1`` at most)."""
        if len(rows) <= self.limit:
            return Page(event_records(rows), None)
        items = event_records(rows[: self.limit])
        last = items[-1]
        return Page(items, encode_cursor((last.created_at, last.id), self.query_key))


def _check_filters(filters: object) -> EventFilter:
    if filters is None:
        return _NO_FILTER
    if not isinstance(filters, EventFilter):
        raise ValidationError(
            f"filters must be an EventFilter or None, got {type(filters).__name__} {filters!r}; "
            "build one with EventFilter(...), e.g. EventFilter(event_types={'error'})"
        )
    return filters


def _check_offset(offset: object, cursor: object) -> None:
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValidationError(
            f"offset must be an int from 0 to {MAX_OFFSET} (MAX_OFFSET), got "
            f"{type(offset).__name__} {offset!r}"
        )
    if offset > MAX_OFFSET:
        raise ValidationError(
            f"offset={offset} is beyond MAX_OFFSET ({MAX_OFFSET}): an offset makes the database "
            "read and discard every event before the page, so it costs more the deeper it goes; "
            "page further with cursor=page.next_cursor (keyset pages cost the same at any depth)"
        )
    if offset and cursor is not None:
        raise ValidationError(
            f"offset={offset} was given with a cursor, which already says where the page "
            "starts; pass the cursor alone (offset=0) for the next page, or an offset without "
            "a cursor"
        )


def timeline_query(
    table: Table,
    *,
    column: Literal["session_id", "user_id", "project_id", "agent_id"],
    key: object,
    user_id: object = None,
    project_id: object = None,
    agent_id: object = None,
    session_id: object = None,
    since: datetime | None = None,
    until: datetime | None = None,
    filters: EventFilter | None = None,
    order: Order = "newest",
    limit: int = DEFAULT_PAGE_SIZE,
    offset: int = 0,
    cursor: str | None = None,
) -> TimelineQuery:
    """Build one page of the timeline of ``column == key``, newest or oldest first.

    The other key columns (``user_id``, ``project_id``, ``agent_id``, ``session_id``) narrow
    the timeline; ``user_id=UNSCOPED`` narrows nothing. Pages are cut by keyset on
    ``(created_at, id)``: a row comparison that the ``(<column>, created_at)`` index serves,
    so page 1000 costs what page 1 does, and rows inserted meanwhile never shift or repeat
    events already returned. An ``offset`` skips that many events first (at most
    `MAX_OFFSET`); it is not part of the cursor's query, so a page read with an offset
    continues with its ``next_cursor``. ``since`` and ``until`` intersect the filter's
    range; a bounded timeline reads only the partitions of its range (partitioned layout).

    Raises:
        ValidationError: A key, the range, the order, the limit, the offset or the cursor
            is not valid.
    """
    check_key(table, column, key)
    check_range(since, until, owner="timeline")
    narrowings = {
        "user_id": user_id,
        "project_id": project_id,
        "agent_id": agent_id,
        "session_id": session_id,
    }
    if narrowings[column] is not None:
        raise ValidationError(
            f"the {column[:-3]} timeline is scoped by {column} already; drop {column}=... from "
            "the narrowing arguments"
        )
    for name, value in narrowings.items():
        if value is not None and not (name == "user_id" and value is UNSCOPED):
            check_key(table, name, value)
    if order not in get_args(Order):
        raise ValidationError(f"order must be 'newest' or 'oldest', got {order!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValidationError(
            f"limit must be an int from 1 to {MAX_PAGE_SIZE} (MAX_PAGE_SIZE), got {limit!r}; "
            "page through longer timelines with the cursor"
        )
    _check_offset(offset, cursor)
    filters = _check_filters(filters)
    since = _later(since, filters.since)
    until = _earlier(until, filters.until)
    range_key = filters._key()
    # The range is keyed as the filter keys it: a bound given either way is the same query,
    # and the cursors of queries that had their range in the filter stay valid.
    range_key[-2:] = [instant_key(since), instant_key(until)]
    # JSON of the parts: every value is quoted, so no value can pose as a separator. The
    # agent and session narrowings come last, and only when given, so the queries that
    # existed before them keep their keys (and their cursors stay valid across versions).
    parts: list[object] = [
        column,
        _show_key(key),
        _show_key(user_id),
        _show_key(project_id),
        order,
        range_key,
    ]
    if agent_id is not None or session_id is not None:
        parts.append({"agent_id": _show_key(agent_id), "session_id": _show_key(session_id)})
    query_key = json.dumps(parts, separators=(",", ":"))
    params: dict[str, Any] = {"key": key, "limit": limit + 1}
    shape = [f"key:{column}", f"order:{order}"]
    for name, token in _NARROWINGS.items():
        value = narrowings[name]
        if value is not None and value is not UNSCOPED:
            shape.append(token)
            params[name] = value
    shape += _filter_shape(filters, params)
    open_sides_bound = column in _OPEN_SIDES_BOUND and _partitioned(table)
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            shape.append(name)
            params[name] = value
        elif open_sides_bound:
            shape.append(f"{name}:open")
            params[name] = None
    if cursor is not None:
        after, params["after_id"] = decode_cursor(cursor, query_key)
        params["after_created_at"] = after
        # A position at a bound may stand for a row stored beyond it: resume from that row.
        edge = not CREATED_AT_MIN < after < CREATED_AT_MAX
        shape.append(f"after:{order}:edge" if edge else f"after:{order}")
    if offset:
        shape.append("offset")
        params["offset"] = offset
    prepared = PreparedQuery(table, tuple(shape), params, _timeline_select)
    return TimelineQuery(prepared, limit, query_key)


def _event_select(table: Table, shape: tuple[str, ...]) -> Select[Any] | CompoundSelect[Any]:
    c = table.c
    columns = record_columns(table)
    conditions = [c.id == bindparam("event_id", type_=c.id.type)]
    if "user" in shape:
        conditions.append(c.user_id == bindparam("user_id", type_=c.user_id.type))
    one = literal_column("1", Integer())
    # The partitioned layout's key is (id, created_at): SQL may store an id twice. The
    # earliest copy answers (the key's own order there: no sort).
    if "window" not in shape:
        return select(*columns).where(*conditions).order_by(c.created_at).limit(one)
    start = bindparam("window_start", type_=c.created_at.type)
    end = bindparam("window_end", type_=c.created_at.type)
    # The window first; the rest of the table only when the event is not in it: a LIMIT over
    # UNION ALL never starts its second branch once the first has returned the row.
    inside = select(*columns).where(*conditions, c.created_at >= start, c.created_at < end)
    outside = select(*columns).where(*conditions, or_(c.created_at < start, c.created_at >= end))
    return union_all(
        inside.order_by(c.created_at).limit(one), outside.order_by(c.created_at).limit(one)
    ).limit(one)


def event_query(table: Table, event_id: object, *, user_id: object) -> PreparedQuery:
    """Look up one event by id, scoped to its user (``UNSCOPED``: any user's).

    An id that records a time (UUIDv7, see `new_event_id`) is looked for within
    `ID_TIME_WINDOW` of that time first, so the partitioned layout reads one partition;
    an event stored outside the window (an id the caller chose) is still found.

    Raises:
        ValidationError: ``event_id`` is not a UUID, or ``user_id`` is not a key.
    """
    if not isinstance(event_id, uuid.UUID):
        raise ValidationError(
            f"event_id must be a uuid.UUID, got {type(event_id).__name__} {event_id!r}"
            + ("; convert it with uuid.UUID(...)" if isinstance(event_id, str) else "")
        )
    shape = ["event"]
    params: dict[str, Any] = {"event_id": event_id}
    if user_id is not UNSCOPED:
        check_key(table, "user_id", user_id)
        shape.append("user")
        params["user_id"] = user_id
    at = id_time(event_id)
    if at is not None and CREATED_AT_MIN + ID_TIME_WINDOW < at < CREATED_AT_MAX - ID_TIME_WINDOW:
        shape.append("window")
        params["window_start"] = at - ID_TIME_WINDOW
        params["window_end"] = at + ID_TIME_WINDOW
    return PreparedQuery(table, tuple(shape), params, _event_select)


def _aggregate_shape(
    table: Table,
    *,
    user_id: object,
    project_id: object,
    agent_id: object,
    session_id: object,
    since: datetime | None,
    until: datetime | None,
    filters: EventFilter | None,
    range_required: bool = False,
) -> tuple[list[str], dict[str, Any]]:
    if user_id is UNSCOPED:
        raise ValidationError(
            "user_id=UNSCOPED lifts the owner check of a timeline or event(); an aggregate "
            "counts within a scope instead: pass project_id=... alone for a project's events "
            "of every user, or the user's id"
        )
    if user_id is None and project_id is None:
        raise ValidationError(
            "an aggregate needs a scope: pass user_id=..., project_id=... or both (agent_id "
            "and session_id only narrow a scope; with session_id, pass the session's owner as "
            "user_id)"
        )
    shape: list[str] = []
    params: dict[str, Any] = {}
    scope = {
        "user_id": user_id,
        "project_id": project_id,
        "agent_id": agent_id,
        "session_id": session_id,
    }
    for name, token in _NARROWINGS.items():
        value = scope[name]
        if value is not None:
            check_key(table, name, value)
            shape.append(token)
            params[name] = value
    if range_required and (since is None or until is None):
        raise ValidationError("an aggregate needs a time range: pass since=... and until=...")
    check_range(since, until, owner="aggregate")
    if filters is not None:
        shape += _filter_shape(_check_filters(filters), params)
        # All conditions hold at once: the filter's range narrows the aggregate's.
        since = _later(since, filters.since)
        until = _earlier(until, filters.until)
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            shape.append(name)
            params[name] = value
    return shape, params


# Instants, not wall clocks: two times that share one zone object compare by their clock
# readings, fold ignored, so in the hour a DST change repeats the later one can read earlier.
def _later(one: datetime | None, other: datetime | None) -> datetime | None:
    return other if one is None else one if other is None else max(one, other, key=_instant)


def _earlier(one: datetime | None, other: datetime | None) -> datetime | None:
    return other if one is None else one if other is None else min(one, other, key=_instant)


def _instant(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def _total_select(table: Table, shape: tuple[str, ...]) -> Select[Any]:
    return select(func.count().label("count")).where(*_conditions(table, shape))


def total_query(
    table: Table,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: object = None,
    project_id: object = None,
    agent_id: object = None,
    session_id: object = None,
    filters: EventFilter | None = None,
) -> PreparedQuery:
    """Count the events of a scope, optionally in a time range: one row, one column.

    Raises:
        ValidationError: No scope, a bad key, an empty or naive range, or bad filters.
    """
    shape, params = _aggregate_shape(
        table,
        user_id=user_id,
        project_id=project_id,
        agent_id=agent_id,
        session_id=session_id,
        since=since,
        until=until,
        filters=filters,
    )
    return PreparedQuery(table, ("total", *shape), params, _total_select)


def _count_select(table: Table, shape: tuple[str, ...]) -> Select[Any]:
    column = table.c[shape[0].removeprefix("count:")]
    count = func.count().label("count")
    return (
        select(column, count)
        .where(*_conditions(table, shape))
        .group_by(column)
        .order_by(count.desc(), column.asc().nulls_first())
    )


def count_query(
    table: Table,
    field: CountField,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user_id: object = None,
    project_id: object = None,
    agent_id: object = None,
    session_id: object = None,
    filters: EventFilter | None = None,
) -> PreparedQuery:
    """Count events per value of ``field`` in a scope (and time range), largest count first.

    Raises:
        ValidationError: No scope, an empty or naive range, or an unknown ``field``.
    """
    if field not in get_args(CountField):
        raise ValidationError(
            f"cannot count by {field!r}; choose one of {', '.join(get_args(CountField))}"
        )
    shape, params = _aggregate_shape(
        table,
        user_id=user_id,
        project_id=project_id,
        agent_id=agent_id,
        session_id=session_id,
        since=since,
        until=until,
        filters=filters,
    )
    return PreparedQuery(table, (f"count:{field}", *shape), params, _count_select)


def _bucket_select(table: Table, shape: tuple[str, ...]) -> Select[Any]:
    created_at = table.c.created_at
    expression: ColumnElement[datetime]
    if shape[0] == "bin":
        interval = bindparam("bucket", type_=Interval())
        expression = func.date_bin(interval, created_at, bindparam("origin", type_=created_at.type))
    else:
        unit = bindparam("unit", type_=String())
        expression = func.date_trunc(unit, created_at, bindparam("time_zone", type_=String()))
    inner = (
        select(_readable(expression).label("start"))
        .where(*_conditions(table, shape))
        .subquery("buckets")
    )
    return (
        select(inner.c.start, func.count().label("count"))
        .group_by(inner.c.start)
        .order_by(inner.c.start)
    )


def _check_time_zone(time_zone: str) -> None:
    # PostgreSQL reads abbreviations in any case ("cet" too).
    region = _ABBREVIATED_ZONES.get(time_zone.upper()) if isinstance(time_zone, str) else None
    if region is not None:
        raise ValidationError(
            f"time_zone={time_zone!r} is read by PostgreSQL as its abbreviation, a fixed "
            "offset without daylight saving, while the IANA zone of that name has it; pass a "
            f"region such as {region!r}"
        )
    if time_zone == "localtime":
        raise ValidationError(
            "time_zone='localtime' is this machine's zone, which the database server does "
            "not know; pass its IANA name, such as 'Europe/Paris'"
        )
    # The zone database's own names: a file the folder also holds but PostgreSQL does not
    # know (posix/Europe/Paris, right/..., posixrules) is refused here, not by the server.
    if not isinstance(time_zone, str) or time_zone not in _zone_names():
        raise ValidationError(
            f"time_zone={time_zone!r} is not an IANA time zone name such as 'UTC' or 'Europe/Paris'"
        )


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def bucket_query(
    table: Table,
    bucket: timedelta | CalendarUnit,
    *,
    since: datetime,
    until: datetime,
    user_id: object = None,
    project_id: object = None,
    agent_id: object = None,
    session_id: object = None,
    filters: EventFilter | None = None,
    time_zone: str = "UTC",
) -> PreparedQuery:
    """Count events per time bucket in a scope and range; empty buckets have no row.

    A ``timedelta`` bucket uses ``date_bin`` with buckets aligned to 2001-01-01 00:00 UTC (a
    Monday), so a 15-minute bucket starts on the quarter hour; ``time_zone`` must stay
    ``"UTC"``. A calendar unit uses ``date_trunc(unit, created_at, time_zone)``, so days,
    weeks and months follow that zone's midnights, daylight-saving changes included.

    Raises:
        ValidationError: No scope, no or an empty range, a bucket that is not positive, past
            1000 years or not a calendar unit, or an unknown time zone.
    """
    if isinstance(bucket, timedelta):
        if not timedelta(0) < bucket <= _MAX_BUCKET:
            raise ValidationError(
                f"bucket must be a positive timedelta of at most 1000 years "
                f"(timedelta(days=365250)), got {bucket!r}; for one total, use count"
            )
        if time_zone != "UTC":
            raise ValidationError(
                f"time_zone={time_zone!r} applies to calendar buckets only; a timedelta bucket "
                "is aligned to UTC. Use bucket='day' (or 'hour', 'week', 'month') to cut "
                "buckets at that zone's midnights"
            )
        kind, values = "bin", {"bucket": bucket, "origin": _BIN_ORIGIN}
    elif bucket in get_args(CalendarUnit):
        _check_time_zone(time_zone)
        kind, values = "trunc", {"unit": bucket, "time_zone": time_zone}
    else:
        raise ValidationError(
            f"bucket must be a timedelta or one of {', '.join(get_args(CalendarUnit))}, "
            f"got {bucket!r}"
        )
    shape, params = _aggregate_shape(
        table,
        user_id=user_id,
        project_id=project_id,
        agent_id=agent_id,
        session_id=session_id,
        since=since,
        until=until,
        filters=filters,
        range_required=True,
    )
    return PreparedQuery(table, (kind, *shape), {**params, **values}, _bucket_select)


def _payload_value(table: Table, key: str) -> ColumnElement[Any]:
    """``payload -> 'key'``: the JSONB value under a top-level key, NULL when it is missing.

    The key is a constant of the SQL text, not a parameter, so the statement stays cached.
    """
    return table.c.payload.op("->", return_type=JSONB())(literal_column(_quoted(key)))


def _quoted(key: str) -> str:
    return "'" + key.replace("'", "''") + "'"


def _json_is(value: ColumnElement[Any], kind: str) -> ColumnElement[bool]:
    return func.jsonb_typeof(value) == literal_column(_quoted(kind))


def _token_count(table: Table, key: str) -> ColumnElement[Any]:
    """The count under ``key`` when it is a JSON number that is a whole number >= 0, else NULL.

    ``CASE`` tests its branches in order, so the cast runs only on numbers: a string, an
    object, a fraction or a negative number stored by another writer counts as no value,
    and never fails the statement.
    """
    value = _payload_value(table, key)
    number = cast(value, Numeric())
    return case(
        (~_json_is(value, "number"), null()),
        ((number >= literal_column("0")) & (number == func.trunc(number)), number),
        else_=null(),
    )


def _model(table: Table) -> ColumnElement[Any]:
    """``gen_ai.response.model`` if it is a JSON string, else ``gen_ai.request.model``."""
    branches = []
    for key in (RESPONSE_MODEL, REQUEST_MODEL):
        value = _payload_value(table, key)
        text = table.c.payload.op("->>", return_type=String())(literal_column(_quoted(key)))
        branches.append((_json_is(value, "string"), text))
    return case(*branches, else_=null())


def _token_select(table: Table, shape: tuple[str, ...]) -> Select[Any]:
    groups = shape[0].removeprefix("tokens:").split(",") if shape[0] != "tokens:" else []
    usage = (
        select(
            table.c.agent_id.label("agent_id"),
            _model(table).label("model"),
            _token_count(table, INPUT_TOKENS).label("input_tokens"),
            _token_count(table, OUTPUT_TOKENS).label("output_tokens"),
        )
        .where(*_conditions(table, shape))
        .subquery("usage")
    )
    keys = [usage.c[name] if name in groups else null().label(name) for name in _TOKEN_GROUPS]
    input_sum = func.coalesce(func.sum(usage.c.input_tokens), literal_column("0"))
    output_sum = func.coalesce(func.sum(usage.c.output_tokens), literal_column("0"))
    events = func.count()
    statement = (
        select(
            *keys,
            input_sum.label("input_tokens"),
            output_sum.label("output_tokens"),
            events.label("events"),
        )
        .where(or_(usage.c.input_tokens.is_not(None), usage.c.output_tokens.is_not(None)))
        .group_by(*[usage.c[name] for name in groups])
        .order_by(
            (input_sum + output_sum).desc(),
            events.desc(),
            *[usage.c[name].asc().nulls_first() for name in groups],
        )
    )
    if not groups:  # one row for the whole scope, none when no event reported usage
        statement = statement.having(events > literal_column("0"))
    return statement


_TOKEN_GROUPS: Final = get_args(TokenGroup)


def _check_groups(by: object) -> tuple[str, ...]:
    """``by`` as the known group names, in a fixed order; raise `ValidationError` if not."""
    # A mapping iterates over its keys, and bytes over ints: neither is a list of names.
    if isinstance(by, str | bytes | bytearray | memoryview | Mapping) or not isinstance(
        by, Iterable
    ):
        example = f"by=({by!r},)" if by in _TOKEN_GROUPS else "by=('agent_id', 'model')"
        raise ValidationError(
            f"by must be a tuple of {' and/or '.join(map(repr, _TOKEN_GROUPS))}, got "
            f"{type(by).__name__} {by!r}; pass e.g. {example}"
        )
    groups = tuple(by)
    for name in groups:
        if name not in _TOKEN_GROUPS:
            raise ValidationError(
                f"cannot group token usage by {name!r}; choose from "
                f"{', '.join(map(repr, _TOKEN_GROUPS))}, e.g. by=('agent_id', 'model'), or "
                "by=() for the scope's total"
            )
        if groups.count(name) > 1:
            raise ValidationError(f"by={by!r} names {name!r} twice; name each group once")
    return tuple(name for name in _TOKEN_GROUPS if name in groups)


def token_usage_query(
    table: Table,
    *,
    since: datetime,
    until: datetime,
    user_id: object = None,
    project_id: object = None,
    agent_id: object = None,
    session_id: object = None,
    filters: EventFilter | None = None,
    by: Iterable[TokenGroup],
) -> PreparedQuery:
    """Sum the GenAI token counts of a scope's payloads in a range, per agent and/or model.

    Only events whose ``gen_ai.usage.input_tokens`` or ``gen_ai.usage.output_tokens`` is a
    whole JSON number >= 0 take part; other values count as none (see `_token_count`).

    Raises:
        ValidationError: No scope, no or an empty or naive range, or an unknown group.
    """
    groups = _check_groups(by)
    shape, params = _aggregate_shape(
        table,
        user_id=user_id,
        project_id=project_id,
        agent_id=agent_id,
        session_id=session_id,
        since=since,
        until=until,
        filters=filters,
        range_required=True,
    )
    return PreparedQuery(table, (f"tokens:{','.join(groups)}", *shape), params, _token_select)
