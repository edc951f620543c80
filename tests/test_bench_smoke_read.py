"""The read benchmark and its data generator still run, at a tiny size (they are not tests)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

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
    read_bench = bench_module("read_bench")
    out = tmp_path / "read-path.md"
    page = read_bench.run(
        pg_server.sqlalchemy_url("postgres"),
        [300, 600],
        iterations=3,
        insert_rows=20,
        out=out,
        command="smoke",
        log=lambda _: None,
    )
    assert out.read_text() == page
    for heading in ("Reader calls", "raw SQL vs the reader", "Deleting a parent", "Insert"):
        assert heading in page
    assert "| session timeline, newest 50 |" in page
    assert "| + agent_id_created_at |" in page
