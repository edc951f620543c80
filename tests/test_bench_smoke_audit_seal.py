"""The audit seal benchmark still runs, in its quick form (a smoke run: its figures are not
checked)."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
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


def test_the_benchmark_waits_for_transactions_older_than_its_events(
    pg_server: ServerInfo,
) -> None:
    """A transaction that began before the events holds the seal's horizon back: the
    benchmark waits for it (untimed) instead of sealing part of the events."""
    bench_module("datagen")
    bench_module("_server")
    bench = bench_module("audit_seal_bench")
    name = f"seal_wait_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.libpq_dsn("postgres"), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    dsn = pg_server.libpq_dsn(name)
    try:
        with psycopg.connect(dsn) as older, psycopg.connect(dsn, autocommit=True) as conn:
            older.execute("SELECT pg_current_xact_id()")  # a transaction id, left running
            conn.execute("CREATE TABLE event_logs (xid xid8)")
            conn.execute("INSERT INTO event_logs VALUES (pg_current_xact_id())")
            with pytest.raises(RuntimeError, match="older than the events still runs"):
                bench.wait_until_settled(dsn, timeout=0.3)
            older.rollback()
            bench.wait_until_settled(dsn, timeout=60)
    finally:
        with psycopg.connect(pg_server.libpq_dsn("postgres"), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
