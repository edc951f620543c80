"""The audit benchmark still runs, in its quick form (a smoke run: its figures are not checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgserver import ServerInfo
from test_explain import bench_module


@pytest.mark.timeout(600)
def test_audit_bench_runs_every_write_path_and_both_erasures(
    pg_server: ServerInfo, tmp_path: Path
) -> None:
    bench_module("datagen")
    bench_module("_server")
    audit_bench = bench_module("audit_bench")
    options = audit_bench.Options.quick()
    report = audit_bench.run(pg_server.libpq_dsn("postgres"), tmp_path, options, log=lambda _: None)
    labels = [spec.label for spec in audit_bench.write_paths()]
    # Every path a host writes with, alone and on threads, on one session and on many.
    for path in ("`record`", "`record_detached`", "`write_events`", "`BufferedWriter", "INSERT"):
        assert sum(label.startswith(path) or path in label for label in labels) == 3
    assert sum("threads, one session" in label for label in labels) == 5
    for label in [*labels, audit_bench.SET_NULL, audit_bench.CASCADE]:
        assert f"| {label} |" in report.text
        for name in (audit_bench.FEED, audit_bench.AUDIT):
            assert len(report.rates[label][name]) == options.rounds
    assert "PostgreSQL" in report.conditions
