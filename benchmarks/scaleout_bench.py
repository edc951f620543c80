"""Partitioned vs plain event_logs, side by side in one run: writes, reads, deletes, retention.

Builds two databases on one server (same settings): ``plain`` (revision evl_0001's layout)
and ``partitioned`` (evlpart_0001's: range-partitioned on ``created_at``, weekly partitions
made with ``ensure_partitions``, or monthly ones with ``--interval month``), and loads both
with the same ``--rows`` events (benchmarks/datagen.py, COPY, same seed: the same ids,
sessions and times) over 26 weeks ending about a day before now, the first partition
holding the data's first day. Both are vacuumed and analyzed; autovacuum is then turned off
on ``event_logs`` (and every partition), so that the server-wide WAL counter and the timings
see only what is measured; after each round's COPY the tables autovacuum would analyze by
its default thresholds (in practice the current period's partition every round, the plain
table in rounds 3 and 5) are analyzed, untimed; ``--analyze-plain-every-round`` analyzes the
plain table every round too.

Then, in ``--rounds`` rounds, the layout that goes first alternating from round to round,
it measures, printing each figure as partitioned/plain with the per-round ratios:

1. **COPY**: ``write_events`` (binary COPY, 10,000 events a transaction) of ``--copy-rows``
   new events into each layout: fresh events each round (ids, now as ``created_at``, the
   datagen mix), the same ones in both. The events are built (``new_event``) before the
   clock starts: that costs the same in both layouts. Target: throughput >= 0.9x plain.
2. **Latest 50** through ``EventLogReader`` on an ``Engine`` (a pooled connection per call,
   psycopg's statement preparation as a host gets it): ``session_timeline`` with no bound,
   with ``since`` = the session's first day (UTC midnight; what a host knows from its
   ``chat_sessions`` row), and with ``since`` and ``until`` = that day + 2 days (sessions last
   at most ~17 h); ``user_timeline`` with no bound, the last 30 days as ``since``, and as
   ``since`` and ``until`` (now). ``--reads`` different sessions and users each round, each
   read once per variant and layout after an untimed warm-up read of each (warm cache), the
   layouts taking turns call by call. Target with a ``since`` bound: p50 <= 1.2x plain.
   Each round then records the generic plan of each ``since`` statement in each layout (the
   plan PostgreSQL caches for a prepared statement; ``EXPLAIN (GENERIC_PLAN)``, PostgreSQL 16
   and later), listed round by round after the table: the plain table's can change with its
   statistics, and with it the ratio.
3. **Parent deletes** (``--deletes`` a round, committed, autocommit): a ``chat_sessions`` row
   with 200+ events (``ON DELETE CASCADE``) and a ``user_agents`` row (``ON DELETE SET
   NULL``), the same rows in both layouts. Reported, no target.
4. **Retention of the oldest week** (or month): plain = ``purge_events`` (batches of
   5,000) of every event before the oldest remaining partition's upper bound, plus the
   ``VACUUM event_logs`` that makes the space reusable; partitioned = ``drop_partitions``
   of that partition (``DETACH ... CONCURRENTLY``, its foreign keys, and ``DROP``). Time,
   and WAL bytes from ``pg_current_wal_insert_lsn()`` before and after (a ``CHECKPOINT``
   first, untimed, so both pay the full-page images a cold period's pages cost).
   Destructive: round N removes the N-th oldest partition, so the sessions read and deleted
   are chosen after the last one removed; the conditions line says how many partitions a
   session read with ``since`` spans (from its first day to the newest partition): the walk
   that read makes.
   Targets: >= 100x faster and >= 50x less WAL than the plain layout.

Last (``--no-convert`` skips it), ``convert_to_partitioned`` converts the plain table and
the ACCESS EXCLUSIVE hold of its swap is reported (server ``clock_timestamp()`` from the
lock's grant to just before COMMIT, as benchmarks/convert_bench.py; no writer runs).

Usage: ``python benchmarks/scaleout_bench.py [--rows 5000000] [--rounds 3] [--svg FILE]``;
without ``--url`` (a libpq URL of a maintenance database, as a role that may CREATE
DATABASE) it starts a throwaway embedded PostgreSQL 18 in a new folder under ``$TMPDIR``
(default ``/tmp``). The databases are dropped at the end. The conditions line names the data
directory's file system and whether it is mounted with online ``discard``: there every
``DROP`` waits for a TRIM of the partition's blocks, which sets the retention ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import _svg
import datagen
import psycopg
from _server import file_system, server
from sqlalchemy import Engine, create_engine, event

from eventlog_persist import (
    EventFilter,
    EventLogReader,
    NewEvent,
    convert_to_partitioned,
    drop_partitions,
    ensure_partitions,
    list_partitions,
    new_event,
    purge_events,
    write_events,
)

# The same host tables as datagen's, EventLog in the partitioned layout.
PartitionedBase, PartitionedEventLog = datagen.host_tables(partitioned=True)

PLAIN, PART = "plain", "partitioned"
SESSION_VARIANTS = ("session, no bound", "session, since", "session, since + until")
USER_VARIANTS = ("user, no bound", "user, since", "user, since + until")
READ_TARGET = 1.2
COPY_TARGET = 0.9
SPEED_TARGET = 100.0
WAL_TARGET = 50.0
BIG_SESSION = 200
"""Events a deleted session has at least."""


@dataclass
class Layout:
    """One of the two databases."""

    name: str
    model: Any
    url: str
    engine: Engine
    reader: EventLogReader[uuid.UUID]
    connection: psycopg.Connection[Any]
    """Autocommit, for the parent deletes and the VACUUM."""


@dataclass
class SessionRow:
    """A loaded session: its key, owner, first event's time and event count."""

    key: uuid.UUID
    user: uuid.UUID
    start: datetime
    events: int


@dataclass
class Figures:
    """Everything measured, per round, per layout."""

    copy_seconds: dict[str, list[float]] = field(default_factory=lambda: {PLAIN: [], PART: []})
    reads: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    deletes: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    # Retention, per round: plain (purge s, purge WAL, vacuum s, vacuum WAL, rows);
    # partitioned (drop s, drop WAL, rows).
    purges: list[tuple[float, int, float, int, int]] = field(default_factory=list)
    drops: list[tuple[float, int, int]] = field(default_factory=list)
    drop_steps: list[tuple[float, float, float]] = field(default_factory=list)
    """Seconds of the ``DETACH ... CONCURRENTLY``, of the statement that drops the detached
    table's foreign keys (the only one that locks the host's tables) and of the ``DROP
    TABLE`` of each drop."""
    plans: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Per ``since`` variant and layout, each round's generic plan (see `generic_plan`)."""


def database_url(admin: str, name: str) -> str:
    """``admin`` with its database replaced by ``name`` (a URL or a key=value conninfo)."""
    return psycopg.conninfo.make_conninfo(admin, dbname=name)


def monday(moment: datetime) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def median_ratio(mine: list[float], theirs: list[float]) -> float:
    return statistics.median(mine) / statistics.median(theirs)


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def wal_lsn(admin: psycopg.Connection[Any]) -> str:
    row = admin.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def wal_since(admin: psycopg.Connection[Any], before: str) -> int:
    row = admin.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s::pg_lsn)::bigint", (before,)
    ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def statement_times(engine: Engine) -> Iterator[list[tuple[str, float]]]:
    """``(SQL, seconds)`` of each statement run on ``engine`` inside the block."""
    times: list[tuple[str, float]] = []
    began: list[float] = []

    def before(*_: object) -> None:
        began.append(time.perf_counter())

    def after(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        times.append((statement, time.perf_counter() - began.pop()))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield times
    finally:  # the reader takes a faster path on an engine without listeners
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def generic_plan(layout: Layout, call: Callable[[], object]) -> str:
    """The plan PostgreSQL caches for the statement ``call`` runs once it goes generic (as
    the reader's prepared statements do after five calls), as its chain of nodes down to the
    first scan, from ``EXPLAIN (GENERIC_PLAN)`` (PostgreSQL 16 and later)."""
    if layout.connection.info.server_version < 160000:
        return "not known before PostgreSQL 16"
    with statement_times(layout.engine) as times:
        call()
    numbers: dict[str, str] = {}
    text = re.sub(
        r"%\((\w+)\)s",
        lambda match: numbers.setdefault(match.group(1), f"${len(numbers) + 1}"),
        times[-1][0],
    )
    row = layout.connection.execute("EXPLAIN (GENERIC_PLAN, FORMAT JSON) " + text).fetchone()
    node = row[0][0]["Plan"] if row else {}
    chain = []
    while node:
        if node["Node Type"] != "Limit":
            chain.append(node["Node Type"])
        if node["Node Type"].endswith("Scan"):
            break
        node = (node.get("Plans") or [{}])[0]
    return " > ".join(chain)


def setup(
    admin: str, rows: int, seed: int, now: datetime, interval: str
) -> tuple[dict[str, Layout], Any]:
    """Create, fill, vacuum and analyze both databases; return them and the datagen plan."""
    first = monday(now - datagen.SPAN - timedelta(days=1))
    end = first + datagen.SPAN  # events from `first` to about a day before now
    # The data's periods, now's, and 4 more (ensure_partitions's default).
    if interval == "week":
        ahead = (monday(now) - first).days // 7 + 4
    else:
        ahead = (now.year - first.year) * 12 + now.month - first.month + 4
    tag = uuid.uuid4().hex[:6]
    layouts: dict[str, Layout] = {}
    data = None
    for name, model, metadata in (
        (PLAIN, datagen.EventLog, datagen.BenchBase.metadata),
        (PART, PartitionedEventLog, PartitionedBase.metadata),
    ):
        database = f"evl_scaleout_{name}_{tag}"
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{database}"')
        url = database_url(admin, database)
        engine = create_engine("postgresql+psycopg://", creator=partial(psycopg.connect, url))
        layouts[name] = Layout(
            name,
            model,
            url,
            engine,
            EventLogReader(model, engine),
            psycopg.connect(url, autocommit=True),
        )
        metadata.create_all(engine)
        if name == PART:
            ensure_partitions(model, engine, ahead=ahead, interval=interval, now=first)
        data = datagen.load(url, rows, seed=seed, end=end)
        print(f"{name}: loaded {data.rows:,} events in {data.seconds:.0f} s", flush=True)
    assert data is not None
    unindexed = (
        layouts[PART]
        .connection.execute(
            "SELECT count(*) FROM pg_inherits h WHERE h.inhparent = 'event_logs'::regclass AND "
            "(SELECT count(*) FROM pg_index WHERE indrelid = h.inhrelid AND indisvalid) <> "
            "(SELECT count(*) FROM pg_index WHERE indrelid = h.inhparent)"
        )
        .fetchone()
    )
    if unindexed is None or unindexed[0]:
        raise RuntimeError("some partitions lack an index of event_logs after the load")
    for layout in layouts.values():
        began = time.perf_counter()
        tables = ["event_logs"]
        if layout.name == PART:
            tables = [p.name for p in list_partitions(layout.model, layout.engine)]
        for table in tables:
            layout.connection.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = off)')
        layout.connection.execute("VACUUM (ANALYZE) event_logs")
        layout.connection.execute("ANALYZE")
        print(f"{layout.name}: VACUUM (ANALYZE) in {time.perf_counter() - began:.0f} s")
    return layouts, data


def sessions_of(layout: Layout) -> list[SessionRow]:
    """Every session with its first event's time and its event count."""
    query = (
        "SELECT session_id, user_id, min(created_at), count(*) FROM event_logs "
        "GROUP BY session_id, user_id"
    )
    return [SessionRow(*row) for row in layout.connection.execute(query)]


def copy_events(
    data: Any, sessions: list[SessionRow], count: int, seed: int, agents: dict[Any, list[Any]]
) -> list[NewEvent]:
    """``count`` new events with datagen's mix of types and payloads, in the given sessions."""
    projects: dict[Any, list[Any]] = {}
    for project, owner in data.projects:
        projects.setdefault(owner, []).append(project)
    fake = datagen.plan(count, seed=seed)
    real = {key: sessions[n % len(sessions)] for n, (key, _, _) in enumerate(fake.sessions)}
    events = []

    def value(text: str) -> str | None:
        return None if text == "\\N" else text

    for line in datagen.event_lines(fake, seed=seed):
        _, session, _, project, agent, kind, payload, _, code, tool, status = line.rstrip(
            "\n"
        ).split("\t")
        chosen = real[uuid.UUID(session)]
        events.append(
            new_event(
                event_type=kind,
                session_id=chosen.key,
                user_id=chosen.user,
                project_id=projects[chosen.user][0] if project != "\\N" else None,
                agent_id=agents[chosen.user][0] if agent != "\\N" else None,
                payload=json.loads(payload.replace("\\\\", "\\")),
                error_code=value(code),
                tool_name=value(tool),
                approval_status=value(status),
            )
        )
    return events


def analyze_as_autovacuum_would(layout: Layout, *, plain_always: bool = False) -> list[str]:
    """``ANALYZE`` each table of ``layout`` that autovacuum would analyze now (changed rows
    over ``autovacuum_analyze_threshold`` + ``autovacuum_analyze_scale_factor`` x its rows,
    the defaults 50 and 0.1): the benchmark turns autovacuum off, and a partition filled
    after the load would otherwise keep the statistics of an empty one, on which the planner
    picks the wrong index for it. With ``plain_always``, the plain table every time. The
    names analyzed."""
    time.sleep(1)  # backends report their row counts to the statistics within a second
    stale = [
        name
        for (name,) in layout.connection.execute(
            "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
            "WHERE s.relname LIKE 'event_logs%' AND c.relkind = 'r' "
            "AND s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)"
        )
    ]
    if plain_always and layout.name == PLAIN:
        stale = ["event_logs"]
    for name in stale:
        layout.connection.execute(f'ANALYZE "{name}"')
    return stale


def measure_copy(layouts: list[Layout], events: list[NewEvent], figures: Figures) -> str:
    """``write_events`` of the same prebuilt events into each layout, in the given order."""
    line = []
    for layout in layouts:
        began = time.perf_counter()
        result = write_events(layout.model, layout.url, events)
        seconds = time.perf_counter() - began
        if result.written != len(events) or result.duplicates or result.dead_lettered:
            raise RuntimeError(f"{layout.name}: COPY wrote {result}, expected {len(events)} new")
        figures.copy_seconds[layout.name].append(seconds)
        line.append(f"{layout.name} {len(events) / seconds:,.0f}/s")
    ratio = figures.copy_seconds[PLAIN][-1] / figures.copy_seconds[PART][-1]
    return f"COPY {len(events):,}: " + ", ".join(line) + f"; throughput ratio {ratio:.2f}"


@dataclass
class ReadSession:
    """A session to read, with its bounds: its first day, and that day + 2 days."""

    key: uuid.UUID
    user: uuid.UUID
    since: EventFilter
    window: EventFilter

    @classmethod
    def of(cls, session: SessionRow) -> ReadSession:
        day = session.start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(
            session.key,
            session.user,
            EventFilter(since=day),
            EventFilter(since=day, until=day + timedelta(days=2)),
        )


def read_calls(now: datetime) -> dict[str, Callable[[Layout, Any], object]]:
    """Each read variant: a call of a layout's reader with a `ReadSession` or a user id."""
    since_month = EventFilter(since=now - timedelta(days=30))
    month_to_now = EventFilter(since=now - timedelta(days=30), until=now)
    return {
        SESSION_VARIANTS[0]: lambda layout, s: layout.reader.session_timeline(
            s.key, user_id=s.user
        ),
        SESSION_VARIANTS[1]: lambda layout, s: layout.reader.session_timeline(
            s.key, user_id=s.user, filters=s.since
        ),
        SESSION_VARIANTS[2]: lambda layout, s: layout.reader.session_timeline(
            s.key, user_id=s.user, filters=s.window
        ),
        USER_VARIANTS[0]: lambda layout, u: layout.reader.user_timeline(u),
        USER_VARIANTS[1]: lambda layout, u: layout.reader.user_timeline(u, filters=since_month),
        USER_VARIANTS[2]: lambda layout, u: layout.reader.user_timeline(u, filters=month_to_now),
    }


def measure_reads(
    layouts: list[Layout],
    sessions: list[ReadSession],
    users: list[uuid.UUID],
    now: datetime,
    figures: Figures,
) -> str:
    """Latest 50 of each key, each variant, the layouts taking turns call by call."""
    calls = read_calls(now)
    for layout in layouts:  # warm-up: one untimed read of every key
        for session in sessions:
            calls[SESSION_VARIANTS[0]](layout, session)
        for user in users:
            calls[USER_VARIANTS[0]](layout, user)
    parts = []
    for name, call in calls.items():
        keys: list[Any] = list(sessions) if name in SESSION_VARIANTS else list(users)
        samples: dict[str, list[float]] = {PLAIN: [], PART: []}
        for n, key in enumerate(keys):
            for layout in layouts if n % 2 == 0 else layouts[::-1]:
                began = time.perf_counter()
                call(layout, key)
                samples[layout.name].append(time.perf_counter() - began)
        per_round = figures.reads.setdefault(name, {PLAIN: [], PART: []})
        for layout_name, values in samples.items():
            per_round[layout_name].append(values)
        parts.append(f"{name} {median_ratio(samples[PART], samples[PLAIN]):.2f}")
        if name.endswith("since"):
            plans = figures.plans.setdefault(name, {PLAIN: [], PART: []})
            for layout in layouts:
                plans[layout.name].append(generic_plan(layout, partial(call, layout, keys[0])))
    return "latest 50, p50 ratio: " + ", ".join(parts)


def measure_deletes(
    layouts: list[Layout],
    sessions: list[SessionRow],
    agents: list[uuid.UUID],
    figures: Figures,
) -> str:
    statements: dict[str, tuple[str, list[uuid.UUID]]] = {
        "a session (ON DELETE CASCADE)": (
            "DELETE FROM chat_sessions WHERE id = %s",
            [session.key for session in sessions],
        ),
        "an agent (ON DELETE SET NULL)": ("DELETE FROM user_agents WHERE id = %s", agents),
    }
    parts = []
    for name, (sql, keys) in statements.items():
        samples: dict[str, list[float]] = {PLAIN: [], PART: []}
        for n, value in enumerate(keys):
            for layout in layouts if n % 2 == 0 else layouts[::-1]:
                began = time.perf_counter()
                deleted = layout.connection.execute(sql, (value,)).rowcount
                seconds = time.perf_counter() - began
                if deleted != 1:
                    raise RuntimeError(f"{layout.name}: {sql} deleted {deleted} rows")
                if n:  # the first is a warm-up: the foreign key's cached plan
                    samples[layout.name].append(seconds)
        per_round = figures.deletes.setdefault(name, {PLAIN: [], PART: []})
        for layout_name, values in samples.items():
            per_round[layout_name].append(values)
        parts.append(f"{name} {median_ratio(samples[PART], samples[PLAIN]):.2f}")
    return "deletes, p50 ratio: " + ", ".join(parts)


def measure_retention(
    layouts: list[Layout], admin: psycopg.Connection[Any], cutoff: datetime, figures: Figures
) -> str:
    results: dict[str, str] = {}
    for layout in layouts:
        if layout.name == PLAIN:
            layout.connection.execute("CHECKPOINT")
            before = wal_lsn(admin)
            began = time.perf_counter()
            purged = purge_events(layout.model, layout.engine, older_than=cutoff)
            purge_seconds = time.perf_counter() - began
            purge_wal = wal_since(admin, before)
            before = wal_lsn(admin)
            began = time.perf_counter()
            layout.connection.execute("VACUUM event_logs")
            vacuum_seconds = time.perf_counter() - began
            vacuum_wal = wal_since(admin, before)
            figures.purges.append(
                (purge_seconds, purge_wal, vacuum_seconds, vacuum_wal, purged.deleted)
            )
            results[PLAIN] = (
                f"plain purge {purged.deleted:,} rows {purge_seconds:.2f} s "
                f"{purge_wal / 2**20:.1f} MB + VACUUM {vacuum_seconds:.2f} s "
                f"{vacuum_wal / 2**20:.1f} MB"
            )
        else:
            partitions = list_partitions(layout.model, layout.engine)
            oldest = partitions[0]
            if oldest.upper != cutoff:
                raise RuntimeError(f"the oldest partition {oldest} does not end at {cutoff}")
            row = layout.connection.execute(f'SELECT count(*) FROM "{oldest.name}"').fetchone()
            count = int(row[0]) if row else 0
            layout.connection.execute("CHECKPOINT")
            before = wal_lsn(admin)
            with statement_times(layout.engine) as steps:
                began = time.perf_counter()
                dropped = drop_partitions(layout.model, layout.engine, older_than=cutoff)
                seconds = time.perf_counter() - began
            wal = wal_since(admin, before)
            if dropped.dropped != (oldest.name,):
                raise RuntimeError(f"drop_partitions dropped {dropped}, not {oldest.name}")
            figures.drops.append((seconds, wal, count))
            detach = sum(t for sql, t in steps if "DETACH PARTITION" in sql)
            keys = sum(t for sql, t in steps if "DROP CONSTRAINT" in sql)
            drop = sum(t for sql, t in steps if sql.startswith("DROP TABLE"))
            figures.drop_steps.append((detach, keys, drop))
            results[PART] = (
                f"drop {oldest.name} ({count:,} rows) {seconds * 1000:.0f} ms (DETACH "
                f"{detach * 1000:.0f} ms, foreign keys {keys * 1000:.1f} ms, DROP "
                f"{drop * 1000:.0f} ms) {wal / 2**20:.2f} MB"
            )
    plain, part = figures.purges[-1], figures.drops[-1]
    if plain[4] != part[2]:
        raise RuntimeError(f"purged {plain[4]} rows but the partition held {part[2]}")
    speed = (plain[0] + plain[2]) / part[0]
    less = (plain[1] + plain[3]) / part[1]
    return (
        f"retention: {results[PLAIN]}; {results[PART]}: {speed:,.0f}x faster, {less:,.0f}x less WAL"
    )


def convert(layout: Layout) -> Any:
    """Convert the plain table online (no writer), as convert_bench does with one."""
    return convert_to_partitioned(layout.engine, lock_timeout=0.05)


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-" + (
        f"{fmt.format(max(values))}]"
    )


def report(
    figures: Figures, conditions: str, copy_rows: int, conversion: Any, period: str
) -> tuple[str, dict[str, tuple[float, float, str]]]:
    """The markdown table, and the headline ratios ``name: (value, target, direction)``."""
    lines = [
        "",
        conditions,
        "",
        "| measure | plain | partitioned | partitioned/plain, median [per round] | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    headline: dict[str, tuple[float, float, str]] = {}
    plain_copy, part_copy = figures.copy_seconds[PLAIN], figures.copy_seconds[PART]
    copy_ratios = [p / q for p, q in zip(plain_copy, part_copy, strict=True)]
    copy_ratio = statistics.median(copy_ratios)
    headline["COPY throughput"] = (copy_ratio, COPY_TARGET, ">=")
    lines.append(
        f"| COPY (`write_events`) of {copy_rows:,} new events, events/s | "
        f"{copy_rows / statistics.median(plain_copy):,.0f} | "
        f"{copy_rows / statistics.median(part_copy):,.0f} | {spread(copy_ratios)} | "
        f">= {COPY_TARGET}x | {'yes' if copy_ratio >= COPY_TARGET else 'NO'} |"
    )
    for name, by_layout in figures.reads.items():
        ratios = [
            median_ratio(mine, theirs)
            for mine, theirs in zip(by_layout[PART], by_layout[PLAIN], strict=True)
        ]
        p95s = [
            p95(mine) / p95(theirs)
            for mine, theirs in zip(by_layout[PART], by_layout[PLAIN], strict=True)
        ]
        ratio = statistics.median(ratios)
        cells = []
        for layout_name in (PLAIN, PART):
            pooled = [value for values in by_layout[layout_name] for value in values]
            cells.append(f"{statistics.median(pooled) * 1000:.2f} / {p95(pooled) * 1000:.2f}")
        target, met = "", ""
        if name.endswith("since"):
            target = f"<= {READ_TARGET}x"
            met = "yes" if ratio <= READ_TARGET else "NO"
            headline[f"latest 50: {name}"] = (ratio, READ_TARGET, "<=")
        else:
            headline[f"latest 50: {name}"] = (ratio, 0.0, "")
        lines.append(
            f"| latest 50, {name}: p50 / p95 ms | {cells[0]} | {cells[1]} | "
            f"{spread(ratios)} (p95: {spread(p95s)}) | {target} | {met} |"
        )
    for name, by_layout in figures.deletes.items():
        ratios = [
            median_ratio(mine, theirs)
            for mine, theirs in zip(by_layout[PART], by_layout[PLAIN], strict=True)
        ]
        cells = []
        for layout_name in (PLAIN, PART):
            pooled = [value for values in by_layout[layout_name] for value in values]
            cells.append(f"{statistics.median(pooled) * 1000:.2f} / {p95(pooled) * 1000:.2f}")
        headline[f"delete {name}"] = (statistics.median(ratios), 0.0, "")
        lines.append(
            f"| delete {name}: p50 / p95 ms | {cells[0]} | {cells[1]} | {spread(ratios)} | | |"
        )
    if figures.drops:
        plain_s = [p[0] + p[2] for p in figures.purges]
        plain_wal = [p[1] + p[3] for p in figures.purges]
        part_s = [d[0] for d in figures.drops]
        part_wal = [d[1] for d in figures.drops]
        speed = [p / q for p, q in zip(plain_s, part_s, strict=True)]
        less = [p / q for p, q in zip(plain_wal, part_wal, strict=True)]
        rows = statistics.median(d[2] for d in figures.drops)
        purge_s = spread([p[0] for p in figures.purges])
        vacuum_s = spread([p[2] for p in figures.purges])
        detach_ms = spread([d[0] * 1000 for d in figures.drop_steps], "{:.0f}")
        keys_ms = spread([d[1] * 1000 for d in figures.drop_steps], "{:.1f}")
        drop_ms = spread([d[2] * 1000 for d in figures.drop_steps], "{:.0f}")
        lines.append(
            f"| retention of the oldest {period} (~{rows:,.0f} events), s | purge {purge_s} + "
            f"VACUUM {vacuum_s} = {spread(plain_s)} | {spread(part_s, '{:.3f}')} (DETACH "
            f"{detach_ms} ms, foreign keys {keys_ms} ms, DROP {drop_ms} ms) | "
            f"plain {spread(speed, '{:,.0f}')}x slower | "
            f">= {SPEED_TARGET:.0f}x faster | "
            f"{'yes' if statistics.median(speed) >= SPEED_TARGET else 'NO'} |"
        )
        mb = [p[1] / 2**20 for p in figures.purges]
        vmb = [p[3] / 2**20 for p in figures.purges]
        lines.append(
            f"| retention of the oldest {period}, WAL MB | purge {spread(mb, '{:.1f}')} + VACUUM "
            f"{spread(vmb, '{:.1f}')} = {spread([w / 2**20 for w in plain_wal], '{:.1f}')} | "
            f"{spread([w / 2**20 for w in part_wal], '{:.3f}')} | plain "
            f"{spread(less, '{:,.0f}')}x more | >= {WAL_TARGET:.0f}x less | "
            f"{'yes' if statistics.median(less) >= WAL_TARGET else 'NO'} |"
        )
        headline["retention speed"] = (statistics.median(speed), SPEED_TARGET, ">=")
        headline["retention WAL"] = (statistics.median(less), WAL_TARGET, ">=")
    if conversion is not None:
        steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in conversion.steps)
        hold = (conversion.swap_hold or 0) * 1000
        lines.append(
            f"| conversion of the plain table (`convert_to_partitioned`, no writer): the swap's "
            f"ACCESS EXCLUSIVE hold, server side, ms | | {hold:.1f} ({steps}; "
            f"{conversion.swap_attempts} attempt(s)) | | <= 100 ms | "
            f"{'yes' if hold <= 100 else 'NO'} |"
        )
    if figures.plans:
        lines += ["", "Generic plans of the reader's statements with `since`, round by round:", ""]
        for name, by_layout in figures.plans.items():
            for layout_name, chains in by_layout.items():
                rounds = ", ".join(
                    f"{n + 1}: {chain}" if n == 0 or chain != chains[n - 1] else f"{n + 1}: same"
                    for n, chain in enumerate(chains)
                )
                lines.append(f"- {name}, {layout_name}: {rounds}")
    return "\n".join(lines), headline


def stacked(title: str, documents: list[str]) -> str:
    """Several ``_svg`` charts one above the other, in one SVG document."""
    sizes = []
    for document in documents:
        head = document.split(">", 1)[0]
        width = float(head.split('width="', 1)[1].split('"', 1)[0])
        height = float(head.split('height="', 1)[1].split('"', 1)[0])
        sizes.append((width, height))
    width = max(w for w, _ in sizes)
    height = sum(h for _, h in sizes)
    body, y = [], 0.0
    for document, (_, h) in zip(documents, sizes, strict=True):
        body.append(document.replace("<svg ", f'<svg y="{y:.0f}" ', 1).rstrip("\n"))
        y += h
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
            f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
            f'aria-label="{title}">',
            f"<title>{title}</title>",
            f'<rect width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
            *body,
            "</svg>",
            "",
        ]
    )


def chart(headline: dict[str, tuple[float, float, str]], subtitle: str, period: str) -> str:
    """Each headline ratio beside its target: the near-1 ratios, then the retention ones."""
    near = []
    for name, (value, target, direction) in headline.items():
        if name.startswith("retention"):
            continue
        label = {
            ">=": f"target >= {target:g}x",
            "<=": f"target <= {target:g}x",
        }.get(direction)
        group = {"measured": value}
        if label:
            group["target"] = target
        near.append((name + (f" ({label})" if label else ""), group))
    first = _svg.bar_chart(
        "Partitioned / plain (COPY: throughput, higher is better; others: p50 time)",
        near,
        subtitle=subtitle,
        unit="x",
        reference=1.0,
        reference_label="plain = 1.0",
        label=lambda value: f"{value:.2f}",
    )
    documents = [first]
    retention = [
        (name, {"measured": value, "target": target})
        for name, (value, target, _) in headline.items()
        if name.startswith("retention")
    ]
    if retention:
        documents.append(
            _svg.bar_chart(
                f"Retention of the oldest {period}: plain (purge_events + VACUUM) / partitioned "
                "(drop_partitions), x",
                [
                    ("time: x faster (target >= 100x)", retention[0][1]),
                    ("WAL: x less (target >= 50x)", retention[1][1]),
                ],
                subtitle="higher is better",
                unit="x",
                label=lambda value: f"{value:,.0f}",
            )
        )
    return stacked("Partitioned vs plain event_logs: headline ratios and targets", documents)


def main() -> None:
    """Command line: set up both layouts, run the rounds, print the table, drop the databases."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of a maintenance database (default: embedded)")
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reads", type=int, default=300, help="keys per read variant a round")
    parser.add_argument("--copy-rows", type=int, default=50_000, help="new events a round")
    parser.add_argument("--deletes", type=int, default=20, help="sessions and agents a round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--interval",
        choices=("week", "month"),
        default="week",
        help="the partitions' period (ensure_partitions's interval)",
    )
    parser.add_argument(
        "--convert",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="convert the plain table at the end and report the swap's lock",
    )
    parser.add_argument(
        "--analyze-plain-every-round",
        action="store_true",
        help="analyze the plain table after every round's COPY, not only when autovacuum "
        "would (its statistics as fresh as the current partition's)",
    )
    parser.add_argument("--svg", type=Path, help="also draw the headline ratios as SVG here")
    args = parser.parse_args()
    now = datetime.now(UTC).replace(microsecond=0)
    started = time.perf_counter()
    with server(args.url) as admin_url:
        admin = psycopg.connect(admin_url, autocommit=True)
        layouts: dict[str, Layout] = {}
        try:
            layouts, data = setup(admin_url, args.rows, args.seed, now, args.interval)
            run(args, admin, layouts, data, now, started)
        finally:
            names = []
            for layout in layouts.values():
                layout.connection.close()
                layout.engine.dispose()
                names.append(psycopg.conninfo.conninfo_to_dict(layout.url)["dbname"])
            for name in names:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()


def run(
    args: argparse.Namespace,
    admin: psycopg.Connection[Any],
    layouts: dict[str, Layout],
    data: Any,
    now: datetime,
    started: float,
) -> None:
    """Pick the keys, run the rounds (and the conversion), print the table, draw the chart."""
    plain, part = layouts[PLAIN], layouts[PART]
    partitions = list_partitions(part.model, part.engine)
    if len(partitions) < args.rounds + 4:
        raise SystemExit(f"{len(partitions)} partitions: too few for {args.rounds} rounds")
    cutoffs = [p.upper for p in partitions[: args.rounds] if p.upper is not None]
    last_cut = cutoffs[-1]
    row = admin.execute("SHOW server_version").fetchone()
    version = row[0] if row else "?"
    row = admin.execute("SHOW data_directory").fetchone()
    disk = file_system(row[0]) if row else "not known"
    sizes = []
    for layout in (plain, part):
        tables = ["event_logs"]
        if layout is part:
            tables = [p.name for p in partitions]
        total = 0
        for table in tables:
            size = layout.connection.execute(
                "SELECT pg_total_relation_size(%s)", (f'"{table}"',)
            ).fetchone()
            total += int(size[0]) if size else 0
        sizes.append(total / 2**20)
    rows_per_partition = [p.estimated_rows or 0 for p in partitions if p.estimated_rows]
    kind = {"week": "weekly", "month": "monthly"}[args.interval]
    load_before = os.getloadavg()
    conditions = (
        f"PostgreSQL {version}; {args.rows:,} events (datagen, seed {args.seed}), "
        f"event_logs {sizes[0]:,.0f} MB plain, {sizes[1]:,.0f} MB partitioned (with indexes); "
        f"{len(partitions)} {kind} partitions ({len(rows_per_partition)} holding events, median "
        f"{statistics.median(rows_per_partition or [0]):,.0f} rows each); {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs; data directory's file system: {disk}; "
        f"{now:%Y-%m-%d %H:%M} UTC"
    )
    if args.analyze_plain_every_round:
        conditions += "; the plain table analyzed after every round's COPY"
    print(conditions, flush=True)

    # Keys: a third of the users is read, a third written to, a third deleted from.
    rng = random.Random(args.seed + 7)
    users = list(data.users)
    rng.shuffle(users)
    third = max(1, len(users) // 3)
    read_users, write_users = set(users[:third]), set(users[third : 2 * third])
    delete_users = set(users[2 * third :]) or write_users
    sessions = sessions_of(plain)
    later = [s for s in sessions if s.start >= last_cut + timedelta(days=1)]
    readable = [s for s in later if s.user in read_users and s.events > 50]
    rng.shuffle(readable)
    big = [s for s in later if s.user in delete_users and s.events >= BIG_SESSION]
    rng.shuffle(big)
    writable = [s for s in sessions if s.user in write_users]
    agents: dict[Any, list[Any]] = {}
    for agent, owner in data.agents:
        agents.setdefault(owner, []).append(agent)
    doomed_agents = [a for a, owner in data.agents if owner in delete_users]
    rng.shuffle(doomed_agents)
    read_user_list = sorted(read_users)
    rng.shuffle(read_user_list)
    per = args.deletes + 1
    if len(big) < per * args.rounds or len(doomed_agents) < per * args.rounds:
        raise SystemExit("too few sessions or agents to delete; lower --deletes")
    agent_events = dict(
        plain.connection.execute(
            "SELECT agent_id, count(*) FROM event_logs WHERE agent_id = ANY(%s) GROUP BY 1",
            (doomed_agents[: per * args.rounds],),
        ).fetchall()
    )
    figures = Figures()

    def take(items: list[Any], count: int, round_: int) -> list[Any]:
        if not items:
            return []
        return [items[(round_ * count + n) % len(items)] for n in range(count)]

    # Each round's sessions to read, and the partitions a read of each with `since` walks
    # (from the session's first day to the newest partition).
    to_read = [
        [ReadSession.of(s) for s in take(readable, args.reads, round_)]
        for round_ in range(args.rounds)
    ]
    spans = [
        sum(1 for p in partitions if p.upper is not None and p.upper > since)
        for sessions_read in to_read
        for session in sessions_read
        if (since := session.since.since) is not None
    ] or [0]
    for round_ in range(args.rounds):
        order = [plain, part] if round_ % 2 == 0 else [part, plain]
        print(f"\nround {round_ + 1} ({order[0].name} first)", flush=True)
        events = copy_events(data, writable, args.copy_rows, args.seed + 100 + round_, agents)
        print("  " + measure_copy(order, events, figures), flush=True)
        for layout in order:  # untimed
            analyzed = analyze_as_autovacuum_would(
                layout, plain_always=args.analyze_plain_every_round
            )
            print(f"  {layout.name}: analyzed {', '.join(analyzed) or 'nothing'}", flush=True)
        print(
            "  "
            + measure_reads(
                order,
                to_read[round_],
                take(read_user_list, args.reads, round_),
                now,
                figures,
            ),
            flush=True,
        )
        print(
            "  "
            + measure_deletes(
                order,
                big[round_ * per : (round_ + 1) * per],
                doomed_agents[round_ * per : (round_ + 1) * per],
                figures,
            ),
            flush=True,
        )
        print("  " + measure_retention(order, admin, cutoffs[round_], figures), flush=True)
    load_after = os.getloadavg()
    deleted_sessions = big[: per * args.rounds]
    doomed = doomed_agents[: per * args.rounds]
    conditions += (
        f"; load average {load_before[0]:.2f} before the rounds, {load_after[0]:.2f} after; "
        f"sessions read: {len(readable):,} candidates (50+ events, after the last partition "
        f"removed), a read with `since` spanning {statistics.median(spans):.0f} "
        f"partitions [{min(spans)}-{max(spans)}] (its first day to the newest), "
        f"deleted sessions {statistics.mean(s.events for s in deleted_sessions):,.0f} "
        f"events on average, deleted agents "
        f"{statistics.mean(agent_events.get(a, 0) for a in doomed):,.0f}"
    )
    conversion = None
    if args.convert:
        print("\nconverting the plain table (convert_to_partitioned)...", flush=True)
        conversion = convert(plain)
        for step, seconds in conversion.steps:
            print(f"  {step:>9}: {seconds * 1000:9.1f} ms")
        print(
            f"  swap ACCESS EXCLUSIVE held: server {(conversion.swap_hold or 0) * 1000:.1f} ms, "
            f"client {(conversion.swap_seconds or 0) * 1000:.1f} ms, "
            f"{conversion.swap_attempts} attempt(s)"
        )
    table, headline = report(figures, conditions, args.copy_rows, conversion, args.interval)
    print(table)
    print(f"\nwhole run {(time.perf_counter() - started) / 60:.1f} min")
    if args.svg:
        subtitle = (
            f"PostgreSQL {version}, {args.rows:,} events, {len(partitions)} {kind} partitions, "
            f"{args.rounds} rounds (medians), {now:%Y-%m-%d}"
        )
        print(f"chart written to {_svg.write(args.svg, chart(headline, subtitle, args.interval))}")


if __name__ == "__main__":
    main()
