"""Testing-plugin benchmark: what a host test pays for a fresh migrated database.

Usage: python benchmarks/testing_bench.py [--dsn DSN] [--tests 30] [--baseline-tests 8]
       [--svg docs/benchmarks/testing.svg]
       [--rounds 2]

Each round runs two pytest processes on a copy of examples/host_app, interleaved:

* clone: ``--tests`` tests, each taking ``eventlog_engine`` (a fresh clone of the template
  that the plugin migrated once) and inserting a row;
* baseline: ``--baseline-tests`` tests doing the same on a database made per test with
  ``CREATE DATABASE`` and the host's own ``alembic upgrade heads`` (what a host writes
  without the plugin).

Per test is the wall time pytest reports for setup + call + teardown, the first test of
each process left out (it starts the server and migrates the template: printed apart).
Without --dsn the plugin's embedded PostgreSQL is used (fsync, synchronous_commit and
full_page_writes off); with --dsn, that server as it is configured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _svg

ROOT = Path(__file__).resolve().parent.parent

_CLONE = """
import uuid
from sqlalchemy.orm import Session
from app.models import User


def _one(eventlog_engine):
    with Session(eventlog_engine) as session:
        session.add(User(id=uuid.uuid4(), name="x"))
        session.commit()
"""

_BASELINE = """
import uuid

import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import create_engine, pool
from sqlalchemy.orm import Session

from app.models import User


@pytest.fixture
def migrated_engine(eventlog_postgresql):
    name = "bench_" + uuid.uuid4().hex[:12]
    with eventlog_postgresql.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = create_engine(eventlog_postgresql.url(name))
    config = Config("alembic.ini")
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "heads")
        connection.commit()
    yield engine
    engine.dispose()
    with eventlog_postgresql.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def _one(migrated_engine):
    with Session(migrated_engine) as session:
        session.add(User(id=uuid.uuid4(), name="x"))
        session.commit()
"""

_TIMER = """
import json, os

_durations = {}


def pytest_runtest_logreport(report):
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    with open(os.environ["BENCH_OUT"], "w") as out:
        json.dump(list(_durations.values()), out)
"""


def _project(parent: Path, body: str, tests: int) -> Path:
    root = parent / "host"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(
        ROOT / "examples" / "host_app",
        root,
        ignore=shutil.ignore_patterns("__pycache__", "tests"),
    )
    (root / "tests").mkdir()
    (root / "tests" / "conftest.py").write_text(
        'pytest_plugins = ["eventlog_persist.testing", "bench_timer"]\n'
    )
    (root / "bench_timer.py").write_text(_TIMER)
    calls = "".join(
        f"\n\ndef test_{i}({_fixture(body)}):\n    _one({_fixture(body)})\n" for i in range(tests)
    )
    (root / "tests" / "test_bench.py").write_text(body + calls)
    return root


def _fixture(body: str) -> str:
    return "eventlog_engine" if body is _CLONE else "migrated_engine"


def _run(parent: Path, body: str, tests: int, dsn: str | None) -> list[float]:
    root = _project(parent, body, tests)
    out = parent / "durations.json"
    env = {
        **os.environ,
        "BENCH_OUT": str(out),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
    }
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    if dsn:
        args += ["--eventlog-dsn", dsn]
    subprocess.run(args, cwd=root, env=env, check=True, capture_output=True, text=True)
    return [seconds * 1000 for seconds in json.loads(out.read_text())]


def _conditions(dsn: str | None) -> str:
    import psycopg

    from eventlog_persist.testing import PostgresServer  # noqa: F401  (installed check)

    text = "embedded PostgreSQL (fsync, synchronous_commit, full_page_writes off)"
    if dsn:
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        text = (
            f"PostgreSQL {version[0] if version else '?'} of --dsn "
            f"(fsync={fsync[0] if fsync else '?'})"
        )
    load = os.getloadavg()[0]
    return f"{text}; {os.cpu_count()} CPUs, load average {load:.1f} at start"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="server for the test databases (default: embedded)")
    parser.add_argument("--tests", type=int, default=30)
    parser.add_argument("--baseline-tests", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--svg", type=Path, help="also draw the per-test medians as SVG here")
    options = parser.parse_args()
    conditions = _conditions(options.dsn)
    print(conditions)
    clone: list[float] = []
    baseline: list[float] = []
    firsts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="eventlog-testing-bench-") as folder:
        parent = Path(folder)
        for _ in range(options.rounds):
            times = _run(parent, _CLONE, options.tests, options.dsn)
            firsts.append(times[0])
            clone += times[1:]
            baseline += _run(parent, _BASELINE, options.baseline_tests, options.dsn)[1:]
    clone_ms, base_ms = statistics.median(clone), statistics.median(baseline)
    print(
        f"first test of a session (server start + template migration): "
        f"{statistics.median(firsts):.0f} ms"
    )
    print(
        f"per test, fresh migrated database (clone of the template): median {clone_ms:.1f} ms, "
        f"mean {statistics.mean(clone):.1f} ms, max {max(clone):.1f} ms ({len(clone)} tests)"
    )
    print(
        f"per test, baseline (CREATE DATABASE + alembic upgrade heads): median {base_ms:.1f} "
        f"ms, mean {statistics.mean(baseline):.1f} ms ({len(baseline)} tests)"
    )
    print(
        f"ratio: the clone costs {clone_ms / base_ms:.3f}x the baseline "
        f"({base_ms / clone_ms:.1f} times faster)"
    )
    if options.svg:
        chart = _svg.bar_chart(
            "Per test: a fresh migrated database (median ms, setup + call + teardown)",
            [
                ("clone of the migrated template (the plugin)", {"median": clone_ms}),
                ("CREATE DATABASE + alembic upgrade heads", {"median": base_ms}),
            ],
            subtitle=conditions,
            unit=" ms",
            reference=100.0,
            reference_label="target 100 ms",
            label=lambda value: f"{value:,.1f}",
        )
        print(f"chart written to {_svg.write(options.svg, chart)}")


if __name__ == "__main__":
    main()
