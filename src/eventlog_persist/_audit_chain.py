"""What sealing and verification share: Merkle roots, the canonical seal and tombstone
encodings, and the ordered leaves of a window of transaction ids, read from the database."""

from __future__ import annotations

import contextlib
import hashlib
import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Final, NamedTuple

import psycopg
from sqlalchemy import Connection, MetaData, Table, func, select, text
from sqlalchemy.exc import DBAPIError

from eventlog_persist._audit_leaf import (
    LEAF_COLUMNS,
    LEAF_PREFIX,
    _time,
    leaf_hash_of,
    leaf_hash_of_text,
)
from eventlog_persist._audit_schema import audit_tables
from eventlog_persist._failures import sqlstate_of
from eventlog_persist._feed_schema import Xid8
from eventlog_persist._model import EventLogMixin
from eventlog_persist._read_direct import raise_as_sqlalchemy
from eventlog_persist._read_sql import event_table
from eventlog_persist._schema import XID_COLUMN
from eventlog_persist._table import quoted_name
from eventlog_persist.exceptions import ConfigurationError, MigrationSetupError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "END_SIZE",
    "SEAL_VERSION",
    "AuditTables",
    "Entry",
    "SealRow",
    "audit_tables_of",
    "chunk_end",
    "end_key",
    "merkle_root",
    "read_seals",
    "seal_hash",
    "tombstone_hash",
    "transaction_ids",
    "translated",
    "window_entries",
    "window_tombstones",
]

DEFAULT_CHUNK_SIZE: Final = 1024
SEAL_VERSION: Final = 1
"""The ``v`` of the canonical seal and tombstone documents."""
END_SIZE: Final = 24
"""Bytes of one chunk end in ``chunk_ends``: the xid (8, big-endian; 0 for none), the id (16)."""
_NODE_PREFIX: Final = b"\x01"
_EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
# A table or column of the feed or the audit missing: its migration has not run.
_NOT_MIGRATED: Final = frozenset({"42P01", "42703"})
_YIELD_PER: Final = 5000


def merkle_root(nodes: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle tree hash over ``nodes``, which are hashes already (leaves carry
    their 0x00 prefix): interior nodes are SHA-256(0x01 ‖ left ‖ right), the tree split at
    the largest power of two below the count; the empty tree is SHA-256 of nothing."""
    if not nodes:
        return _EMPTY_ROOT
    level = list(nodes)
    sha256 = hashlib.sha256
    while len(level) > 1:
        # Pairing level by level, a lone last node promoted as is, builds the same tree as
        # RFC 6962's split at the largest power of two below n.
        paired = [
            sha256(_NODE_PREFIX + level[i] + level[i + 1]).digest()
            for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def chunk_end(xid: int | None, event_id: str) -> bytes:
    """A chunk end as stored in ``chunk_ends``: the last event's xid (0: none) and id."""
    return (xid or 0).to_bytes(8, "big") + uuid.UUID(event_id).bytes


def _string(value: str | None) -> str:
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def tombstone_hash(stone: Mapping[str, Any]) -> bytes:
    """SHA-256(0x00 ‖ canonical tombstone document) (docs/audit.md, "Tombstones")."""
    fields = {
        "agent_id": _string(stone["agent_id"]),
        "erased_at": _string(_time(stone["erased_at"])),
        "erased_xid": _string(str(stone["erased_xid"])),
        "event_created_at": _string(_time(stone["event_created_at"])),
        "event_id": _string(str(stone["event_id"])),
        "event_xid": _string(None if stone["event_xid"] is None else str(stone["event_xid"])),
        "kind": _string(stone["kind"]),
        "leaf": _string(bytes(stone["leaf"]).hex()),
        "project_id": _string(stone["project_id"]),
        "seq": _string(str(stone["seq"])),
        "session_id": _string(stone["session_id"]),
        "user_id": _string(stone["user_id"]),
        "v": str(SEAL_VERSION),
    }
    body = ",".join(f'"{name}":{fields[name]}' for name in sorted(fields))
    return hashlib.sha256(LEAF_PREFIX + ("{" + body + "}").encode()).digest()


@dataclass(frozen=True, slots=True)
class SealRow:
    """A row of ``event_log_seals`` (as stored, or about to be)."""

    seq: int
    xid_from: int | None
    xid_to: int
    chunk_size: int
    events: int
    erasures: int
    chunk_roots: bytes
    chunk_ends: bytes
    events_root: bytes
    erasures_root: bytes
    prev_hash: bytes | None
    seal_hash: bytes
    sealed_at: datetime | None = None


def seal_hash(row: SealRow) -> bytes:
    """SHA-256 of the canonical seal document (docs/audit.md, "Seals"); ``sealed_at`` and
    ``seal_hash`` itself are not in it."""

    def hexed(value: bytes | None) -> str:
        return "null" if value is None else f'"{bytes(value).hex()}"'

    xid_from = "null" if row.xid_from is None else f'"{row.xid_from}"'
    document = (
        f'{{"chunk_ends":{hexed(row.chunk_ends)},"chunk_roots":{hexed(row.chunk_roots)},'
        f'"chunk_size":{row.chunk_size},"erasures":{row.erasures},'
        f'"erasures_root":{hexed(row.erasures_root)},"events":{row.events},'
        f'"events_root":{hexed(row.events_root)},"prev_hash":{hexed(row.prev_hash)},'
        f'"seq":{row.seq},"v":{SEAL_VERSION},"xid_from":{xid_from},"xid_to":"{row.xid_to}"}}'
    )
    return hashlib.sha256(document.encode()).digest()


@dataclass(frozen=True, slots=True)
class AuditTables:
    """``event_logs`` (with its xid) and the audit's two tables, in one schema."""

    events: Table
    erasures: Table
    seals: Table


def audit_tables_of(model: type[EventLogMixin[Any]] | Table, *, api: str) -> AuditTables:
    """The event table of ``model`` and the audit's tables beside it (a private MetaData)."""
    table = event_table(model)
    if XID_COLUMN not in table.c:
        raise ConfigurationError(
            f"{api} needs the feed's xid column: the audit's seals cover windows of "
            "transaction ids. Build the model with event_log_model(Base, feed=True, "
            "audit=True) (or __eventlog_feed__ = True; __eventlog_audit__ = True) on a "
            "database migrated by evlfeed_0001 and evlaudit_0001 (see docs/audit.md)"
        )
    erasures, seals = audit_tables(MetaData(), schema=table.schema)
    return AuditTables(table, erasures, seals)


def translated(exc: DBAPIError) -> Exception:
    """The audit's schema missing: `MigrationSetupError` naming the fix; else ``exc``."""
    if sqlstate_of(exc) in _NOT_MIGRATED:
        return MigrationSetupError(
            f"the audit's schema is missing from this database ({_first_line(exc.orig)}); "
            "run its "
            "migration: add 'eventlog_persist:migrations_feed' and "
            "'eventlog_persist:migrations_audit' to version_locations and 'alembic upgrade "
            "heads' (linear mode: 'eventlog-persist linear-revision --feed --audit')"
        )
    return exc


def _first_line(error: object) -> str:
    """PostgreSQL's message alone: not its LINE and caret lines, on a line of their own."""
    return str(error).strip().split("\n", 1)[0]


def transaction_ids(connection: Connection, tables: AuditTables) -> tuple[int, int, int | None]:
    """In one statement: the horizon (every transaction id below it has ended), the id the
    server gives next, and the highest id an event or a tombstone holds (None when none
    does)."""
    row = connection.execute(
        text(
            "SELECT pg_snapshot_xmin(s) AS horizon, pg_snapshot_xmax(s) AS next, "
            f"greatest((SELECT max(xid) FROM {quoted_name(tables.events)}), "
            f"(SELECT max(erased_xid) FROM {quoted_name(tables.erasures)})) AS highest "
            "FROM pg_current_snapshot() AS s"
        ).columns(horizon=Xid8(), next=Xid8(), highest=Xid8())
    ).one()
    return int(row.horizon), int(row.next), None if row.highest is None else int(row.highest)


def read_seals(connection: Connection, tables: AuditTables, *, last_only: bool) -> list[SealRow]:
    """The stored seals, by ``seq`` (only the newest with ``last_only``)."""
    s = tables.seals.c
    query = select(tables.seals).order_by(s.seq.desc() if last_only else s.seq)
    if last_only:
        query = query.limit(1)
    rows = connection.execute(query).mappings()
    return [
        SealRow(
            seq=row["seq"],
            xid_from=row["xid_from"],
            xid_to=row["xid_to"],
            chunk_size=row["chunk_size"],
            events=row["events"],
            erasures=row["erasures"],
            chunk_roots=bytes(row["chunk_roots"]),
            chunk_ends=bytes(row["chunk_ends"]),
            events_root=bytes(row["events_root"]),
            erasures_root=bytes(row["erasures_root"]),
            prev_hash=None if row["prev_hash"] is None else bytes(row["prev_hash"]),
            seal_hash=bytes(row["seal_hash"]),
            sealed_at=row["sealed_at"],
        )
        for row in rows
    ]


def window_tombstones(
    connection: Connection,
    tables: AuditTables,
    xid_from: int | None,
    xid_to: int,
    *,
    by: str,
) -> list[dict[str, Any]]:
    """The tombstones whose ``by`` (``event_xid`` or ``erased_xid``) is in the window, by
    (``by``, ``seq``); the first window (``xid_from`` None) also holds NULL ``event_xid``."""
    e = tables.erasures.c
    column = e[by]
    condition = column < xid_to
    if xid_from is not None:
        condition = condition & (column >= xid_from)
    elif by == "event_xid":
        condition = condition | column.is_(None)
    # The times as UTC text: the driver reads a year-1 time wrongly (as BC) in a session
    # time zone west of UTC.
    columns = [
        func.to_char(func.timezone("UTC", c), _UTC_FORMAT).label(c.name) if c.name in _TIMES else c
        for c in tables.erasures.c
    ]
    query = select(*columns).where(condition).order_by(column.nulls_first(), e.seq)
    stones = []
    for row in connection.execute(query).mappings():
        stone = dict(row)
        for name in _TIMES:
            stone[name] = _utc_datetime(stone[name])
        stones.append(stone)
    return stones


_TIMES: Final = ("event_created_at", "erased_at")


class Entry(NamedTuple):
    """One event of a window, in (xid, id) order, with the leaf a seal holds for it.

    ``id`` is the UUID's text (lowercase with hyphens), whose order is the UUID's. (A
    tuple: one is made per event verified.)
    """

    xid: int | None
    id: str
    leaf: bytes


def end_key(end: bytes) -> tuple[int, str]:
    """The (xid, id) of a chunk end of ``chunk_ends``."""
    return int.from_bytes(end[:8], "big"), str(uuid.UUID(bytes=end[8:]))


_KEY_COLUMNS: Final = ("project_id", "agent_id")
_AS_TEXT: Final = frozenset(
    {"id", "session_id", "user_id", "project_id", "agent_id", "payload", "xid"}
)


Check = Callable[[str, str], None]
"""Records a problem of one event: (kind, detail)."""


def _present_with_tombstone(
    row: Sequence[Any], stones: list[dict[str, Any]], check: Check | None
) -> bytes:
    """The leaf of a row that has tombstones: its earliest tombstone's; checked if asked."""
    first = stones[0]
    if check is not None:
        values = dict(zip(LEAF_COLUMNS, row, strict=True))
        event = values["id"]
        deleted = [stone for stone in stones if stone["kind"] != "set_null"]
        if deleted:
            check(
                "tombstone",
                f"event {event} is present although tombstone {deleted[0]['seq']} "
                f"({deleted[0]['kind']}) records its deletion",
            )
        for column in _KEY_COLUMNS:
            now = values[column]
            if now is not None and now != first[column]:
                check(
                    "tombstone",
                    f"event {event}: {column} is {now}, but its earliest tombstone "
                    f"{first['seq']} records {first[column]} (only NULL may replace it)",
                )
            values[column] = first[column]
        values["created_at"] = _utc_datetime(values["created_at"])
        restored = [values[column] for column in LEAF_COLUMNS]
        if leaf_hash_of(restored, as_text=True) != bytes(first["leaf"]):
            check(
                "tombstone",
                f"event {event} differs from the row its earliest tombstone {first['seq']} "
                f"({first['kind']}) records (with {' and '.join(_KEY_COLUMNS)} set back): "
                "edited after that erasure",
            )
    return bytes(first["leaf"])


def _absent_with_tombstone(event: str, stones: list[dict[str, Any]], check: Check | None) -> bytes:
    """The leaf of an event missing from the table: its earliest tombstone's; checked, if
    asked, that a tombstone records its removal (a set_null one records a change only)."""
    if check is not None and all(stone["kind"] == "set_null" for stone in stones):
        check(
            "tombstone",
            f"event {event} is missing, but its tombstone {stones[0]['seq']} records only an "
            "ON DELETE SET NULL, which never removes a row: deleted without a tombstone",
        )
    return bytes(stones[0]["leaf"])


_UTC_FORMAT: Final = "YYYY-MM-DD HH24:MI:SS.US"
_UTC_TEXT: Final = f"to_char(created_at AT TIME ZONE 'UTC', '{_UTC_FORMAT}')"
"""``created_at`` as UTC text in a fixed format that no session setting changes (cheaper to
read than a timestamptz; `leaf_hash_of_text` builds the leaf's time from it)."""


def _column_sql(name: str) -> str:
    if name == "created_at":
        return _UTC_TEXT
    return f"{name}::text" if name in _AS_TEXT else name


def _utc_datetime(value: str) -> datetime:
    """``created_at`` as `_UTC_TEXT` reads it, back as an aware datetime."""
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _utc_text(value: datetime) -> str:
    """An aware datetime as `_UTC_TEXT` writes it (in the audit's range of years, the
    text's order is the time's)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


_CREATED: Final = LEAF_COLUMNS.index("created_at")
"""Where a row of `_rows` holds ``created_at`` (as `_UTC_TEXT`)."""


def _ties_by_time(rows: Iterator[Sequence[Any]]) -> Iterator[Sequence[Any]]:
    """Rows by (xid, id) (or id), those of equal (xid, id) by ``created_at``: the order of
    `_paged`. Only the partitioned layout, whose key is (id, created_at), can hold an id
    twice, and raw SQL alone stores one so."""
    held: list[Sequence[Any]] = []
    for row in rows:
        if held and (row[0] != held[0][0] or row[-1] != held[0][-1]):
            yield from _by_time(held)
            held.clear()
        held.append(row)
    yield from _by_time(held)


def _by_time(rows: list[Sequence[Any]]) -> list[Sequence[Any]]:
    if len(rows) > 1:
        rows.sort(key=itemgetter(_CREATED))
    return rows


def _rows_sql(tables: AuditTables, condition: str, order: str, style: str) -> str:
    """The window's rows: `LEAF_COLUMNS`, ids, keys, payload and xid as text, created_at
    as UTC text (`_UTC_TEXT`)."""
    columns = ", ".join(_column_sql(name) for name in LEAF_COLUMNS)
    bound = condition.replace(":lo", style.format("lo")).replace(":hi", style.format("hi"))
    # ORDER BY e.xid, e.id: the columns, not the output's xid::text and id::text (a text
    # order puts xid 1000 before 999, and keeps the (xid, id) index from being used).
    return f"SELECT {columns} FROM {quoted_name(tables.events)} AS e WHERE {bound} ORDER BY {order}"


def _prefetched(
    connection: Connection, driver: psycopg.Connection[Any], sql: str, params: dict[str, str]
) -> Iterator[Sequence[Any]]:
    """The rows of a server-side cursor, the next batch fetched by a thread while the
    caller hashes this one (the server and Python then work at the same time); errors as
    SQLAlchemy raises them."""
    batches: queue.Queue[list[Any] | BaseException | None] = queue.Queue(maxsize=2)
    stop = threading.Event()

    def offer(item: list[Any] | BaseException | None) -> bool:
        """Hand ``item`` to the caller; False once the caller stopped reading."""
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                batches.put(item, timeout=0.01)
                return True
        return False

    def fetch() -> None:
        try:
            with driver.cursor(name="eventlog_audit_rows") as cursor:
                cursor.execute(sql, params)
                while batch := cursor.fetchmany(_YIELD_PER):
                    if not offer(batch):
                        return
                offer(None)
        except BaseException as exc:  # handed to the caller, raised there
            offer(exc)

    thread = threading.Thread(target=fetch, name="eventlog-audit-rows", daemon=True)
    thread.start()
    try:
        while (batch := batches.get()) is not None:
            if isinstance(batch, BaseException):
                raise_as_sqlalchemy(connection, batch, sql, params, driver)
            yield from batch
    finally:
        # Stopped, the thread ends by itself within a batch, even if a Ctrl-C cuts this
        # wait short; waiting for it keeps it off the connection before the pool has it back.
        stop.set()
        thread.join()


def _rows(
    connection: Connection, tables: AuditTables, xid_from: int | None, xid_to: int
) -> Iterator[Sequence[Any]]:
    """The window's rows (`LEAF_COLUMNS`, ids, keys, payload, xid and created_at as text)
    by (xid, id, created_at):
    xid NULL first (the first window only).

    With psycopg, read by a server-side cursor of the driver, without SQLAlchemy's row
    processing (what reading costs is most of what verifying costs); any other driver
    (and psycopg's async connection) reads the same text through SQLAlchemy in keyset
    pages (`_paged`).
    """
    xid = "xid >= CAST(CAST(:lo AS text) AS xid8) AND " if xid_from is not None else ""
    parts = [(f"{xid}xid < CAST(CAST(:hi AS text) AS xid8)", "e.xid, e.id")]
    if xid_from is None:
        parts.insert(0, ("xid IS NULL", "e.id"))
    params = {"lo": str(xid_from), "hi": str(xid_to)}
    driver = connection.connection.driver_connection
    for condition, order in parts:
        if isinstance(driver, psycopg.Connection):
            sql = _rows_sql(tables, condition, order, "%({})s")
            # Read in the (xid, id) index's order, ties put in order here: an ORDER BY
            # ending in created_at could move the planner off the index to a sort.
            yield from _ties_by_time(_prefetched(connection, driver, sql, params))
        else:
            yield from _paged(connection, tables, condition, order, params)


def _paged(
    connection: Connection, tables: AuditTables, condition: str, order: str, params: dict[str, str]
) -> Iterator[Sequence[Any]]:
    """The rows of one part of a window in pages of `_YIELD_PER`, each page after the last
    row of the one before (by the (xid, id) index), buffered: no server-side cursor, which
    an async sealer cancelled mid-page (run_sync) would leave open."""
    by_xid = order.startswith("e.xid")
    # created_at last: an id stored twice in one transaction (partitioned layout) is two
    # rows of one (xid, id), and a page may end between them.
    at = "CAST(:after_at AS timestamp) AT TIME ZONE 'UTC'"
    after = (
        "(e.xid, e.id, e.created_at) > "
        f"(CAST(CAST(:after_xid AS text) AS xid8), CAST(:after_id AS uuid), {at})"
        if by_xid
        else f"(e.id, e.created_at) > (CAST(:after_id AS uuid), {at})"
    )
    order = f"{order}, e.created_at"
    first = _rows_sql(tables, condition, order, ":{}") + f" LIMIT {_YIELD_PER}"
    rest = _rows_sql(tables, f"{condition} AND {after}", order, ":{}") + f" LIMIT {_YIELD_PER}"
    page = connection.execute(text(first), params).all()
    while page:
        yield from page
        if len(page) < _YIELD_PER:
            return
        last = page[-1]
        cursor = {"after_id": last[0], "after_xid": last[-1], "after_at": last[_CREATED]}
        page = connection.execute(text(rest), params | cursor).all()


def window_entries(
    connection: Connection,
    tables: AuditTables,
    xid_from: int | None,
    xid_to: int,
    *,
    check: Check | None = None,
) -> Iterator[Entry]:
    """Every event of the window, present or erased, in (xid, id, created_at) order, each
    with its first-written leaf: an erased event's (or a set-null one's) from its earliest
    tombstone, any other's recomputed in Python from the row.

    With ``check``, a row that has tombstones is also checked against its earliest one.
    """
    # Tombstones by row: (xid, id, created_at), as `_rows` orders the rows.
    stones: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for stone in window_tombstones(connection, tables, xid_from, xid_to, by="event_xid"):
        row_key = (
            stone["event_xid"] or 0,
            str(stone["event_id"]),
            _utc_text(stone["event_created_at"]),
        )
        stones.setdefault(row_key, []).append(stone)
    erased = sorted(stones.items(), key=itemgetter(0))
    position = 0
    for row in _rows(connection, tables, xid_from, xid_to):
        event, xid_text = row[0], row[-1]
        xid = None if xid_text is None else int(xid_text)
        key = (xid or 0, event, row[_CREATED])
        while position < len(erased) and erased[position][0] < key:
            (old_xid, old_event, _), of_event = erased[position]
            yield Entry(
                old_xid or None, old_event, _absent_with_tombstone(old_event, of_event, check)
            )
            position += 1
        if position < len(erased) and erased[position][0] == key:
            leaf = _present_with_tombstone(row, erased[position][1], check)
            position += 1
        else:
            leaf = leaf_hash_of_text(row)
        yield Entry(xid, event, leaf)
    for (old_xid, old_event, _), of_event in erased[position:]:
        yield Entry(old_xid or None, old_event, _absent_with_tombstone(old_event, of_event, check))
