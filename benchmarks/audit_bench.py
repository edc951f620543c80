"""Audit benchmark: every write path with the audit revision vs without, interleaved in one run.

Usage: ``python benchmarks/audit_bench.py [--url postgresql://...] [--quick] [--rounds 5]
[--only TEXT ...]``. Without ``--url`` it starts a throwaway embedded PostgreSQL 18; with it, the
role must be a superuser (the reset between runs truncates ``event_logs`` past the audit's
guard with ``session_replication_role = replica``). ``--quick`` is a smoke run of a few
seconds: tiny sizes, its figures noise. ``--only`` (repeatable) measures only the paths whose
label contains one of its texts (to rerun those whose range straddles the target).

Two databases are migrated from the example host: ``feed`` (up to evlfeed_0001: the audit
needs the feed, so a feed-only database is the baseline) and ``audit`` (the audit's
revisions on top). In each of ``--rounds`` rounds, every write path runs on both databases,
the one going first alternating and the order of the paths rotated each round, end to end
from the host's values to committed rows, into an ``event_logs`` emptied (and CHECKPOINTed)
before each run:

- ``EventWriter.record`` in the host's ORM ``Session``, one event per transaction;
- ``EventWriter.record_detached``, one short transaction of its own per event;
- ``write_events`` (binary COPY) of ``new_event(**values)``;
- ``BufferedWriter.enqueue(**values)`` of every event, then ``close()`` (it drains);
- one INSERT per event (psycopg ``executemany``, one transaction), as a host hand-writes it;

each by one writer over many chat sessions, and by 4 threads at once (each with every 4th
event) on one hot chat session and on many. A ratio is audit/feed throughput within a round
(1.00: the same speed); the table gives the median over the rounds and the range. Target:
>= 0.95 per path.

Then the erasures, which the audit pays for with tombstones: per round, ``--erase-events``
events are written (untimed) to fresh sessions and projects, their projects are deleted (ON
DELETE SET NULL) and then their sessions (ON DELETE CASCADE), each timed.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import datagen
import psycopg
from _server import server
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from eventlog_persist import BufferedWriter, EventWriter, new_event, write_events

EXAMPLE_HOST = Path(__file__).resolve().parent.parent / "examples" / "host_app"
MAIN = "%(here)s/migrations/versions eventlog_persist:migrations"
OPT_IN = " eventlog_persist:migrations_feed eventlog_persist:migrations_audit"
FEED, AUDIT = "feed", "audit"
TARGETS = {FEED: "evlfeed_0001", AUDIT: "heads"}
WRITE_TARGET = 0.95
THREADS = 4
SESSIONS = 64
"""Chat sessions (each with its user and project) the writes spread over; the hot one is the
first."""

# A host that opted in to the audit opted in to the feed: its model reads ``xid`` back.
_, EventLog = datagen.host_tables(feed=True)


@dataclass(frozen=True)
class Options:
    """Sizes of a run (the defaults: the full run)."""

    rounds: int = 5
    record_events: int = 1_000
    """Events of a ``record`` / ``record_detached`` run, one per transaction."""
    threaded_events: int = 2_000
    """The same, shared by `THREADS` threads."""
    bulk_events: int = 20_000
    """Events of a ``write_events``, ``BufferedWriter`` or INSERT run (threaded or not)."""
    erase_events: int = 40_000
    """Events deleted per round by each of SET NULL and CASCADE."""

    @classmethod
    def quick(cls) -> Options:
        """A smoke run of a few seconds: every path, tiny sizes (the figures mean nothing)."""
        return cls(
            rounds=2, record_events=40, threaded_events=80, bulk_events=600, erase_events=400
        )


# --- the server and the databases ----------------------------------------------------------


def migrate(folder: Path, url: str, target: str) -> None:
    """Migrate a database with a copy of the example host, feed and audit listed."""
    host = folder / "host"
    if not host.exists():
        shutil.copytree(EXAMPLE_HOST, host, ignore=shutil.ignore_patterns("__pycache__"))
        ini = host / "alembic.ini"
        ini.write_text(ini.read_text().replace(MAIN, MAIN + OPT_IN))
    environment = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", target],
        cwd=host,
        env=environment,
        check=True,
        capture_output=True,
    )


def sqlalchemy_url(dsn: str) -> URL:
    params = conninfo_to_dict(dsn)
    return URL.create(
        "postgresql+psycopg",
        username=str(params.get("user") or "") or None,
        password=str(params.get("password") or "") or None,
        database=str(params["dbname"]),
        query={key: str(params[key]) for key in ("host", "port") if params.get(key)},
    )


@dataclass
class Database:
    """One of the benchmark's two databases."""

    name: str
    dsn: str
    engine: Engine
    writer: EventWriter[Any, uuid.UUID] = field(default_factory=lambda: EventWriter(EventLog))


def open_database(admin: str, name: str, folder: Path, tag: str) -> Database:
    database = f"evl_auditbench_{name}_{tag}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{database}"')
    dsn = make_conninfo(admin, dbname=database)
    migrate(folder, sqlalchemy_url(dsn).render_as_string(False), TARGETS[name])
    engine = create_engine("postgresql+psycopg://", creator=partial(psycopg.connect, dsn))
    return Database(name, dsn, engine)


def drop_database(admin: str, database: Database) -> None:
    database.engine.dispose()
    with psycopg.connect(admin, autocommit=True) as connection:
        name = conninfo_to_dict(database.dsn)["dbname"]
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


Keys = list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]
"""(user, project, chat session) per slot."""


def seed(database: Database, count: int) -> Keys:
    """One user, project and chat session per slot."""
    keys = [(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(count)]
    with psycopg.connect(database.dsn) as connection, connection.cursor() as cursor:
        cursor.executemany("INSERT INTO users (id, name) VALUES (%s, 'u')", [(k[0],) for k in keys])
        cursor.executemany(
            "INSERT INTO user_projects (id, user_id, name) VALUES (%s, %s, 'p')",
            [(k[1], k[0]) for k in keys],
        )
        cursor.executemany(
            "INSERT INTO chat_sessions (id, user_id, title) VALUES (%s, %s, 't')",
            [(k[2], k[0]) for k in keys],
        )
    return keys


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


@dataclass(frozen=True)
class Work:
    """What one writer writes: events ``numbers``, over ``keys``."""

    database: Database
    keys: Keys
    numbers: Sequence[int]

    def fields(self, n: int) -> dict[str, Any]:
        """The host's values of its n-th event."""
        user, project, chat = self.keys[n % len(self.keys)]
        return {
            "session_id": chat,
            "user_id": user,
            "project_id": project,
            "event_type": "tool_call",
            "tool_name": "search_places",
            "payload": payload(n),
        }


def scalar(database: Database, sql: str) -> Any:
    with psycopg.connect(database.dsn) as connection:
        row = connection.execute(sql).fetchone()
    return row[0] if row else None


# --- the write paths -----------------------------------------------------------------------


def record(work: Work) -> None:
    """``EventWriter.record`` in the host's ``Session``, committed after each event."""
    with Session(work.database.engine) as session:
        for n in work.numbers:
            work.database.writer.record(session, **work.fields(n))
            session.commit()


def record_detached(work: Work) -> None:
    """``EventWriter.record_detached``: one short transaction of its own per event."""
    for n in work.numbers:
        work.database.writer.record_detached(work.database.engine, **work.fields(n))


def copy(work: Work) -> None:
    """``write_events`` (binary COPY) of ``new_event(**values)`` built as it copies."""
    result = write_events(
        EventLog, work.database.dsn, (new_event(**work.fields(n)) for n in work.numbers)
    )
    if result.written != len(work.numbers) or result.duplicates:
        raise RuntimeError(f"{work.database.name}: write_events wrote {result}")


def insert(work: Work) -> None:
    """One INSERT per event (psycopg ``executemany``) in one transaction, hand-written."""
    with psycopg.connect(work.database.dsn) as connection, connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO event_logs (id, session_id, user_id, project_id, event_type, "
            "tool_name, payload) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    uuid.uuid4(),
                    v["session_id"],
                    v["user_id"],
                    v["project_id"],
                    v["event_type"],
                    v["tool_name"],
                    Jsonb(v["payload"]),
                )
                for v in map(work.fields, work.numbers)
            ],
        )


def on_threads(works: Sequence[Work], target: Callable[[Work], None]) -> None:
    """``target`` of each work on a thread of its own, all at once; the first failure raised."""
    failures: list[BaseException] = []

    def one(work: Work) -> None:
        try:
            target(work)
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=one, args=(work,)) for work in works]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]


def buffered(works: Sequence[Work]) -> None:
    """``BufferedWriter.enqueue(**values)`` from each work's thread, then ``close()``."""
    with BufferedWriter(EventLog, works[0].database.dsn) as writer:

        def enqueue(work: Work) -> None:
            for n in work.numbers:
                writer.enqueue(**work.fields(n))

        if len(works) == 1:
            enqueue(works[0])
        else:
            on_threads(works, enqueue)


WritePath = Callable[[Sequence[Work]], None]
"""Write the works' events, committed when it returns."""


def single(target: Callable[[Work], None]) -> WritePath:
    """A path that runs ``target`` in this thread for one work, else on a thread per work."""
    return lambda works: on_threads(works, target) if len(works) > 1 else target(works[0])


@dataclass(frozen=True)
class PathSpec:
    label: str
    run: WritePath
    size: Callable[[Options], int]
    threads: int = 1
    hot: bool = False
    """All events in one chat session (else spread over `SESSIONS`)."""


def write_paths() -> list[PathSpec]:
    paths: list[tuple[str, WritePath, Callable[[Options], int], Callable[[Options], int]]] = [
        (
            "`record`, 1 per transaction",
            single(record),
            lambda o: o.record_events,
            lambda o: o.threaded_events,
        ),
        (
            "`record_detached`",
            single(record_detached),
            lambda o: o.record_events,
            lambda o: o.threaded_events,
        ),
        (
            "`write_events` (binary COPY)",
            single(copy),
            lambda o: o.bulk_events,
            lambda o: o.bulk_events,
        ),
        (
            "`BufferedWriter.enqueue` + `close()`",
            buffered,
            lambda o: o.bulk_events,
            lambda o: o.bulk_events,
        ),
        (
            "one INSERT per event (executemany)",
            single(insert),
            lambda o: o.bulk_events,
            lambda o: o.bulk_events,
        ),
    ]
    specs = []
    for label, run, size, threaded_size in paths:
        specs.append(PathSpec(label, run, size))
        specs.append(
            PathSpec(f"{label}, {THREADS} threads, one session", run, threaded_size, THREADS, True)
        )
        specs.append(
            PathSpec(f"{label}, {THREADS} threads, many sessions", run, threaded_size, THREADS)
        )
    return specs


# --- measuring -----------------------------------------------------------------------------


def reset(database: Database) -> None:
    """Empty ``event_logs`` (and the tombstones): past the guard's TRUNCATE trigger."""
    tables = "event_logs, event_log_erasures" if database.name == AUDIT else "event_logs"
    with psycopg.connect(database.dsn, autocommit=True) as connection:
        connection.execute("SET session_replication_role = replica")
        connection.execute(f"TRUNCATE {tables}")
        with suppress(psycopg.Error):
            connection.execute("CHECKPOINT")


def timed_write(database: Database, keys: Keys, spec: PathSpec, n: int) -> float:
    """Events/s of one run of a path into an empty ``event_logs``, checked."""
    reset(database)
    chosen = keys[:1] if spec.hot else keys
    works = [Work(database, chosen, range(k, n, spec.threads)) for k in range(spec.threads)]
    gc.collect()
    started = time.perf_counter()
    spec.run(works)
    seconds = time.perf_counter() - started
    stored = scalar(database, "SELECT count(*) FROM event_logs")
    if stored != n:
        raise RuntimeError(f"{database.name}, {spec.label}: {stored} rows, expected {n}")
    sessions = scalar(database, "SELECT count(DISTINCT session_id) FROM event_logs")
    if spec.hot and sessions != 1:
        raise RuntimeError(f"{spec.label}: {sessions} sessions, expected one")
    return n / seconds


def delete(database: Database, table: str, ids: list[uuid.UUID]) -> float:
    started = time.perf_counter()
    with psycopg.connect(database.dsn) as connection:
        connection.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", [ids])
    return time.perf_counter() - started


SET_NULL = "ON DELETE SET NULL (leaf computed per event)"
CASCADE = "ON DELETE CASCADE, after their SET NULL"


def erasures(database: Database, options: Options) -> dict[str, float]:
    """Events/s of a SET NULL and then a CASCADE over ``erase_events`` fresh events."""
    reset(database)
    keys = seed(database, SESSIONS)
    copy(Work(database, keys, range(options.erase_events)))
    rates = {
        SET_NULL: options.erase_events / delete(database, "user_projects", [k[1] for k in keys]),
        CASCADE: options.erase_events / delete(database, "chat_sessions", [k[2] for k in keys]),
    }
    if database.name == AUDIT:
        stones = scalar(database, "SELECT count(*) FROM event_log_erasures")
        if stones != 2 * options.erase_events:
            raise RuntimeError(f"{stones} tombstones, expected {2 * options.erase_events}")
    if scalar(database, "SELECT count(*) FROM event_logs"):
        raise RuntimeError(f"{database.name}: events left after the cascade")
    return rates


@dataclass
class Report:
    """Events/s per path, per database, per round; the markdown table; the run's conditions."""

    rates: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    conditions: str = ""
    text: str = ""


def run(
    admin: str,
    folder: Path,
    options: Options,
    *,
    only: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> Report:
    """Build both databases on the server at ``admin``, measure, drop them; the report."""
    tag = uuid.uuid4().hex[:6]
    databases: dict[str, Database] = {}
    try:
        for name in (FEED, AUDIT):
            databases[name] = open_database(admin, name, folder, tag)
        return measure(databases, options, only, log)
    finally:
        for database in databases.values():
            drop_database(admin, database)


def measure(
    databases: dict[str, Database],
    options: Options,
    only: Sequence[str],
    log: Callable[[str], None],
) -> Report:
    report = Report()

    def chosen(label: str) -> bool:
        return not only or any(text in label for text in only)

    paths = [spec for spec in write_paths() if chosen(spec.label)]
    keys = {name: seed(database, SESSIONS) for name, database in databases.items()}
    erase = chosen(SET_NULL) or chosen(CASCADE)
    for spec in paths:
        report.sizes[spec.label] = spec.size(options)
    for label in [spec.label for spec in paths] + ([SET_NULL, CASCADE] if erase else []):
        report.rates[label] = {FEED: [], AUDIT: []}
        report.sizes.setdefault(label, options.erase_events)
    for round_ in range(options.rounds):
        pair = [databases[FEED], databases[AUDIT]]
        if round_ % 2:
            pair.reverse()
        log(f"round {round_ + 1}/{options.rounds} ({pair[0].name} first)")
        shift = round_ % len(paths) if paths else 0
        for spec in paths[shift:] + paths[:shift]:
            for database in pair:
                rate = timed_write(database, keys[database.name], spec, report.sizes[spec.label])
                report.rates[spec.label][database.name].append(rate)
            feed, audit = (report.rates[spec.label][name][-1] for name in (FEED, AUDIT))
            log(f"  {spec.label}: feed {feed:,.0f}/s, audit {audit:,.0f}/s, {audit / feed:.3f}")
        if erase:
            for database in pair:
                for label, rate in erasures(database, options).items():
                    report.rates[label][database.name].append(rate)
    with databases[FEED].engine.connect() as connection:
        version = connection.exec_driver_sql("SHOW server_version").scalar()
    report.conditions = (
        f"PostgreSQL {version}, {os.cpu_count()} cores; {options.rounds} interleaved rounds; "
        f"per run {options.record_events:,} events (`record`, `record_detached`), "
        f"{options.threaded_events:,} (those on {THREADS} threads), {options.bulk_events:,} "
        f"(COPY, buffered, INSERT), {options.erase_events:,} (SET NULL, CASCADE)"
    )
    report.text = table(report)
    return report


def spread(ratios: Sequence[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def table(report: Report) -> str:
    lines = [
        "| Path | events | feed ev/s | audit ev/s | audit / feed (range) |",
        "|---|---:|---:|---:|---|",
    ]
    for label, rates in report.rates.items():
        ratios = [a / f for f, a in zip(rates[FEED], rates[AUDIT], strict=True)]
        median = statistics.median(ratios)
        flag = ""
        if label not in (SET_NULL, CASCADE):
            flag = " (below target)" if median < WRITE_TARGET else ""
            flag = flag or (" (range straddles target)" if min(ratios) < WRITE_TARGET else "")
        lines.append(
            f"| {label} | {report.sizes[label]:,} | {statistics.median(rates[FEED]):,.0f} "
            f"| {statistics.median(rates[AUDIT]):,.0f} | {median:.2f}x ({spread(ratios)}){flag} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL server (a superuser); default: embedded 18")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: 5)")
    parser.add_argument(
        "--only", action="append", default=[], help="only the paths whose label contains this"
    )
    args = parser.parse_args()
    options = Options.quick() if args.quick else Options()
    if args.rounds:
        options = replace(options, rounds=args.rounds)
    folder = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    try:
        with server(args.url) as admin:
            report = run(admin, folder, options, only=args.only)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(report.conditions)
    print(report.text)


if __name__ == "__main__":
    main()
