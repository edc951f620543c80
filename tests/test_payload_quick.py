"""The quick path of prepare_payload gives exactly what the careful pass gives, or steps aside.

Every secret here is fake and put together at run time, as in test_redaction.py.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog_persist import (
    NewEvent,
    PayloadPolicy,
    PreparedPayload,
    new_event,
    prepare_payload,
)
from eventlog_persist._events import build_event
from eventlog_persist._payload import (
    DEFAULT_POLICY,
    DEFAULT_REDACT_KEYS,
    _encode,
    _prepare_carefully,
    payload_text,
)
from eventlog_persist.exceptions import PayloadError

POLICIES = {
    "default": DEFAULT_POLICY,
    "shallow, small cap": PayloadPolicy(max_depth=3, max_bytes=300, oversize="truncate"),
    "errors": PayloadPolicy(nul="error", surrogates="error", non_finite="error"),
    "no detectors": PayloadPolicy(detectors=frozenset()),
    "no key names": PayloadPolicy(redact_keys=frozenset()),
    "names only": PayloadPolicy(detectors=frozenset({"header_pair"})),
    "odd names": PayloadPolicy(redact_keys=DEFAULT_REDACT_KEYS | {"straße", "Kelvin-K", "pin"}),
    "no record": PayloadPolicy(redaction_record_key=None),
}


def _careful(value: object, policy: PayloadPolicy) -> PreparedPayload | str:
    """The careful pass's result, or its error as text."""
    try:
        return _prepare_carefully(value, policy)
    except PayloadError as error:
        return f"PayloadError: {error} at {error.path!r}"


def check_same(value: object, policy: PayloadPolicy) -> PreparedPayload | None:
    """Assert that the quick path, when it answers, answers as the careful pass does."""
    careful = _careful(value, policy)
    quick = policy._quick
    assert quick is not None
    fast = quick.prepare(value)
    if fast is not None:
        assert isinstance(careful, PreparedPayload), careful
        assert fast.json_text == careful.json_text
        assert fast.size_bytes == careful.size_bytes == len(fast.json_text.encode())
        assert fast.redacted_paths == careful.redacted_paths == ()
        assert fast.replaced_paths == careful.replaced_paths == ()
        assert fast.truncated is careful.truncated is False
        assert json.dumps(fast.value) == json.dumps(careful.value)  # 1 and 1.0 differ here
    # prepare_payload itself, whichever path it takes, agrees with the careful pass.
    try:
        result: PreparedPayload | str = prepare_payload(value, policy=policy)
    except PayloadError as error:
        result = f"PayloadError: {error} at {error.path!r}"
    assert result == careful
    # The text-only quick path (events keep no copy of the value) takes the same decisions.
    text_only = quick.text(value)
    assert (text_only is None) == (fast is None)
    if fast is not None and text_only is not None:
        assert text_only == (fast.json_text, fast.json_text.encode())
    try:
        parts: tuple[str, tuple[str, ...]] | str = payload_text(value, policy)
    except PayloadError as error:
        parts = f"PayloadError: {error} at {error.path!r}"
    if isinstance(careful, PreparedPayload):
        assert parts == (careful.json_text, careful.redacted_paths)
    else:
        assert parts == careful
    return fast


def secret_shapes() -> list[str]:
    """One fake secret of each shape the detectors know."""
    return [
        "sk-" + "a1" * 20,
        "sk-proj-" + "x" * 24,
        "AKIA" + "ABCDEFGH12345678",
        "ghp_" + "a" * 36,
        "github_pat_" + "b" * 30,
        "glpat-" + "c" * 20,
        "xoxb-" + "1234567890-abc",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
        "Bearer " + "Ab3" * 6,
        "postgresql://app:" + "hunter2" + "@db/x",
    ]


# Key names: plain ones, and secret names spelled in other cases, with separators, as
# plurals, after other words, and with characters that case-fold to ASCII letters.
_NAME_PARTS = st.sampled_from(
    [
        "password",
        "Pass-Word",
        "API_KEY",
        "x api key",
        "token",
        "max_tokens",
        "tokens",
        "Secrets",
        "cookie",
        "SSN",
        "pin",
        "straße",
        "STRASSE",
        "kelvin-\u212a",
        "\u017fecret",  # long s: case-folds to "s"
        "_redacted",
        "role",
        "content",
        "name",
        "",
        "-",
        " ",
        "é",
    ]
)
_KEYS = st.one_of(
    st.builds(lambda a, b: a + b, _NAME_PARTS, _NAME_PARTS),
    st.text(max_size=6),
    st.integers(-3, 3),
    st.booleans(),
)
_ODD_TEXT = st.sampled_from(
    ["a\x00b", "\ud800", "x\udfffy", "\n" + "sk-" + "q" * 40, "line\nsk", "\\u0000", '"', "://"]
)
_STRINGS = st.one_of(
    st.text(max_size=12),
    _NAME_PARTS,
    _ODD_TEXT,
    st.sampled_from(secret_shapes()),
    st.builds(
        lambda text, secret: f"{text} {secret}.",
        st.text(max_size=5),
        st.sampled_from(secret_shapes()),
    ),
)
_NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([2**53, 2**53 + 1, 2**63, -(2**63) - 1, 2**64, 2**64 + 1, 10**30]),
    st.floats(),
    st.sampled_from([1e16, 1e15, -0.0, 5e-324, 1e-5, 1e-4, 1.5e300, 0.1]),
)
_LEAVES = st.one_of(st.none(), st.booleans(), _NUMBERS, _STRINGS)
_ADVERSARIAL = st.recursive(
    _LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(_STRINGS, children),  # header pairs
        st.builds(list, st.tuples(_NAME_PARTS, children)),
        st.dictionaries(_KEYS, children, max_size=4),
    ),
    max_leaves=30,
)


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
@settings(max_examples=300, deadline=None)
@given(_ADVERSARIAL)
def test_quick_path_matches_the_careful_pass(policy: PayloadPolicy, value: object) -> None:
    check_same(value, policy)


def nested(depth: int) -> object:
    value: object = "leaf"
    for level in range(depth):
        value = {"level": value} if level % 2 else [value]
    return value


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 63, 64, 65, 200])
@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_depth_near_the_limit(depth: int, policy: PayloadPolicy) -> None:
    check_same(nested(depth), policy)
    check_same({"wide": [nested(depth - 1)] * 70}, policy)


def test_cycles_go_the_careful_way() -> None:
    loop: list[object] = []
    loop.append(loop)
    assert check_same({"a": loop}, DEFAULT_POLICY) is None


class Role(enum.StrEnum):
    USER = "user"


class Hooked(str):
    def __json__(self) -> str:
        return "hooked"


@pytest.mark.parametrize(
    "value",
    [
        {"role": Role.USER},
        {"text": Hooked("plain")},
        {"items": {1, 2}},
        {"blob": b"abc"},
        {1: "int key"},
        {"n": float("nan")},
        {"n": float("inf")},
        {"big": 10**5000},
        {"_redacted": []},
        ["Authorization", "Bearer x"],
        ("Set-Cookie", {"a": 1}),
        {"headers": [["X-Api-Key", "k"]]},
        {"url": "redis://:pw@host"},
        "sk-" + "z" * 40,
        {"x": "\x00"},
        {"x": "\ud800"},
        {"x": "y" * 300_000},
    ],
)
def test_what_the_quick_path_leaves_to_the_careful_pass(value: object) -> None:
    assert check_same(value, DEFAULT_POLICY) is None


PLAIN = [
    {},
    [],
    "text",
    7,
    1.5,
    None,
    True,
    {
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "user", "content": "駅の近くの静かなイタリアンを探して。\n🍝"},
            {"role": "assistant", "content": 'Looking "that" up\\now\t—'},
        ],
        "tool": {"name": "search_places", "arguments": {"q": "italian", "radius_m": 800}},
        "usage": {"input_tokens": 812, "output_tokens": 96, "max_tokens": 1, "latency_ms": 431.5},
        "numbers": [2**63, -(2**63), 1e16, 1e-7, -0.0, 5e-324, 0.1],
        "pairs": [["role", "user"], ("a", "b")],
    },
]


@pytest.mark.parametrize("value", PLAIN, ids=range(len(PLAIN)))
def test_plain_payloads_take_the_quick_path(value: object) -> None:
    assert check_same(value, DEFAULT_POLICY) is not None


@contextmanager
def int_max_str_digits(limit: int) -> Iterator[None]:
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(limit)
    try:
        yield
    finally:
        sys.set_int_max_str_digits(old)


@pytest.mark.parametrize("limit", [0, 640])
def test_int_digit_limits_are_the_careful_passs(limit: int) -> None:
    with int_max_str_digits(limit):
        for digits in (639, 640, 641, 131072, 131073):
            check_same({"n": 10 ** (digits - 1)}, PayloadPolicy(max_bytes=None))


def test_the_encoder_escapes_every_character_as_json_dumps() -> None:
    every = "".join(chr(code) for code in range(sys.maxunicode + 1) if not 0xD800 <= code < 0xE000)
    assert _encode(every) == json.dumps(every, ensure_ascii=False)
    assert _encode({every: [every]}) == json.dumps(
        {every: [every]}, ensure_ascii=False, separators=(",", ":")
    )


@pytest.mark.parametrize(
    ("number", "text"),
    [(0.1, "0.1"), (-0.0, "-0.0"), (1e15, "1000000000000000.0"), (1e16, "1e16"), (1e-7, "1e-7")],
)
def test_numbers_are_written_as_msgspec_writes_them(number: float, text: str) -> None:
    result = prepare_payload([number])
    assert result.json_text == f"[{text}]"
    assert json.loads(result.json_text) == [number]


def test_names_found_plain_are_remembered_up_to_a_bound() -> None:
    policy = PayloadPolicy()
    many: dict[str, Any] = {f"key{index}": index for index in range(10_000)}
    assert check_same(many, policy) is not None
    many["db_password"] = "x"
    assert check_same(many, policy) is None


@pytest.mark.parametrize(
    "payload",
    [
        {"plain": [1, 2.5, "x", None, True], "nested": {"a": {"b": []}}},
        {"api_key": "not really a key", "text": "fine"},  # redacted by name
        {"n": float("nan")},  # replaced by null
        {"big": 2**64, "small": -(2**63) - 1},  # past 64 bits: the careful pass
        [["Authorization", "Bearer abc.def"]],  # a header pair
        "just text",
        None,
    ],
)
def test_an_event_made_without_the_value_copy_is_the_event_build_event_makes(
    payload: object,
) -> None:
    fields: dict[str, Any] = {
        "session_id": uuid4(),
        "user_id": uuid4(),
        "event_type": "tool_call",
        "payload": payload,
        "id": uuid4(),
        "created_at": datetime.now(UTC),
    }
    made = new_event(**fields)
    built, prepared = build_event(**fields)
    assert made == built
    assert made.payload_bytes == built.payload_bytes == prepared.size_bytes
    assert made.redacted_paths == prepared.redacted_paths


def test_every_field_of_the_event_holds_the_value_given_for_it() -> None:
    given_fields: dict[str, Any] = {
        "id": uuid4(),
        "session_id": uuid4(),
        "user_id": uuid4(),
        "project_id": uuid4(),
        "agent_id": uuid4(),
        "event_type": "tool_call",
        "created_at": datetime.now(UTC),
        "error_code": "E_TIMEOUT",
        "tool_name": "search_places",
        "approval_status": "pending",
        "request_id": "req-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
    }
    event = new_event(**given_fields, payload={"api_key": "sk-x", "n": 1})
    for name, value in given_fields.items():
        assert getattr(event, name) == value, name
    assert event.payload_json == '{"api_key":"[REDACTED]","n":1,"_redacted":["/api_key"]}'
    assert event.redacted_paths == ("/api_key",)
    assert event.payload_bytes == len(event.payload_json)


def test_an_event_without_a_payload_stores_an_empty_object() -> None:
    key = uuid4()
    for event in (
        new_event(session_id=key, user_id=key, event_type="x"),
        new_event(session_id=key, user_id=key, event_type="x", payload=None),
    ):
        assert (event.payload_json, event.payload_bytes) == ("{}", 2)


def test_payload_bytes_is_the_utf8_size_of_the_text_however_the_event_is_made() -> None:
    key = uuid4()
    event = new_event(session_id=key, user_id=key, event_type="x", payload={"note": "caf\u00e9"})
    assert event.payload_bytes == len(event.payload_json.encode()) == len(event.payload_json) + 1
    by_hand = NewEvent(event.id, key, key, "x", '{"a":"\u00fc\u20ac"}', event.created_at)
    assert by_hand.payload_bytes == 13  # 10 characters, one of 2 bytes and one of 3
    # replace() makes the event again: the size follows the new text, not the old event's.
    changed = msgspec.structs.replace(event, payload_json='{"b":"\u20ac\u20ac\u20ac"}')
    assert changed.payload_bytes == 17
    assert "payload_bytes" not in repr(changed)
    with pytest.raises(TypeError, match="payload_bytes"):
        NewEvent(event.id, key, key, "x", "{}", event.created_at, payload_bytes=0)  # type: ignore[call-arg]


class Renamed(str, enum.Enum):  # noqa: UP042 - a str Enum whose text is not its value
    SECRET = "password"

    def __new__(cls, value: str) -> Renamed:
        member = str.__new__(cls, "role")
        member._value_ = value
        return member


def test_a_str_enum_key_is_its_text_on_both_paths() -> None:
    """The quick path takes a key equal to a name it knows, and writes its text; the careful
    pass writes the same text (as json.dumps does), not the Enum's value."""
    assert check_same({"role": 1}, DEFAULT_POLICY) is not None  # "role" known as plain
    fast = check_same({Renamed.SECRET: "hunter2"}, DEFAULT_POLICY)
    assert fast is not None
    assert fast.json_text == '{"role":"hunter2"}'
    assert fast.json_text == json.dumps({Renamed.SECRET: "hunter2"}, separators=(",", ":"))
