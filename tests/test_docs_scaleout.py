"""docs/scale-out.md: its maintenance example runs, and the page shows it as it is."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import URL
from test_write_docs import DOCS, load

EXAMPLE = "scaleout_maintenance.py"


def test_the_page_shows_the_maintenance_example_as_it_is() -> None:
    page = (DOCS / "scale-out.md").read_text()
    assert f"examples/{EXAMPLE}" in page
    source = {line.strip() for line in (DOCS / "examples" / EXAMPLE).read_text().splitlines()}
    blocks = [
        b for b in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "def maintain" in b
    ]
    assert len(blocks) == 1
    lines = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert [line for line in lines if line not in source] == []


def test_the_maintenance_example_drops_the_old_week_and_creates_ahead(
    database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load(EXAMPLE)
    partitions = module.main(database_url.render_as_string(hide_password=False))  # type: ignore[attr-defined]
    # The half-year-old partition is gone with its 100 events; this week and 4 ahead remain.
    assert partitions == 5
    out = capsys.readouterr().out
    assert "partitions: 5" in out
    assert "events left: 0" in out
