"""The audit seal benchmark still runs, in its quick form (a smoke run: its figures are not
checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgserver import ServerInfo
from test_explain import bench_module


@pytest.mark.timeout(300)
def test_audit_seal_bench_runs(pg_server: ServerInfo, tmp_path: Path) -> None:
    bench_module("datagen")
    bench_module("_server")
    bench = bench_module("audit_seal_bench")
    options = bench.Options.quick()
    report = bench.run(pg_server.libpq_dsn("postgres"), options, tmp_path, log=lambda _: None)
    for path in bench.PATHS:
        assert f"| {path} |" in report.text
        assert len(report.rates[path]) == options.rounds
