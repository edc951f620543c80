"""``verify_audit``: recompute every seal from the rows and tombstones, check the chain and
the external anchors, and list the legitimate erasures."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Engine,
    Numeric,
    and_,
    case,
    cast,
    column,
    exists,
    false,
    func,
    not_,
    null,
    or_,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError

from eventlog_persist._audit_chain import (
    END_SIZE,
    AuditTables,
    SealRow,
    audit_tables_of,
    end_key,
    merkle_root,
    read_seals,
    seal_hash,
    tombstone_hash,
    translated,
    window_entries,
    window_tombstones,
)
from eventlog_persist._audit_schema import ERASURE_KINDS
from eventlog_persist._audit_seal import IN_TRANSACTIONS, SealAnchor, refuse_autocommit
from eventlog_persist._model import EventLogMixin
from eventlog_persist._table import INT_RANGES, key_sql_type
from eventlog_persist._urls import shown
from eventlog_persist.exceptions import ConfigurationError

__all__ = ["AuditProblem", "AuditReport", "verify_audit"]


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One problem `verify_audit` found.

    Attributes:
        kind: ``chunk`` (a chunk's events differ from the sealed ones: an event edited,
            deleted without a tombstone, inserted, or moved in time or transaction),
            ``erasures`` (the tombstones of a seal's window differ from the sealed ones),
            ``tombstone`` (an event present although tombstoned as deleted, or changed
            since its SET NULL tombstone), ``forged_tombstone`` (a ``cascade`` tombstone
            whose chat session and user both exist, a ``set_null`` one whose project and
            agent exist), ``seal`` (a seal's hash or root does not match its fields),
            ``chain`` (a seal's number, previous hash or window does not follow the seal
            before), ``anchor`` (the stored chain disagrees with an external anchor).
        detail: What was found, in one line.
        seal: The seal it concerns (its ``seq``), if any.
        chunk: The chunk of that seal, from 0, if any.

    .. versionadded:: 0.3.0
    """

    kind: str
    detail: str
    seal: int | None = None
    chunk: int | None = None

    def __str__(self) -> str:
        where = "" if self.seal is None else f"seal {self.seal}"
        if self.chunk is not None:
            where += f" chunk {self.chunk}"
        return f"{self.kind}: {where + ': ' if where else ''}{self.detail}"


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What `verify_audit` found: OK, or every problem, and the legitimate erasures.

    Attributes:
        problems: Every problem found, seal by seal; empty when all is well.
        seals: Seals checked.
        events: Events the seals cover (erased ones included), each leaf recomputed.
        erasures: Tombstones by kind (``cascade``, ``set_null``, ``retention``,
            ``erasure``): the legitimate erasures, each kind listed, 0 included.
        unsealed: Events not sealed yet (written at or after the newest seal's window
            end): not checked, not a problem; seal often to keep it small.
        last_seal: The newest seal's head (``SEQ:HASH``): keep it as an anchor.
        last_sealed_at: When the newest seal was committed.

    .. versionadded:: 0.3.0
    """

    problems: tuple[AuditProblem, ...]
    seals: int
    events: int
    erasures: Mapping[str, int]
    unsealed: int
    last_seal: SealAnchor | None
    last_sealed_at: datetime | None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _shape_problem(row: SealRow) -> str | None:
    chunks, rest = divmod(len(row.chunk_roots), 32)
    if rest or len(row.chunk_ends) != chunks * END_SIZE:
        return "its chunk_roots and chunk_ends do not hold whole chunks"
    if row.chunk_size < 1 or chunks != -(-row.events // row.chunk_size):
        return f"{chunks} chunks cannot hold {row.events} events of chunk_size {row.chunk_size}"
    return None


def _check_seal(row: SealRow, previous: SealRow | None, problems: list[AuditProblem]) -> bool:
    """The seal's own fields and its link to the previous one; False if chunks are unusable."""

    def add(kind: str, detail: str) -> None:
        problems.append(AuditProblem(kind, detail, seal=row.seq))

    expected_seq = 1 if previous is None else previous.seq + 1
    if row.seq != expected_seq:
        add("chain", f"follows seal {expected_seq - 1}, so it should be seal {expected_seq}")
    expected_prev = None if previous is None else previous.seal_hash
    if row.prev_hash != expected_prev:
        shown_prev = "none" if row.prev_hash is None else row.prev_hash.hex()
        add(
            "chain",
            f"its prev_hash {shown_prev} is not the hash of the seal before "
            f"({'none' if expected_prev is None else expected_prev.hex()})",
        )
    expected_from = None if previous is None else previous.xid_to
    if row.xid_from != expected_from:
        add(
            "chain",
            f"its window starts at xid {row.xid_from}, not where the seal before ended "
            f"({expected_from})",
        )
    if seal_hash(row) != row.seal_hash:
        add("seal", "its seal_hash does not match its fields: the seal was rewritten")
    shape = _shape_problem(row)
    if shape is not None:
        add("seal", shape)
        return False
    roots = [row.chunk_roots[i : i + 32] for i in range(0, len(row.chunk_roots), 32)]
    if merkle_root(roots) != row.events_root:
        add("seal", "its events_root is not the root over its chunk roots")
    return True


def _chunk_detail(found: int, expected: int, end: bytes) -> str:
    xid = int.from_bytes(end[:8], "big")
    up_to = f"events up to (xid {xid or 'none'}, id {_uuid_text(end[8:])})"
    if found < expected:
        return (
            f"{expected - found} fewer events than sealed ({found} of {expected}, {up_to}): "
            "an event deleted without a tombstone, or moved out (its xid changed)"
        )
    if found > expected:
        return (
            f"{found - expected} more events than sealed ({found} of {expected}, {up_to}): "
            "an event inserted, or moved in (its xid changed)"
        )
    return (
        f"an event differs from when it was sealed ({found} events, {up_to}): its payload, "
        "created_at or another column was edited, or events were swapped"
    )


def _uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))


def _check_chunks(
    connection: Connection, tables: AuditTables, row: SealRow, problems: list[AuditProblem]
) -> int:
    """Recompute each chunk of the seal from the rows and tombstones; return the events."""

    def check(kind: str, detail: str) -> None:
        problems.append(AuditProblem(kind, detail, seal=row.seq))

    ends = [row.chunk_ends[i : i + END_SIZE] for i in range(0, len(row.chunk_ends), END_SIZE)]
    end_keys = [end_key(end) for end in ends]
    roots = [row.chunk_roots[i : i + 32] for i in range(0, len(row.chunk_roots), 32)]
    chunks = len(ends)
    leaves: list[bytes] = []
    index = 0
    extra = 0
    total = 0
    previous: tuple[int, str] | None = None

    def expected_size(number: int) -> int:
        return min(row.chunk_size, row.events - number * row.chunk_size)

    def close_chunk(number: int) -> None:
        if len(leaves) != expected_size(number) or merkle_root(leaves) != roots[number]:
            problems.append(
                AuditProblem(
                    "chunk",
                    _chunk_detail(len(leaves), expected_size(number), ends[number]),
                    seal=row.seq,
                    chunk=number,
                )
            )
        leaves.clear()

    for entry in window_entries(connection, tables, row.xid_from, row.xid_to, check=check):
        total += 1
        key = (entry.xid or 0, entry.id)
        # A chunk ends at an (xid, id): the rows of an id stored twice in one transaction
        # share it, and when a full chunk ends at the first of them, the next one begins
        # the next chunk, as the seal cut it.
        tie = key == previous
        previous = key
        while index < chunks and (
            key > end_keys[index]
            or (tie and key == end_keys[index] and len(leaves) >= expected_size(index))
        ):
            close_chunk(index)
            index += 1
        if index == chunks:
            extra += 1
        else:
            leaves.append(entry.leaf)
    while index < chunks:
        close_chunk(index)
        index += 1
    if extra:
        problems.append(
            AuditProblem(
                "chunk",
                f"{extra} events in the seal's window come after its last chunk: inserted, "
                "or moved in (their xid changed)",
                seal=row.seq,
                chunk=chunks,
            )
        )
    return total


def _check_erasures(
    connection: Connection, tables: AuditTables, row: SealRow, problems: list[AuditProblem]
) -> None:
    stones = window_tombstones(connection, tables, row.xid_from, row.xid_to, by="erased_xid")
    root = merkle_root([tombstone_hash(stone) for stone in stones])
    if len(stones) != row.erasures or root != row.erasures_root:
        problems.append(
            AuditProblem(
                "erasures",
                f"the tombstones written in its window differ from the sealed ones "
                f"({len(stones)} now, {row.erasures} sealed): a tombstone added, removed or "
                "edited",
                seal=row.seq,
            )
        )


def _parent(tables: AuditTables, name: str) -> Any:
    """The table a key of ``event_logs`` references (its foreign key, as the model says)."""
    keys = list(tables.events.c[name].foreign_keys)
    if not keys:
        raise ConfigurationError(
            f"{tables.events.name}.{name} has no foreign key, so the tombstones cannot be "
            "checked against their parents; verify with the host's EventLog model (or a "
            "database whose event_logs keeps its foreign keys)"
        )
    *schema, table_name, column_name = keys[0].target_fullname.split(".")
    return table(table_name, column(column_name), schema=".".join(schema) if schema else None).c[
        column_name
    ]


def _forged(connection: Connection, tables: AuditTables) -> list[AuditProblem]:
    """The tombstones holding a key that the guard could not have written (it writes
    ``key::text``), then those whose erasure did not happen as their kind says."""
    e = tables.erasures.c
    unreadable = []
    for name in ("session_id", "user_id", "project_id", "agent_id"):
        bad = _not_a_key(e[name], key_sql_type(tables.events.c[name].type))
        if bad is not None:
            rows = connection.execute(select(e.seq, e.event_id, e[name]).where(bad).order_by(e.seq))
            unreadable += [(seq, event, name, text) for seq, event, text in rows]
    problems = [
        AuditProblem(
            "forged_tombstone",
            f"tombstone {seq} of event {event}: {name} {text!r} is not a key of "
            f"{tables.events.name}.{name}",
        )
        for seq, event, name, text in sorted(unreadable)
    ]
    problems.extend(_forged_among(connection, tables))
    problems.extend(_nulled_by_hand(connection, tables))
    return problems


_UUID_TEXT: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_INT_TEXT: Final = "^(0|-?[1-9][0-9]{0,18})$"


def _not_a_key(text: Any, sql_type: str | None) -> Any:
    """The condition that ``text`` is not ``key::text`` of a key of ``sql_type`` (None: a
    key type the package does not know, left to the database)."""
    if sql_type == "uuid":
        return and_(text.is_not(None), not_(text.regexp_match(_UUID_TEXT)))
    if sql_type is None:
        return None
    bound = INT_RANGES[sql_type]
    # CASE: the cast to numeric only once the text is known to be digits.
    in_range = case(
        (text.regexp_match(_INT_TEXT), cast(text, Numeric()).between(-bound, bound - 1)),
        else_=false(),
    )
    return and_(text.is_not(None), not_(in_range))


def _parent_exists(tables: AuditTables, name: str, text: Any) -> Any:
    """The condition that the parent ``text`` (a tombstone's ``key::text``) names exists."""
    sql_type = tables.events.c[name].type
    key: Any = cast(text, sql_type)
    unreadable = _not_a_key(text, key_sql_type(sql_type))
    if unreadable is not None:
        # Cast only a key text (CASE keeps the order; a WHERE does not): another one names
        # no parent, and is reported apart.
        key = case((not_(unreadable), key), else_=null())
    return exists().where(_parent(tables, name) == key)


def _nulled_by_hand(connection: Connection, tables: AuditTables) -> list[AuditProblem]:
    """The rows whose project or agent is NULL while their earliest tombstone records one
    that still exists: no ON DELETE SET NULL made it NULL, and the guard allows no other
    change (the leaf check sets the keys back, so it cannot see this)."""
    e = tables.erasures.c
    rows = tables.events.c
    # From the tombstones (usually few), not from the rows: the earliest of each row's.
    first = (
        select(func.min(e.seq).label("seq"))
        .group_by(e.event_id, e.event_created_at)
        .subquery("first")
    )
    earliest = (
        select(e.event_id, e.event_created_at, e.seq, e.project_id, e.agent_id)
        .join_from(tables.erasures, first, e.seq == first.c.seq)
        .subquery("earliest")
    )
    joined = tables.events.join(
        earliest,
        and_(rows.id == earliest.c.event_id, rows.created_at == earliest.c.event_created_at),
    )
    problems: list[AuditProblem] = []
    for name in ("project_id", "agent_id"):
        recorded = earliest.c[name]
        query = (
            select(rows.id, earliest.c.seq, recorded)
            .select_from(joined)
            .where(
                rows[name].is_(None),
                recorded.is_not(None),
                _parent_exists(tables, name, recorded),
            )
            .order_by(rows.id)
        )
        problems.extend(
            AuditProblem(
                "tombstone",
                f"event {event}: {name} is NULL, but its earliest tombstone {seq} records "
                f"{value}, which still exists: set to NULL by hand, not by an ON DELETE SET "
                "NULL",
            )
            for event, seq, value in connection.execute(query)
        )
    return problems


def _forged_among(connection: Connection, tables: AuditTables) -> list[AuditProblem]:
    e = tables.erasures.c

    def present(name: str) -> Any:
        return _parent_exists(tables, name, e[name])

    cascade = select(e.seq, e.event_id).where(
        e.kind == "cascade", present("session_id"), present("user_id")
    )
    set_null = select(e.seq, e.event_id).where(
        e.kind == "set_null",
        or_(e.project_id.is_(None), present("project_id")),
        or_(e.agent_id.is_(None), present("agent_id")),
    )
    problems = [
        AuditProblem(
            "forged_tombstone",
            f"tombstone {seq} (cascade) of event {event}: its chat session and user both "
            "still exist, so no ON DELETE CASCADE removed it",
        )
        for seq, event in connection.execute(cascade.order_by(e.seq))
    ]
    problems.extend(
        AuditProblem(
            "forged_tombstone",
            f"tombstone {seq} (set_null) of event {event}: its project and agent still "
            "exist, so no ON DELETE SET NULL changed it",
        )
        for seq, event in connection.execute(set_null.order_by(e.seq))
    )
    return problems


def _anchors(anchors: Iterable[SealAnchor | str]) -> list[SealAnchor]:
    if isinstance(anchors, (str, bytes)):
        raise ConfigurationError(
            "anchors must be a list of SealAnchor or 'SEQ:HASH' strings, not one string; "
            "e.g. anchors=['12:9f86...']"
        )
    if not isinstance(anchors, Iterable):
        raise ConfigurationError(
            f"anchors must be a list of SealAnchor or 'SEQ:HASH' strings, got {anchors!r}; "
            "pass [] to verify without anchors"
        )
    return [a if isinstance(a, SealAnchor) else SealAnchor.parse(a) for a in anchors]


def _verify_on(
    connection: Connection, tables: AuditTables, anchors: list[SealAnchor]
) -> AuditReport:
    problems: list[AuditProblem] = []
    seals = read_seals(connection, tables, last_only=False)
    previous: SealRow | None = None
    events = 0
    for row in seals:
        usable = _check_seal(row, previous, problems)
        if usable:
            events += _check_chunks(connection, tables, row, problems)
        _check_erasures(connection, tables, row, problems)
        previous = row
    problems.extend(_forged(connection, tables))
    by_seq = {row.seq: row for row in seals}
    for anchor in anchors:
        stored = by_seq.get(anchor.seq)
        if stored is None:
            problems.append(
                AuditProblem(
                    "anchor",
                    f"the anchor {anchor} names a seal the database no longer has",
                    seal=anchor.seq,
                )
            )
        elif stored.seal_hash != anchor.seal_hash:
            problems.append(
                AuditProblem(
                    "anchor",
                    f"the stored seal's hash {stored.seal_hash.hex()} is not the anchored "
                    f"{anchor.seal_hash.hex()}: the seals were rewritten",
                    seal=anchor.seq,
                )
            )
    e = tables.erasures.c
    kinds = dict.fromkeys(ERASURE_KINDS, 0)
    for kind, count in connection.execute(select(e.kind, func.count()).group_by(e.kind)):
        kinds[kind] = int(count)
    c = tables.events.c
    unsealed_query = select(func.count()).select_from(tables.events)
    if previous is not None:
        unsealed_query = unsealed_query.where(and_(c.xid.is_not(None), c.xid >= previous.xid_to))
    unsealed = int(connection.execute(unsealed_query).scalar_one())
    return AuditReport(
        problems=tuple(problems),
        seals=len(seals),
        events=events,
        erasures=kinds,
        unsealed=unsealed,
        last_seal=None if previous is None else _anchor_or_none(previous.seq, previous.seal_hash),
        last_sealed_at=None if previous is None else previous.sealed_at,
    )


def _anchor_or_none(seq: int, seal_hash: bytes) -> SealAnchor | None:
    """The newest seal's anchor; None when its row was altered past being one (a number
    below 1, a hash of another size), which the checks above report."""
    try:
        return SealAnchor(seq, seal_hash)
    except ConfigurationError:
        return None


def verify_audit(
    model: type[EventLogMixin[Any]],
    bind: Engine | Connection,
    *,
    anchors: Iterable[SealAnchor | str] = (),
) -> AuditReport:
    """Check the sealed events, tombstones and seals; report OK or every problem found.

    Each seal is recomputed from what the database holds now: every event of its window,
    by (xid, id), its leaf recomputed in Python from the row (`audit_leaf_hash`, never
    the database's function), an erased event's taken from its earliest tombstone (and a
    row still present after a SET NULL checked against that tombstone); each chunk is
    compared with its sealed root, so a problem is reported with its chunk. Then the
    window's tombstones, the seal's own hash, its link to the seal before, the tombstones
    whose parent still exists (forged), and ``anchors``, the seal heads kept outside the
    database, which catch seals rewritten as a whole. The events written after the
    newest seal are counted (``unsealed``), not checked.

    Read-only: one REPEATABLE READ transaction (a consistent snapshot).

    Args:
        model: The host's ``EventLog`` model, opted in to the feed and the audit.
        bind: An Engine, or a Connection with no transaction begun.
        anchors: Seal heads exported by an anchor, as `SealAnchor` or ``"SEQ:HASH"``.

    Returns:
        The report: ``ok``, ``problems``, the erasures by kind, the counts.

    Raises:
        ConfigurationError: ``model`` lacks the feed, or an anchor cannot be read.
        MigrationSetupError: The database lacks the audit's schema.

    Example:
        >>> report = verify_audit(EventLog, engine, anchors=["12:9f86d0..."])  # doctest: +SKIP
        >>> report.ok, report.erasures  # doctest: +SKIP
        (True, {'cascade': 3, 'set_null': 0, 'retention': 0, 'erasure': 0})

    .. versionadded:: 0.3.0
    """
    tables = audit_tables_of(model, api="verify_audit")
    heads = _anchors(anchors)
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return _verify(connection.execution_options(**IN_TRANSACTIONS), tables, heads)
    if not isinstance(bind, Connection) or bind.in_transaction():
        raise ConfigurationError(
            f"verify_audit needs a sync sqlalchemy Engine, or a Connection with no "
            f"transaction begun, got {shown(bind)}; from async code, run it in a thread "
            "(asyncio.to_thread) with an Engine of a sync driver"
        )
    refuse_autocommit(bind, "verify_audit")
    return _verify(bind, tables, heads)


def _verify(connection: Connection, tables: AuditTables, anchors: list[SealAnchor]) -> AuditReport:
    try:
        with connection.begin():
            connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"))
            return _verify_on(connection, tables, anchors)
    except DBAPIError as exc:
        raise translated(exc) from exc
