"""The feed benchmark still runs, in its quick form (a smoke run: its figures are not checked)."""

from __future__ import annotations

import pytest
from pgserver import ServerInfo
from test_explain import bench_module


@pytest.mark.timeout(300)
def test_feed_bench_runs_and_accounts_for_every_event(pg_server: ServerInfo) -> None:
    bench_module("datagen")
    bench_module("_svg")
    bench_module("_server")
    feed_bench = bench_module("feed_bench")
    options = feed_bench.Options.quick()
    report = feed_bench.run(
        pg_server.libpq_dsn("postgres"), options, local_server=False, log=lambda _: None
    )
    for spec in feed_bench.write_paths():
        assert f"| {spec.label} |" in report.text
        assert len(report.writes.rates[spec.label]["feed"]) == options.rounds
    for (_, limit), runs in report.drain.runs.items():
        assert limit in options.drain_limits
        assert [run.events for run in runs] == [options.backlog] * options.drain_rounds
    # Both modes deliver every event of the run once, the long transaction's included.
    for mode in ("snapshot", "horizon"):
        accounting = report.long.accounting[mode]
        assert (accounting.missed, accounting.duplicated, accounting.foreign) == (0, 0, 0)
        assert accounting.delivered == report.long.written + report.long.long_events
    for name in feed_bench.STRATEGIES:
        assert f"| {name} |" in report.text
        for run in report.latency.loaded[name]:
            assert (run.accounting.missed, run.accounting.duplicated) == (0, 0)
            assert len(run.latencies) == run.accounting.delivered > 0
    svg = feed_bench.chart(report, "smoke")
    assert svg.count('class="bar"') == len(report.headline)
