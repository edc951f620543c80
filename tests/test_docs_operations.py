"""docs/operations.md names the tests behind each row: every one must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).parent
PAGE = TESTS.parent / "docs" / "operations.md"


def test_every_test_the_page_names_exists() -> None:
    named: list[tuple[str, str]] = []
    for cell in re.findall(r"\| ([^|]*::[^|]*) \|", PAGE.read_text()):
        module = ""
        for ref in re.findall(r"`([^`]+)`", cell):
            if ref.startswith("::"):
                named.append((module, ref[2:]))
            else:
                module, _, name = ref.partition("::")
                named.append((module, name))
    assert len(named) > 20
    missing = []
    for module, name in named:
        tree = ast.parse((TESTS / module).read_text())
        functions = {
            node.name
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        }
        if name not in functions:
            missing.append(f"{module}::{name}")
    assert missing == []
