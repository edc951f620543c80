"""The examples of docs/writing.md run against a real database."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

DOCS = Path(__file__).parent.parent / "docs"


def load(name: str) -> object:
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", DOCS / "examples" / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # SQLAlchemy resolves the models' string annotations through sys.modules.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_the_page_shows_every_example() -> None:
    page = (DOCS / "writing.md").read_text()
    for example in sorted((DOCS / "examples").glob("writing_*.py")):
        assert f"examples/{example.name}" in page
    # Every line of every fenced block is taken from an example, so it cannot go stale.
    source = {
        line.strip()
        for example in (DOCS / "examples").glob("writing_*.py")
        for line in example.read_text().splitlines()
    }
    for block in re.findall(r"```python\n(.*?)```", page, flags=re.S):
        lines = [line.strip() for line in block.splitlines() if line.strip() not in ("", "...")]
        missing = [line for line in lines if line not in source]
        assert missing == [], "docs/writing.md shows code that no example runs"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("writing_script.py", 1502),
        ("writing_lifespan.py", 40),
        ("writing_checks.py", 2),
        ("writing_spool.py", 200),
        ("writing_metrics.py", 200),
        ("writing_context.py", 2),
        ("writing_genai.py", 5),
    ],
)
def test_example_runs(
    database_url: URL, name: str, expected: int, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load(name)
    total = module.main(database_url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    assert total == expected
    assert f"events stored: {expected}" in capsys.readouterr().out


def test_the_checks_example_refuses_in_the_caller(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load("writing_checks.py")
    module.main(database_url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "refused: tool_name 'search\\udc80' contains a lone surrogate (U+DC80) at index 6" in out
    assert "refused: created_at " in out
    assert "EventFieldRules(max_future=0:05:00)" in out
    assert "imported: 2" in out
    assert "chat sessions stored: 2" in out  # the host's own change committed


def test_the_metrics_example_reports_the_writer(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load("writing_metrics.py")
    module.main(database_url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "written: 200 queued: 0" in out
    assert "oldest queued age: None last error: None" in out
    assert 'eventlog_writer_events_written_total{writer="api"} 200.0' in out
    assert "OpenTelemetry instruments: 19" in out  # the last error has no point yet


def test_the_genai_example_reads_back_its_token_usage(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load("writing_genai.py")
    module.main(database_url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "reviewer on claude-sonnet-4: 9000 input + 1200 output tokens, events: 3",
        "planner on gpt-4o-2024-08-06: 1200 input + 85 output tokens, events: 1",
        "tokens in all: 11485",
        "events stored: 5",
    ]


def test_the_lifespan_example_gives_each_request_its_id(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load("writing_lifespan.py")
    module.main(database_url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "request ids: 20" in out  # each request's two events share one id
    assert "event writer closed: WriterCounters(" in out
