"""Read-path benchmark: query latency, FK deletes and index costs as the table grows.

For each size it creates a database, loads it with ``datagen`` (COPY), then measures:

- p50/p99 latency of every reader call (timelines, filters, counts), and the ratio of each
  to its figure at the first (smallest) size; warm cache: the calls cycle over 100 keys;
- the same session page over 1,000 sessions read once each (first touch of their pages);
- a rare filter in the longest timelines: the rarest error code for the heaviest users;
- "latest 50 events of a session" through raw psycopg and the reader on an open connection
  (same SQL text, same bound values, LIMIT included), then the reader on the Engine (pool
  checkout per call) and the ORM (new Session per call);
- deleting an agent (``ON DELETE SET NULL``) and a session (``ON DELETE CASCADE``), each
  rolled back so the data stays the same;
- insert throughput with no secondary index, then adding the four indexes one by one;
- retention: one user's events, and the oldest 10,000 events of the whole table in batches
  of 5,000 (committed; runs last).

Usage: ``python benchmarks/read_bench.py [--sizes 50000,1000000] [--url URL]``; without
``--url`` an embedded PostgreSQL is started in a temporary folder and deleted afterwards.
Results go to ``docs/benchmarks/read-path.md`` (``--out``); with
``--svg docs/benchmarks/read-path.svg`` the p50 latency of every reader call at every size
is also drawn as a chart, which the page shows above its table.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import _svg
import datagen
import psycopg
from _server import server
from sqlalchemy import Engine, create_engine, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session

from eventlog_persist import ANY_ERROR, EventFilter, EventLogReader, new_event_id, purge_events
from eventlog_persist._read_sql import event_table, timeline_query

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "read-path.md"
INDEXES = (
    "ix_event_logs_session_id_created_at",
    "ix_event_logs_user_id_created_at",
    "ix_event_logs_project_id_created_at",
    "ix_event_logs_agent_id_created_at",
)
RAW_NAME = "raw psycopg, open connection (the reader's SQL and binds)"
TARGET_NAME = "EventLogReader, open Connection"
POOL_NAME = "raw psycopg, psycopg_pool.ConnectionPool checkout per call (autocommit)"
ENGINE_NAME = "EventLogReader, Engine (pool checkout per call)"
MSGSPEC_NAME = "raw psycopg, open connection, JSONB read with msgspec (as the reader does)"
ORM_NAME = "ORM select(EventLog), new Session per call"
# Each compared path, its baseline and its target (None: shown for information).
COMPARED: dict[str, tuple[str, float | None]] = {
    RAW_NAME: (RAW_NAME, None),
    TARGET_NAME: (RAW_NAME, 1.2),
    MSGSPEC_NAME: (RAW_NAME, None),
    POOL_NAME: (POOL_NAME, None),
    ENGINE_NAME: (POOL_NAME, 1.3),
    ORM_NAME: (POOL_NAME, None),
}
ROUNDS = 10
PURGE_ROWS = 10_000
PURGE_BATCH = 5_000
PURGE_RUNS = 3
PURGE_USERS = 10
FIRST_TOUCH = 1_000
HEAVY_USERS = 10


@dataclass(frozen=True)
class Stat:
    """Latency percentiles in milliseconds."""

    p50: float
    p99: float


@dataclass(frozen=True)
class Compared:
    """One path of the like-for-like comparison: latency, CPU, and its ratio to its baseline.

    ``ratios`` holds one ratio per round (the path's p50 over its baseline's p50 in that
    round); ``ratio`` is their median.
    """

    p50: float
    p99: float
    cpu: float
    ratios: tuple[float, ...]

    @property
    def ratio(self) -> float:
        """Median of the per-round ratios."""
        return statistics.median(self.ratios)


@dataclass
class SizeResult:
    """Everything measured at one table size."""

    rows: int
    load_seconds: float = 0.0
    table_mb: float = 0.0
    queries: dict[str, Stat] = field(default_factory=dict)
    heavy_events: float = 0.0
    raw: dict[str, Compared] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    """The 1-minute load average before and after the comparison."""
    deletes: dict[str, Stat] = field(default_factory=dict)
    inserts: dict[str, float] = field(default_factory=dict)
    purges: dict[str, Stat] = field(default_factory=dict)


def percentiles(samples: list[float]) -> Stat:
    """p50 and p99 of samples in seconds, as milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Stat(statistics.median(ordered) * 1000, p99 * 1000)


def timed(call: Callable[[Any], object], arguments: list[Any], iterations: int) -> Stat:
    """Time ``call(argument)`` over arguments (cycled) after a short warm-up."""
    for argument in arguments[:5]:
        call(argument)
    samples = []
    for n in range(iterations):
        argument = arguments[n % len(arguments)]
        began = time.perf_counter()
        call(argument)
        samples.append(time.perf_counter() - began)
    return percentiles(samples)


@dataclass
class Picks:
    """Query arguments drawn from the loaded data: typical sessions, users, projects, agents."""

    sessions: list[tuple[uuid.UUID, uuid.UUID]]
    users: list[uuid.UUID]
    projects: list[uuid.UUID]
    agents: list[tuple[uuid.UUID, uuid.UUID]]
    untouched: list[tuple[uuid.UUID, uuid.UUID]]
    """Other sessions with more than a page, each read once by the first-touch measurement."""
    heavy: list[uuid.UUID]
    """The users with the most events."""
    heavy_events: float
    """Mean event count of the ``heavy`` users."""


def pick(data: datagen.Dataset, count: int = 100, seed: int = 7) -> Picks:
    """Sessions with at least 60 events (more than a page), and random users/projects/agents."""
    rng = random.Random(seed)
    full = [(key, user) for key, user, size in data.sessions if size >= 60]
    full = full or [(key, user) for key, user, _ in data.sessions]
    sessions = rng.sample(full, min(count, len(full)))
    chosen = set(sessions)
    others = [pair for pair in full if pair not in chosen] or sessions
    events: dict[uuid.UUID, int] = {}
    for _, user, size in data.sessions:
        events[user] = events.get(user, 0) + size
    heavy = sorted(events, key=events.__getitem__, reverse=True)[:HEAVY_USERS]
    return Picks(
        sessions=sessions,
        users=rng.sample(data.users, min(count, len(data.users))),
        projects=[key for key, _ in rng.sample(data.projects, min(count, len(data.projects)))],
        agents=rng.sample(data.agents, min(count, len(data.agents))),
        untouched=rng.sample(others, min(FIRST_TOUCH, len(others))),
        heavy=heavy,
        heavy_events=statistics.mean(events[user] for user in heavy),
    )


def query_calls(
    reader: EventLogReader[uuid.UUID], picks: Picks
) -> dict[str, tuple[Callable[[Any], object], list[Any]]]:
    """Each measured reader call, and the arguments it cycles through."""
    end = datagen.END
    week = {"since": end - timedelta(days=7), "until": end}
    month = {"since": end - timedelta(days=30), "until": end}
    second_pages = []
    for session, user in picks.sessions:
        cursor = reader.session_timeline(session, user_id=user).next_cursor
        second_pages.append((session, user, cursor))
    errors = EventFilter(error_code=ANY_ERROR, since=week["since"])
    messages = EventFilter(event_types={"user_message", "agent_message"})
    rarest = datagen.ERROR_CODES[-1]
    rare = EventFilter(error_code=rarest)
    rare_month = EventFilter(error_code=rarest, since=month["since"])
    return {
        "session timeline, newest 50": (
            lambda a: reader.session_timeline(a[0], user_id=a[1]),
            picks.sessions,
        ),
        "session timeline, page 2 (cursor)": (
            lambda a: reader.session_timeline(a[0], user_id=a[1], cursor=a[2]),
            second_pages,
        ),
        "session timeline, oldest 50": (
            lambda a: reader.session_timeline(a[0], user_id=a[1], order="oldest"),
            picks.sessions,
        ),
        "user timeline, newest 50": (lambda u: reader.user_timeline(u), picks.users),
        "user: errors, last 7 days": (
            lambda u: reader.user_timeline(u, filters=errors),
            picks.users,
        ),
        "user: tool_name = top tool": (
            lambda u: reader.user_timeline(u, filters=EventFilter(tool_name="tool_00")),
            picks.users,
        ),
        "user: approval_status = denied": (
            lambda u: reader.user_timeline(u, filters=EventFilter(approval_status="denied")),
            picks.users,
        ),
        "user: event_types = messages": (
            lambda u: reader.user_timeline(u, filters=messages),
            picks.users,
        ),
        f"heavy users: error_code = {rarest} (rarest), no range": (
            lambda u: reader.user_timeline(u, filters=rare),
            picks.heavy,
        ),
        f"heavy users: error_code = {rarest}, last 30 days": (
            lambda u: reader.user_timeline(u, filters=rare_month),
            picks.heavy,
        ),
        "project timeline, newest 50": (lambda p: reader.project_timeline(p), picks.projects),
        "agent timeline, newest 50": (
            lambda a: reader.agent_timeline(a[0], user_id=a[1]),
            picks.agents,
        ),
        "count by event_type (user, 30 d)": (
            lambda u: reader.count_by("event_type", user_id=u, **month),
            picks.users,
        ),
        "count by tool_name (project, 30 d)": (
            lambda p: reader.count_by("tool_name", project_id=p, **month),
            picks.projects,
        ),
        "count by error_code (user, 30 d)": (
            lambda u: reader.count_by("error_code", user_id=u, **month),
            picks.users,
        ),
        "count by agent_id (user, 30 d)": (
            lambda u: reader.count_by("agent_id", user_id=u, **month),
            picks.users,
        ),
        "count per day (user, 30 d, Europe/Paris)": (
            lambda u: reader.count_by_bucket("day", user_id=u, time_zone="Europe/Paris", **month),
            picks.users,
        ),
        "count per hour (user, 7 d)": (
            lambda u: reader.count_by_bucket(timedelta(hours=1), user_id=u, **week),
            picks.users,
        ),
    }


FIRST_TOUCH_NAME = "session timeline, newest 50: sessions read once each (first touch)"


def measure_queries(engine: Engine, picks: Picks, iterations: int) -> dict[str, Stat]:
    """Latency of each reader call on one open connection.

    The calls cycle over at most 100 keys, so after the warm-up their pages sit in
    shared buffers: these are CPU-bound (warm-cache) figures. The first-touch row reads
    sessions no other call reads, once each, first, so their pages come from the OS page
    cache (or disk) instead.
    """
    with engine.connect() as connection:
        reader = EventLogReader(datagen.EventLog, connection)
        samples = []
        for session, user in picks.untouched:
            began = time.perf_counter()
            reader.session_timeline(session, user_id=user)
            samples.append(time.perf_counter() - began)
        results = {FIRST_TOUCH_NAME: percentiles(samples)}
        calls = query_calls(reader, picks)
        results |= {name: timed(call, args, iterations) for name, (call, args) in calls.items()}
        connection.rollback()
    return results


def compared(
    paths: dict[str, Callable[[Any], object]],
    arguments: list[Any],
    iterations: int,
    rounds: int = ROUNDS,
) -> dict[str, Compared]:
    """Time several paths call by call in turn, so drift on the machine hits them alike.

    The calls are split into ``rounds``; in each, every path's p50 is divided by its
    baseline's (`COMPARED`), which gives the per-round ratios. CPU is process time
    (``time.process_time``: this process's user and system time, the client's share only)
    per call, averaged.
    """
    for argument in arguments[:5]:
        for call in paths.values():
            call(argument)
    per_round = max(1, iterations // rounds)
    wall: dict[str, list[list[float]]] = {name: [] for name in paths}
    cpu: dict[str, float] = dict.fromkeys(paths, 0.0)
    for round_ in range(rounds):
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for n in range(per_round):
            argument = arguments[(round_ * per_round + n) % len(arguments)]
            for name, call in paths.items():
                began, used = time.perf_counter(), time.process_time()
                call(argument)
                cpu[name] += time.process_time() - used
                samples[name].append(time.perf_counter() - began)
        for name, values in samples.items():
            wall[name].append(values)
    results = {}
    for name in paths:
        baseline = COMPARED[name][0]
        stat = percentiles([value for values in wall[name] for value in values])
        ratios = tuple(
            statistics.median(mine) / statistics.median(theirs)
            for mine, theirs in zip(wall[name], wall[baseline], strict=True)
        )
        used = cpu[name] / (per_round * rounds) * 1000
        results[name] = Compared(stat.p50, stat.p99, used, ratios)
    return results


def measure_raw(
    engine: Engine, dsn: str, picks: Picks, iterations: int
) -> tuple[dict[str, Compared], tuple[float, float]]:
    """ "Latest 50 events of a session": raw psycopg against the reader, like for like.

    Raw psycopg runs the SQL text the reader sends, with the same bound values (``LIMIT``
    bound to 51 too, as the reader fetches one row more to know whether a next page
    exists). On an open connection: raw psycopg's connection and the reader's
    ``Connection`` each held open in one transaction. With a checkout per call: a
    ``psycopg_pool.ConnectionPool`` of autocommit connections (one statement, one round
    trip, as the reader's Engine path runs it) against the reader on an ``Engine``. Also
    shown: raw psycopg decoding JSONB with msgspec as the reader does (what is left of the
    reader's overhead when both decode alike), and the ORM. Returns the results and the
    1-minute load average before and after.
    """
    import msgspec
    from psycopg.types.json import JsonbLoader
    from psycopg_pool import ConnectionPool

    class MsgspecLoader(JsonbLoader):
        def load(self, data: Any) -> Any:
            return msgspec.json.decode(data)

    model: Any = datagen.EventLog
    table = event_table(model)
    sample = timeline_query(
        table, column="session_id", key=picks.sessions[0][0], user_id=picks.sessions[0][1]
    )
    sql, _ = sample.query.driver_sql(engine.dialect) or ("", None)
    limit = sample.limit + 1

    def orm(a: tuple[uuid.UUID, uuid.UUID]) -> object:
        with Session(orm_engine) as session:
            statement = (
                select(model)
                .where(model.session_id == a[0], model.user_id == a[1])
                .order_by(model.created_at.desc(), model.id.desc())
                .limit(50)
            )
            return session.scalars(statement).all()

    def pooled_raw(a: tuple[uuid.UUID, uuid.UUID]) -> object:
        with pool.connection() as conn:
            return conn.execute(sql, {"key": a[0], "user_id": a[1], "limit": limit}).fetchall()

    def msgspec_raw(a: tuple[uuid.UUID, uuid.UUID]) -> object:
        cursor = raw.cursor()
        cursor.adapters.register_loader("jsonb", MsgspecLoader)
        return cursor.execute(sql, {"key": a[0], "user_id": a[1], "limit": limit}).fetchall()

    # The ORM gets a pool of its own: each Session ends in a ROLLBACK, on which psycopg drops
    # the connection's prepared statements, so sharing a pool with the reader's Engine path
    # would charge the reader for re-planning its query at every call.
    orm_engine = create_engine(engine.url)
    pooled = EventLogReader(datagen.EventLog, engine)
    load = os.getloadavg()[0]
    with (
        psycopg.connect(dsn) as raw,
        engine.connect() as connection,
        ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool,
    ):
        reader = EventLogReader(datagen.EventLog, connection)
        paths: dict[str, Callable[[Any], object]] = {
            RAW_NAME: lambda a: raw.execute(
                sql, {"key": a[0], "user_id": a[1], "limit": limit}
            ).fetchall(),
            TARGET_NAME: lambda a: reader.session_timeline(a[0], user_id=a[1]),
            MSGSPEC_NAME: msgspec_raw,
            POOL_NAME: pooled_raw,
            ENGINE_NAME: lambda a: pooled.session_timeline(a[0], user_id=a[1]),
            ORM_NAME: orm,
        }
        results = compared(paths, picks.sessions, iterations * 2)
        connection.rollback()
    orm_engine.dispose()
    return results, (load, os.getloadavg()[0])


def measure_purge(engine: Engine, picks: Picks, rows: int = PURGE_ROWS) -> dict[str, Stat]:
    """Retention, committed, so it runs last.

    - one user's events (about 1,000: under one batch), through the user index, for
      ``PURGE_USERS`` users;
    - the whole table: the oldest ``rows`` events in batches of ``PURGE_BATCH``, the
      same number of rows at every size, ``PURGE_RUNS`` runs one after the other (no
      VACUUM between them). The run ends with a batch that finds fewer than
      ``PURGE_BATCH`` rows, which must look at every remaining candidate to know that: a
      sequential scan of the rest of the table or, when the statistics say few rows are
      old, a walk of a whole ``(..., created_at)`` index (a skip scan on PostgreSQL 18);
    - a run right after, with nothing left to delete: what an idle scheduled run costs.
    """
    model = datagen.EventLog
    results = {}
    # First, while every user still has all their events; at most half of the users, so the
    # oldest events the whole-table runs delete are still there at tiny (smoke-test) sizes.
    samples = []
    for user in picks.users[: max(1, min(PURGE_USERS, len(picks.users) // 2))]:
        began = time.perf_counter()
        purge_events(model, engine, older_than=datagen.END, user_id=user, max_batches=1)
        samples.append(time.perf_counter() - began)
    # (Fewer users only at smoke-test sizes; the label stays the same at every size.)
    users = f"one user's events (~1,000, one batch), p50 / p99 of {PURGE_USERS} users"
    results[users] = percentiles(samples)
    runs, idle = [], []
    for _ in range(PURGE_RUNS):
        with engine.connect() as connection:
            cutoff = connection.execute(
                text("SELECT created_at FROM event_logs ORDER BY created_at OFFSET :n LIMIT 1"),
                {"n": rows},
            ).scalar_one()
        began = time.perf_counter()
        done = purge_events(model, engine, older_than=cutoff, batch_size=PURGE_BATCH)
        runs.append(time.perf_counter() - began)
        if done.deleted != rows:
            raise RuntimeError(f"purged {done.deleted} events, expected {rows}")
        began = time.perf_counter()
        purge_events(model, engine, older_than=cutoff, batch_size=PURGE_BATCH)
        idle.append(time.perf_counter() - began)
    whole = f"whole table: oldest {rows:,} events in batches of {PURGE_BATCH:,}"
    results[f"{whole}, p50 / max of {PURGE_RUNS} runs"] = percentiles(runs)
    results["whole table: run right after, nothing left to delete"] = percentiles(idle)
    return results


def measure_deletes(engine: Engine, picks: Picks, iterations: int) -> dict[str, Stat]:
    """Delete an agent (SET NULL on its events) and a session (CASCADE), rolled back."""
    results = {}
    statements = {
        "delete agent (SET NULL)": ("DELETE FROM user_agents WHERE id = :key", picks.agents),
        "delete session (CASCADE)": ("DELETE FROM chat_sessions WHERE id = :key", picks.sessions),
    }
    with engine.connect() as connection:
        for name, (sql, keys) in statements.items():
            samples = []
            for n in range(max(10, iterations // 10)):
                key = keys[n % len(keys)][0]
                began = time.perf_counter()
                connection.execute(text(sql), {"key": key})
                samples.append(time.perf_counter() - began)
                connection.rollback()
            results[name] = percentiles(samples)
    return results


def measure_inserts(engine: Engine, picks: Picks, rows: int, repeats: int = 5) -> dict[str, float]:
    """Insert rows per second (multi-row INSERTs of 500), adding one index at a time."""
    table = datagen.EventLog.__table__  # type: ignore[attr-defined]
    rng = random.Random(3)
    now = datetime.now(UTC)
    batch = []
    for n in range(rows):
        session, user = picks.sessions[n % len(picks.sessions)]
        batch.append(
            {
                "id": new_event_id(),
                "session_id": session,
                "user_id": user,
                "project_id": None,
                "agent_id": None,
                "event_type": "tool_call",
                "payload": {"text": "x" * rng.randrange(50, 500)},
                "created_at": now + timedelta(microseconds=n),
                "error_code": None,
                "tool_name": "tool_01",
                "approval_status": None,
            }
        )
    configs = {"no secondary index": INDEXES}
    for count in range(1, len(INDEXES) + 1):
        label = "+ " + INDEXES[count - 1].removeprefix("ix_event_logs_")
        configs[label] = INDEXES[count:]
    samples: dict[str, list[float]] = {label: [] for label in configs}
    with engine.connect() as connection:
        # Round-robin over the index sets, so drift on the machine hits them alike.
        for _ in range(repeats):
            for label, dropped in configs.items():
                # DROP INDEX is transactional: the rollback below brings the indexes back.
                for name in dropped:
                    connection.execute(text(f'DROP INDEX "{name}"'))
                began = time.perf_counter()
                for start in range(0, rows, 500):
                    connection.execute(insert(table), batch[start : start + 500])
                samples[label].append(time.perf_counter() - began)
                connection.rollback()
    return {label: rows / statistics.median(times) for label, times in samples.items()}


def bench_size(
    admin: URL,
    rows: int,
    *,
    iterations: int,
    insert_rows: int,
    purge_rows: int = PURGE_ROWS,
    seed: int = 0,
) -> SizeResult:
    """Create a database, load ``rows`` events, measure, and drop the database."""
    name = f"evl_bench_{rows}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(_libpq(admin), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = admin.set(database=name)
    engine = create_engine(url)
    result = SizeResult(rows)
    try:
        datagen.create_schema(engine)
        data = datagen.load(_libpq(url), rows, seed=seed)
        result.load_seconds = data.seconds
        with engine.connect() as connection:
            size = connection.scalar(text("SELECT pg_total_relation_size('event_logs')"))
            result.table_mb = int(size or 0) / 2**20
        picks = pick(data)
        result.heavy_events = picks.heavy_events
        result.queries = measure_queries(engine, picks, iterations)
        result.raw, result.load = measure_raw(engine, _libpq(url), picks, iterations)
        result.deletes = measure_deletes(engine, picks, iterations)
        result.inserts = measure_inserts(engine, picks, insert_rows)
        result.purges = measure_purge(engine, picks, purge_rows)
    finally:
        engine.dispose()
        with psycopg.connect(_libpq(admin), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return result


def _libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def _short(name: str) -> str:
    """A baseline's name up to its first comma: "raw psycopg", with how it connects."""
    return "raw psycopg, pool" if name == POOL_NAME else "raw psycopg, open connection"


def _header(first: str, sizes: list[str]) -> str:
    ratios = [f"ratio {size}" for size in sizes[1:]]
    return f"| {first} | " + " | ".join(sizes + ratios) + " |"


def _first(row: Any) -> str:
    return str(row[0]) if row else "?"


def chart(results: list[SizeResult], *, server: str) -> str:
    """The p50 latency of every reader call at every size, as an SVG bar chart."""
    return _svg.bar_chart(
        "Reader calls: p50 latency by table size (ms, lower is better)",
        [
            (name, {f"{r.rows:,} rows": r.queries[name].p50 for r in results})
            for name in results[0].queries
        ],
        subtitle=f"{server}; warm cache, one open connection",
        unit=" ms",
    )


def render(
    results: list[SizeResult], *, command: str, server: str, svg_link: str | None = None
) -> str:
    """The results as a markdown page; ``svg_link``: the chart, relative to the page."""
    first = results[0]
    sizes = [f"{r.rows:,}" for r in results]
    lines = [
        "# Read-path benchmark",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d}: {server}; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.system()}.",
        "The data mix is described in `benchmarks/datagen.py`. Latencies are milliseconds on one "
        "open connection, over distinct typical keys; ratios compare each size to "
        f"{first.rows:,} rows.",
        "Targets: a session-timeline page and every indexed filter at most 1.5x its "
        f"{first.rows:,}-row latency; deleting an agent or a session at most 2x; the reader "
        "within 1.2x of raw psycopg running the same SQL on an open connection, and within "
        "1.3x with a pool checkout per call on both sides. Regenerate this page with the "
        "command above; the default sizes (50,000 and 1,000,000) take about two minutes.",
        "",
        "## Load (COPY, indexes rebuilt after)",
        "",
        "| rows | seconds | event_logs with indexes (MB) |",
        "|---:|---:|---:|",
        *[f"| {r.rows:,} | {r.load_seconds:.1f} | {r.table_mb:,.0f} |" for r in results],
        "",
        "## Reader calls: p50 / p99 (ms), and p50 ratio to the smallest size",
        "",
        "Warm cache: each call cycles over at most 100 keys, so after a short warm-up its "
        "pages are in shared buffers and these figures measure CPU and round trips, not I/O. "
        f"The first row reads up to {FIRST_TOUCH:,} other sessions once each, before any "
        "other call: their pages come from the OS page cache (the machine's RAM holds the "
        "largest table; the cache was not dropped), so it is a cold-ish figure for shared "
        "buffers only, not for disk. The heavy-user rows use the "
        f"{HEAVY_USERS} users with the most events ("
        + ", ".join(f"{r.heavy_events:,.0f}" for r in results)
        + " events each on average, by size): a rare value has no index of its own, so "
        "the call walks the user's index entries, and their rows, until it finds a page or "
        "the timeline ends; the cost follows the user's event count, not the table's size.",
        "",
        *(
            [f"![p50 latency of every reader call at each size]({svg_link})", ""]
            if svg_link
            else []
        ),
        _header("call", sizes),
        "|---|" + "---:|" * (2 * len(results) - 1),
    ]
    for name in first.queries:
        cells = [f"{r.queries[name].p50:.2f} / {r.queries[name].p99:.2f}" for r in results]
        ratios = [_ratio(r.queries[name].p50, first.queries[name].p50) for r in results[1:]]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        "## Latest 50 events of a session: raw SQL vs the reader, like for like",
        "",
        "Raw psycopg runs the reader's SQL text with the same bound values (`LIMIT 51` bound "
        "as a parameter in both). On an open connection: psycopg's connection and the "
        "reader's `Connection`, each held open in one transaction (target: the reader at most "
        "1.2x raw). With a checkout per call: a `psycopg_pool.ConnectionPool` of autocommit "
        "connections (one round trip per call, as the reader's Engine path) against the "
        "reader on an `Engine` (target: 1.3x). The paths run call by call in turn, "
        f"{ROUNDS} rounds; a ratio is the median over the rounds of the path's p50 divided by "
        "its baseline's in the same round, with the lowest and highest round in brackets. "
        "CPU is the client process's time per call (`time.process_time`), the server's not "
        "included. The reader decodes JSONB payloads with msgspec (the values `json.loads` "
        "gives) where psycopg would use `json.loads`; the msgspec row runs raw psycopg with "
        "that decoder, so the reader's ratio to it is its own overhead. 1-minute load "
        "average during the comparison: "
        + ", ".join(f"{r.load[0]:.2f} to {r.load[1]:.2f} ({r.rows:,} rows)" for r in results)
        + ".",
        "",
        "| path | against | "
        + " | ".join(f"{size}: p50 ms / CPU ms | {size}: ratio [rounds]" for size in sizes)
        + " | target | met |",
        "|---|---|" + "---:|---:|" * len(results) + "---|---|",
    ]
    for name in first.raw:
        baseline, target = COMPARED[name]
        cells = []
        for r in results:
            path = r.raw[name]
            cells.append(f"{path.p50:.3f} / {path.cpu:.3f}")
            if name == baseline:
                cells.append("1.00")
            else:
                cells.append(f"{path.ratio:.2f} [{min(path.ratios):.2f}-{max(path.ratios):.2f}]")
        met = ""
        if target is not None:
            met = "yes" if all(r.raw[name].ratio <= target for r in results) else "NO"
        against = "—" if name == baseline else _short(baseline)
        goal = f"<= {target}x" if target is not None else ""
        lines.append(f"| {name} | {against} | " + " | ".join(cells) + f" | {goal} | {met} |")
    lines += [
        "",
        "## Deleting a parent row (p50 / p99 ms, rolled back)",
        "",
        _header("statement", sizes),
        "|---|" + "---:|" * (2 * len(results) - 1),
    ]
    for name in first.deletes:
        cells = [f"{r.deletes[name].p50:.2f} / {r.deletes[name].p99:.2f}" for r in results]
        ratios = [_ratio(r.deletes[name].p50, first.deletes[name].p50) for r in results[1:]]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        f"## Retention (ms; purge_events, committed; ratio of p50 to {first.rows:,} rows)",
        "",
        _header("batch", sizes),
        "|---|" + "---:|" * (2 * len(results) - 1),
    ]
    for name in first.purges:
        cells = [f"{r.purges[name].p50:,.1f} / {r.purges[name].p99:,.1f}" for r in results]
        ratios = [_ratio(r.purges[name].p50, first.purges[name].p50) for r in results[1:]]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    lines += [
        "",
        "## Insert throughput by index set (rows/s, multi-row INSERT of 500, FK checks on)",
        "",
        "| indexes | " + " | ".join(sizes) + " | cost of this index, largest size |",
        "|---|" + "---:|" * (len(results) + 1),
    ]
    labels = list(first.inserts)
    for position, label in enumerate(labels):
        cells = [f"{r.inserts[label]:,.0f}" for r in results]
        last = results[-1].inserts
        cost = "—"
        if position:
            before = last[labels[position - 1]]
            cost = f"{(before / last[label] - 1) * 100:+.0f}% time per row"
        lines.append(f"| {label} | " + " | ".join([*cells, cost]) + " |")
    full = [r.inserts[labels[0]] / r.inserts[labels[-1]] - 1 for r in results]
    lines += [
        "",
        "All four indexes against none: "
        + ", ".join(
            f"{cost * 100:+.0f}% time per row at {size} rows"
            for cost, size in zip(full, sizes, strict=True)
        )
        + ". Each insert timing is the median of 5 runs of 20,000 rows, the index sets taken "
        "in turn; on a small machine a single index's share is within run-to-run noise, so "
        "read the full set against none.",
    ]
    return "\n".join(lines) + "\n"


def run(
    admin: URL,
    sizes: list[int],
    *,
    iterations: int,
    insert_rows: int,
    purge_rows: int = PURGE_ROWS,
    out: Path | None,
    command: str,
    svg: Path | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """Benchmark every size against the server at ``admin``; return (and write) the page.

    With ``svg``, the chart of reader latencies is written there too, and the page (when
    ``out`` is given) links to it.
    """
    with psycopg.connect(_libpq(admin)) as connection:
        version = connection.execute("SHOW server_version").fetchone()
        buffers = connection.execute("SHOW shared_buffers").fetchone()
    server = f"PostgreSQL {_first(version)}, shared_buffers {_first(buffers)}"
    results = []
    for rows in sizes:
        log(f"size {rows:,}: loading and measuring...")
        result = bench_size(
            admin, rows, iterations=iterations, insert_rows=insert_rows, purge_rows=purge_rows
        )
        log(f"  loaded in {result.load_seconds:.1f} s")
        results.append(result)
    svg_link = None
    if svg is not None:
        log(f"chart written to {_svg.write(svg, chart(results, server=server))}")
        if out is not None:
            svg_link = Path(os.path.relpath(svg.resolve(), out.resolve().parent)).as_posix()
    page = render(results, command=command, server=server, svg_link=svg_link)
    log(page)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page)
        log(f"written to {out}")
    return page


def main(argv: list[str] | None = None) -> int:
    """Command line of the read benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,1000000", help="comma-separated row counts")
    parser.add_argument("--url", help="SQLAlchemy URL of a maintenance database (CREATEDB)")
    parser.add_argument("--iterations", type=int, default=300, help="timed calls per query")
    parser.add_argument("--insert-rows", type=int, default=20_000)
    parser.add_argument(
        "--purge-rows", type=int, default=PURGE_ROWS, help="old events the purge run deletes"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="markdown file to write")
    parser.add_argument("--svg", type=Path, help="also draw the reader latencies as SVG here")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    given = argv if argv is not None else sys.argv[1:]
    command = "python benchmarks/read_bench.py " + shlex.join(given)
    options = {
        "iterations": args.iterations,
        "insert_rows": args.insert_rows,
        "purge_rows": args.purge_rows,
        "out": args.out,
        "svg": args.svg,
        "command": command.strip(),
    }
    if args.url:
        run(make_url(args.url), sizes, **options)
    else:
        with server(None) as admin:
            run(make_url(admin).set(drivername="postgresql+psycopg"), sizes, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
