"""Write-path benchmark: every writer against hand-written psycopg COPY and the ORM, in one run.

Usage: python benchmarks/write_bench.py [--url postgresql://...] [--events 20000]
       [--rounds 3] [--svg docs/benchmarks/write-path.svg] [--record-only]
Without --url it starts a throwaway embedded PostgreSQL 18. The headline table is end to end:
the host's dicts in, rows committed, against the COPY a host would write by hand. With --svg it
also draws that table's throughput relative to the hand-written COPY as a chart. With
--record-only it runs only the in-transaction and detached tables.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import queue
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import _svg
import psycopg
from _server import server
from psycopg.types.json import Jsonb, set_json_dumps
from sqlalchemy import ForeignKey, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from uuid_utils.compat import uuid7

from eventlog_persist import (
    BufferedWriter,
    EventWriter,
    NewEvent,
    PayloadPolicy,
    event_log_model,
    new_event,
    new_event_id,
    prepare_payload,
    write_events,
)
from eventlog_persist._bulk import DEFAULT_BATCH_SIZE
from eventlog_persist._table import COLUMNS, EventTable

HAND_INSERT = (
    f"INSERT INTO event_logs ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
)


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
    """About 610 bytes of JSON, shaped like an LLM tool call (non-ASCII text when asked)."""
    user = "Find me a quiet Italian restaurant near the station " * 2
    agent = "Looking that up for you now, one moment. " * 3
    if non_ascii:  # the same number of characters, 1.5-4 bytes each in UTF-8
        user = "駅の近くの静かなイタリアンを探して。" * 6
        agent = "Ça marche, je cherche 🍝 — un instant. " * 3
    return {
        "model": "gpt-4.1-mini",
        "turn": n,
        "messages": [
            {"role": "system", "content": "You help users find places to eat."},
            {"role": "user", "content": user},
            {"role": "assistant", "content": agent},
        ],
        "tool": {"name": "search_places", "arguments": {"q": "italian", "radius_m": 800}},
        "tool_call_id": f"call_{n:012d}",
        "finish_reason": "tool_calls",
        "usage": {"input_tokens": 812, "output_tokens": 96, "latency_ms": 431.5},
    }


class MemoryDown(NamedTuple):
    """What `Bench.memory_down` saw for one kind of payload."""

    offered: int
    bound: int
    queued: int
    queued_bytes: int
    dropped: int
    used: int
    peak: int


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

    def dicts(self, n: int) -> list[dict[str, Any]]:
        """What a host has in hand: the fields of each event, its payload a plain dict."""
        sessions = self.session_ids
        return [
            {
                "session_id": sessions[i % 10],
                "user_id": self.user_id,
                "event_type": "tool_call",
                "tool_name": "search_places",
                "payload": payload(i),
            }
            for i in range(n)
        ]

    def timed_cpu(self, run: Callable[[], float | None]) -> tuple[float, float, float | None]:
        """Wall seconds, process CPU seconds, and what ``run`` returns (producer CPU)."""
        self.reset()
        gc.collect()
        cpu = time.process_time()
        started = time.perf_counter()
        extra = run()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        if self.rows() != self.count:
            raise RuntimeError(f"expected {self.count} rows, found {self.rows()}")
        return seconds, cpu, extra

    def end_to_end(self, dicts: list[dict[str, Any]], rounds: int) -> None:
        """Dicts in, rows committed: hand-written COPY, bulk and buffered, interleaved.

        The hand-written baseline is what a host writes without this package: one psycopg
        binary COPY per 10,000 dicts (``DEFAULT_BATCH_SIZE``, the bulk writer's transaction
        size), each row an id from ``uuid7()`` (uuid_utils, as the model's default),
        ``datetime.now(UTC)`` and the payload dict itself, which psycopg's jsonb dumper
        turns into text with ``json.dumps`` (its default) inside the timed loop.
        """
        columns = "id, session_id, user_id, event_type, tool_name, payload, created_at"
        sql = f"COPY event_logs ({columns}) FROM STDIN (FORMAT BINARY)"
        types = ["uuid", "uuid", "uuid", "text", "text", "jsonb", "timestamptz"]

        def hand() -> None:
            with psycopg.connect(self.conninfo, autocommit=True) as conn, conn.cursor() as cur:
                for start in range(0, len(dicts), DEFAULT_BATCH_SIZE):
                    with conn.transaction(), cur.copy(sql) as copy:
                        copy.set_types(types)
                        for d in dicts[start : start + DEFAULT_BATCH_SIZE]:
                            copy.write_row(
                                (
                                    uuid7(),
                                    d["session_id"],
                                    d["user_id"],
                                    d["event_type"],
                                    d["tool_name"],
                                    d["payload"],
                                    datetime.now(UTC),
                                )
                            )

        def bulk() -> None:
            write_events(EventLog, self.conninfo, (new_event(**d) for d in dicts))

        def buffered() -> float:
            with BufferedWriter(EventLog, self.conninfo) as writer:
                producer = time.thread_time()
                for d in dicts:
                    writer.enqueue(**d)
                return time.thread_time() - producer  # close() drains the queue

        def buffered_fast_switch() -> float:
            # A diagnostic, not a setting for a library to make: the interpreter asks for the
            # GIL after 0.5 ms instead of 5 ms, so the writer thread, which gives the GIL up at
            # every round trip, gets it back sooner from the producer's loop.
            previous = sys.getswitchinterval()
            sys.setswitchinterval(0.0005)
            try:
                return buffered()
            finally:
                sys.setswitchinterval(previous)

        self.e2e: dict[str, list[tuple[float, float, float | None]]] = {
            "hand": [],
            "bulk": [],
            "buffered": [],
            "buffered_fast_switch": [],
        }
        order: list[tuple[str, Callable[[], float | None]]] = [
            ("hand", hand),
            ("bulk", bulk),
            ("buffered", buffered),
            ("buffered_fast_switch", buffered_fast_switch),
        ]
        for round_ in range(rounds):
            shift = round_ % len(order)  # rotate which one runs first
            for name, run in order[shift:] + order[:shift]:
                self.e2e[name].append(self.timed_cpu(run))

    def producer_latency(self, dicts: list[dict[str, Any]], rounds: int) -> None:
        """``enqueue(**d)`` on the producer thread, per feature, against ``json.dumps``.

        Each variant times every call with ``perf_counter_ns`` over the same payloads; the
        variants run interleaved, their order rotated per round, and a writer of each
        policy writes to the database meanwhile, as it would in a host.
        """
        no_values = frozenset({"header_pair"})
        policies = {
            "defaults": PayloadPolicy(),
            "no value detectors": PayloadPolicy(detectors=no_values),
            "no key-name redaction": PayloadPolicy(redact_keys=frozenset()),
            "no redaction at all": PayloadPolicy(redact_keys=frozenset(), detectors=frozenset()),
            # A redactor sees every string, so it takes the careful pass: the old cost.
            "careful pass (a no-op redactor)": PayloadPolicy(redactor=lambda _path, text: text),
        }
        n = len(dicts)

        def timed(call: Callable[[dict[str, Any]], object]) -> tuple[list[int], float]:
            samples = []
            cpu = time.thread_time()
            for d in dicts:
                started = time.perf_counter_ns()
                call(d)
                samples.append(time.perf_counter_ns() - started)
            return samples, time.thread_time() - cpu

        def dumps(d: dict[str, Any]) -> object:
            return json.dumps(d["payload"])

        def prepare(d: dict[str, Any]) -> object:
            return prepare_payload(d["payload"])

        def run_enqueue(
            policy: PayloadPolicy, *, idle: bool = False, no_gc: bool = False
        ) -> tuple[list[int], float]:
            self.reset()
            # idle: the writer waits for close() (one batch of everything), so it never
            # holds the GIL during the loop; no_gc: no garbage collection during the loop.
            # Neither is a setting to use: they show what the writer thread and the
            # collector add to the producer's latency.
            quiet = {"batch_size": n, "flush_interval": 3600.0, "max_queued": n} if idle else {}
            with BufferedWriter(EventLog, self.conninfo, payload_policy=policy, **quiet) as writer:
                if no_gc:
                    gc.disable()
                try:
                    return timed(lambda d: writer.enqueue(**d))
                finally:
                    gc.enable()

        # What delays the slowest calls: each call of this run is marked when a garbage
        # collection ran during it, or when it handed the GIL to the writer (`enqueue` offers
        # it every few ms while a batch is written). Kept apart: the marks cost a little.
        self.tail: list[tuple[int, str]] = []
        collections = [0]
        marks = ("", "collection", "hand-over")

        def counted(phase: str, _info: dict[str, Any]) -> None:
            if phase == "start":
                collections[0] += 1

        def run_marked() -> tuple[list[int], float]:
            self.reset()
            # Filled in place: a tuple per call would be an object the collector tracks.
            samples = [0] * n
            marked = bytearray(n)
            cpu = time.thread_time()
            gc.callbacks.append(counted)
            try:
                with BufferedWriter(EventLog, self.conninfo) as writer:
                    for i, d in enumerate(dicts):
                        handed, seen = writer._hand_over_at, collections[0]
                        started = time.perf_counter_ns()
                        writer.enqueue(**d)
                        samples[i] = time.perf_counter_ns() - started
                        if writer._hand_over_at != handed:
                            marked[i] = 2
                        elif collections[0] != seen:
                            marked[i] = 1
            finally:
                gc.callbacks.remove(counted)
            self.tail += [(took, marks[mark]) for took, mark in zip(samples, marked, strict=True)]
            return samples, time.thread_time() - cpu

        variants: list[tuple[str, Callable[[], tuple[list[int], float]]]] = [
            ("json.dumps(payload) (reference)", lambda: timed(dumps)),
            ("prepare_payload(payload) alone", lambda: timed(prepare)),
        ]
        for label, policy in policies.items():
            variants.append((f"enqueue(**d), {label}", lambda p=policy: run_enqueue(p)))
        defaults = policies["defaults"]
        variants.append(
            (
                "enqueue(**d), defaults, writer idle (diagnostic)",
                lambda: run_enqueue(defaults, idle=True),
            )
        )
        variants.append(
            (
                "enqueue(**d), defaults, gc disabled (diagnostic)",
                lambda: run_enqueue(defaults, no_gc=True),
            )
        )
        variants.append(("enqueue(**d), defaults, each call marked (diagnostic)", run_marked))
        self.latency: dict[str, list[tuple[list[int], float]]] = {name: [] for name, _ in variants}
        for round_ in range(rounds):
            shift = round_ % len(variants)
            for name, run in variants[shift:] + variants[:shift]:
                gc.collect()
                self.latency[name].append(run())
        self.latency_n = n

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

    def hand_values(self, i: int) -> tuple[object, ...]:
        """The hand-written detached INSERT's values for the i-th event, in `COLUMNS` order."""
        return (
            new_event_id(),
            self.session_ids[i % 10],
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
        )

    def detached_fields(self, i: int) -> dict[str, Any]:
        """The fields the writer's detached rows get for the i-th event (`hand_values`'s)."""
        return {
            "session_id": self.session_ids[i % 10],
            "user_id": self.user_id,
            "event_type": "tool_call",
            "tool_name": "search_places",
            "payload": payload(i),
        }

    def detached(self, rounds: int = 6, events: int = 300) -> None:
        """Hand-written psycopg INSERT + COMMIT vs `EventWriter.record_detached`, per event.

        Both take a connection from a pool per event, as a request handler does, and commit
        one event per transaction from the user's own values (a dict payload). The hand-written
        one uses a ``psycopg_pool.ConnectionPool``: ``with pool.connection() as conn:
        conn.execute(INSERT ..., values)`` (commit on leaving the block; no lock_timeout, no
        retry, no checks or redaction). The writer runs on an ``Engine`` (SQLAlchemy's pool)
        and also sets ``lock_timeout`` in its transaction. A diagnostic baseline runs the same
        hand-written INSERT in autocommit mode (one round trip, as the writer's).
        """
        from psycopg_pool import ConnectionPool

        writer = self.writer

        def hand() -> int:
            for i in range(events):
                with pool.connection() as conn:
                    conn.execute(HAND_INSERT, self.hand_values(i))
            return events

        def ours() -> int:
            for i in range(events):
                writer.record_detached(self.engine, **self.detached_fields(i))
            return events

        def hand_autocommit() -> int:
            for i in range(events):
                with one_statement.connection() as conn:
                    conn.execute(HAND_INSERT, self.hand_values(i))
            return events

        with (
            ConnectionPool(self.conninfo, min_size=1, max_size=1) as pool,
            ConnectionPool(
                self.conninfo, min_size=1, max_size=1, kwargs={"autocommit": True}
            ) as one_statement,
        ):
            for warm in (hand, hand_autocommit, ours):  # the pools and the server's caches
                warm()
            results = self.pairs(
                {"hand": hand, "autocommit": hand_autocommit, "ours": ours}, rounds
            )
        self.detached_results = {"hand": results["hand"], "ours": results["ours"]}
        self.detached_autocommit_results = {"hand": results["autocommit"], "ours": results["ours"]}

    def detached_async(self, rounds: int = 6, events: int = 300) -> None:
        """`detached`, async: `EventWriter.arecord_detached` on an ``AsyncEngine``.

        Against the same hand-written INSERT + COMMIT on a ``psycopg_pool.AsyncConnectionPool``
        connection, and (a diagnostic, to show what SQLAlchemy's async pool costs) on a
        connection checked out of the same ``AsyncEngine``.
        """
        from psycopg_pool import AsyncConnectionPool
        from sqlalchemy.ext.asyncio import create_async_engine

        writer = self.writer
        loop = asyncio.new_event_loop()
        engine = create_async_engine(self.engine.url)
        pool = AsyncConnectionPool(self.conninfo, min_size=1, max_size=1, open=False)

        async def hand() -> int:
            for i in range(events):
                async with pool.connection() as conn:
                    await conn.execute(HAND_INSERT, self.hand_values(i))
            return events

        async def hand_on_engine() -> int:
            for i in range(events):
                async with engine.connect() as sa_conn:
                    raw = await sa_conn.get_raw_connection()
                    conn: Any = raw.driver_connection
                    await conn.execute(HAND_INSERT, self.hand_values(i))
                    await conn.commit()
            return events

        async def ours() -> int:
            for i in range(events):
                await writer.arecord_detached(engine, **self.detached_fields(i))
            return events

        def run(variant: Callable[[], Any]) -> Callable[[], int]:
            return lambda: loop.run_until_complete(variant())

        try:
            loop.run_until_complete(pool.open())
            for warm in (hand, hand_on_engine, ours):  # both pools and the server's caches
                run(warm)()
            results = self.pairs(
                {"hand": run(hand), "engine": run(hand_on_engine), "ours": run(ours)}, rounds
            )
        finally:
            loop.run_until_complete(pool.close())
            loop.run_until_complete(engine.dispose())
            loop.close()
        self.detached_async_results = {"hand": results["hand"], "ours": results["ours"]}
        self.detached_async_engine_results = {"hand": results["engine"], "ours": results["ours"]}

    def enqueue_latency(self, n: int = 20_000) -> None:
        events = self.build(n)
        bare: queue.Queue[NewEvent] = queue.Queue()

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

    def memory_down(self, n: int = 100_000, bound: int = 16 * 1024 * 1024) -> None:
        """Traced memory of a writer whose database is unreachable, fed n events of ASCII
        payloads and then n of non-ASCII ones (`memory`)."""
        self.memory = {
            label: self._memory_down(n, bound, non_ascii=label != "ASCII")
            for label in ("ASCII", "non-ASCII")
        }

    def _memory_down(self, n: int, bound: int, *, non_ascii: bool) -> MemoryDown:
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
        return MemoryDown(
            n, bound, counters.queued, counters.queued_bytes, counters.dropped, used, peak
        )


def spread(values: list[float]) -> str:
    """Median, and min-max as a +/- percentage of it."""
    mid = statistics.median(values)
    return f"{(min(values) / mid - 1) * 100:+.0f}/{(max(values) / mid - 1) * 100:+.0f} %"


def percentile(samples: list[int], share: float) -> float:
    """The ``share`` percentile of nanosecond samples, in microseconds."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] / 1000


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
    rows.append(
        (
            "`record_detached` (diagnostic)",
            "the same hand-written INSERT in autocommit mode (one round trip, psycopg_pool)",
            bench.detached_autocommit_results,
        )
    )
    rows.append(
        (
            "`arecord_detached`, 1 per transaction",
            "hand-written async psycopg INSERT + COMMIT (psycopg_pool)",
            bench.detached_async_results,
        )
    )
    rows.append(
        (
            "`arecord_detached` (diagnostic)",
            "the same hand-written INSERT on a connection of the same `AsyncEngine`",
            bench.detached_async_engine_results,
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
            f"{'' if 'diagnostic' in name else 'yes' if ratio <= 1.15 else 'NO'} |"
        )


def print_end_to_end_tables(bench: Bench, *, svg: Path | None = None, subtitle: str = "") -> None:
    """The headline table (dicts in, rows committed) and the producer thread's latencies."""
    n = bench.count
    print("End to end, dicts in, rows committed:\n")
    print(
        "| path | events/s (median) | spread (min/max vs median) | ratio (median) | "
        "ratio range (per round) | CPU us/event, process (median) | target | met |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---|")
    e2e = bench.e2e
    hand = [wall for wall, _, _ in e2e["hand"]]
    hand_mid = statistics.median(hand)

    def cpu_of(runs: list[tuple[float, float, float | None]]) -> float:
        return statistics.median(cpu for _, cpu, _ in runs) / n * 1e6

    print(
        "| hand-written psycopg binary COPY of the dicts, `json.dumps` per payload, "
        f"{DEFAULT_BATCH_SIZE:,} rows per transaction (baseline) | {n / hand_mid:,.0f} | "
        f"{spread(hand)} | 1.00 | | {cpu_of(e2e['hand']):.1f} | | |"
    )
    for name, key, target in (
        ("`new_event(**d)` + `write_events`", "bulk", 0.9),
        ("`BufferedWriter.enqueue(**d)` + `close()`", "buffered", 0.8),
        (
            "the same, `sys.setswitchinterval(0.0005)` (diagnostic: the GIL's hand-over)",
            "buffered_fast_switch",
            None,
        ),
    ):
        walls = [wall for wall, _, _ in e2e[key]]
        mid = statistics.median(walls)
        ratio = hand_mid / mid
        per_round = [h / w for h, w in zip(hand, walls, strict=True)]
        # The last two cells: the target and whether it was met (none for a diagnostic).
        cells = " | " if target is None else f">= {target} | {'yes' if ratio >= target else 'NO'}"
        print(
            f"| {name} | {n / mid:,.0f} | {spread(walls)} | {ratio:.2f} | "
            f"{min(per_round):.2f}-{max(per_round):.2f} | {cpu_of(e2e[key]):.1f} | {cells} |"
        )
    producer = statistics.median(extra or 0.0 for _, _, extra in e2e["buffered"]) / n * 1e6
    print(f"\nBuffered: the producer thread itself spent {producer:.1f} us CPU per event.")

    print(
        "\nOn the producer thread (us per call, all rounds pooled; ratio to `json.dumps` of "
        "the same payload, per round in brackets):\n"
    )
    print(
        "| call | p50 | p99 | p50 ratio | p99 ratio | CPU us/call (median) | "
        "target p50 <= 1.0, p99 <= 3 |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    reference = "json.dumps(payload) (reference)"
    ref_runs = bench.latency[reference]
    ref_p50 = percentile([x for samples, _ in ref_runs for x in samples], 0.5)
    ref_p99 = percentile([x for samples, _ in ref_runs for x in samples], 0.99)
    for name, runs in bench.latency.items():
        pooled = [x for samples, _ in runs for x in samples]
        p50, p99 = percentile(pooled, 0.5), percentile(pooled, 0.99)
        rounds50 = [
            percentile(samples, 0.5) / percentile(ref, 0.5)
            for (samples, _), (ref, _) in zip(runs, ref_runs, strict=True)
        ]
        cpu = statistics.median(cpu for _, cpu in runs) / bench.latency_n * 1e6
        verdict = ""
        if name == "enqueue(**d), defaults":
            met = p50 / ref_p50 <= 1.0 and p99 / ref_p99 <= 3.0
            verdict = "yes" if met else "NO"
        print(
            f"| `{name}` | {p50:.2f} | {p99:.2f} | {p50 / ref_p50:.2f} "
            f"[{min(rounds50):.2f}-{max(rounds50):.2f}] | {p99 / ref_p99:.2f} | {cpu:.2f} | "
            f"{verdict} |"
        )

    marked = bench.tail
    if marked:
        print(
            "\nThe slowest calls of the marked run (`enqueue(**d)`, defaults, each call marked "
            "when a garbage collection ran during it, or when it handed the GIL to the "
            "writer):\n"
        )
        print("| calls | share of calls | p50 us | of the slowest 1 % |")
        print("|---|---:|---:|---:|")
        slowest = sorted(marked, reverse=True)[: max(1, len(marked) // 100)]
        for mark, label in (
            ("collection", "a garbage collection ran"),
            ("hand-over", "handed the GIL to the writer"),
            ("", "neither"),
        ):
            took = [ns for ns, m in marked if m == mark]
            share = len(took) / len(marked) * 100
            mid = percentile(took, 0.5) if took else 0.0
            among = sum(1 for _, m in slowest if m == mark) / len(slowest) * 100
            print(f"| {label} | {share:.2f} % | {mid:.1f} | {among:.0f} % |")
        rest = [ns for ns, m in marked if not m]
        if rest:
            print(
                f"\nWithout the marked calls, p99 {percentile(rest, 0.99):.2f} us: "
                f"{percentile(rest, 0.99) / ref_p99:.2f}x the reference p99."
            )

    if svg:
        labels = {
            "hand": "hand-written COPY, json.dumps (baseline)",
            "bulk": "new_event + write_events",
            "buffered": "BufferedWriter.enqueue + close",
        }
        medians = {key: statistics.median(w for w, _, _ in e2e[key]) for key in labels}
        chart = _svg.bar_chart(
            "End to end, dicts in, rows committed: throughput relative to hand-written COPY",
            [
                (f"{labels[key]}: {n / seconds:,.0f}/s", {"ratio": hand_mid / seconds})
                for key, seconds in medians.items()
            ],
            subtitle=subtitle,
            unit="x",
            label=lambda value: f"{value:.2f}",
            reference=1.0,
            reference_label="hand-written COPY = 1.00",
        )
        print(f"\nchart written to {_svg.write(svg, chart)}")


def print_prebuilt_table(bench: Bench) -> None:
    """The writers fed events built before the clock starts, against COPY of prebuilt rows."""
    n = bench.count
    runs = bench.runs
    raw = statistics.median(runs["raw"])
    print("\nPrebuilt events (the checks and payload preparation left out, done before timing):\n")
    print(
        "| path | events/s (median) | spread (min/max vs median) | ratio (median) | "
        "ratio range (per round) |"
    )
    print("|---|---:|---:|---:|---:|")
    print(
        f"| raw psycopg COPY binary of prebuilt rows, {DEFAULT_BATCH_SIZE:,} rows per "
        f"transaction (baseline) | {n / raw:,.0f} | {spread(runs['raw'])} | 1.00 | |"
    )
    for name, key in (
        ("bulk `write_events` (prebuilt events)", "bulk"),
        ("`BufferedWriter`, sustained (prebuilt events)", "buffered"),
    ):
        seconds = statistics.median(runs[key])
        per_round = [r / s for r, s in zip(runs["raw"], runs[key], strict=True)]
        print(
            f"| {name} | {n / seconds:,.0f} | {spread(runs[key])} | {raw / seconds:.2f} | "
            f"{min(per_round):.2f}-{max(per_round):.2f} |"
        )


def print_queue_and_memory(bench: Bench) -> None:
    """The enqueue of a prebuilt event, and the memory a writer holds while the database is down."""
    print("\nEnqueue of a prebuilt event (us), p50 / p99:")
    print(f"- bare queue.Queue.put: {bench.lat_queue[0]:.2f} / {bench.lat_queue[1]:.2f}")
    print(
        f"- BufferedWriter.enqueue(event) (prebuilt): {bench.lat_event[0]:.2f} / "
        f"{bench.lat_event[1]:.2f}"
    )
    for label, down in bench.memory.items():
        print(
            f"\nDatabase down, {label} payloads, {down.offered:,} events offered, "
            f"max_queued_bytes={down.bound:,}:"
        )
        print(
            f"- queued {down.queued:,} events, counted {down.queued_bytes:,} bytes, "
            f"dropped {down.dropped:,}"
        )
        print(
            f"- traced memory held: {down.used:,} bytes (peak {down.peak:,}); under the bound: "
            f"{'yes' if down.peak <= down.bound else 'NO'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="libpq URL of an empty database (default: embedded 18)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--svg", type=Path, help="also draw the headline table as an SVG chart")
    parser.add_argument(
        "--record-only", action="store_true", help="only the in-transaction and detached tables"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()
    with server(args.url) as url:
        bench = Bench(url, args.events)
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
        if args.record_only:
            bench.orm()
            bench.detached()
            bench.detached_async()
            bench.engine.dispose()
            print(f"PostgreSQL {version[0] if version else '?'}, ~600-byte payloads")
            print_record_tables(bench)
            return
        dicts = bench.dicts(args.events)
        bench.end_to_end(dicts, args.rounds)
        bench.producer_latency(dicts, args.rounds)
        bench.throughput(bench.build(args.events), rounds=args.rounds)
        bench.orm()
        bench.detached()
        bench.detached_async()
        bench.enqueue_latency()
        bench.memory_down()
        bench.engine.dispose()
    load_after = os.getloadavg()

    n = args.events
    size = len(json.dumps(payload(1), separators=(",", ":"), ensure_ascii=False))
    pg = version[0] if version else "?"
    print(
        f"PostgreSQL {pg}, {n} events, {size}-byte payloads, {args.rounds} interleaved rounds "
        f"(order rotated), {os.cpu_count()} CPUs, load average "
        f"{load_before[0]:.2f} before / {load_after[0]:.2f} after\n"
    )
    print_end_to_end_tables(
        bench,
        svg=args.svg,
        subtitle=f"PostgreSQL {pg}, {n:,} events of {size} B, median of {args.rounds} rounds",
    )
    print_prebuilt_table(bench)
    print_record_tables(bench)
    print_queue_and_memory(bench)


if __name__ == "__main__":
    main()
