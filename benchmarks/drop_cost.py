"""What a ``DROP TABLE`` of a retention-sized table costs, and where that time goes.

``drop_partitions`` ends with a ``DROP TABLE`` of the detached partition, and on the
scale-out benchmark that ``DROP`` is most of retention's time (docs/benchmarks/scaleout.md).
This measures one explanation: at commit PostgreSQL truncates and unlinks the table's files,
and the kernel then frees every page of them that it holds in its page cache. Each round
builds two identical tables (heap plus five B-tree indexes, ``--mb`` MB in all, rows shaped
like the events) and drops them, the one going first alternating:

* **cached**: every file of the table read right before the ``DROP`` (all of it in the
  page cache, as for a partition that was just written, read or vacuumed);
* **evicted**: every file flushed and then dropped from the page cache
  (``posix_fadvise(POSIX_FADV_DONTNEED)``), as for a partition nobody touched for weeks
  on a machine whose memory holds the recent data.

Both are checkpointed first, so the ``DROP`` writes no dirty page. Also timed beside them:
``ftruncate`` of a plain file of the same size in the same folder, cached and evicted
(the kernel's part, without PostgreSQL).

Usage: ``python benchmarks/drop_cost.py [--mb 190] [--rounds 5]``. It starts a throwaway
embedded PostgreSQL 18 (the files must be on this machine to be read and evicted) in a new
folder under ``$TMPDIR`` (default ``/tmp``): point ``TMPDIR`` at another file system to
measure that one. It prints the file system's type and whether it is mounted with online
``discard``, which turns every freed block into a synchronous TRIM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import psycopg
from _server import embedded, file_system

ROW_BYTES = 700  # heap plus index bytes per row, about, for the table below


def build(conn: psycopg.Connection, name: str, rows: int) -> None:
    conn.execute(
        f"CREATE TABLE {name} AS SELECT gen_random_uuid() AS id, gen_random_uuid() AS session_id,"
        " gen_random_uuid() AS user_id, 'tool_call'::text AS event_type,"
        " jsonb_build_object('text', repeat(md5(g::text), 12), 'n', g) AS payload,"
        " now() - g * interval '1 second' AS created_at FROM generate_series(1, %s) g" % rows
    )
    conn.execute(f"ALTER TABLE {name} ADD PRIMARY KEY (id, created_at)")
    for columns in ("session_id, created_at", "user_id, created_at", "created_at", "event_type"):
        conn.execute(f"CREATE INDEX ON {name} ({columns})")


def files(conn: psycopg.Connection, data: Path, name: str) -> list[Path]:
    """Every file of table ``name`` and its indexes: segments and forks."""
    paths = conn.execute(
        "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = %s::regclass"
        " UNION ALL SELECT pg_relation_filepath(i.indexrelid) FROM pg_index i"
        " WHERE i.indrelid = %s::regclass",
        [name, name],
    ).fetchall()
    found = []
    for (relative,) in paths:
        base = data / relative
        found += [
            path
            for path in base.parent.glob(base.name + "*")
            if path.name == base.name or path.name[len(base.name)] in "._"
        ]
    return found


def read_all(paths: list[Path]) -> None:
    for path in paths:
        with path.open("rb") as f:
            while f.read(1 << 20):
                pass


def evict(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def size_mb(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def timed_drop(conn: psycopg.Connection, name: str) -> float:
    started = time.perf_counter()
    conn.execute(f"DROP TABLE {name}")
    return time.perf_counter() - started


def timed_truncate(folder: Path, megabytes: float, cached: bool) -> float:
    path = folder / "plain-file"
    block = os.urandom(1_000_000)
    with path.open("wb") as f:
        for _ in range(round(megabytes)):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    if cached:
        read_all([path])
    else:
        evict([path])
    fd = os.open(path, os.O_RDWR)
    try:
        started = time.perf_counter()
        os.ftruncate(fd, 0)
        elapsed = time.perf_counter() - started
    finally:
        os.close(fd)
        path.unlink()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=190, help="size of each table (default 190)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = args.mb * 1_000_000 // ROW_BYTES
    times: dict[str, list[float]] = {"cached": [], "evicted": []}
    truncates: dict[str, list[float]] = {"cached": [], "evicted": []}
    sizes: list[float] = []
    with (
        embedded("evl-drop-cost-") as started,
        psycopg.connect(started.url, autocommit=True) as conn,
    ):
        data = started.data
        print(
            f"PostgreSQL {conn.info.server_version}; load average {os.getloadavg()[0]:.2f};"
            f" file system of {data.parent}: {file_system(data)}"
        )
        for round_ in range(args.rounds):
            order = ["cached", "evicted"] if round_ % 2 == 0 else ["evicted", "cached"]
            for mode in order:
                build(conn, f"t_{mode}", rows)
            conn.execute("CHECKPOINT")
            for mode in order:
                name = f"t_{mode}"
                paths = files(conn, data, name)
                sizes.append(size_mb(paths))
                if mode == "cached":
                    read_all(paths)
                else:
                    evict(paths)
                times[mode].append(timed_drop(conn, name))
                truncates[mode].append(timed_truncate(data.parent, sizes[-1], mode == "cached"))
            print(
                f"round {round_ + 1}: DROP cached {times['cached'][-1] * 1e3:.1f} ms,"
                f" evicted {times['evicted'][-1] * 1e3:.1f} ms; ftruncate cached"
                f" {truncates['cached'][-1] * 1e3:.1f} ms, evicted"
                f" {truncates['evicted'][-1] * 1e3:.1f} ms"
            )
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    ratios = [c / e for c, e in zip(times["cached"], times["evicted"], strict=True)]
    print(f"\ntables of {statistics.median(sizes):.0f} MB (heap and 5 indexes), {rows:,} rows")
    print("| | median ms | range ms |\n|---|---:|---:|")
    for label, values in (
        ("DROP TABLE, files in the page cache", times["cached"]),
        ("DROP TABLE, files evicted", times["evicted"]),
        ("ftruncate of a file of that size, cached", truncates["cached"]),
        ("ftruncate of a file of that size, evicted", truncates["evicted"]),
    ):
        ms = [v * 1e3 for v in values]
        print(f"| {label} | {statistics.median(ms):.1f} | {min(ms):.1f}-{max(ms):.1f} |")
    print(
        f"\ncached/evicted DROP, per round: median {statistics.median(ratios):.1f}x"
        f" [{min(ratios):.1f}-{max(ratios):.1f}]"
    )


if __name__ == "__main__":
    main()
