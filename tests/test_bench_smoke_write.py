"""The write benchmark's parts still run, at a tiny size (a smoke run: its figures are not
checked, only that every path wrote what it was timed for and every table prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from test_explain import bench_module


@pytest.fixture
def write_bench() -> Any:
    """benchmarks/write_bench.py, with the modules it imports."""
    bench_module("_svg")
    bench_module("_server")
    return bench_module("write_bench")


def _bench(write_bench: Any, database_url: URL, events: int) -> Any:
    url = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    return write_bench.Bench(url, events)


@pytest.mark.timeout(300)
def test_write_bench_record_tables_run(
    write_bench: Any, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench(write_bench, database_url, 50)
    try:
        bench.detached(rounds=2, events=7)
        with bench.engine.connect() as conn:  # the last variant's events, the table reset before
            assert conn.scalar(text("SELECT count(*) FROM event_logs")) == 7
        bench.detached_async(rounds=1, events=5)
        bench.orm(rounds=1)
    finally:
        bench.engine.dispose()
    for results in (
        bench.detached_results,
        bench.detached_autocommit_results,
        bench.detached_async_results,
        bench.detached_async_engine_results,
        *bench.orm_results.values(),
    ):
        assert set(results) == {"hand", "ours"}
        assert all(wall > 0 and cpu >= 0 for runs in results.values() for wall, cpu in runs)
    write_bench.print_record_tables(bench)
    printed = capsys.readouterr().out
    for row in (
        "`record`, 1 per transaction",
        "`record`, 200 per transaction",
        "`record_detached`, 1 per transaction",
        "`record_detached` (diagnostic)",
        "`arecord_detached`, 1 per transaction",
        "`arecord_detached` (diagnostic)",
    ):
        assert printed.count(f"| {row} |") == 1, row


@pytest.mark.timeout(300)
def test_write_bench_end_to_end_tables_run(
    write_bench: Any, database_url: URL, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bench = _bench(write_bench, database_url, 40)
    try:
        # Each timed path checks that it stored bench.count rows, and raises otherwise.
        dicts = bench.dicts(40)
        bench.end_to_end(dicts, rounds=1)
        bench.producer_latency(dicts, rounds=1)
        bench.throughput(bench.build(40), rounds=1)
        bench.enqueue_latency(n=50)
        bench.memory_down(n=2_000, bound=256 * 1024)
    finally:
        bench.engine.dispose()
    assert {len(runs) for runs in bench.e2e.values()} == {1}
    assert all(len(samples) == 40 for runs in bench.latency.values() for samples, _ in runs)
    for down in bench.memory.values():  # the bound held, and it was reached
        assert down.queued + down.dropped == down.offered == 2_000
        assert down.dropped > 0
        assert 0 < down.queued_bytes <= down.bound
    write_bench.print_end_to_end_tables(bench, svg=tmp_path / "chart.svg", subtitle="smoke")
    write_bench.print_prebuilt_table(bench)
    write_bench.print_queue_and_memory(bench)
    printed = capsys.readouterr().out
    for row in (
        "hand-written psycopg binary COPY of the dicts, ",
        "`new_event(**d)` + `write_events`",
        "`BufferedWriter.enqueue(**d)` + `close()`",
        "`json.dumps(payload) (reference)`",
        "`enqueue(**d), defaults`",
        "`enqueue(**d), careful pass (a no-op redactor)`",
        "bulk `write_events` (prebuilt events)",
        "`BufferedWriter`, sustained (prebuilt events)",
        "`enqueue(**d), defaults, each call marked (diagnostic)`",
        "a garbage collection ran |",
        "handed the GIL to the writer |",
        "neither |",
    ):
        assert sum(line.startswith(f"| {row}") for line in printed.splitlines()) == 1, row
    assert len(bench.tail) == 40
    assert "Without the marked calls, p99 " in printed
    assert printed.count("events offered, max_queued_bytes=262,144:") == 2
    assert (tmp_path / "chart.svg").read_text().startswith("<svg")
