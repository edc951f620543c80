"""The decoder for JSON nested past Python's recursion limit gives what ``json.loads`` gives.

The readers and the audit's leaf fall back to it for a payload that another tool stored
deeper than msgspec and ``json.loads`` can read; it must give the same values for every
document, and refuse what ``json.loads`` refuses.
"""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog_persist._json_deep import loads

VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)


def same(one: Any, other: Any) -> bool:
    """Equal, NaN equal to NaN, and of the same types all the way down."""
    if isinstance(one, dict):
        return (
            type(other) is dict
            and list(one) == list(other)
            and all(same(one[key], other[key]) for key in one)
        )
    if isinstance(one, list):
        return (
            type(other) is list
            and len(one) == len(other)
            and all(same(a, b) for a, b in zip(one, other, strict=True))
        )
    if isinstance(one, float) and one != one:
        return isinstance(other, float) and other != other
    return type(one) is type(other) and one == other


@settings(max_examples=500, deadline=None)
@given(
    VALUES,
    st.sampled_from([None, 0, 2, "\t"]),
    st.booleans(),
    st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : ")]),
)
def test_every_document_reads_as_json_loads_reads_it(
    value: Any, indent: Any, ascii_only: bool, separators: tuple[str, str]
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only, separators=separators)
    assert same(loads(text), json.loads(text))
    exact = loads(text, parse_float=Decimal, parse_int=Decimal)
    assert repr(exact) == repr(json.loads(text, parse_float=Decimal, parse_int=Decimal))


@pytest.mark.parametrize(
    "text",
    [
        ' \n\t[1 , {"a" :\r\n2} ] ',
        '{"a": 1, "a": 2, "b": 3}',  # a key twice: the last value, at the first place
        "-0",
        "-0.0",
        "1E+2",
        "1e-2",
        "123456789012345678901234567890",
        "1e400",
        "[NaN, Infinity, -Infinity]",
        '"\\ud83d\\ude00 \\u00e9 \\"\\\\\\/\\b\\f\\n\\r\\t"',
        '"\\ud800"',  # a lone surrogate: json.loads keeps it
        "[]",
        "{}",
        "[[[]], {}]",
        "true",
        "null",
    ],
)
def test_documents_at_the_edges_read_as_json_loads_reads_them(text: str) -> None:
    assert same(loads(text), json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "[",
        "]",
        "{",
        "[1,]",
        "[,1]",
        "[1 2]",
        '{"a" 1}',
        '{"a":1,}',
        '{"a":}',
        "{1: 2}",
        "{'a': 1}",
        "[1] x",
        "01",
        "1.",
        ".5",
        "+1",
        "tru",
        "nul",
        "NaNx",
        '"\x01"',  # a control character inside a string
        '"abc',
        '"\\x"',
        "[1]]",
        "{}}",
        "[1}",  # brackets that do not pair
        '{"a": 1]',
        '{"a"x1}',  # a key without its colon
        '{"a" , 1}',
    ],
)
def test_what_json_loads_refuses_is_refused(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(ValueError, match=r"^(JSON: |Unterminated |Invalid )"):
        loads(text)


def test_any_depth_is_read() -> None:
    depth = sys.getrecursionlimit() * 20
    with pytest.raises(RecursionError):
        json.loads("[" * depth + "]" * depth)
    value = loads('{"a": [' * depth + '"end"' + "]}" * depth)
    for _ in range(depth):
        value = value["a"][0]
    assert value == "end"
