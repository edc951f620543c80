"""UUIDv7 vs UUIDv4 event ids: load time and primary-key size, as ratios from one run.

    python benchmarks/id_bench.py                 # 2,000,000 rows on an embedded PostgreSQL
    python benchmarks/id_bench.py --rows 200000 --url postgresql://user@host/db
    python benchmarks/id_bench.py --svg docs/benchmarks/ids.svg   # also a chart of the ratios

Each round loads the same rows (ids aside) into a fresh ``event_logs`` table with its primary
key in place, through COPY BINARY in batches of 10,000, alternating v7 and v4 so drift on a
shared machine hits both alike. Printed: median load time of each, their ratio, and the
primary-key index sizes after the load (random v4 ids split pages all over the B-tree).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import _svg
import psycopg
from _server import server
from uuid_utils.compat import uuid7

TABLE = """
CREATE UNLOGGED TABLE IF NOT EXISTS bench_ids (
    id uuid NOT NULL,
    session_id uuid NOT NULL,
    event_type varchar(64) NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_bench_ids PRIMARY KEY (id)
)
"""
PAYLOAD = '{"text": "' + "x" * 200 + '", "n": 1}'


def load(conn: psycopg.Connection, rows: int, new_id: Callable[[], uuid.UUID]) -> tuple[float, int]:
    """Load ``rows`` events with ids from ``new_id``; return (seconds, pk size in bytes)."""
    conn.execute("DROP TABLE IF EXISTS bench_ids")
    conn.execute(TABLE)
    session = uuid.uuid4()
    started = time.perf_counter()
    done = 0
    while done < rows:
        batch = min(10_000, rows - done)
        with (
            conn.cursor() as cur,
            cur.copy(
                "COPY bench_ids (id, session_id, event_type, payload) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["uuid", "uuid", "varchar", "jsonb"])
            for _ in range(batch):
                copy.write_row((new_id(), session, "tool_call", PAYLOAD))
        done += batch
    elapsed = time.perf_counter() - started
    size = conn.execute("SELECT pg_relation_size('pk_bench_ids')").fetchone()
    assert size is not None
    return elapsed, int(size[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="libpq URL of a PostgreSQL database (default: embedded)")
    parser.add_argument("--svg", type=Path, help="also draw the ratios as an SVG chart here")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"v7": [], "v4": []}
    sizes: dict[str, int] = {}
    with server(args.url) as url, psycopg.connect(url, autocommit=True) as conn:
        version = conn.info.server_version
        for _ in range(args.rounds):
            for name, factory in (("v7", uuid7), ("v4", uuid.uuid4)):
                seconds, sizes[name] = load(conn, args.rows, factory)
                times[name].append(seconds)
        conn.execute("DROP TABLE IF EXISTS bench_ids")
    v7, v4 = statistics.median(times["v7"]), statistics.median(times["v4"])
    print(f"PostgreSQL {version // 10000}, {args.rows:,} rows, {args.rounds} rounds (median)")
    print(f"load uuid7 {v7:.2f} s ({args.rows / v7:,.0f} rows/s)")
    print(f"load uuid4 {v4:.2f} s ({args.rows / v4:,.0f} rows/s)")
    print(f"load time ratio v7/v4: {v7 / v4:.3f}  ({(1 - v7 / v4) * 100:+.1f}% faster with v7)")
    print(f"primary key size v7 {sizes['v7'] / 2**20:.1f} MiB, v4 {sizes['v4'] / 2**20:.1f} MiB")
    print(f"primary key size ratio v7/v4: {sizes['v7'] / sizes['v4']:.3f}")
    if args.svg:
        chart = _svg.bar_chart(
            "UUIDv7 ids against UUIDv4: load time and primary-key size (v7 / v4)",
            [
                (f"load time ({v7:.2f} s / {v4:.2f} s)", {"v7 / v4": v7 / v4}),
                (
                    f"primary key ({sizes['v7'] / 2**20:.1f} / {sizes['v4'] / 2**20:.1f} MiB)",
                    {"v7 / v4": sizes["v7"] / sizes["v4"]},
                ),
            ],
            subtitle=(
                f"PostgreSQL {version // 10000}, {args.rows:,} rows, COPY in batches of "
                f"10,000, median of {args.rounds} alternating rounds; lower is better for v7"
            ),
            unit="x",
            label=lambda value: f"{value:.2f}",
            reference=1.0,
            reference_label="v4 = 1.00",
        )
        print(f"chart written to {_svg.write(args.svg, chart)}")


if __name__ == "__main__":
    main()
