"""The example FastAPI application's own test suite, as its developers run it, in a subprocess.

It runs on a copy (nothing is written into the checkout), on this suite's server, with
pytest-alembic's built-in tests, so its migrations are checked against its models too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pgserver import ServerInfo

import eventlog_persist

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_app"
PAGE = Path(__file__).resolve().parent.parent / "docs" / "integrations.md"


def test_the_page_shows_only_code_the_example_runs() -> None:
    source = {
        line.strip() for path in EXAMPLE.rglob("*.py") for line in path.read_text().splitlines()
    }
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
    assert len(blocks) >= 5
    for block in blocks:
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        missing = [line for line in lines if line not in source]
        assert missing == [], "docs/integrations.md shows code that the example does not run"


@pytest.mark.timeout(300)
def test_example_fastapi_app_suite(tmp_path: Path, pg_server: ServerInfo) -> None:
    project = tmp_path / "fastapi_app"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    source = str(Path(eventlog_persist.__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")])),
        "PYTHONWARNINGS": "error::DeprecationWarning,ignore::UserWarning:platformdirs.api",
    }
    env.pop("EVENTLOG_TEST_DSN", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--test-alembic",
            "--eventlog-dsn",
            pg_server.libpq_dsn("postgres"),
            "-v",
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (
        "test_concurrent_requests_keep_their_own_ids",
        "test_the_shutdown_writes_what_is_queued",
        "pytest-alembic::test_model_definitions_match_ddl",
    ):
        assert f"{name} PASSED" in result.stdout
    assert "16 passed" in result.stdout
