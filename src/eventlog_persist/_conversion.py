"""Online conversion of a plain ``event_logs`` that holds rows into the partitioned layout.

The slow steps take no lock that blocks writers; one short transaction swaps the tables:

1. ``bound``: ``CHECK (created_at < B) NOT VALID`` (a brief ACCESS EXCLUSIVE lock, no scan);
   ``B`` is the first week (or month) start at least a day ahead.
2. ``validate``: ``VALIDATE CONSTRAINT`` scans the table under SHARE UPDATE EXCLUSIVE.
3. ``key``: ``CREATE UNIQUE INDEX CONCURRENTLY`` on ``(id, created_at)``.
4. ``swap``: under ``lock_timeout``, retried: the table becomes the partition
   ``event_logs_legacy`` ``FROM (MINVALUE) TO (B)`` of a new partitioned ``event_logs`` with
   the keys, foreign keys and indexes revision ``evlpart_0001`` creates, and the table's own
   CHECK constraints (the audit's on ``created_at``, a host's), a host's foreign keys and
   indexes, its owner and grants; its indexes and foreign keys are attached, not rebuilt,
   and the valid CHECK spares ATTACH its scan.

Each step detects that it was done, so an interrupted conversion resumes where it stopped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeAlias, get_args

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError

from eventlog_persist._audit_partitions import GUARD_TRIGGERS, audited, guard_statements
from eventlog_persist._failures import LOCK_NOT_AVAILABLE, server_text, sqlstate_of
from eventlog_persist._partitions import (
    MAX_AHEAD,
    PartitionInterval,
    bounded_partitions,
    free_ranges,
    interval_of_partitions,
    next_period,
    period_start,
)
from eventlog_persist._schema import (
    FEED_INDEX_NAME,
    FK_NAMES,
    INDEX_NAMES,
    PK_NAME,
    TABLE_NAME,
    XID_COLUMN,
)
from eventlog_persist._schema import (
    quote_identifier as _quote,
)
from eventlog_persist._urls import check_engine
from eventlog_persist.exceptions import ConfigurationError, ConversionError

__all__ = [
    "LEGACY_KEY",
    "LEGACY_PARTITION",
    "PREPARED_BOUND",
    "ConversionResult",
    "convert_to_partitioned",
]

LEGACY_PARTITION: Final = f"{TABLE_NAME}_legacy"
"""The converted table's name as the partition ``FROM (MINVALUE) TO (boundary)``."""
_BOUND: Final = f"{LEGACY_PARTITION}_bound"
PREPARED_BOUND: Final = _BOUND
"""The CHECK a prepared conversion leaves on the plain ``event_logs`` until its swap."""
_INTERVAL_NOTE: Final = "eventlog-persist: chosen for partition_interval="
"""The comment on the bound, naming the interval it starts (the swap partitions by it)."""
# What the swap reads before its lock and carries over (or that `_refuse_attachments` refuses),
# as one list: the swap's probe compares it under the lock, so that a change made meanwhile
# stops the swap instead of being lost. The conversion's own bound is left out.
_DEFINITION_SQL: Final = (
    "SELECT array(SELECT d FROM ("
    "SELECT 'constraint ' || k.conname || ' ' || pg_get_constraintdef(k.oid) AS d "
    "FROM pg_constraint k WHERE k.conrelid = c.oid AND k.conname <> :bound "
    "UNION ALL SELECT 'referenced by ' || k.conrelid::regclass::text || ' ' || k.conname "
    "FROM pg_constraint k WHERE k.confrelid = c.oid AND k.contype = 'f' "
    "UNION ALL SELECT 'index ' || pg_get_indexdef(i.indexrelid) || ' ' || i.indisvalid "
    "FROM pg_index i WHERE i.indrelid = c.oid "
    "UNION ALL SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || t.tgenabled::text "
    "FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal "
    "UNION ALL SELECT 'rule ' || r.rulename FROM pg_rewrite r WHERE r.ev_class = c.oid "
    "UNION ALL SELECT 'inherits ' || h.inhparent || ' ' || h.inhrelid FROM pg_inherits h "
    "WHERE c.oid IN (h.inhparent, h.inhrelid) "
    "UNION ALL SELECT 'table ' || c.relowner || ' ' || c.relrowsecurity || ' ' "
    "|| coalesce(c.relacl::text, '') "
    "UNION ALL SELECT 'column ' || a.attname || ' ' || a.attacl::text FROM pg_attribute a "
    "WHERE a.attrelid = c.oid AND a.attacl IS NOT NULL AND NOT a.attisdropped"
    ") AS parts ORDER BY d)"
)
_KEY: Final = f"{LEGACY_PARTITION}_pkey"  # what duplicate detection recognises as a key
LEGACY_KEY: Final = _KEY
"""The unique index on ``(id, created_at)`` a prepared conversion builds for its swap."""
# The indexes the package creates (the swap makes them itself); any other is a host's own.
_PACKAGE_INDEXES: Final = (PK_NAME, *INDEX_NAMES, FEED_INDEX_NAME)
# (column, partial-index condition) of each index, as evl_0001 and evlpart_0001 declare them.
_INDEX_SHAPES: Final = {
    "ix_event_logs_session_id_created_at": ("session_id", None),
    "ix_event_logs_user_id_created_at": ("user_id", None),
    "ix_event_logs_project_id_created_at": ("project_id", "project_id IS NOT NULL"),
    "ix_event_logs_agent_id_created_at": ("agent_id", "agent_id IS NOT NULL"),
}
_COLUMNS: Final = frozenset({"id", "session_id", "user_id", "event_type", "payload", "created_at"})
# The boundary is at least this far ahead when chosen; a resumed conversion whose boundary
# comes closer than _RESUME_MARGIN starts the bound again (until the swap, the CHECK refuses
# rows at or after the boundary).
_MARGIN: Final = timedelta(days=1)
_RESUME_MARGIN: Final = timedelta(hours=1)
_RETRIED_STATES: Final = frozenset({LOCK_NOT_AVAILABLE, "40P01"})  # lock timeout, deadlock
_MOST_SECONDS: Final = 3600  # for lock_timeout and retry_delay, as for partition maintenance

State: TypeAlias = Literal["converted", "prepared", "already_partitioned"]
Step: TypeAlias = Literal["bound", "validate", "key", "swap"]


class _Changed(Exception):
    """The table's definition changed between the swap's reads and its lock."""


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """What `convert_to_partitioned` did.

    Attributes:
        state: ``"converted"`` (the swap ran now), ``"prepared"`` (stopped before the swap,
            as asked) or ``"already_partitioned"`` (nothing to do).
        boundary: The legacy partition's upper bound (first instant of the first new
            partition); ``None`` when nothing was done.
        steps: ``(step, seconds)`` of each step this call ran: ``bound``, ``validate``,
            ``key``, ``swap`` (steps found done are not listed).
        partitions: The partitions this call created after the legacy one (each attached
            after the swap, in its own short transaction).
        swap_attempts: Swap transactions started (1 when no lock wait timed out and the
            table did not change while the swap read it).
        swap_hold: Seconds the swap held its ACCESS EXCLUSIVE lock, measured by the server
            from the lock's grant to just before COMMIT (``clock_timestamp()``).
        swap_seconds: The same seen by the client: from the lock's grant to COMMIT's return.

    .. versionadded:: 0.3.0
    """

    state: State
    boundary: datetime | None = None
    steps: tuple[tuple[Step, float], ...] = ()
    partitions: tuple[str, ...] = ()
    swap_attempts: int = 0
    swap_hold: float | None = None
    swap_seconds: float | None = None


@dataclass(slots=True)
class _Found:
    """The table's conversion state, read from the catalog."""

    kind: str  # pg_class.relkind: "r" plain, "p" partitioned
    boundary: datetime | None = None
    bound_valid: bool = False
    key_valid: bool | None = None  # None: no (id, created_at) index yet
    default_partition: str | None = None
    bound_for: str | None = None  # the interval the bound was chosen for


def convert_to_partitioned(
    engine: Engine,
    *,
    schema: str | None = None,
    partition_interval: PartitionInterval | None = None,
    partitions_ahead: int = 4,
    lock_timeout: float = 0.05,
    swap_attempts: int = 50,
    retry_delay: float = 0.5,
    stop_before_swap: bool = False,
    on_progress: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Convert a plain ``event_logs`` that holds rows into the partitioned layout, online.

    Writers keep writing throughout: only two transactions take a lock that blocks them, each
    under ``lock_timeout`` and retried: adding the CHECK (no scan), and the swap (tens of
    milliseconds; see docs/benchmarks/convert.md). Afterwards ``alembic upgrade`` runs
    revision ``evlpart_0001``, which finds the table partitioned and changes nothing.

    For a lossless switch of the writers, stop before the swap (``stop_before_swap=True``),
    deploy the model with ``partitioned=True`` (the new unique index on ``(id, created_at)``
    serves its ``ON CONFLICT`` on the plain table), then run the conversion again.

    With the audit (revision ``evlaudit_0001``), the old table keeps its guard triggers as
    the legacy partition, and the swap puts them on the partitioned ``event_logs`` and on
    each partition it creates; seals made before the conversion verify after it.

    Args:
        engine: A synchronous engine on the database, as a role that owns ``event_logs``.
        schema: Schema of ``event_logs`` (default: the search_path).
        partition_interval: ``"week"`` (Mondays, UTC) or ``"month"``, as for evlpart_0001.
            None (the default): the table's own, once a conversion has chosen its bound
            (an interrupted or prepared conversion, a converted table); else ``"week"``.
            One that differs from the table's raises `ConversionError`.
        partitions_ahead: As for evlpart_0001 (1 to 52): partitions exist up to the one
            evlpart_0001 would create last.
        lock_timeout: Seconds each blocking transaction waits for a lock before it gives up
            and is retried (0.001 to 3600); writers queue behind a waiting lock for at most
            this long.
        swap_attempts: Attempts of each blocking transaction before `ConversionError`.
        retry_delay: Seconds between attempts (0 to 3600).
        stop_before_swap: Run the online steps only.
        on_progress: Called with a line of text before and after each step.

    Returns:
        What was done, with the time of each step and of the swap's lock.

    Raises:
        ConfigurationError: An argument is not valid.
        ConversionError: The table cannot be converted, or a step failed (the message says
            why and what to do; completed steps stay done).

    .. versionadded:: 0.3.0
    """
    check_engine(engine, api="convert_to_partitioned", is_async=False)
    if partition_interval is not None and partition_interval not in get_args(PartitionInterval):
        raise ConfigurationError(
            f"partition_interval={partition_interval!r} is not valid; use 'week' or 'month'"
        )
    if (
        isinstance(partitions_ahead, bool)
        or not isinstance(partitions_ahead, int)
        or not 1 <= partitions_ahead <= MAX_AHEAD
    ):
        raise ConfigurationError(
            f"partitions_ahead={partitions_ahead!r} is not valid; use 1 to {MAX_AHEAD}"
        )
    for name, value in (("lock_timeout", lock_timeout), ("retry_delay", retry_delay)):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value <= _MOST_SECONDS
        ):
            raise ConfigurationError(
                f"{name}={value!r} is not valid; use seconds from 0 to {_MOST_SECONDS}"
            )
    if lock_timeout < 0.001:
        raise ConfigurationError(
            f"lock_timeout={lock_timeout!r} is not valid; use at least 0.001 s (0 would wait "
            "without limit, and writers would queue behind the waiting lock)"
        )
    if isinstance(swap_attempts, bool) or not isinstance(swap_attempts, int) or swap_attempts < 1:
        raise ConfigurationError(f"swap_attempts={swap_attempts!r} is not valid; use 1 or more")
    run = _Conversion(
        engine,
        schema=schema,
        interval=partition_interval,
        ahead=partitions_ahead,
        lock_timeout=lock_timeout,
        attempts=swap_attempts,
        retry_delay=retry_delay,
        progress=on_progress or (lambda _line: None),
    )
    return run.run(stop_before_swap=stop_before_swap)


def choose_boundary(now: datetime, interval: PartitionInterval) -> datetime:
    """The first week (or month) start at least a day after ``now``."""
    return next_period(period_start(now + _MARGIN, interval), interval)


def partitions_after(
    boundary: datetime, now: datetime, interval: PartitionInterval, ahead: int
) -> list[tuple[str, datetime, datetime]]:
    """``(name, from, to)`` from ``boundary`` up to the last one evlpart_0001 creates at
    ``now`` (the current interval and ``ahead`` more); at least one."""
    last = period_start(now, interval)
    for _ in range(ahead):
        last = next_period(last, interval)
    found: list[tuple[str, datetime, datetime]] = []
    start = boundary
    while not found or start <= last:
        end = next_period(start, interval)
        found.append((f"{TABLE_NAME}_p{start:%Y%m%d}", start, end))
        start = end
    return found


class _Conversion:
    def __init__(
        self,
        engine: Engine,
        *,
        schema: str | None,
        interval: PartitionInterval | None,
        ahead: int,
        lock_timeout: float,
        attempts: int,
        retry_delay: float,
        progress: Callable[[str], None],
    ) -> None:
        self.engine = engine
        self.schema = schema
        self.given: PartitionInterval | None = interval
        self.interval: PartitionInterval = interval or "week"
        self.ahead = ahead
        self.lock_timeout = lock_timeout
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.progress = progress
        self.steps: list[tuple[Step, float]] = []
        # The table as the caller named it, for messages; SQL names the schema found.
        self.shown = self.table

    def name(self, relation: str) -> str:
        return f"{_quote(self.schema)}.{_quote(relation)}" if self.schema else _quote(relation)

    @property
    def table(self) -> str:
        return self.name(TABLE_NAME)

    # --- the steps ----------------------------------------------------------------------

    def run(self, *, stop_before_swap: bool) -> ConversionResult:
        with self._autocommit() as connection:
            found = self._inspect(connection)
            self.interval = self._interval(connection, found)
            if found.kind == "p":
                if found.default_partition is not None:
                    raise ConversionError(
                        f"{TABLE_NAME} is already partitioned, with a DEFAULT partition "
                        f"({found.default_partition}); the package's layout has none (every new "
                        "partition would scan it). Move its rows into range partitions and "
                        "drop it; there is nothing to convert"
                    )
                if found.boundary is None:
                    self.progress(f"{TABLE_NAME} is already partitioned: nothing to do")
                    return ConversionResult("already_partitioned")
                # Converted: the partitions after the legacy one may be missing still.
                partitions = partitions_after(
                    found.boundary, datetime.now(UTC), self.interval, self.ahead
                )
                created = self._add_partitions(partitions)
                self.progress(f"{TABLE_NAME} is already converted: nothing else to do")
                return ConversionResult("already_partitioned", found.boundary, (), created)
            now = datetime.now(UTC)
            boundary = found.boundary
            if boundary is not None and boundary - now < _RESUME_MARGIN:
                self.progress(
                    f"the bound of an interrupted conversion ({boundary.isoformat()}) is too "
                    "close: starting it again"
                )
                self._blocking(f"ALTER TABLE {self.table} DROP CONSTRAINT {_quote(_BOUND)}")
                boundary = None
                found.bound_valid = False
            if boundary is None:
                boundary = choose_boundary(now, self.interval)
                self._timed(
                    "bound",
                    f"CHECK (created_at < {boundary.isoformat()}) NOT VALID",
                    lambda: self._blocking(
                        f"ALTER TABLE {self.table} ADD CONSTRAINT {_quote(_BOUND)} "
                        f"CHECK (created_at < '{boundary.isoformat()}') NOT VALID;\n"
                        f"COMMENT ON CONSTRAINT {_quote(_BOUND)} ON {self.table} IS "
                        f"'{_INTERVAL_NOTE}{self.interval}'"
                    ),
                )
            if not found.bound_valid:
                self._timed(
                    "validate",
                    "VALIDATE CONSTRAINT (scans the table; writers go on)",
                    lambda: self._validate(connection, boundary),
                )
            if found.key_valid is False:
                self.progress(f"dropping the invalid index {_KEY} of an interrupted build")
                connection.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {self.name(_KEY)}")
            if not found.key_valid:
                self._timed(
                    "key",
                    "CREATE UNIQUE INDEX CONCURRENTLY (id, created_at) (writers go on)",
                    lambda: self._build_key(connection),
                )
        if stop_before_swap:
            self.progress(
                "prepared; deploy the EventLog model with partitioned=True, then run the "
                "conversion again to swap"
            )
            return ConversionResult("prepared", boundary, tuple(self.steps))
        return self._swap(boundary)

    def _interval(self, connection: Connection, found: _Found) -> PartitionInterval:
        """The caller's interval, checked against the one the table already has, if any."""
        if found.kind == "p" and found.boundary is not None:
            own = interval_of_partitions(connection, self.table)
            has = f"has {own}ly partitions"
            if own is None and not bounded_partitions(connection, self.table):
                # The legacy partition alone (a swap cut short): its bound says.
                fits = [
                    i
                    for i in get_args(PartitionInterval)
                    if period_start(found.boundary, i) == found.boundary
                ]
                if len(fits) > 1 and self.given is None:
                    raise ConversionError(
                        f"convert: {self.shown} was swapped with its legacy partition ending "
                        f"at {found.boundary.isoformat()}, where a week and a month both start, "
                        "and stopped before its first partitions; pass the interval it was "
                        "given: partition_interval='week' or 'month' (CLI: --interval)"
                    )
                own = self.given if self.given in fits else next(iter(fits), None)
                has = f"was prepared for {own}ly partitions"
        else:  # a bound set by an earlier run says which interval it starts
            own = next((i for i in get_args(PartitionInterval) if i == found.bound_for), None)
            has = f"was prepared for {own}ly partitions"
        if own is None:
            return self.interval
        if self.given is not None and own != self.given:
            raise ConversionError(
                f"convert: {self.shown} {has}, not {self.given}ly ones; pass "
                f"partition_interval={own!r} (CLI: --interval {own}), or leave it out to use "
                "the table's own"
            )
        return own

    def _timed(self, step: Step, what: str, action: Callable[[], object]) -> None:
        self.progress(f"{step}: {what} ...")
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
        self.steps.append((step, seconds))
        self.progress(f"{step}: done in {seconds:.3f} s")

    def _validate(self, connection: Connection, boundary: datetime) -> None:
        try:
            connection.exec_driver_sql(
                f"ALTER TABLE {self.table} VALIDATE CONSTRAINT {_quote(_BOUND)}"
            )
        except DBAPIError as exc:
            if sqlstate_of(exc) != "23514":
                raise self._failed("validate", exc) from exc
            self._blocking(f"ALTER TABLE {self.table} DROP CONSTRAINT {_quote(_BOUND)}")
            raise ConversionError(
                f"convert: {TABLE_NAME} holds rows with created_at at or after "
                f"{boundary.isoformat()} (in the future), which the legacy partition cannot "
                "hold; the bound was removed again. Correct or delete those rows (SELECT ... "
                f"WHERE created_at >= '{boundary.isoformat()}'), then run the conversion again"
            ) from exc

    def _build_key(self, connection: Connection) -> None:
        try:
            connection.exec_driver_sql(
                f"CREATE UNIQUE INDEX CONCURRENTLY {_quote(_KEY)} ON {self.table} (id, created_at)"
            )
        except DBAPIError as exc:
            raise self._failed("key", exc) from exc

    def _swap(self, boundary: datetime) -> ConversionResult:
        partitions = partitions_after(boundary, datetime.now(UTC), self.interval, self.ahead)
        self.progress(
            f"swap: one transaction under lock_timeout {self.lock_timeout * 1000:g} ms "
            f"(legacy partition up to {boundary.isoformat()}, {len(partitions)} partitions) ..."
        )
        attempts = 0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                hold, seconds = self._swap_once(boundary)
            except _Changed:
                if attempts >= self.attempts:
                    raise ConversionError(
                        f"convert: {TABLE_NAME} changed while the swap waited for its lock "
                        f"(attempt {attempts} of {self.attempts}); run the conversion again"
                    ) from None
                self.progress(
                    f"swap: attempt {attempts}: the table changed before the lock was "
                    "granted; reading it again"
                )
                continue
            except DBAPIError as exc:
                if sqlstate_of(exc) not in _RETRIED_STATES:
                    raise self._failed("swap", exc) from exc
                if attempts >= self.attempts:
                    raise self._locked_out("swap", attempts, exc) from exc
                self.progress(f"swap: attempt {attempts} timed out waiting for a lock; retrying")
                time.sleep(self.retry_delay)
                continue
            self.steps.append(("swap", time.perf_counter() - started))
            created = self._add_partitions(partitions)
            self.progress(
                f"swap: done; ACCESS EXCLUSIVE held {hold * 1000:.1f} ms (server), "
                f"{seconds * 1000:.1f} ms to the commit's return (client)"
            )
            return ConversionResult(
                "converted",
                boundary,
                tuple(self.steps),
                created,
                attempts,
                hold,
                seconds,
            )

    def _swap_once(self, boundary: datetime) -> tuple[float, float]:
        """One swap transaction; returns (server-side, client-side) seconds of the lock."""
        table = self.table
        with self.engine.connect() as connection:
            with connection.begin():
                # Read before the lock, so that it is held for the DDL only; the definition
                # first, so that a change made while the rest is read shows under the lock.
                # The refusals again: the table may have changed during the online steps.
                definition = self._definition(connection)
                self._refuse_attachments(connection)
                statements = self._swap_statements(connection, boundary)
            run = connection.exec_driver_sql
            with connection.begin():
                run(f"SET LOCAL lock_timeout = '{max(1, round(self.lock_timeout * 1000))}ms'")
                run(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                granted = time.perf_counter()
                # Under the lock nothing changes any more: check what the online steps left
                # (another conversion may have swapped meanwhile), and that the table is
                # still the one the statements were made for.
                state = connection.execute(
                    text(
                        "SELECT clock_timestamp(), c.relkind = 'r' AND EXISTS (SELECT 1 FROM "
                        "pg_constraint k WHERE k.conrelid = c.oid AND k.conname = :bound AND "
                        "k.convalidated) AND EXISTS (SELECT 1 FROM pg_index i JOIN pg_class x "
                        "ON x.oid = i.indexrelid WHERE i.indrelid = c.oid AND x.relname = :key "
                        f"AND i.indisvalid), ({_DEFINITION_SQL}) = :definition "
                        "FROM pg_class c WHERE c.oid = to_regclass(:name)"
                    ),
                    {"bound": _BOUND, "key": _KEY, "name": table, "definition": definition},
                ).first()
                if state is None or not state[1]:
                    raise ConversionError(
                        f"convert: {TABLE_NAME} changed while the conversion ran (another "
                        "conversion?); run it again"
                    )
                locked_at, _, same = state
                if not same:  # rolled back: the statements are made again
                    raise _Changed
                # One round trip for the DDL: the lock is held for as short as it can be.
                run(";\n".join(statements))
                done_at = run("SELECT clock_timestamp()").scalar_one()
            seconds = time.perf_counter() - granted
        return (done_at - locked_at).total_seconds(), seconds

    def _swap_statements(self, connection: Connection, boundary: datetime) -> list[str]:
        """The swap's DDL, after the ACCESS EXCLUSIVE lock on ``event_logs``."""
        table, legacy = self.table, self.name(LEGACY_PARTITION)
        fks = self._foreign_keys(connection)
        owner, grants = self._privileges(connection)
        oid = connection.execute(
            text("SELECT CAST(:name AS regclass)::oid"), {"name": table}
        ).scalar_one()
        # The opt-in feed's index (evlfeed_0001), carried over like the others.
        feed = bool(self._feed_index(connection, int(oid)))
        indexes = (*INDEX_NAMES, FEED_INDEX_NAME) if feed else INDEX_NAMES
        own = self._own_indexes(connection, int(oid))
        sql = [f"ALTER TABLE {table} RENAME TO {_quote(LEGACY_PARTITION)}"]
        for index in indexes:
            suffix = index.removeprefix("ix_event_logs_")
            sql.append(
                f"ALTER INDEX {self.name(index)} "
                f"RENAME TO {_quote(f'{LEGACY_PARTITION}_{suffix}_idx')}"
            )
        # A host's own indexes: the legacy partition's copy gets a name of its own, and the
        # partitioned table the index under its name (its definition names the table by the
        # name the new one takes). ATTACH then adopts the legacy copy instead of building it.
        for name, _ in own:
            sql.append(f"ALTER INDEX {self.name(name)} RENAME TO {_quote(_legacy_name(name))}")
        sql += [
            f"ALTER TABLE {legacy} DROP CONSTRAINT {_quote(PK_NAME)}",
            f"ALTER TABLE {legacy} ADD CONSTRAINT {_quote(_KEY)} "
            f"PRIMARY KEY USING INDEX {_quote(_KEY)}",
            # The columns as they are (types, NOT NULLs, defaults), as evlpart_0001 does.
            f"CREATE TABLE {table} (LIKE {legacy} INCLUDING DEFAULTS) "
            "PARTITION BY RANGE (created_at)",
            f"ALTER TABLE {table} ADD CONSTRAINT {_quote(PK_NAME)} PRIMARY KEY (id, created_at)",
        ]
        # The CHECKs (the audit's on created_at, the host's own) before any partition: every
        # partition must have them, and the legacy one does.
        checks = self._checks(connection, int(oid))
        sql += [
            f"ALTER TABLE {table} ADD CONSTRAINT {_quote(name)} {definition}"
            for name, definition in (*checks, *fks)
        ]
        for name, (column, where) in _INDEX_SHAPES.items():
            condition = f" WHERE {where}" if where else ""
            sql.append(f"CREATE INDEX {_quote(name)} ON {table} ({column}, created_at){condition}")
        if feed:
            sql.append(f"CREATE INDEX {_quote(FEED_INDEX_NAME)} ON {table} (xid, id)")
        sql += [definition for _, definition in own]
        audit = self._audit_schema(connection)
        if audit is not None:
            sql += guard_statements(audit, table)
        # The valid CHECK proves the partition bound: ATTACH does not scan, and the legacy
        # table's key, indexes and foreign keys are attached, not rebuilt.
        sql += [
            f"ALTER TABLE {table} ATTACH PARTITION {legacy} "
            f"FOR VALUES FROM (MINVALUE) TO ('{boundary.isoformat()}')",
            f"ALTER TABLE {legacy} DROP CONSTRAINT {_quote(_BOUND)}",
        ]
        if owner is not None:
            sql.append(f"ALTER TABLE {table} OWNER TO {_quote(owner)}")
        for grantee, privilege, grantable in grants:
            option = " WITH GRANT OPTION" if grantable else ""
            sql.append(f"GRANT {privilege} ON {table} TO {grantee}{option}")
        return sql

    def _add_partitions(self, partitions: list[tuple[str, datetime, datetime]]) -> tuple[str, ...]:
        """Create the missing partitions from the boundary on, each without blocking writers.

        ``CREATE TABLE ... PARTITION OF`` would lock ``event_logs`` ACCESS EXCLUSIVE; a new
        empty table attached with ATTACH PARTITION locks it SHARE UPDATE EXCLUSIVE only (the
        referenced tables briefly SHARE ROW EXCLUSIVE, for the foreign keys).
        """
        with self.engine.connect() as connection:
            absent = set(
                connection.execute(
                    text(
                        "SELECT name FROM unnest(CAST(:names AS text[])) AS name"
                        " WHERE to_regclass(name) IS NULL"
                    ),
                    {"names": [self.name(name) for name, _, _ in partitions]},
                ).scalars()
            )
            missing = [
                partition
                for partition in free_ranges(connection, self.table, partitions)
                if self.name(partition[0]) in absent
            ]
            owner, _ = self._privileges(connection)
            audit = self._audit_schema(connection)
        created = []
        for name, start, end in missing:
            statements = [
                f"CREATE TABLE {self.name(name)} "
                f"(LIKE {self.table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
                *([f"ALTER TABLE {self.name(name)} OWNER TO {_quote(owner)}"] if owner else []),
                f"ALTER TABLE {self.table} ATTACH PARTITION {self.name(name)} "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')",
                *(guard_statements(audit, self.name(name)) if audit is not None else []),
            ]
            self._blocking(";\n".join(statements), step="partitions")
            self.progress(f"partitions: {name} created")
            created.append(name)
        return tuple(created)

    # --- helpers ------------------------------------------------------------------------

    def _autocommit(self) -> Connection:
        connection = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        # Closed when done, not given back to the pool with the settings below.
        connection.detach()
        # The slow steps must not be canceled by a role's statement_timeout, nor by its
        # lock_timeout: their lock waits (SHARE UPDATE EXCLUSIVE) do not block writers.
        connection.exec_driver_sql("SET statement_timeout = 0; SET lock_timeout = 0")
        return connection

    def _blocking(self, statement: str, *, step: str = "bound") -> None:
        """Run a statement that takes ACCESS EXCLUSIVE briefly, under lock_timeout, retried."""
        for attempt in range(1, self.attempts + 1):
            try:
                with self.engine.begin() as connection:
                    connection.exec_driver_sql(
                        f"SET LOCAL lock_timeout = '{max(1, round(self.lock_timeout * 1000))}ms'"
                    )
                    connection.exec_driver_sql(statement)
                return
            except DBAPIError as exc:
                if sqlstate_of(exc) not in _RETRIED_STATES:
                    raise self._failed(step, exc) from exc
                if attempt == self.attempts:
                    raise self._locked_out(step, attempt, exc) from exc
                time.sleep(self.retry_delay)

    def _locked_out(self, step: str, attempts: int, exc: DBAPIError) -> ConversionError:
        return ConversionError(
            f"convert: step {step!r} could not get its locks in {attempts} attempts of "
            f"lock_timeout {self.lock_timeout:g} s ({server_text(exc)}); {self._holders()}. "
            "The steps before it stay done: run the conversion again, or with more "
            "swap_attempts or a longer lock_timeout (CLI: --attempts, --lock-timeout)"
        )

    def _holders(self) -> str:
        """Who holds a lock on the table now: pids and kinds, never another session's SQL."""
        generic = (
            f"a long transaction holds a lock on {TABLE_NAME} or a table it references (see "
            "pg_locks, pg_stat_activity)"
        )
        try:
            with self.engine.connect() as connection:
                rows = connection.execute(
                    text(
                        "SELECT DISTINCT a.pid, a.backend_type, a.state, "
                        "CASE WHEN a.backend_type = 'autovacuum worker' THEN a.query END "
                        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                        # Relation oids are per database: a clone of this one
                        # (CREATE DATABASE ... TEMPLATE) has its own event_logs of that oid.
                        "WHERE l.relation = to_regclass(:name) AND l.granted AND l.database = "
                        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
                        "AND a.pid <> pg_backend_pid() ORDER BY a.pid LIMIT 5"
                    ),
                    {"name": self.table},
                ).all()
        except DBAPIError:
            return generic
        if not rows:
            return generic
        held = "; ".join(
            f"pid {pid} ({kind}{', ' + state if state else ''}{': ' + query if query else ''})"
            for pid, kind, state, query in rows
        )
        message = f"held now by {held}"
        if any(kind == "autovacuum worker" for _, kind, _, _ in rows):
            message += (
                "; autovacuum yields to a lock waiter only after deadlock_timeout, longer "
                "than this lock_timeout: run the conversion again when it has finished"
            )
        return message

    def _failed(self, step: str, exc: DBAPIError) -> ConversionError:
        return ConversionError(
            f"convert: step {step!r} failed ({server_text(exc)}); the steps before it stay "
            "done and the conversion resumes when run again; check the connection and that "
            f"the role owns {TABLE_NAME}"
        )

    def _one(self, connection: Connection, sql: str, **params: Any) -> Any:
        return connection.execute(text(sql), params).first()

    def _inspect(self, connection: Connection) -> _Found:
        """Read the table's state, refusing what the conversion cannot handle."""
        row = self._one(
            connection,
            "SELECT c.oid, c.relkind, c.relispartition, n.nspname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:name)",
            name=self.table,
        )
        where = f" in schema {self.schema}" if self.schema else " on the search_path"
        if row is None:
            raise ConversionError(
                f"convert: there is no table {TABLE_NAME}{where}; run the package's migrations "
                "first (a new table can be partitioned from the start by revision "
                "evlpart_0001), or pass the schema that holds it"
            )
        oid, kind, is_partition, schema = row
        # The table found on the search_path: the tables the conversion creates go to its
        # schema, not to the first one on the path ("$user", say).
        self.schema = str(schema)
        if kind == "p":
            default = self._one(
                connection,
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_partitioned_table t ON t.partrelid = i.inhparent "
                "WHERE i.inhparent = :oid AND c.oid = t.partdefid",
                oid=oid,
            )
            legacy = self._one(
                connection,
                "SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
                "WHERE oid = to_regclass(:name) AND relispartition",
                name=self.name(LEGACY_PARTITION),
            )
            return _Found(
                "p",
                boundary=None if legacy is None else _boundary_of(legacy[0]),
                default_partition=None if default is None else default[0],
            )
        if kind != "r" or is_partition:
            raise ConversionError(
                f"convert: {self.shown} is not a plain table (relkind {kind!r}"
                f"{', a partition' if is_partition else ''}); only the event log's own "
                "table can be converted"
            )
        columns = {
            name
            for (name,) in connection.execute(
                text(
                    "SELECT attname FROM pg_attribute WHERE attrelid = :oid AND attnum > 0 "
                    "AND NOT attisdropped"
                ),
                {"oid": oid},
            )
        }
        key = self._one(
            connection,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = :oid AND contype = 'p' AND conname = :pk",
            oid=oid,
            pk=PK_NAME,
        )
        if not columns >= _COLUMNS or key is None or key[0] != "PRIMARY KEY (id)":
            raise ConversionError(
                f"convert: {self.shown} is not the event log's table (its columns "
                f"{sorted(_COLUMNS)} and primary key {PK_NAME} (id) were not found); "
                "pass the schema of the package's event_logs"
            )
        self._refuse_attachments(connection)
        found = _Found("r")
        bound = self._one(
            connection,
            "SELECT convalidated, pg_get_expr(conbin, conrelid), "
            "obj_description(oid, 'pg_constraint') FROM pg_constraint "
            "WHERE conrelid = :oid AND conname = :name AND contype = 'c'",
            oid=oid,
            name=_BOUND,
        )
        if bound is not None:
            found.bound_valid = bool(bound[0])
            found.boundary = _boundary_of(bound[1])
            note = bound[2] or ""
            if note.startswith(_INTERVAL_NOTE):
                found.bound_for = note.removeprefix(_INTERVAL_NOTE)
        index = self._one(
            connection,
            "SELECT i.indisvalid AND i.indisready, i.indisunique, "
            "pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = :oid AND c.relname = :key",
            oid=oid,
            key=_KEY,
        )
        if index is not None:
            usable = bool(index[0]) and bool(index[1]) and index[2].endswith("(id, created_at)")
            found.key_valid = usable
        return found

    def _audit_schema(self, connection: Connection) -> str | None:
        """The schema of ``event_logs`` when the audit (evlaudit_0001) is installed there."""
        schema = connection.execute(
            text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass(:name)"
            ),
            {"name": self.table},
        ).scalar()
        if schema is None or not audited(connection, str(schema)):
            return None
        return str(schema)

    def _refuse_attachments(self, connection: Connection) -> None:
        """Refuse what the swap would not carry over to the partitioned table."""
        found = connection.execute(
            text("SELECT oid, relrowsecurity FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": self.table},
        ).first()
        if found is None:
            raise self._gone()
        oid, row_security = found
        problems = []
        for name in INDEX_NAMES:
            if (
                self._one(
                    connection,
                    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = :oid AND c.relname = :name",
                    oid=oid,
                    name=name,
                )
                is None
            ):
                problems.append(f"index {name} is missing (create it CONCURRENTLY first)")
        present = {
            name
            for (name,) in connection.execute(
                text("SELECT conname FROM pg_constraint WHERE conrelid = :oid AND contype = 'f'"),
                {"oid": oid},
            )
        }
        problems += [
            f"foreign key {name} is missing (run the package's migrations)"
            for name in FK_NAMES.values()
            if name not in present
        ]
        checks = [
            ("SELECT conrelid::regclass::text FROM pg_constraint "
             "WHERE confrelid = :oid AND contype = 'f'", "foreign key from {}"),
            ("SELECT tgname FROM pg_trigger WHERE tgrelid = :oid AND NOT tgisinternal "
             "AND NOT (tgname = ANY (:guard))", "trigger {}"),
            ("SELECT inhparent::regclass::text FROM pg_inherits WHERE inhrelid = :oid",
             "inherits from {}"),
            ("SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = :oid",
             "inherited by {}"),
            ("SELECT rulename FROM pg_rewrite WHERE ev_class = :oid", "rule {}"),
            # A partitioned table cannot have one; the others are carried over.
            ("SELECT conname FROM pg_constraint WHERE conrelid = :oid AND contype = 'c' "
             "AND connoinherit", "NO INHERIT constraint {}"),
            # Attached under the lock, a foreign key that is not valid would be validated
            # there (a scan of the table); valid ones are carried over, and so are those
            # PostgreSQL 18 does not enforce (never validated: no conenforced before 18).
            ("SELECT conname FROM pg_constraint k WHERE conrelid = :oid AND contype = 'f' "
             "AND NOT convalidated "
             "AND coalesce((to_jsonb(k) ->> 'conenforced')::boolean, true)",
             "foreign key {} is NOT VALID (VALIDATE it first)"),
            # The partitioned table gets each foreign key anew.
            ("SELECT k.conname || ' needs the REFERENCES privilege on ' "
             "|| k.confrelid::regclass FROM pg_constraint k WHERE k.conrelid = :oid "
             "AND k.contype = 'f' AND NOT has_table_privilege(k.confrelid, 'REFERENCES') "
             "AND NOT (SELECT bool_and(has_column_privilege(k.confrelid, a, 'REFERENCES')) "
             "FROM unnest(k.confkey) AS a)", "foreign key {}"),
            # A unique index of a partitioned table must hold created_at, and an exclusion
            # constraint is more than its index; other indexes are carried over.
            ("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
             "WHERE i.indrelid = :oid AND (i.indisunique OR i.indisexclusion) "
             "AND NOT (c.relname = ANY (:ours))", "unique or exclusion index {}"),
            # ATTACH would build the index again, under the lock. (The key's is rebuilt by
            # the conversion, the feed's reported below.)
            ("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
             "WHERE i.indrelid = :oid AND NOT i.indisvalid AND c.relname <> :key "
             "AND c.relname <> :feed",
             "index {} is invalid (REINDEX INDEX CONCURRENTLY it, or drop it)"),
        ]  # fmt: skip
        # The audit's guard is carried over: the legacy partition keeps its triggers, the
        # partitioned table and each new partition get them.
        guard = list(GUARD_TRIGGERS) if self._audit_schema(connection) else []
        for sql, what in checks:
            problems += [
                what.format(name)
                for (name,) in connection.execute(
                    text(sql),
                    {
                        "oid": oid,
                        "guard": guard,
                        "ours": [*_PACKAGE_INDEXES, _KEY],
                        "key": _KEY,
                        "feed": FEED_INDEX_NAME,
                    },
                )
            ]
        problems += self._legacy_names_taken(connection, int(oid))
        if row_security:
            problems.append("row-level security is enabled")
        if self._feed_index(connection, oid) is False:
            problems.append(
                f"the feed's index {FEED_INDEX_NAME} is missing or invalid (finish the feed's "
                "'alembic upgrade heads' first: it builds the index)"
            )
        if problems:
            later = (
                " (a NO INHERIT constraint on event_logs_legacy or the partitions: a "
                "partitioned table cannot have one)"
                if any(problem.startswith("NO INHERIT") for problem in problems)
                else ""
            )
            raise ConversionError(
                f"convert: {self.shown} has what the swap would not carry over to the "
                f"partitioned table: {'; '.join(problems)}. Remove or fix it, convert, then "
                f"recreate it on the partitioned table{later}"
            )

    def _legacy_names_taken(self, connection: Connection, oid: int) -> list[str]:
        """The names the swap gives that are taken: its own, and the legacy copies' of a
        host's indexes (`_legacy_name`), described."""
        own = [name for name, _ in self._own_indexes(connection, oid)]
        theirs = {
            _KEY,
            LEGACY_PARTITION,
            *(
                f"{LEGACY_PARTITION}_{index.removeprefix('ix_event_logs_')}_idx"
                for index in (*INDEX_NAMES, FEED_INDEX_NAME)
            ),
        }
        existing = set(
            connection.execute(
                text(
                    "SELECT name FROM unnest(CAST(:names AS text[])) AS name "
                    "WHERE to_regclass(quote_ident(:schema) || '.' || quote_ident(name)) "
                    "IS NOT NULL"
                ),
                {"names": [_legacy_name(name) for name in own], "schema": self.schema},
            ).scalars()
        )
        # The names the swap gives (the key's index exists already, on event_logs).
        problems = [
            f"relation {name} exists, and the swap gives its name (rename or drop it)"
            for name in connection.execute(
                text(
                    "SELECT name FROM unnest(CAST(:names AS text[])) AS name "
                    "WHERE to_regclass(quote_ident(:schema) || '.' || quote_ident(name)) "
                    "IS NOT NULL ORDER BY name"
                ),
                {"names": sorted(theirs - {_KEY}), "schema": self.schema},
            ).scalars()
        ]
        given: dict[str, str] = {}
        for name in own:
            legacy = _legacy_name(name)
            if legacy in theirs:
                taken = "which the conversion uses"
            elif legacy in existing:
                taken = "which exists"
            elif legacy in given:
                taken = f"as would the copy of index {given[legacy]}"
            else:
                given[legacy] = name
                continue
            problems.append(
                f"index {name}, whose copy on the legacy partition would be named {legacy}, "
                f"{taken} (rename the index)"
            )
        return problems

    def _definition(self, connection: Connection) -> list[str]:
        """The table as the swap's probe compares it (`_DEFINITION_SQL`)."""
        found = connection.execute(
            text(f"SELECT ({_DEFINITION_SQL}) FROM pg_class c WHERE c.oid = to_regclass(:name)"),
            {"bound": _BOUND, "name": self.table},
        ).first()
        if found is None:
            raise self._gone()
        return list(found[0])

    def _gone(self) -> ConversionError:
        return ConversionError(
            f"convert: {self.shown} is gone (renamed or dropped while the conversion ran)"
        )

    def _checks(self, connection: Connection, oid: int) -> list[tuple[str, str]]:
        """The table's CHECK constraints but the conversion's own bound: names, definitions."""
        rows = connection.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = :oid AND contype = 'c' AND conname <> :bound ORDER BY conname"
            ),
            {"oid": oid, "bound": _BOUND},
        )
        return [(str(name), str(definition)) for name, definition in rows]

    def _feed_index(self, connection: Connection, oid: int) -> bool | None:
        """Whether the feed's index is valid; None when the table has no feed (no ``xid``)."""
        row = self._one(
            connection,
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = :oid AND c.relname = :index AND i.indisvalid) "
            "FROM pg_attribute WHERE attrelid = :oid AND attname = :column AND NOT attisdropped",
            oid=oid,
            index=FEED_INDEX_NAME,
            column=XID_COLUMN,
        )
        return None if row is None else bool(row[0])

    def _foreign_keys(self, connection: Connection) -> list[tuple[str, str]]:
        """The table's foreign keys, the package's and a host's, as it declares them."""
        rows = connection.execute(
            text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = to_regclass(:name) AND contype = 'f' ORDER BY conname"
            ),
            {"name": self.table},
        )
        return [(name, definition) for name, definition in rows]

    def _own_indexes(self, connection: Connection, oid: int) -> list[tuple[str, str]]:
        """A host's own indexes on the table: names and definitions."""
        rows = connection.execute(
            text(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i "
                "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = :oid "
                "AND NOT (c.relname = ANY (:ours)) ORDER BY c.relname"
            ),
            {"oid": oid, "ours": [*_PACKAGE_INDEXES, _KEY]},
        )
        return [(name, definition) for name, definition in rows]

    def _privileges(self, connection: Connection) -> tuple[str | None, list[tuple[str, str, bool]]]:
        """The table's owner (when not the current role) and its grants to others, of the
        table or of a column (``"SELECT (payload)"``)."""
        owner = connection.execute(
            text(
                "SELECT r.rolname, r.rolname = current_user FROM pg_class c "
                "JOIN pg_roles r ON r.oid = c.relowner WHERE c.oid = to_regclass(:name)"
            ),
            {"name": self.table},
        ).one()
        grants = [
            (
                _quote(grantee) if grantee else "PUBLIC",
                privilege if column is None else f"{privilege} ({_quote(column)})",
                bool(grantable),
            )
            for grantee, privilege, grantable, column in connection.execute(
                text(
                    "SELECT r.rolname, a.privilege_type, a.is_grantable, NULL FROM pg_class c, "
                    "aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
                    "WHERE c.oid = to_regclass(:name) AND a.grantee <> c.relowner "
                    # A column's own grants (GRANT SELECT (payload) ...), also carried over.
                    "UNION ALL SELECT r.rolname, a.privilege_type, a.is_grantable, t.attname "
                    "FROM pg_class c JOIN pg_attribute t ON t.attrelid = c.oid, "
                    "aclexplode(t.attacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
                    "WHERE c.oid = to_regclass(:name) AND t.attacl IS NOT NULL "
                    "AND NOT t.attisdropped AND a.grantee <> c.relowner"
                ),
                {"name": self.table},
            )
        ]
        return (None if owner[1] else owner[0]), grants


def _legacy_name(index: str) -> str:
    """The name of the legacy partition's copy of a host's ``index``, within PostgreSQL's
    63 bytes."""
    name = f"{LEGACY_PARTITION}_{index}".encode()[:63]
    return name.decode(errors="ignore")


_BOUNDARY: Final = re.compile(r"'([^']+)'")


def _boundary_of(expression: str) -> datetime | None:
    """The instant in ``(created_at < '...'::timestamp with time zone)``, read as UTC."""
    match = _BOUNDARY.search(expression)
    if match is None:
        return None
    moment = datetime.fromisoformat(match.group(1))
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
