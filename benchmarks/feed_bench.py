"""The feed's costs, in one run: writes with the ``xid`` column, a backlog drain, a long
transaction, and commit-to-delivery latency.

Starts a throwaway embedded PostgreSQL 18 (or uses ``--url``, a libpq URL of a maintenance
database, as a role that may CREATE DATABASE) and builds three databases on it, each with the
benchmark host's tables (benchmarks/datagen.py) made by ``metadata.create_all``, as a test
database is: ``plain`` (no feed), ``feed`` (``event_log_model(Base, feed=True)``: the ``xid
xid8 DEFAULT pg_current_xact_id()`` column, its ``(xid, id)`` index and
``event_log_consumers``, as revision evlfeed_0001 makes them) and ``backlog`` (the feed's
schema, loaded with ``--backlog`` events). It prints, as markdown tables:

1. **Writes, feed / plain.** Every write path, end to end from the host's values to
   committed rows, into ``plain`` and ``feed`` in turns: in ``--rounds`` rounds, the paths in
   an order rotated each round, each path on both databases, the one going first
   alternating. ``event_logs`` is truncated (and a ``CHECKPOINT`` taken) before each run.
   A ratio is feed/plain throughput within a round; the table gives the median over the
   rounds and the range. Target: >= 0.95. Two diagnostic rows write into ``feed`` with a
   model that did not opt in (the database fills ``xid`` all the same), which tells the
   database's share of a cost from the ORM's (a model with the column reads it back).
2. **Backlog drain.** An ``EventFeed`` registered at ``earliest`` drains the ``--backlog``
   events (datagen's mix of types and payload sizes, committed 100 per transaction,
   ``created_at`` in commit order) with ``fetch`` + ``commit`` until an empty batch, at the
   default batch size and a larger one; the baseline is the consumer a host would write
   without the feed: a keyset read by ``(created_at, id)`` over an index on those columns
   (which ``backlog`` has for it), its checkpoint stored in a table of its own after each
   page (one transaction for the read, one for the checkpoint, as the feed's fetch and
   commit). Each drain is checked: every event once.
3. **A long transaction.** A transaction holding an id (it recorded a few events) stays open
   10 seconds while short writers commit (``record_detached``, a steady rate); a
   ``mode="snapshot"`` and a ``mode="horizon"`` consumer poll every 100 ms. How many events
   each delivers while it is open, and that both deliver every event once after it ends
   (missed, duplicated, foreign: all counted).
4. **Latency and CPU.** A consumer waits between batches by a *wait strategy* (polling every
   100 ms or 1 s, or ``EventFeed.wait``: LISTEN with a 1 s poll) while writers commit at a
   steady rate, either records in their own transactions (``record_detached``: no
   notification, only the poll finds them) or ``write_events`` of 5 events (one
   notification per call); latency is the consumer's time
   after the ``fetch`` that returned an event minus the writer's time after its commit
   returned, matched by event id. Then the CPU a consumer costs per second, in this process
   (its thread) and on the server (its backend, from ``/proc``; embedded server only), idle
   and under load, and the WAL an idle consumer writes (each fetch renews its lease).
   `STRATEGIES` holds the rows.

Usage: ``python benchmarks/feed_bench.py [--quick] [--rounds 6] [--backlog 200000]
[--svg FILE] [--latency-only] [--only TEXT ...]``; ``--only`` reruns some write paths
(labels containing TEXT), e.g. ``--only '20 per transaction' --rounds 12``. ``--quick`` is
a smoke run of a few seconds: small sizes, its figures noise.
The databases are dropped at the end.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.metadata import version as installed_version
from itertools import islice
from pathlib import Path
from typing import Any

import _svg
import datagen
import psycopg
import sqlalchemy
from _server import server
from sqlalchemy import Engine, Integer, bindparam, create_engine, select, text, tuple_
from sqlalchemy.orm import Session

from eventlog_persist import (
    BufferedWriter,
    EventFeed,
    EventWriter,
    new_event,
    write_events,
)

PlainBase, PlainEventLog = datagen.host_tables()
FeedBase, FeedEventLog = datagen.host_tables(feed=True)

PLAIN, FEED = "plain", "feed"
WRITE_TARGET = 0.95
THREADS = 4
USERS, SESSIONS_PER_USER = 8, 8
COPY_BATCH = 10_000
"""``write_events``'s default batch size: one staged batch per this many events."""
BACKLOG_PER_TRANSACTION = 100


@dataclass(frozen=True)
class Options:
    """Sizes and durations of a run (the defaults: the full run)."""

    rounds: int = 6
    record_events: int = 1_000
    """Events of a ``record``/``record_detached`` run, one per transaction (x4 batched)."""
    threaded_events: int = 2_400
    bulk_events: int = 30_000
    """Events of a ``write_events`` (straight or staged) or ``BufferedWriter`` run."""
    backlog: int = 200_000
    drain_rounds: int = 3
    drain_limits: tuple[int, ...] = (500, 5_000)
    long_seconds: float = 10.0
    long_rate: float = 100.0
    """Events a second the short writers commit during the long transaction."""
    latency_seconds: float = 20.0
    latency_rounds: int = 2
    latency_rate: float = 50.0
    idle_seconds: float = 10.0
    catch_up_timeout: float = 60.0
    """Seconds a consumer may take to deliver everything after the writers stop."""
    seed: int = 0
    only: tuple[str, ...] = ()
    """Write paths to run (labels containing one of these); empty: all of them."""

    @classmethod
    def quick(cls) -> Options:
        """A smoke run of a few seconds: every part, tiny sizes (the figures mean nothing)."""
        return cls(
            rounds=2,
            record_events=40,
            threaded_events=80,
            bulk_events=1_500,
            backlog=3_000,
            drain_rounds=1,
            long_seconds=1.5,
            long_rate=40.0,
            latency_seconds=2.5,
            latency_rounds=1,
            latency_rate=20.0,
            idle_seconds=1.0,
        )


# --- the server and the databases ----------------------------------------------------------


@dataclass
class Database:
    """One of the benchmark's databases."""

    name: str
    model: Any
    url: str
    engine: Engine
    writer: EventWriter[Any, uuid.UUID]


def open_database(admin: str, name: str, model: Any, metadata: Any, tag: str) -> Database:
    database = f"evl_feedbench_{name}_{tag}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    url = psycopg.conninfo.make_conninfo(admin, dbname=database)
    engine = create_engine("postgresql+psycopg://", creator=partial(psycopg.connect, url))
    metadata.create_all(engine)
    return Database(name, model, url, engine, EventWriter(model))


def drop_databases(admin: str, databases: Sequence[Database]) -> None:
    with psycopg.connect(admin, autocommit=True) as connection:
        for database in databases:
            database.engine.dispose()
            name = psycopg.conninfo.conninfo_to_dict(database.url)["dbname"]
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Keys:
    """The host rows every write references: users, and sessions with their user."""

    users: list[uuid.UUID]
    sessions: list[tuple[uuid.UUID, uuid.UUID]]

    @classmethod
    def make(cls) -> Keys:
        users = [uuid.uuid4() for _ in range(USERS)]
        return cls(users, [(uuid.uuid4(), u) for u in users for _ in range(SESSIONS_PER_USER)])

    def insert(self, database: Database) -> None:
        with psycopg.connect(database.url) as connection, connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO users (id, name) VALUES (%s, 'bench')", [(u,) for u in self.users]
            )
            cursor.executemany(
                "INSERT INTO chat_sessions (id, user_id) VALUES (%s, %s)", self.sessions
            )


def payload(n: int) -> dict[str, Any]:
    """About 600 bytes of JSON, shaped like an LLM tool call (benchmarks/write_bench.py's)."""
    return {
        "model": "gpt-4.1-mini",
        "turn": n,
        "messages": [
            {"role": "system", "content": "You help users find places to eat."},
            {"role": "user", "content": "Find me a quiet Italian restaurant near the station " * 2},
            {"role": "assistant", "content": "Looking that up for you now, one moment. " * 3},
        ],
        "tool": {"name": "search_places", "arguments": {"q": "italian", "radius_m": 800}},
        "tool_call_id": f"call_{n:012d}",
        "finish_reason": "tool_calls",
        "usage": {"input_tokens": 812, "output_tokens": 96, "latency_ms": 431.5},
    }


def fields(keys: Keys, n: int) -> dict[str, Any]:
    """The host's values of its n-th event."""
    session, user = keys.sessions[n % len(keys.sessions)]
    return {
        "session_id": session,
        "user_id": user,
        "event_type": "tool_call",
        "tool_name": "search_places",
        "payload": payload(n),
    }


def scalar(database: Database, sql: str) -> Any:
    with database.engine.connect() as connection:
        return connection.execute(text(sql)).scalar_one()


def wal_lsn(admin: str) -> int:
    """The server's WAL insert position, in bytes."""
    with psycopg.connect(admin, autocommit=True) as connection:
        row = connection.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint"
        ).fetchone()
    return int(row[0]) if row else 0


# --- 1. writes, feed / plain -----------------------------------------------------------------

WritePath = Callable[[Database, Keys, int], None]
"""Write events ``0..n-1`` (`fields`) into a database, committed when it returns."""


def record_path(per_transaction: int) -> WritePath:
    """``EventWriter.record`` in the host's ``Session``, committed every so many events."""

    def run(database: Database, keys: Keys, n: int) -> None:
        record_some(database, keys, range(n), per_transaction)

    return run


def record_some(database: Database, keys: Keys, numbers: Sequence[int], per: int) -> None:
    with Session(database.engine) as session:
        for count, n in enumerate(numbers, 1):
            database.writer.record(session, **fields(keys, n))
            if count % per == 0:
                session.commit()
        session.commit()


def detached_some(database: Database, keys: Keys, numbers: Sequence[int]) -> None:
    for n in numbers:
        database.writer.record_detached(database.engine, **fields(keys, n))


def detached_path(database: Database, keys: Keys, n: int) -> None:
    """``EventWriter.record_detached``: one short transaction of its own per event."""
    detached_some(database, keys, range(n))


def threaded(work: Callable[[Database, Keys, Sequence[int]], None]) -> WritePath:
    """``work`` on `THREADS` threads at once, each with every THREADS-th event."""

    def run(database: Database, keys: Keys, n: int) -> None:
        failures: list[BaseException] = []

        def one(numbers: Sequence[int]) -> None:
            try:
                work(database, keys, numbers)
            except BaseException as exc:
                failures.append(exc)

        workers = [
            threading.Thread(target=one, args=(range(k, n, THREADS),)) for k in range(THREADS)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[0]

    return run


def copy_path(database: Database, keys: Keys, n: int) -> None:
    """``write_events`` (binary COPY) of ``new_event(**values)`` built as it copies."""
    result = write_events(
        database.model, database.url, (new_event(**fields(keys, i)) for i in range(n))
    )
    if result.written != n or result.duplicates:
        raise RuntimeError(f"{database.name}: write_events wrote {result}, expected {n} new")


@dataclass
class StagedPath:
    """``write_events`` whose every batch holds one event stored already (its first): each
    batch goes through the staging table and ``INSERT ... ON CONFLICT DO NOTHING``, as after
    a transient error. ``prepare`` (untimed) builds the events and stores the duplicates."""

    events: list[Any] = field(default_factory=list)

    def prepare(self, database: Database, keys: Keys, n: int) -> None:
        self.events = [new_event(**fields(keys, i)) for i in range(n)]
        firsts = self.events[::COPY_BATCH]
        write_events(database.model, database.url, firsts)

    def __call__(self, database: Database, keys: Keys, n: int) -> None:
        result = write_events(database.model, database.url, self.events)
        expected = len(self.events[::COPY_BATCH])
        if result.written != n or result.duplicates != expected:
            raise RuntimeError(f"{database.name}: staged write_events wrote {result}")


def buffered_path(database: Database, keys: Keys, n: int) -> None:
    """``BufferedWriter.enqueue(**values)`` of every event, then ``close()`` (it drains)."""
    with BufferedWriter(database.model, database.url) as writer:
        for i in range(n):
            writer.enqueue(**fields(keys, i))


@dataclass
class PathSpec:
    label: str
    run: WritePath
    size: Callable[[Options], int]
    prepare: Callable[[Database, Keys, int], None] | None = None
    model_without_feed: bool = False
    """Write into ``feed`` with the model that did not opt in (the database fills ``xid``)."""


def write_paths() -> list[PathSpec]:
    staged = StagedPath()
    return [
        PathSpec("`record`, 1 per transaction", record_path(1), lambda o: o.record_events),
        PathSpec("`record`, 20 per transaction", record_path(20), lambda o: o.record_events * 4),
        PathSpec(
            "`record`, 1 per transaction, a model without `feed=True` (diagnostic)",
            record_path(1),
            lambda o: o.record_events,
            model_without_feed=True,
        ),
        PathSpec(
            "`record`, 20 per transaction, a model without `feed=True` (diagnostic)",
            record_path(20),
            lambda o: o.record_events * 4,
            model_without_feed=True,
        ),
        PathSpec(
            f"`record`, 1 per transaction, {THREADS} threads",
            threaded(lambda d, k, ns: record_some(d, k, ns, 1)),
            lambda o: o.threaded_events,
        ),
        PathSpec("`record_detached`, 1 per transaction", detached_path, lambda o: o.record_events),
        PathSpec(
            f"`record_detached`, {THREADS} threads",
            threaded(detached_some),
            lambda o: o.threaded_events,
        ),
        PathSpec(
            f"`write_events` (COPY, {COPY_BATCH:,} per transaction)",
            copy_path,
            lambda o: o.bulk_events,
        ),
        PathSpec(
            "`write_events`, staged (every batch holds an id stored already; events prebuilt)",
            staged,
            lambda o: o.bulk_events,
            staged.prepare,
        ),
        PathSpec("`BufferedWriter.enqueue` + `close()`", buffered_path, lambda o: o.bulk_events),
    ]


@dataclass
class WriteFigures:
    """Events/s per path, per database, per round."""

    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


def reset(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("TRUNCATE event_logs"))
    with database.engine.connect() as connection, suppress(sqlalchemy.exc.DBAPIError):
        connection.execute(text("CHECKPOINT"))  # may need a privilege --url's role lacks
        connection.commit()


def timed_write(database: Database, keys: Keys, spec: PathSpec, n: int) -> float:
    """Events/s of one run of a path into a clean ``event_logs``, checked."""
    if spec.model_without_feed and database.name == FEED:
        database = replace(database, writer=EventWriter(PlainEventLog))
    reset(database)
    if spec.prepare is not None:
        spec.prepare(database, keys, n)
    gc.collect()
    started = time.perf_counter()
    spec.run(database, keys, n)
    seconds = time.perf_counter() - started
    stored = scalar(database, "SELECT count(*) FROM event_logs")
    if stored != n:
        raise RuntimeError(f"{database.name}, {spec.label}: {stored} rows, expected {n}")
    if database.name == FEED:
        filled = scalar(database, "SELECT count(xid) FROM event_logs")
        if filled != n:
            raise RuntimeError(f"{spec.label}: {n - filled} rows without an xid")
    return n / seconds


def measure_writes(
    databases: dict[str, Database], keys: Keys, options: Options, log: Callable[[str], None]
) -> WriteFigures:
    paths = [
        spec
        for spec in write_paths()
        if not options.only or any(part in spec.label for part in options.only)
    ]
    if not paths:
        raise SystemExit(f"--only {options.only} matches no write path")
    figures = WriteFigures()
    for spec in paths:
        figures.rates[spec.label] = {PLAIN: [], FEED: []}
        figures.sizes[spec.label] = spec.size(options)
    for round_ in range(options.rounds):
        shift = round_ % len(paths)
        pair = [databases[PLAIN], databases[FEED]]
        if round_ % 2:
            pair.reverse()
        log(f"writes, round {round_ + 1}/{options.rounds} ({pair[0].name} first)")
        for spec in paths[shift:] + paths[:shift]:
            n = figures.sizes[spec.label]
            for database in pair:
                rate = timed_write(database, keys, spec, n)
                figures.rates[spec.label][database.name].append(rate)
            plain, feed = (figures.rates[spec.label][name][-1] for name in (PLAIN, FEED))
            log(f"  {spec.label}: plain {plain:,.0f}/s, feed {feed:,.0f}/s, {feed / plain:.3f}")
    return figures


# --- 2. backlog drain ----------------------------------------------------------------------


def load_backlog(database: Database, rows: int, seed: int) -> float:
    """Fill ``backlog`` with datagen's mix: the host rows, then the events in transactions of
    `BACKLOG_PER_TRANSACTION`, ``created_at`` 1 ms apart in commit order; then VACUUM."""
    began = time.perf_counter()
    data = datagen.plan(rows, seed=seed)
    first = datetime.now(UTC) - timedelta(milliseconds=rows + 60_000)
    columns = (
        "id, session_id, user_id, project_id, agent_id, event_type, payload, created_at, "
        "error_code, tool_name, approval_status"
    )
    with psycopg.connect(database.url, autocommit=True) as connection:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO users (id, name) VALUES (%s, 'bench')", [(u,) for u in data.users]
            )
            for table, pairs in (
                ("user_projects", data.projects),
                ("user_agents", data.agents),
                ("chat_sessions", [(key, owner) for key, owner, _ in data.sessions]),
            ):
                with cursor.copy(f"COPY {table} (id, user_id) FROM STDIN") as copy:
                    for pair in pairs:
                        copy.write_row(pair)
            lines = datagen.event_lines(data, seed=seed)
            number = 0
            while chunk := list(islice(lines, BACKLOG_PER_TRANSACTION)):
                with (
                    connection.transaction(),
                    cursor.copy(f"COPY event_logs ({columns}) FROM STDIN") as copy,
                ):
                    for line in chunk:
                        parts = line.split("\t")
                        parts[7] = (first + timedelta(milliseconds=number)).isoformat()
                        copy.write("\t".join(parts))
                        number += 1
        connection.execute("VACUUM (ANALYZE) event_logs")
    return time.perf_counter() - began


@dataclass
class DrainRun:
    seconds: float
    cpu: float
    events: int


def drain_feed(database: Database, limit: int) -> DrainRun:
    """A consumer registered at ``earliest`` fetching and committing until an empty batch."""
    feed: EventFeed[uuid.UUID] = EventFeed(database.model, database.engine, consumer="drain")
    feed.unregister()
    feed.register(start="earliest")
    ids: list[uuid.UUID] = []
    gc.collect()
    cpu, started = time.process_time(), time.perf_counter()
    while True:
        batch = feed.fetch(limit=limit)
        if not batch.events:
            break
        ids.extend(event.id for event in batch.events)
        feed.commit(batch)
    run = DrainRun(time.perf_counter() - started, time.process_time() - cpu, len(ids))
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"the feed delivered {len(ids) - len(set(ids))} events twice")
    return run


def keyset_statements(model: Any) -> tuple[Any, Any, Any]:
    """The hand-written consumer's first page, next page and checkpoint update."""
    table = model.__table__
    columns = [c for c in table.c if c.name != "xid"]
    limit = bindparam("limit", type_=Integer())
    order = (table.c.created_at, table.c.id)
    first = select(*columns).order_by(*order).limit(limit)
    after = tuple_(table.c.created_at, table.c.id) > tuple_(
        bindparam("after_created_at", type_=table.c.created_at.type),
        bindparam("after_id", type_=table.c.id.type),
    )
    page = select(*columns).where(after).order_by(*order).limit(limit)
    update = text(
        "UPDATE bench_keyset_checkpoint SET created_at = :created_at, id = :id WHERE name = 'drain'"
    )
    return first, page, update


def drain_keyset(database: Database, limit: int) -> DrainRun:
    """The baseline: keyset pages by ``(created_at, id)``, the checkpoint stored after each."""
    first, page, update = keyset_statements(database.model)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE bench_keyset_checkpoint SET created_at = NULL, id = NULL"))
    ids: list[uuid.UUID] = []
    after: tuple[datetime, uuid.UUID] | None = None
    gc.collect()
    cpu, started = time.process_time(), time.perf_counter()
    while True:
        with database.engine.begin() as connection:
            if after is None:
                rows = connection.execute(first, {"limit": limit}).all()
            else:
                params = {"limit": limit, "after_created_at": after[0], "after_id": after[1]}
                rows = connection.execute(page, params).all()
        if not rows:
            break
        ids.extend(row.id for row in rows)
        after = (rows[-1].created_at, rows[-1].id)
        with database.engine.begin() as connection:
            connection.execute(update, {"created_at": after[0], "id": after[1]})
    run = DrainRun(time.perf_counter() - started, time.process_time() - cpu, len(ids))
    if len(set(ids)) != len(ids):
        raise RuntimeError("the keyset read returned an event twice")
    return run


def prepare_keyset(database: Database) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("CREATE INDEX bench_created_at_id ON event_logs (created_at, id)"))
        connection.execute(
            text(
                "CREATE TABLE bench_keyset_checkpoint "
                "(name text PRIMARY KEY, created_at timestamptz, id uuid)"
            )
        )
        connection.execute(text("INSERT INTO bench_keyset_checkpoint (name) VALUES ('drain')"))


@dataclass
class DrainFigures:
    runs: dict[tuple[str, int], list[DrainRun]] = field(default_factory=dict)
    backlog: int = 0


def measure_drain(database: Database, options: Options, log: Callable[[str], None]) -> DrainFigures:
    figures = DrainFigures(backlog=options.backlog)
    variants: list[tuple[str, int, Callable[[Database, int], DrainRun]]] = []
    for limit in options.drain_limits:
        variants.append(("feed", limit, drain_feed))
        variants.append(("keyset", limit, drain_keyset))
    for kind, limit, drain in variants:  # untimed: warm the caches, plan the statements
        drain(database, limit)
        figures.runs[(kind, limit)] = []
    for round_ in range(options.drain_rounds):
        shift = round_ % len(variants)
        for kind, limit, drain in variants[shift:] + variants[:shift]:
            run = drain(database, limit)
            if run.events != options.backlog:
                raise RuntimeError(f"{kind} drained {run.events}, expected {options.backlog}")
            figures.runs[(kind, limit)].append(run)
            log(
                f"drain, round {round_ + 1}: {kind} limit {limit}: "
                f"{run.events / run.seconds:,.0f} events/s"
            )
    return figures


# --- 3. a long transaction -------------------------------------------------------------------


@dataclass
class Deliveries:
    """What one consumer delivered: the first time of each event, and how often each came."""

    first: dict[uuid.UUID, float] = field(default_factory=dict)
    count: dict[uuid.UUID, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ids: Sequence[uuid.UUID], moment: float) -> None:
        with self.lock:
            for event_id in ids:
                self.first.setdefault(event_id, moment)
                self.count[event_id] = self.count.get(event_id, 0) + 1

    def before(self, moment: float) -> int:
        with self.lock:
            return sum(1 for when in self.first.values() if when < moment)

    def has(self, expected: set[uuid.UUID]) -> bool:
        with self.lock:
            return expected <= self.first.keys()


@dataclass
class Commits:
    """The writers' events: the time after each commit returned, by event id."""

    at: dict[uuid.UUID, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event_id: uuid.UUID, moment: float) -> None:
        with self.lock:
            self.at[event_id] = moment


def steady_writers(
    database: Database,
    keys: Keys,
    rate: float,
    stop: threading.Event,
    commits: Commits,
    *,
    threads: int = 2,
    bulk: int = 0,
) -> list[threading.Thread]:
    """``threads`` writers committing ``rate`` events a second between them, one per
    ``record_detached`` (each on a schedule: a writer that falls behind catches up); with
    ``bulk``, that many per ``write_events`` call instead (which notifies the feed)."""
    per_call = bulk or 1
    every = threads * per_call / rate
    failures: list[BaseException] = []

    def write(offset: int) -> None:
        start, k = time.perf_counter() + offset * every / threads, 0
        try:
            while not stop.is_set():
                delay = start + k * every - time.perf_counter()
                if delay > 0 and stop.wait(delay):
                    break
                first = (k * threads + offset) * per_call
                if bulk:
                    events = [database.writer.event(**fields(keys, first + n)) for n in range(bulk)]
                    write_events(database.model, database.url, events)
                else:
                    events = [database.writer.event(**fields(keys, first))]
                    database.writer.record_detached(database.engine, events[0])
                moment = time.perf_counter()
                for event in events:
                    commits.add(event.id, moment)
                k += 1
        except BaseException as exc:  # the run's checks then fail loudly
            failures.append(exc)
            raise

    workers = [threading.Thread(target=write, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    return workers


Wait = Callable[[threading.Event], None]
"""Called when a consumer has caught up (a batch shorter than its limit); returns when it
should fetch again, and soon when the event is set (the run is ending)."""
WaitStrategy = Callable[[EventFeed[Any]], Wait]
"""Makes the `Wait` of a consumer, given its feed."""


@dataclass(frozen=True)
class Strategy:
    """A row of the latency table: how the consumer waits, and how the writers write."""

    wait: WaitStrategy
    bulk: int = 0
    """0: ``record_detached``, one event a transaction (no notification); else that many
    events per ``write_events`` call (one notification each)."""


def listening(timeout: float) -> WaitStrategy:
    """``EventFeed.wait``: woken by the writers' notifications, else after ``timeout``."""

    def make(feed: EventFeed[Any]) -> Wait:
        def wait(_stop: threading.Event) -> None:
            feed.wait(timeout=timeout)

        return wait

    return make


def polling(interval: float) -> WaitStrategy:
    """Fetch again ``interval`` seconds after a batch that caught up (docs/feed.md's loop)."""

    def make(_feed: EventFeed[Any]) -> Wait:
        def wait(stop: threading.Event) -> None:
            stop.wait(interval)

        return wait

    return make


STRATEGIES: dict[str, Strategy] = {
    "records, poll every 100 ms": Strategy(polling(0.1)),
    "records, poll every 1 s": Strategy(polling(1.0)),
    "records, LISTEN + 1 s poll": Strategy(listening(1.0)),
    "bulk of 5, poll every 100 ms": Strategy(polling(0.1), bulk=5),
    "bulk of 5, LISTEN + 1 s poll": Strategy(listening(1.0), bulk=5),
}
"""The rows of the latency table: records in their own transactions notify nothing (only
the poll finds them); ``write_events`` and the buffered writers notify once per batch."""


@dataclass
class Consumer:
    """A consumer on a thread of its own: fetch, note, commit; wait when caught up."""

    feed: EventFeed[uuid.UUID]
    wait: Wait
    limit: int = 500
    deliveries: Deliveries = field(default_factory=Deliveries)
    stop: threading.Event = field(default_factory=threading.Event)
    fetches: int = 0
    cpu: float = 0.0
    """Seconds of CPU its thread used."""
    failure: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Consumer:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        cpu = time.thread_time()
        try:
            while not self.stop.is_set():
                batch = self.feed.fetch(limit=self.limit)
                moment = time.perf_counter()
                self.fetches += 1
                if batch.events:
                    self.deliveries.add([event.id for event in batch.events], moment)
                    self.feed.commit(batch)
                if len(batch.events) < self.limit:
                    self.wait(self.stop)
            self.feed.release()
        except BaseException as exc:
            self.failure = exc
        finally:
            self.cpu = time.thread_time() - cpu
            self.feed.close()  # its LISTEN connection, if it listened

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        if self.failure is not None:
            raise RuntimeError(f"consumer {self.feed.consumer} failed") from self.failure


def catch_up(consumers: Sequence[Consumer], expected: set[uuid.UUID], timeout: float) -> float:
    """Seconds until every consumer delivered ``expected`` (``timeout`` if one did not)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if all(c.deliveries.has(expected) for c in consumers):
            return time.perf_counter() - started
        if any(c.failure for c in consumers):
            break
        time.sleep(0.01)
    return timeout


@dataclass
class Accounting:
    """A consumer's delivery checked against what was committed."""

    delivered: int
    missed: int
    duplicated: int
    foreign: int
    """Events delivered that no writer of the run committed."""

    @classmethod
    def of(cls, deliveries: Deliveries, expected: set[uuid.UUID]) -> Accounting:
        with deliveries.lock:
            got = set(deliveries.first)
            twice = sum(n - 1 for n in deliveries.count.values())
        return cls(len(got & expected), len(expected - got), twice, len(got - expected))


@dataclass
class LongFigures:
    seconds: float
    written: int
    """Events the short writers committed while the long transaction was open."""
    long_events: int
    during: dict[str, int]
    caught_up: dict[str, float]
    """Seconds after the long transaction's commit until the mode had delivered everything."""
    accounting: dict[str, Accounting]


def measure_long_transaction(
    database: Database, keys: Keys, options: Options, log: Callable[[str], None]
) -> LongFigures:
    consumers = {}
    for mode in ("snapshot", "horizon"):
        feed: EventFeed[uuid.UUID] = EventFeed(
            database.model, database.engine, consumer=f"long-{mode}", mode=mode
        )
        feed.register(start="latest")
        consumers[mode] = Consumer(feed, polling(0.1)(feed))
    commits = Commits()
    stop = threading.Event()
    long_ids = []
    with Session(database.engine) as long:
        for n in range(5):
            long_ids.append(database.writer.record(long, **fields(keys, 10**6 + n)).id)
        long.flush()  # the transaction holds an id now, and its 5 rows
        for consumer in consumers.values():
            consumer.start()
        opened = time.perf_counter()
        writers = steady_writers(database, keys, options.long_rate, stop, commits)
        time.sleep(options.long_seconds)
        stop.set()
        for writer in writers:
            writer.join()
        closing = time.perf_counter()
        long.commit()
    ended = time.perf_counter()
    written = len(commits.at)
    expected = set(commits.at) | set(long_ids)
    during = {mode: c.deliveries.before(closing) for mode, c in consumers.items()}
    catch_up(list(consumers.values()), expected, options.catch_up_timeout)
    caught_up = {}
    for mode, consumer in consumers.items():
        with consumer.deliveries.lock:
            last = max(consumer.deliveries.first.get(i, math.inf) for i in expected)
        caught_up[mode] = last - ended
    for consumer in consumers.values():
        consumer.finish()
    accounting = {mode: Accounting.of(c.deliveries, expected) for mode, c in consumers.items()}
    log(
        f"long transaction {closing - opened:.1f} s: {written} short events, delivered during "
        f"it: {during}; accounting {accounting}"
    )
    for consumer in consumers.values():
        consumer.feed.unregister()
    return LongFigures(closing - opened, written, len(long_ids), during, caught_up, accounting)


# --- 4. latency and CPU ----------------------------------------------------------------------


def backend_cpu(pid: int | None) -> float | None:
    """Seconds of CPU a local server backend used so far (``/proc``), or None."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    values = stat.rsplit(")", 1)[1].split()
    return (int(values[11]) + int(values[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class LatencyRun:
    seconds: float
    latencies: list[float]
    """Delivery minus commit, seconds, per event."""
    client_cpu: float
    server_cpu: float | None
    fetches: int
    accounting: Accounting
    wal: int = 0


@contextmanager
def consumer_engine(database: Database) -> Iterator[tuple[Engine, int | None]]:
    """An engine of one pooled connection for a consumer, and its backend's pid."""
    engine = create_engine(
        "postgresql+psycopg://",
        creator=partial(psycopg.connect, database.url),
        pool_size=1,
        max_overflow=0,
    )
    try:
        with engine.connect() as connection:
            pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
        yield engine, pid
    finally:
        engine.dispose()


def latency_run(
    database: Database,
    keys: Keys,
    strategy: Strategy,
    *,
    rate: float,
    seconds: float,
    timeout: float,
    local_server: bool,
    admin: str,
) -> LatencyRun:
    """One consumer waiting by ``strategy`` while writers commit ``rate`` events a second
    for ``seconds`` (none: idle); the consumer runs until it delivered them all."""
    name = f"latency-{uuid.uuid4().hex[:8]}"
    with consumer_engine(database) as (engine, pid):
        feed: EventFeed[uuid.UUID] = EventFeed(database.model, engine, consumer=name)
        feed.register(start="latest")
        pid = pid if local_server else None
        consumer = Consumer(feed, strategy.wait(feed))
        commits, stop = Commits(), threading.Event()
        wal = wal_lsn(admin)
        server_before = backend_cpu(pid)
        started = time.perf_counter()
        consumer.start()
        writers = (
            steady_writers(database, keys, rate, stop, commits, bulk=strategy.bulk) if rate else []
        )
        time.sleep(seconds)
        stop.set()
        for writer in writers:
            writer.join()
        if writers:
            catch_up([consumer], set(commits.at), timeout)
        consumer.finish()
        elapsed = time.perf_counter() - started
        server_after = backend_cpu(pid)
        wal = wal_lsn(admin) - wal
        feed.unregister()
    expected = set(commits.at)
    latencies = [
        consumer.deliveries.first[event_id] - committed
        for event_id, committed in commits.at.items()
        if event_id in consumer.deliveries.first
    ]
    server = None
    if server_before is not None and server_after is not None:
        server = server_after - server_before
    return LatencyRun(
        elapsed,
        latencies,
        consumer.cpu,
        server,
        consumer.fetches,
        Accounting.of(consumer.deliveries, expected),
        wal,
    )


@dataclass
class LatencyFigures:
    loaded: dict[str, list[LatencyRun]] = field(default_factory=dict)
    idle: dict[str, list[LatencyRun]] = field(default_factory=dict)
    rate: float = 0.0


def measure_latency(
    database: Database,
    keys: Keys,
    options: Options,
    *,
    local_server: bool,
    admin: str,
    strategies: dict[str, Strategy],
    log: Callable[[str], None],
) -> LatencyFigures:
    figures = LatencyFigures(rate=options.latency_rate)
    names = list(strategies)
    for name in names:
        figures.loaded[name], figures.idle[name] = [], []
    run = partial(
        latency_run,
        database,
        keys,
        timeout=options.catch_up_timeout,
        local_server=local_server,
        admin=admin,
    )
    for round_ in range(options.latency_rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            result = run(
                strategies[name], rate=options.latency_rate, seconds=options.latency_seconds
            )
            figures.loaded[name].append(result)
            log(
                f"latency, round {round_ + 1}, {name}: p50 "
                f"{percentile(result.latencies, 0.5) * 1000:.0f} ms, p99 "
                f"{percentile(result.latencies, 0.99) * 1000:.0f} ms, {result.accounting}"
            )
    for name in names:
        result = run(strategies[name], rate=0.0, seconds=options.idle_seconds)
        figures.idle[name].append(result)
        log(f"idle, {name}: client CPU {result.client_cpu / result.seconds * 1000:.2f} ms/s")
    return figures


# --- the report ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], share: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    """Median [min-max]."""
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}-{fmt.format(max(values))}]"
    )


@dataclass
class Report:
    """What `run` measured: the printed tables, and the figures behind them."""

    conditions: str
    text: str
    writes: WriteFigures
    drain: DrainFigures
    long: LongFigures
    latency: LatencyFigures
    headline: dict[str, float]
    """Each write path's feed/plain ratio (median), and each drain's feed/keyset ratio."""


def write_table(figures: WriteFigures) -> tuple[list[str], dict[str, float]]:
    lines = [
        "| path | events a run | plain, events/s | feed, events/s | feed/plain, median "
        f"[rounds] | target >= {WRITE_TARGET} |",
        "|---|---:|---:|---:|---:|---|",
    ]
    headline = {}
    for label, by_db in figures.rates.items():
        ratios = [f / p for f, p in zip(by_db[FEED], by_db[PLAIN], strict=True)]
        ratio = headline[label] = statistics.median(ratios)
        lines.append(
            f"| {label} | {figures.sizes[label]:,} | {statistics.median(by_db[PLAIN]):,.0f} | "
            f"{statistics.median(by_db[FEED]):,.0f} | {spread(ratios, '{:.3f}')} | "
            f"{'yes' if ratio >= WRITE_TARGET else 'NO'} |"
        )
    return lines, headline


def drain_table(figures: DrainFigures) -> tuple[list[str], dict[str, float]]:
    lines = [
        f"| drain of {figures.backlog:,} events | batch | events/s, median [rounds] | "
        "client CPU us/event | vs keyset, median [rounds] |",
        "|---|---:|---:|---:|---:|",
    ]
    headline = {}
    limits = sorted({limit for _, limit in figures.runs})
    for limit in limits:
        keyset = figures.runs[("keyset", limit)]
        for kind, label in (
            ("keyset", "keyset by `(created_at, id)` + checkpoint UPDATE (baseline)"),
            ("feed", "`EventFeed.fetch` + `commit`"),
        ):
            runs = figures.runs[(kind, limit)]
            rates = [r.events / r.seconds for r in runs]
            cpu = statistics.median(r.cpu / r.events for r in runs) * 1e6
            ratios = [k.seconds / r.seconds for r, k in zip(runs, keyset, strict=True)]
            versus = "1.00" if kind == "keyset" else spread(ratios)
            if kind == "feed":
                headline[f"drain, batch {limit:,}"] = statistics.median(ratios)
            lines.append(
                f"| {label} | {limit:,} | {spread(rates, '{:,.0f}')} | {cpu:.1f} | {versus} |"
            )
    return lines, headline


def long_table(figures: LongFigures) -> list[str]:
    lines = [
        f"| consumer (polls every 100 ms) | delivered while the {figures.seconds:.1f} s "
        f"transaction was open (of {figures.written:,} committed) | all delivered, s after "
        "it ended | delivered | missed | duplicated | foreign |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in ("snapshot", "horizon"):
        a = figures.accounting[mode]
        during = figures.during[mode]
        share = during / figures.written * 100 if figures.written else 0.0
        lines.append(
            f'| `mode="{mode}"` | {during:,} ({share:.0f} %) | {figures.caught_up[mode]:.2f} | '
            f"{a.delivered:,} | {a.missed} | {a.duplicated} | {a.foreign} |"
        )
    return lines


def latency_table(figures: LatencyFigures) -> list[str]:
    lines = [
        f"| wait strategy | commit-to-delivery p50 / p99 / max, ms ({figures.rate:g} events/s) | "
        "events | missed / duplicated | consumer CPU under load, ms/s: client / server | "
        "idle: client / server, ms/s | idle: fetches/s, WAL kB/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def per_second(runs: list[LatencyRun], pick: Callable[[LatencyRun], float | None]) -> str:
        values = [pick(r) for r in runs]
        rates = [v / r.seconds * 1000 for v, r in zip(values, runs, strict=True) if v is not None]
        return f"{statistics.median(rates):.2f}" if len(rates) == len(runs) else "n/a"

    for name, runs in figures.loaded.items():
        pooled = [x for r in runs for x in r.latencies]
        missed = sum(r.accounting.missed for r in runs)
        twice = sum(r.accounting.duplicated for r in runs)
        idle = figures.idle[name]
        fetches = statistics.median(r.fetches / r.seconds for r in idle)
        wal = statistics.median(r.wal / r.seconds / 1024 for r in idle)
        lines.append(
            f"| {name} | {percentile(pooled, 0.5) * 1000:.0f} / "
            f"{percentile(pooled, 0.99) * 1000:.0f} / {max(pooled, default=0) * 1000:.0f} | "
            f"{len(pooled):,} | {missed} / {twice} | "
            f"{per_second(runs, lambda r: r.client_cpu)} / "
            f"{per_second(runs, lambda r: r.server_cpu)} | "
            f"{per_second(idle, lambda r: r.client_cpu)} / "
            f"{per_second(idle, lambda r: r.server_cpu)} | {fetches:.1f}, {wal:.1f} |"
        )
    return lines


def conditions_of(admin: str, options: Options, load: tuple[float, float]) -> str:
    with psycopg.connect(admin) as connection:
        settings = {
            name: connection.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("server_version", "shared_buffers", "fsync", "synchronous_commit")
        }
    return (
        f"PostgreSQL {settings['server_version']} (shared_buffers {settings['shared_buffers']}, "
        f"fsync {settings['fsync']}, synchronous_commit {settings['synchronous_commit']}); "
        f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, psycopg "
        f"{psycopg.__version__}, eventlog-persist {installed_version('eventlog-persist')}; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} before, {load[1]:.2f} after; "
        f"{options.rounds} write rounds, {options.drain_rounds} drain rounds, "
        f"{options.latency_rounds} latency rounds; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def run_writes(admin: str, options: Options, *, log: Callable[[str], None] = print) -> str:
    """Only the write part (section 1), for the paths of ``options.only``: its table."""
    tag = uuid.uuid4().hex[:6]
    keys = Keys.make()
    databases: dict[str, Database] = {}
    load_before = os.getloadavg()
    try:
        for name, model, metadata in (
            (PLAIN, PlainEventLog, PlainBase.metadata),
            (FEED, FeedEventLog, FeedBase.metadata),
        ):
            databases[name] = open_database(admin, name, model, metadata, tag)
            keys.insert(databases[name])
        writes = measure_writes(databases, keys, options, log)
    finally:
        drop_databases(admin, list(databases.values()))
    conditions = conditions_of(admin, options, (load_before[0], os.getloadavg()[0]))
    return "\n".join([conditions, "", *write_table(writes)[0]])


def run(
    admin: str,
    options: Options,
    *,
    local_server: bool,
    strategies: dict[str, Strategy] | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    """Build the databases on the server at ``admin``, measure, drop them; the report."""
    tag = uuid.uuid4().hex[:6]
    keys = Keys.make()
    databases: dict[str, Database] = {}
    load_before = os.getloadavg()
    try:
        for name, model, metadata in (
            (PLAIN, PlainEventLog, PlainBase.metadata),
            (FEED, FeedEventLog, FeedBase.metadata),
            ("backlog", FeedEventLog, FeedBase.metadata),
        ):
            databases[name] = open_database(admin, name, model, metadata, tag)
        for name in (PLAIN, FEED):
            keys.insert(databases[name])
        backlog = databases["backlog"]
        prepare_keyset(backlog)
        seconds = load_backlog(backlog, options.backlog, options.seed)
        log(f"backlog: {options.backlog:,} events loaded in {seconds:.1f} s")
        keys.insert(backlog)
        writes = measure_writes(databases, keys, options, log)
        drain = measure_drain(backlog, options, log)
        long = measure_long_transaction(backlog, keys, options, log)
        latency = measure_latency(
            backlog,
            keys,
            options,
            local_server=local_server,
            admin=admin,
            strategies=STRATEGIES if strategies is None else strategies,
            log=log,
        )
    finally:
        drop_databases(admin, list(databases.values()))
    conditions = conditions_of(admin, options, (load_before[0], os.getloadavg()[0]))
    write_lines, headline = write_table(writes)
    drain_lines, drain_headline = drain_table(drain)
    headline.update(drain_headline)
    text_ = "\n".join(
        [
            conditions,
            "",
            "Writes: feed (xid column and index) / plain, end to end, interleaved:",
            "",
            *write_lines,
            "",
            "Backlog drain:",
            "",
            *drain_lines,
            "",
            "A long transaction holding an id, short writers committing meanwhile:",
            "",
            *long_table(long),
            "",
            "Commit-to-delivery latency and the consumer's CPU:",
            "",
            *latency_table(latency),
        ]
    )
    return Report(conditions, text_, writes, drain, long, latency, headline)


def run_latency(admin: str, options: Options, *, local_server: bool) -> str:
    """Only the latency part (``--latency-only``), on a database of its own; its table."""
    keys = Keys.make()
    database = open_database(
        admin, "latency", FeedEventLog, FeedBase.metadata, uuid.uuid4().hex[:6]
    )
    load_before = os.getloadavg()
    try:
        keys.insert(database)
        latency = measure_latency(
            database,
            keys,
            options,
            local_server=local_server,
            admin=admin,
            strategies=STRATEGIES,
            log=print,
        )
    finally:
        drop_databases(admin, [database])
    conditions = conditions_of(admin, options, (load_before[0], os.getloadavg()[0]))
    return "\n".join([conditions, "", *latency_table(latency)])


def chart(report: Report, subtitle: str) -> str:
    """The write ratios beside their target, and the drain's feed/keyset ratios."""
    groups: list[tuple[str, dict[str, float]]] = []
    for name, value in report.headline.items():
        if name.startswith("drain"):
            groups.append((f"{name}: feed / keyset", {"ratio": value}))
        else:
            groups.append((name.replace("`", ""), {"ratio": value}))
    return _svg.bar_chart(
        f"The feed's cost: throughput with the xid column / without (target >= {WRITE_TARGET}), "
        "and drain / keyset read",
        groups,
        subtitle=subtitle,
        unit="x",
        reference=1.0,
        reference_label="baseline = 1.00",
        label=lambda value: f"{value:.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of a maintenance database (default: embedded)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--rounds", type=int, help="write rounds (default 6)")
    parser.add_argument("--backlog", type=int, help="events to drain (default 200,000)")
    parser.add_argument("--svg", type=Path, help="also draw the ratios as SVG here")
    parser.add_argument(
        "--latency-only", action="store_true", help="only the latency part (no chart)"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="only the write paths whose label contains TEXT (repeatable); no drain, long "
        "transaction or latency part",
    )
    args = parser.parse_args()
    options = Options.quick() if args.quick else Options()
    options = replace(options, only=tuple(args.only))
    if args.rounds:
        options = replace(options, rounds=args.rounds)
    if args.backlog:
        options = replace(options, backlog=args.backlog)
    started = time.perf_counter()
    if options.only:
        with server(args.url) as admin:
            print(run_writes(admin, options))
        print(f"\nwhole run {(time.perf_counter() - started) / 60:.1f} min")
        return
    if args.latency_only:
        with server(args.url) as admin:
            print(run_latency(admin, options, local_server=args.url is None))
        print(f"\nwhole run {(time.perf_counter() - started) / 60:.1f} min")
        return
    with server(args.url) as admin:
        report = run(admin, options, local_server=args.url is None)
    print()
    print(report.text)
    print(f"\nwhole run {(time.perf_counter() - started) / 60:.1f} min")
    if args.svg:
        subtitle = report.conditions.split(";")[0] + f"; medians of {options.rounds} rounds"
        print(f"chart written to {_svg.write(args.svg, chart(report, subtitle))}")


if __name__ == "__main__":
    main()
