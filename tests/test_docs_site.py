"""The documentation site covers the whole public API, and renders its version notes.

The site itself is built by CI (`.ci/run`: `mkdocs build --strict`, which fails on a broken
link, anchor or reference, a page missing from the nav, or a docstring griffe cannot
parse); it is not rebuilt here, so the suite needs no docs tools and does not build the site
once per Python. These tests check what the strict build cannot see: a public name left out
of the API reference, a reference page or name missing from the reference's index table, and
the conversion of the reST version notes.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import eventlog_persist
from eventlog_persist import exceptions

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"


def documented() -> list[str]:
    """Every ``::: eventlog_persist.NAME`` directive of the API reference, in page order."""
    return [
        name
        for page in sorted(REFERENCE.glob("*.md"))
        for name in re.findall(r"^::: eventlog_persist\.(\S+)$", page.read_text(), flags=re.M)
    ]


def test_every_public_name_has_one_entry_in_the_api_reference() -> None:
    names = documented()
    assert len(names) == len(set(names)), "a name is documented twice"
    covered = set(names)
    if "exceptions" in covered:  # the module page documents every name of its __all__
        covered |= set(exceptions.__all__)
    missing = sorted(set(eventlog_persist.__all__) - covered)
    assert not missing, f"add these to a page of docs/reference/: {missing}"
    public_modules = {
        "exceptions",
        "fastapi",
        "metrics",
        "testing",
    }  # their pages document their __all__
    extra = sorted(set(names) - set(eventlog_persist.__all__) - public_modules)
    assert not extra, f"not public (not in eventlog_persist.__all__): {extra}"


def test_every_reference_page_is_in_the_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in REFERENCE.glob("*.md"):
        assert f"reference/{page.name}" in nav, page.name


def reference_index_rows() -> dict[str, str]:
    """The rows of the table in docs/reference/index.md: linked page name -> the names cell."""
    rows = {}
    for line in (REFERENCE / "index.md").read_text().splitlines():
        match = re.fullmatch(r"\| \[[^\]]+\]\(([^)#]+\.md)\) \| (.+) \|", line)
        if match:
            rows[match[1]] = match[2]
    return rows


def test_every_reference_page_has_a_row_in_the_reference_index() -> None:
    rows = reference_index_rows()
    pages = sorted(page.name for page in REFERENCE.glob("*.md") if page.name != "index.md")
    missing = [page for page in pages if page not in rows]
    assert not missing, f"link these from docs/reference/index.md: {missing}"


def test_the_reference_index_lists_the_names_each_page_documents() -> None:
    rows = reference_index_rows()
    for page in sorted(REFERENCE.glob("*.md")):
        if page.name == "index.md" or page.name not in rows:
            continue
        names = re.findall(r"^::: eventlog_persist\.(\S+)$", page.read_text(), flags=re.M)
        cell = rows[page.name]
        missing = [
            name
            for name in names
            if f"`{name}`" not in cell and f"`eventlog_persist.{name}`" not in cell
        ]
        assert not missing, f"add to the {page.name} row of docs/reference/index.md: {missing}"


def test_version_notes_become_markdown() -> None:
    pytest.importorskip("griffe", reason="griffe comes with the docs extra: pip install '.[docs]'")
    spec = importlib.util.spec_from_file_location(
        "griffe_versions", ROOT / "scripts" / "griffe_versions.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docstring = """Summary.

Args:
    detectors: Which detectors run.

        .. versionadded:: 0.3.0
    other: Unchanged.

.. versionchanged:: 0.3.0
   ``offset``; narrowing by
   ``agent_id``.

.. deprecated:: 0.4.0 Use ``x``.
"""
    assert (
        module.rewrite(docstring)
        == """Summary.

Args:
    detectors: Which detectors run.

        *Added in version 0.3.0.*
    other: Unchanged.

*Changed in version 0.3.0:* ``offset``; narrowing by ``agent_id``.

*Deprecated since version 0.4.0:* Use ``x``."""
    )


def test_the_reference_shows_the_constructor_msgspec_makes_for_new_event() -> None:
    griffe = pytest.importorskip("griffe", reason="griffe comes with the docs extra")
    extension = griffe.load_extensions(f"{ROOT / 'scripts' / 'griffe_structs.py'}:StructSignatures")
    package = griffe.load("eventlog_persist", search_paths=[ROOT / "src"], extensions=extension)
    shown = [
        (parameter.name, parameter.kind.value, parameter.default)
        for parameter in package["NewEvent"]["__init__"].parameters
        if parameter.name != "self"
    ]
    runtime = [
        (
            parameter.name,
            parameter.kind.description,
            None if parameter.default is parameter.empty else repr(parameter.default),
        )
        for parameter in inspect.signature(eventlog_persist.NewEvent).parameters.values()
    ]
    assert [(name, kind, default and str(default)) for name, kind, default in shown] == runtime
