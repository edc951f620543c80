"""The write benchmark's in-transaction and detached parts still run, at a tiny size (a smoke
run: its figures are not checked, only that every path wrote what it was timed for)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL
from test_explain import bench_module


@pytest.mark.timeout(300)
def test_write_bench_record_tables_run(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    bench_module("_svg")
    bench_module("_server")
    write_bench = bench_module("write_bench")
    bench = write_bench.Bench(
        database_url.set(drivername="postgresql").render_as_string(hide_password=False), 50
    )
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
