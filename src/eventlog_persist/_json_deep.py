"""JSON text to Python values without recursion, for documents nested past the stack.

PostgreSQL stores ``jsonb`` nested thousands of levels deep; the writers refuse more than
`MAX_DEPTH_LIMIT` levels, but another tool may store such a document. ``json.loads`` and
msgspec recurse once per level and raise `RecursionError` near Python's recursion limit;
`loads` keeps its own stack and gives the values ``json.loads`` would, at any depth.
"""

from __future__ import annotations

import json.decoder
import re
from collections.abc import Callable
from typing import Any, Final

__all__ = ["loads"]

# The json module's own string scanner (C): escapes and strictness exactly as json.loads.
scanstring: Final[Callable[[str, int], tuple[str, int]]] = json.decoder.scanstring  # type: ignore[attr-defined]
_SPACE: Final = re.compile(r"[ \t\n\r]*")
_NUMBER: Final = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS: Final = {"true": True, "false": False, "null": None}
_CONSTANTS: Final = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def loads(
    text: str,
    *,
    parse_float: Callable[[str], Any] = float,
    parse_int: Callable[[str], Any] = int,
) -> Any:
    """The value of JSON ``text``, as ``json.loads(text, parse_float=..., parse_int=...)``.

    Raises:
        ValueError: ``text`` is not one JSON document.
    """
    # Each open container: the dict or list, and for a dict the key its next value takes.
    stack: list[tuple[Any, str | None]] = []
    position = _SPACE.match(text, 0).end()  # type: ignore[union-attr]
    result: Any = None
    while True:
        # A value starts at `position`.
        char = text[position : position + 1]
        if char == "{" or char == "[":
            container: Any = {} if char == "{" else []
            position = _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]
            closing = "}" if char == "{" else "]"
            if text[position : position + 1] == closing:
                value = container
                position += 1
            else:
                key = None
                if char == "{":
                    key, position = _key(text, position)
                stack.append((container, key))
                continue
        elif char == '"':
            value, position = scanstring(text, position + 1)
        else:
            value, position = _scalar(text, position, parse_float, parse_int)
        # A value ended: put it in its container, and close every container it completes.
        while True:
            if not stack:
                result = value
                break
            container, key = stack[-1]
            if key is None:
                container.append(value)
            else:
                container[key] = value
            position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
            char = text[position : position + 1]
            if char == ",":
                position = _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]
                if key is not None:
                    key, position = _key(text, position)
                    stack[-1] = (container, key)
                break
            if char != ("]" if key is None else "}"):
                raise ValueError(f"JSON: expected ',' or a closing bracket at {position}")
            stack.pop()
            value = container
            position += 1
        if not stack:
            break
    position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
    if position != len(text):
        raise ValueError(f"JSON: extra data at {position}")
    return result


def _key(text: str, position: int) -> tuple[str, int]:
    """An object's key and its colon; the position of the value after them."""
    if text[position : position + 1] != '"':
        raise ValueError(f"JSON: expected a key in double quotes at {position}")
    key, position = scanstring(text, position + 1)
    position = _SPACE.match(text, position).end()  # type: ignore[union-attr]
    if text[position : position + 1] != ":":
        raise ValueError(f"JSON: expected ':' at {position}")
    return key, _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]


def _scalar(
    text: str, position: int, parse_float: Callable[[str], Any], parse_int: Callable[[str], Any]
) -> tuple[Any, int]:
    number = _NUMBER.match(text, position)
    if number:
        token = number[0]
        value = parse_int(token) if number[1] is None and number[2] is None else parse_float(token)
        return value, number.end()
    for table in (_LITERALS, _CONSTANTS):
        for word, value in table.items():
            if text.startswith(word, position):
                return value, position + len(word)
    raise ValueError(f"JSON: expected a value at {position}")
