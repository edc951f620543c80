"""The read benchmark and its data generator still run, at a tiny size (they are not tests)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

from pgserver import ServerInfo
from test_explain import bench_module


def test_generator_mix() -> None:
    datagen = bench_module("datagen")
    data = datagen.plan(5000, seed=1)
    assert sum(size for _, _, size in data.sessions) == 5000
    assert len(data.users) == 5
    lines = list(datagen.event_lines(data, seed=1))
    assert len(lines) == 5000
    fields = [line.rstrip("\n").split("\t") for line in lines]
    assert all(len(row) == 11 for row in fields)
    kinds = Counter(row[5] for row in fields)
    assert kinds.most_common(1)[0][0] in {"tool_call", "tool_result"}
    assert all(row[8] != "\\N" for row in fields if row[5] == "error")
    assert lines == list(datagen.event_lines(datagen.plan(5000, seed=1), seed=1))


def test_read_bench_runs(pg_server: ServerInfo, tmp_path: Path) -> None:
    bench_module("datagen")
    bench_module("_svg")
    bench_module("_server")
    read_bench = bench_module("read_bench")
    out = tmp_path / "read-path.md"
    svg = tmp_path / "charts" / "read-path.svg"
    page = read_bench.run(
        pg_server.sqlalchemy_url("postgres"),
        [3000, 6000],
        iterations=3,
        insert_rows=20,
        purge_rows=40,
        out=out,
        command="smoke",
        svg=svg,
        log=lambda _: None,
    )
    assert out.read_text() == page
    assert "(charts/read-path.svg)" in page  # the chart, linked relative to the page
    bars = [
        element.get("data-series")
        for element in ElementTree.parse(svg).getroot().iter("{http://www.w3.org/2000/svg}rect")
        if element.get("class") == "bar"
    ]
    assert Counter(bars) == {"3,000 rows": len(bars) // 2, "6,000 rows": len(bars) // 2}
    assert "| session timeline, newest 50 |" in page
    for heading in ("Reader calls", "raw SQL vs the reader", "Deleting a parent", "Insert"):
        assert heading in page
    for row in (
        "| session timeline, newest 50 |",
        "| session timeline, newest 50: sessions read once each (first touch) |",
        "| heavy users: error_code = E014 (rarest), no range |",
        f"| {read_bench.RAW_NAME} |",
        f"| {read_bench.TARGET_NAME} |",
        "| whole table: oldest 40 events in batches of 5,000, p50 / max of 3 runs |",
        "| one user's events (~1,000, one batch), p50 / p99 of 10 users |",
        "| whole table: run right after, nothing left to delete |",
        "| + agent_id_created_at |",
    ):
        assert row in page, row
    assert "warm cache" in page.lower()


def test_raw_and_reader_run_the_same_sql() -> None:
    """The raw path of the benchmark sends the reader's SQL text, LIMIT bound alike."""
    import uuid

    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    from eventlog_persist._read_sql import event_table, timeline_query

    datagen = bench_module("datagen")
    query = timeline_query(
        event_table(datagen.EventLog), column="session_id", key=uuid.uuid4(), user_id=uuid.uuid4()
    ).query
    sql, params = query.driver_sql(PGDialect_psycopg()) or ("", {})
    assert "LIMIT %(limit)s" in sql
    assert params["limit"] == 51
