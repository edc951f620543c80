"""Spool benchmark: what the spool costs `enqueue`, and what SIGKILL under load loses with it.

Usage: python benchmarks/spool_bench.py [--url postgresql://...] [--events 20000] [--rounds 6]
       [--kills 5] [--svg docs/benchmarks/spool.svg]
Without --url it starts a throwaway embedded PostgreSQL 18. The spools live in a temporary
directory (on the file system of $TMPDIR). With --svg it also draws the p50 latency of
``enqueue`` with and without a spool as a chart.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _svg
import msgspec
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session
from write_bench import Base, ChatSession, EventLog, User, database  # the same host schema

from eventlog_persist import (
    BufferedWriter,
    EventWriter,
    NewEvent,
    Spool,
    new_event_id,
)
from eventlog_persist._spool import encode_event


def payload(n: int) -> dict[str, Any]:
    """About 600 bytes of JSON, shaped like a tool call (as in write_bench.py)."""
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


def prepare(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    with Session(engine) as session:
        session.add(User(id=user_id))
        session.flush()
        session.add(ChatSession(id=session_id, user_id=user_id))
        session.commit()
    engine.dispose()
    return user_id, session_id


def stored_ids(url: str) -> list[uuid.UUID]:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text("SELECT id FROM event_logs")).scalars())
    finally:
        engine.dispose()


def truncate(url: str) -> None:
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE event_logs"))
    engine.dispose()


# --- enqueue latency, with and without the spool ----------------------------------------------


def percentiles(samples: list[int]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000


def latency(
    url: str, events: list[NewEvent], spool: Spool | None, call: str
) -> tuple[float, float]:
    """p50 / p99 of `enqueue` in microseconds, one writer draining to the database."""
    truncate(url)
    gc.collect()
    samples = []
    timer = time.perf_counter_ns
    with BufferedWriter(EventLog, url, spool=spool) as writer:
        for event in events:
            started = timer()
            writer.enqueue(event)
            samples.append(timer() - started)
        writer.flush()
    return percentiles(samples)


def paired(
    url: str, events: list[NewEvent], root: Path, call: str
) -> tuple[tuple[float, float], tuple[float, float]]:
    """p50 / p99 without and with the spool (fsync never), measured in one interleaved run.

    Two writers, one with a spool, run side by side; each event is enqueued into both, one
    right after the other, the order swapped at every event, so that load and drift on the
    machine hit both alike.
    """
    truncate(url)
    gc.collect()
    off: list[int] = []
    on: list[int] = []
    timer = time.perf_counter_ns
    session_id, user_id = events[0].session_id, events[0].user_id
    with (
        BufferedWriter(EventLog, url) as plain,
        BufferedWriter(EventLog, url, spool=Spool(root)) as spooled,
    ):
        for n, event in enumerate(events):
            pairs = ((plain, off), (spooled, on)) if n % 2 else ((spooled, on), (plain, off))
            for writer, samples in pairs:
                if call == "event":
                    # The two writers must not write one event twice: the spooled one
                    # gets a copy with its own id.
                    item = (
                        event
                        if writer is plain
                        else msgspec.structs.replace(event, id=new_event_id())
                    )
                    started = timer()
                    writer.enqueue(item)
                else:
                    started = timer()
                    writer.enqueue(
                        session_id=session_id,
                        user_id=user_id,
                        event_type="tool_call",
                        tool_name="search_places",
                        payload=payload(n),
                    )
                samples.append(timer() - started)
        plain.flush()
        spooled.flush()
    return percentiles(off), percentiles(on)


def encoding_p50(events: list[NewEvent]) -> float:
    """p50 in microseconds of building the spool record alone (a part of the spool's cost)."""
    timer = time.perf_counter_ns
    samples = []
    for event in events:
        started = timer()
        encode_event(event)
        samples.append(timer() - started)
    return percentiles(samples)[0]


def compare(
    url: str, events: list[NewEvent], rounds: int, root: Path, call: str
) -> dict[str, list[tuple[float, float]]]:
    """Without and with the spool (fsync never), interleaved event by event, per round."""
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for round_ in range(rounds):
        off, on = paired(url, events, root / f"{call}-{round_}", call)
        runs["off"].append(off)
        runs["on"].append(on)
    return runs


# --- SIGKILL at a random moment under load ----------------------------------------------------


def produce(url: str, directory: str, log: str, user_id: str, session_id: str) -> None:
    """The child: enqueue as fast as it can; log each id once `enqueue` returned."""
    writer = BufferedWriter(
        EventLog, url, spool=Spool(directory), batch_size=500, flush_interval=0.01
    ).start()
    user, session = uuid.UUID(user_id), uuid.UUID(session_id)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    print("started", flush=True)
    n = 0
    while True:
        event = writer.enqueue(
            session_id=session,
            user_id=user,
            event_type="tool_call",
            tool_name="search_places",
            payload=payload(n),
        )
        os.write(fd, event.id.hex.encode() + b"\n")
        n += 1


def kill_trial(url: str, root: Path, ids: tuple[uuid.UUID, uuid.UUID], rng: random.Random) -> str:
    truncate(url)
    directory, log = root / "spool", root / "returned.log"
    log.unlink(missing_ok=True)
    delay = rng.uniform(0.5, 2.5)
    child = [sys.executable, __file__, "--child", url, str(directory), str(log)]
    child += [str(ids[0]), str(ids[1])]
    with subprocess.Popen(child, stdout=subprocess.PIPE, text=True) as producer:
        assert producer.stdout is not None
        if producer.stdout.readline() != "started\n":
            raise RuntimeError("the producer did not start")
        time.sleep(delay)
        producer.send_signal(signal.SIGKILL)
        producer.wait(30)
    returned = {uuid.UUID(line) for line in log.read_text().split()}
    before = len(stored_ids(url))
    started = time.perf_counter()
    with BufferedWriter(EventLog, url, spool=Spool(directory)) as writer:
        writer.flush()
    replay_seconds = time.perf_counter() - started
    counters = writer.counters
    rows = stored_ids(url)
    lost = len(returned - set(rows))
    doubled = len(rows) - len(set(rows))
    extra = len(set(rows) - returned)
    left = sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))
    return (
        f"| {delay:.2f} | {len(returned):,} | {before:,} | {counters.replayed:,} | "
        f"{counters.duplicates:,} | {replay_seconds:.2f} | {len(rows):,} | **{lost}** | "
        f"{doubled} | {extra} | {counters.spool_damaged} | {len(left)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", help="libpq URL of an empty database (default: embedded 18)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--svg", type=Path, help="also draw the enqueue p50 as an SVG chart")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        produce(*args.child)
        return
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with database(args.url) as url, tempfile.TemporaryDirectory(prefix="evl-spool-") as tmp:
        root = Path(tmp)
        ids = prepare(url)
        builder = EventWriter(EventLog)
        events = [
            builder.event(
                session_id=ids[1],
                user_id=ids[0],
                event_type="tool_call",
                tool_name="search_places",
                payload=payload(n),
            )
            for n in range(args.events)
        ]
        prebuilt = compare(url, events, args.rounds, root, "event")
        fields = compare(url, events[: args.events // 4], args.rounds, root, "fields")
        encoding = [encoding_p50(events) for _ in range(args.rounds)]
        policies = {
            "fsync=0.05": latency(url, events, Spool(root / "interval", fsync=0.05), "event"),
            "fsync='always'": latency(
                url, events[:2000], Spool(root / "always", fsync="always"), "event"
            ),
        }
        rng = random.Random(seed)
        trials = [kill_trial(url, root / f"kill-{n}", ids, rng) for n in range(args.kills)]

    print(
        f"{args.events:,} events (~600-byte payloads), {args.rounds} rounds; in each round a "
        "writer without and one with a spool (fsync never) run side by side, every event "
        "enqueued into both, the order swapped at every event; both drain to PostgreSQL\n"
    )
    print(
        "| `enqueue` call | p50 us, no spool | p50 us, spool | p50 delta us (median of rounds) "
        "| delta per round | p50 ratio | p99 us, no spool / spool | target |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, runs in (("`enqueue(event)`, prebuilt", prebuilt), ("`enqueue(**fields)`", fields)):
        off50 = statistics.median(p50 for p50, _ in runs["off"])
        on50 = statistics.median(p50 for p50, _ in runs["on"])
        deltas = [on[0] - off[0] for off, on in zip(runs["off"], runs["on"], strict=True)]
        ratios = [on[0] / off[0] for off, on in zip(runs["off"], runs["on"], strict=True)]
        delta = statistics.median(deltas)
        p99 = [statistics.median(p99 for _, p99 in runs[name]) for name in ("off", "on")]
        target = f"<= +3 us: {'yes' if delta <= 3 else 'NO'}" if "prebuilt" in label else "(info)"
        print(
            f"| {label} | {off50:.2f} | {on50:.2f} | {delta:+.2f} | "
            f"{min(deltas):+.2f} to {max(deltas):+.2f} | {statistics.median(ratios):.2f} | "
            f"{p99[0]:.2f} / {p99[1]:.2f} | {target} |"
        )
    if args.svg:
        chart = _svg.bar_chart(
            "enqueue() p50 latency without and with a spool (fsync never)",
            [
                (
                    label,
                    {
                        name: statistics.median(p50 for p50, _ in runs[key])
                        for name, key in (("no spool", "off"), ("spool", "on"))
                    },
                )
                for label, runs in (
                    ("enqueue(event), prebuilt", prebuilt),
                    ("enqueue(**fields)", fields),
                )
            ],
            subtitle=f"{args.events:,} events of ~600 B, median of {args.rounds} rounds",
            unit=" us",
        )
        print(f"chart written to {_svg.write(args.svg, chart)}")
    print(
        "\nOf the delta, building the record (length, CRC32, the event's fields): "
        f"p50 {statistics.median(encoding):.2f} us (median of {args.rounds} runs); the rest is "
        "the copy into the memory-mapped segment (in the page cache) and the journal's "
        "bookkeeping."
    )
    print("\nOther fsync policies, `enqueue(event)` p50 / p99 us (one run, for information):")
    for name, (p50, p99) in policies.items():
        print(f"- {name}: {p50:.2f} / {p99:.2f}")
    print(f"\nSIGKILL at a random moment under load (seed {seed}), then a new writer replays:\n")
    print(
        "| killed after s | enqueue returned | stored before replay | replayed | of them "
        "already stored | replay s | stored after | lost | doubled | stored, not returned | "
        "damaged | files left |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in trials:
        print(row)


if __name__ == "__main__":
    main()
