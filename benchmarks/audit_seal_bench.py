"""Audit seal benchmark: sealing and verification rates, against reading the same rows.

Usage: python benchmarks/audit_seal_bench.py [--url postgresql://...] [--events 200000]
[--rounds 3] [--chunk-size 1024] [--quick]

Without --url it starts a throwaway embedded PostgreSQL 18. One database is migrated from the
example host with the feed and the audit, and filled by datagen (realistic sessions and
payloads). Each round copies it (CREATE DATABASE ... TEMPLATE, not timed) and times, in an
order that rotates from round to round:

- baseline: a plain SELECT of the columns a leaf covers (payload as text), by (xid, id),
  streamed through SQLAlchemy: what reading the events costs anyway;
- seal: ``seal_events`` over every event (one seal: read, leaves recomputed in Python,
  chunk roots, insert);
- verify: ``verify_audit`` of that seal (read, every leaf recomputed, roots compared,
  tombstones and chain checked).

Rates are events per second end to end (the median of the rounds); ratios are over the
baseline of the same round. The verification target is at least 50,000 events/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import datagen
import psycopg
from _server import server
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, Text, cast, create_engine, select
from sqlalchemy.engine import URL

from eventlog_persist import seal_events, verify_audit

EXAMPLE_HOST = Path(__file__).resolve().parent.parent / "examples" / "host_app"
MAIN = "%(here)s/migrations/versions eventlog_persist:migrations"
OPT_IN = " eventlog_persist:migrations_feed eventlog_persist:migrations_audit"
_, EventLog = datagen.host_tables(feed=True)
LEAF_COLUMNS = (
    "id",
    "session_id",
    "user_id",
    "project_id",
    "agent_id",
    "event_type",
    "payload",
    "created_at",
    "error_code",
    "tool_name",
    "approval_status",
    "request_id",
    "trace_id",
    "span_id",
    "xid",
)
PATHS = ("baseline (SELECT)", "seal_events", "verify_audit")


@dataclass(frozen=True)
class Options:
    events: int = 200_000
    rounds: int = 3
    chunk_size: int = 1024

    @classmethod
    def quick(cls) -> Options:
        return cls(events=3_000, rounds=2, chunk_size=64)


@dataclass
class Report:
    text: str
    rates: dict[str, list[float]] = field(default_factory=dict)


def migrate(folder: Path, url: str) -> None:
    host = folder / "host"
    if not host.exists():
        shutil.copytree(EXAMPLE_HOST, host, ignore=shutil.ignore_patterns("__pycache__"))
        ini = host / "alembic.ini"
        ini.write_text(ini.read_text().replace(MAIN, MAIN + OPT_IN))
    environment = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "heads"],
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


def relax(dsn: str) -> None:
    """Let datagen fill the example host's tables, whose other columns are NOT NULL."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        columns = connection.execute(
            "SELECT table_name, column_name FROM information_schema.columns WHERE "
            "table_schema = current_schema() AND table_name IN ('users', 'user_projects', "
            "'user_agents', 'chat_sessions') AND column_name NOT IN ('id', 'user_id') "
            "AND is_nullable = 'NO' AND column_default IS NULL"
        ).fetchall()
        for table, column in columns:
            connection.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" DROP NOT NULL')


def baseline(engine: Engine) -> int:
    table = EventLog.__table__
    columns = [
        cast(table.c.payload, Text) if name == "payload" else table.c[name] for name in LEAF_COLUMNS
    ]
    count = 0
    with engine.connect() as connection:
        query = select(*columns).order_by(table.c.xid, table.c.id)
        for _ in connection.execute(query, execution_options={"yield_per": 5000}):
            count += 1
    return count


def timed(action: Callable[[], int]) -> tuple[int, float, float]:
    """Events, wall seconds, and CPU seconds of this process (the database server's not
    included)."""
    start, cpu = time.perf_counter(), time.process_time()
    events = action()
    return events, time.perf_counter() - start, time.process_time() - cpu


def run(base: str, options: Options, folder: Path, *, log: Callable[[str], None] = print) -> Report:
    rates: dict[str, list[float]] = {path: [] for path in PATHS}
    cpu: dict[str, list[float]] = {path: [] for path in PATHS}
    ratios: dict[str, list[float]] = {path: [] for path in PATHS[1:]}
    template = f"audit_seal_tpl_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(base, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        admin.execute(f"CREATE DATABASE {template}")
    try:
        template_dsn = make_conninfo(base, dbname=template)
        migrate(folder, sqlalchemy_url(template_dsn).render_as_string(False))
        relax(template_dsn)
        log(f"loading {options.events} events ...")
        datagen.load(template_dsn, options.events)
        for round_ in range(options.rounds):
            name = f"audit_seal_{round_}_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(base, autocommit=True) as admin:
                admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
            engine = create_engine(sqlalchemy_url(make_conninfo(base, dbname=name)))
            try:
                wait_until_settled(make_conninfo(base, dbname=name))
                actions: dict[str, Callable[[], int]] = {
                    "baseline (SELECT)": lambda engine=engine: baseline(engine),  # type: ignore[misc]
                    "seal_events": lambda engine=engine: _seal(engine, options),  # type: ignore[misc]
                    "verify_audit": lambda engine=engine: _verify(engine),  # type: ignore[misc]
                }
                # Verification needs the seal: rotate the baseline around the two.
                order = [PATHS[0], PATHS[1], PATHS[2]]
                if round_ % 3 == 1:
                    order = [PATHS[1], PATHS[0], PATHS[2]]
                elif round_ % 3 == 2:
                    order = [PATHS[1], PATHS[2], PATHS[0]]
                measured: dict[str, float] = {}
                for path in order:
                    events, seconds, cpu_seconds = timed(actions[path])
                    if events != options.events:
                        raise RuntimeError(f"{path} saw {events} of {options.events} events")
                    measured[path] = events / seconds
                    cpu[path].append(cpu_seconds / events * 1e6)
                for path, rate in measured.items():
                    rates[path].append(rate)
                for path in PATHS[1:]:
                    ratios[path].append(measured[path] / measured[PATHS[0]])
                log(
                    f"round {round_ + 1}: "
                    + ", ".join(f"{path} {measured[path]:,.0f} ev/s" for path in PATHS)
                )
            finally:
                engine.dispose()
                with psycopg.connect(base, autocommit=True) as admin:
                    admin.execute(f"DROP DATABASE {name}")
    finally:
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {template}")
    lines = [
        f"PostgreSQL {version}; Python {platform.python_version()}; {os.cpu_count()} CPUs "
        f"({platform.machine()}); {options.events:,} events (datagen), chunk_size "
        f"{options.chunk_size}; median of {options.rounds} rounds, order rotated",
        "",
        "| Path | events/s | / baseline | Python CPU µs/event |",
        "|---|---|---|---|",
    ]
    for path in PATHS:
        median = statistics.median(rates[path])
        ratio = "1.00x" if path == PATHS[0] else f"{statistics.median(ratios[path]):.2f}x"
        spread = f"{min(rates[path]):,.0f}-{max(rates[path]):,.0f}"
        lines.append(
            f"| {path} | {median:,.0f} ({spread}) | {ratio} | {statistics.median(cpu[path]):.1f} |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines.append("")
    lines.append(f"(load average at the end: {load:.2f} on {os.cpu_count()} CPUs)")
    return Report("\n".join(lines), rates)


def wait_until_settled(dsn: str, timeout: float = 120.0) -> None:
    """Untimed: wait until no transaction that began before the events were written still
    runs anywhere on the server. The seal covers transaction ids below the oldest running
    one, server-wide, so another client's long transaction (a test on a server shared with
    other test workers) would leave some or all of the events out of it."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) "
                "> (SELECT xid FROM event_logs ORDER BY xid DESC LIMIT 1)"
            ).fetchone()
            if row is not None and row[0] is not False:  # None: no events
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"a transaction older than the events still runs on the server after "
                    f"{timeout:.0f} s, so a seal would leave events out; end it (see "
                    "pg_stat_activity) or use a server of the benchmark's own"
                )
            time.sleep(0.1)


def _seal(engine: Engine, options: Options) -> int:
    seal = seal_events(EventLog, engine, chunk_size=options.chunk_size)
    if seal is None:
        raise RuntimeError("nothing was sealed: a transaction holds the horizon back")
    return seal.events


def _verify(engine: Engine) -> int:
    report = verify_audit(EventLog, engine)
    if not report.ok:
        raise RuntimeError(f"verification failed: {report.problems[0]}")
    return report.events


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL server (a superuser); default: embedded 18")
    parser.add_argument("--events", type=int, default=Options.events)
    parser.add_argument("--rounds", type=int, default=Options.rounds)
    parser.add_argument("--chunk-size", type=int, default=Options.chunk_size)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3,000 events")
    args = parser.parse_args()
    options = Options.quick() if args.quick else Options(args.events, args.rounds, args.chunk_size)
    folder = Path(tempfile.mkdtemp(prefix="audit-seal-bench-"))
    try:
        with server(args.url) as base:
            print(run(base, options, folder).text)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
