"""Time the online conversion of a filled event_logs, and how long the swap locks it.

Loads ``--rows`` events (benchmarks/datagen.py, COPY) into a plain ``event_logs``, then, with a
BufferedWriter writing all along, runs ``convert_to_partitioned`` the lossless way: the
online steps with the plain model writing, the model switched (a second writer with
``partitioned=True``), then the swap. Reports each step's time and the swap's ACCESS
EXCLUSIVE hold three ways: the server's ``clock_timestamp()`` from the lock's grant to just
before COMMIT, the client's from the grant to COMMIT's return, and a poller reading
``pg_locks`` every ~0.2 ms from another connection (grant seen to release seen). Then checks
that every enqueued event is stored exactly once.

Without --url it starts a throwaway embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import math
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import _svg
import datagen
import psycopg
from _server import server
from sqlalchemy import ForeignKey, Uuid, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from eventlog_persist import BufferedWriter, RetryPolicy, convert_to_partitioned, event_log_model


class SwitchedBase(DeclarativeBase):
    """The host after the deploy: the same tables, ``EventLog`` partitioned."""


class _Key:
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)


class User(_Key, SwitchedBase):
    __tablename__ = "users"


class ChatSession(_Key, SwitchedBase):
    __tablename__ = "chat_sessions"
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))


class UserProject(_Key, SwitchedBase):
    __tablename__ = "user_projects"


class UserAgent(_Key, SwitchedBase):
    __tablename__ = "user_agents"


PartitionedEventLog = event_log_model(SwitchedBase, partitioned=True)


class Writing:
    """A BufferedWriter fed ``rate`` events a second from a thread; every id is kept."""

    def __init__(self, model: Any, url: str, keys: dict[str, Any], rate: float) -> None:
        self.ids: list[uuid.UUID] = []
        self.dead: list[Any] = []
        self.writer = BufferedWriter(
            model,
            url,
            batch_size=200,
            flush_interval=0.01,
            retry=RetryPolicy(max_attempts=None, max_elapsed=120),
            on_dead_letter=lambda event, error: self.dead.append((event, error)),
            handle_sigterm=False,
        )
        self.keys, self.pause = keys, 1 / rate
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.is_set():
            self.ids.append(self.writer.enqueue(event_type="chat", **self.keys).id)
            time.sleep(self.pause)

    def __enter__(self) -> Writing:
        self.writer.start()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.writer.close()


class LockWatch:
    """Poll pg_locks for a granted ACCESS EXCLUSIVE on ``relation`` (an OID)."""

    def __init__(self, url: str, relation: int) -> None:
        self.connection = psycopg.connect(url, autocommit=True)
        self.relation = relation
        self.first: float | None = None
        self.last: float | None = None
        self.polls = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        query = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'relation' AND relation = %s "
            "AND mode = 'AccessExclusiveLock' AND granted"
        )
        while not self.stop.is_set():
            row = self.connection.execute(query, (self.relation,)).fetchone()
            self.polls += 1
            now = time.perf_counter()
            if row and row[0]:
                self.first = self.first or now
                self.last = now

    def __enter__(self) -> LockWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of an empty database (default: embedded 18)")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s the writer enqueues")
    parser.add_argument("--lock-timeout", type=float, default=0.05)
    parser.add_argument("--svg", type=Path, help="also draw the swap's lock time as SVG here")
    args = parser.parse_args()
    with server(args.url) as url:
        engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        datagen.create_schema(engine)
        data = datagen.load(url, args.rows)
        print(f"loaded {data.rows} events in {data.seconds:.1f} s")
        # A table in service has been vacuumed; a freshly loaded one is about to be, and an
        # autovacuum worker yields to a lock waiter only after deadlock_timeout (1 s), longer
        # than the conversion's lock_timeout.
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE) event_logs")
        session_id, user_id, _ = data.sessions[0]
        keys = {"session_id": session_id, "user_id": user_id}
        with psycopg.connect(url) as connection:
            size = connection.execute(
                "SELECT pg_size_pretty(pg_total_relation_size('event_logs')), "
                "'event_logs'::regclass::oid::int, current_setting('server_version')"
            ).fetchone()
        assert size is not None
        print(f"event_logs: {size[0]} with indexes; PostgreSQL {size[2]}")
        with Writing(datagen.EventLog, url, keys, args.rate) as plain:
            time.sleep(1)
            prepared = convert_to_partitioned(
                engine, stop_before_swap=True, lock_timeout=args.lock_timeout
            )
            time.sleep(1)
        with Writing(PartitionedEventLog, url, keys, args.rate) as switched:
            time.sleep(1)
            with LockWatch(url, size[1]) as watch:
                converted = convert_to_partitioned(engine, lock_timeout=args.lock_timeout)
                time.sleep(0.2)
            time.sleep(1)
            stall = switched.writer.stats.recent_batch_seconds_max
        for step, seconds in prepared.steps + converted.steps:
            print(f"{step:>9}: {seconds * 1000:9.1f} ms")
        hold, client = converted.swap_hold or 0.0, converted.swap_seconds or 0.0
        seen = (watch.last - watch.first) if watch.first and watch.last else float("nan")
        print(
            f"swap ACCESS EXCLUSIVE held: server {hold * 1000:.1f} ms, client {client * 1000:.1f}"
            f" ms, pg_locks poller {seen * 1000:.1f} ms ({watch.polls} polls); "
            f"attempts {converted.swap_attempts}, lock_timeout {args.lock_timeout * 1000:g} ms"
        )
        print(f"writer: slowest recent batch during the swap {stall * 1000:.1f} ms")
        written = plain.ids + switched.ids
        with psycopg.connect(url) as connection:
            stored = connection.execute(
                "SELECT count(*), count(DISTINCT id) FROM event_logs WHERE id = ANY(%s)",
                (written,),
            ).fetchone()
        assert stored is not None
        lost = len(written) - stored[1]
        print(
            f"writers: {len(written)} enqueued, {stored[0]} stored ({stored[1]} distinct), "
            f"lost {lost}, doubled {stored[0] - stored[1]}, "
            f"dead-lettered {len(plain.dead) + len(switched.dead)}"
        )
        if args.svg:
            chart = _svg.bar_chart(
                "Online conversion: ACCESS EXCLUSIVE on event_logs during the swap (ms)",
                [
                    (name, {"ms": value * 1000})
                    for name, value in (
                        ("held, server side (granted to COMMIT)", hold),
                        ("seen by a pg_locks poller", seen),
                        ("client side (granted to COMMIT returned)", client),
                    )
                    if math.isfinite(value)  # the poller may see no lock at all
                ],
                subtitle=f"PostgreSQL {size[2]}, {data.rows:,} rows ({size[0]}), a writer "
                f"enqueuing {args.rate:g} events/s; lost {lost}",
                unit=" ms",
                reference=100.0,
                reference_label="target 100 ms",
                label=lambda value: f"{value:.1f}",
            )
            print(f"chart written to {_svg.write(args.svg, chart)}")
        engine.dispose()


if __name__ == "__main__":
    main()
