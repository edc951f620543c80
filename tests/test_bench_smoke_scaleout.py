"""The scale-out benchmark still runs, at a tiny size (it is not a test)."""

from __future__ import annotations

import re
import sys

import psycopg
import pytest
from pgserver import ServerInfo
from test_explain import bench_module


@pytest.mark.parametrize(("interval", "kind"), [("week", "weekly"), ("month", "monthly")])
def test_scaleout_bench_runs(
    pg_server: ServerInfo,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interval: str,
    kind: str,
) -> None:
    for helper in ("datagen", "_svg", "_server"):
        bench_module(helper)
    scaleout = bench_module("scaleout_bench")
    url = psycopg.conninfo.make_conninfo(**pg_server.connect_kwargs("postgres"))
    arguments = (
        f"--rows 30000 --rounds 2 --reads 3 --copy-rows 200 --deletes 1 --no-convert "
        f"--interval {interval}"
    )
    monkeypatch.setattr(sys, "argv", ["scaleout_bench.py", "--url", url, *arguments.split()])
    scaleout.main()
    out = capsys.readouterr().out
    assert "| latest 50, session, since: p50 / p95 ms |" in out
    assert f"| retention of the oldest {interval}, WAL MB |" in out
    conditions = out.split("sessions read: ")[1]
    assert f" {kind} partitions (" in out
    spans = re.search(r"a read with `since` spanning (\d+) partitions \[(\d+)-(\d+)\]", conditions)
    assert spans is not None
    low, high = int(spans[2]), int(spans[3])
    assert 5 <= low <= int(spans[1]) <= high  # at least the newest period and 4 ahead
    plans = out.split("Generic plans of the reader's statements with `since`, round by round:")[1]
    lines = [line for line in plans.splitlines() if line.startswith("- ")]
    assert [line.split(":")[0] for line in lines] == [
        "- session, since, plain",
        "- session, since, partitioned",
        "- user, since, plain",
        "- user, since, partitioned",
    ]
    for line in lines:
        if pg_server.version < 16:
            assert line.endswith("1: not known before PostgreSQL 16, 2: same")
        else:  # the chain of nodes down to the first scan; the partitioned one over an Append
            assert line.split(": 1: ")[1].split(", 2: ")[0].endswith("Scan")
            assert ("> Append >" in line) == line.split(":")[0].endswith("partitioned")
    with psycopg.connect(url) as admin:  # the benchmark drops its databases
        left = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'evl_scaleout_%'"
        ).fetchone()
    assert left == (0,)
