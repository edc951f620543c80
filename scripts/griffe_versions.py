"""Griffe extension for the docs site: reST version notes in docstrings become Markdown.

The docstrings mark additions and changes as reST directives (``.. versionadded:: 0.3.0``,
``.. versionchanged::``, ``.. deprecated::``), which Google-style parsing leaves as plain
text. This rewrites each one, with its indented continuation lines, into one emphasised
line (``*Added in version 0.3.0:* ...``) at the directive's own indentation, so a note
inside an argument's description stays part of that description. Loaded by ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_LABELS = {
    "versionadded": "Added in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}
_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. (?P<kind>versionadded|versionchanged|deprecated):: *"
    r"(?P<version>\S+) *(?P<text>.*)$"
)


def rewrite(docstring: str) -> str:
    """Return ``docstring`` with every version directive turned into a Markdown line."""
    lines = docstring.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        match = _DIRECTIVE.match(lines[index])
        index += 1
        if match is None:
            out.append(lines[index - 1])
            continue
        indent = match["indent"]
        words = [match["text"].strip()]
        # Continuation: the following lines indented deeper than the directive.
        while (
            index < len(lines)
            and lines[index].strip()
            and len(lines[index]) - len(lines[index].lstrip()) > len(indent)
        ):
            words.append(lines[index].strip())
            index += 1
        text = " ".join(word for word in words if word)
        label = f"*{_LABELS[match['kind']]} {match['version']}{':' if text else '.'}*"
        out.append(f"{indent}{label} {text}".rstrip())
    return "\n".join(out)


class VersionNotes(Extension):
    """Rewrite the version directives of every object's docstring before it is parsed."""

    def on_instance(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ".. " in obj.docstring.value:
            obj.docstring.value = rewrite(obj.docstring.value)
