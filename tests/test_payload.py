"""Tests for prepare_payload and PayloadPolicy: conversions, JSONB limits, size caps, redaction."""

from __future__ import annotations

import base64
import collections
import copy
import dataclasses
import enum
import json
import math
import re
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog_persist import PayloadPolicy, PreparedPayload, new_event, prepare_payload
from eventlog_persist._payload import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_POLICY,
    DEFAULT_PREVIEW_CHARS,
    DEFAULT_REDACT_KEYS,
    MAX_DEPTH_LIMIT,
    MIN_MAX_BYTES,
    REDACTED,
    REDACTION_RECORD_KEY,
)
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventLogError,
    PayloadError,
    ValidationError,
)

REPLACEMENT = "\ufffd"
NO_REDACTION = PayloadPolicy(redact_keys=frozenset())


def prepare(value: object, **policy: Any) -> PreparedPayload:
    return prepare_payload(value, policy=PayloadPolicy(**policy))


def assert_consistent(result: PreparedPayload) -> None:
    assert json.loads(result.json_text) == result.value
    assert result.size_bytes == len(result.json_text.encode("utf-8"))


def as_dict(result: PreparedPayload) -> dict[str, Any]:
    assert isinstance(result.value, dict)
    return result.value


def payload_error(value: object, **policy: Any) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        prepare(value, **policy)
    return info.value


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    HIGH = 3


class Kind(enum.StrEnum):
    CHAT = "chat"


class LegacyKind(str, enum.Enum):  # noqa: UP042 - str() differs from .value here
    CHAT = "chat-legacy"


class Point(NamedTuple):
    x: int
    y: int


@dataclasses.dataclass
class Inner:
    when: datetime
    tags: frozenset[str]


@dataclasses.dataclass
class Outer:
    name: str
    inner: Inner
    password: str


class StructInner(msgspec.Struct):
    when: datetime
    tags: frozenset[str]


class StructOuter(msgspec.Struct, rename="camel"):
    full_name: str
    inner: StructInner
    password: str


class Opaque:
    pass


class WithHook:
    def __init__(self, data: object) -> None:
        self.data = data

    def __json__(self) -> object:
        return self.data


class FakeModel:
    """Mimics a pydantic v2 model: model_dump(mode=...)."""

    def __init__(self) -> None:
        self.modes: list[str] = []

    def model_dump(self, *, mode: str = "python") -> dict[str, object]:
        self.modes.append(mode)
        return {"id": "abc", "score": 0.5}


# --- plain JSON ------------------------------------------------------------------------------


def test_plain_json_comes_back_equal_as_a_new_object_with_metadata() -> None:
    data = {"a": [1, 2.5, True, None, "x"], "b": {"c": -0.0}, "é": "日本"}
    result = prepare_payload(data)
    assert result.value == data
    assert result.value is not data
    assert as_dict(result)["b"] is not data["b"]
    assert result.redacted_paths == ()
    assert result.replaced_paths == ()
    assert result.truncated is False
    assert result.json_text == json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    assert_consistent(result)


def test_negative_zero_is_kept() -> None:
    result = prepare_payload({"z": -0.0})
    assert math.copysign(1.0, as_dict(result)["z"]) == -1.0
    assert result.json_text == '{"z":-0.0}'


@pytest.mark.parametrize("value", ["text", 7, 1.5, True, None, [1, "a"]])
def test_non_dict_top_level_values(value: object) -> None:
    result = prepare_payload(value)
    assert result.value == value
    assert_consistent(result)


def test_input_is_not_modified() -> None:
    data = {"password": "p", "list": [float("nan"), "a\x00b"], "k\x00": {"token": 1}}
    before = copy.deepcopy(data)
    prepare_payload(data)
    assert repr(data) == repr(before)  # repr: NaN != NaN would defeat ==


# --- conversions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 5, 1, 12, 30, tzinfo=UTC), "2024-05-01T12:30:00+00:00"),
        (
            datetime(2024, 5, 1, 12, 30, 1, 500, tzinfo=timezone(timedelta(hours=-5))),
            "2024-05-01T12:30:01.000500-05:00",
        ),
        (datetime(2024, 5, 1, 12, 30), "2024-05-01T12:30:00"),  # naive stays naive
        (date(2024, 2, 29), "2024-02-29"),
        (time(8, 5, 3), "08:05:03"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (Decimal("0.1"), "0.1"),
        (Decimal("1.10"), "1.10"),
        (Decimal("1E+2"), "1E+2"),
        (Decimal("3.14159265358979323846264338327950288"), "3.14159265358979323846264338327950288"),
        (Color.RED, "red"),
        (Color.PAIR, [1, 2]),
        (Level.HIGH, 3),
        (Kind.CHAT, "chat"),
        (LegacyKind.CHAT, "chat-legacy"),
        (b"\x00\xffhi", base64.b64encode(b"\x00\xffhi").decode()),
        (bytearray(b"abc"), "YWJj"),
        (memoryview(b"abcd"), "YWJjZA=="),
        (b"", ""),
        ((1, "a", (2,)), [1, "a", [2]]),
        (Point(1, 2), [1, 2]),
        ({3, 1, 2}, [1, 2, 3]),
        (frozenset({"b", "a", "c"}), ["a", "b", "c"]),
        (collections.OrderedDict([("b", 1), ("a", 2)]), {"b": 1, "a": 2}),
        (collections.defaultdict(list, {"a": [1]}), {"a": [1]}),
        (MappingProxyType({"m": (1,)}), {"m": [1]}),
    ],
)
def test_conversions(value: object, expected: object) -> None:
    result = prepare_payload({"v": value})
    assert result.value == {"v": expected}
    assert type(as_dict(result)["v"]) is type(expected)
    assert_consistent(result)


def test_unsortable_set_keeps_iteration_order() -> None:
    mixed = {1, "a", 2.5}
    result = prepare_payload({"s": mixed})
    assert result.value == {"s": list(mixed)}


def test_subclasses_of_builtins_become_exact_builtins() -> None:
    class MyStr(str):
        def __str__(self) -> str:
            return "overridden"

    class MyInt(int):
        pass

    class MyFloat(float):
        pass

    class MyList(list[int]):
        pass

    result = prepare_payload({"s": MyStr("x"), "i": MyInt(4), "f": MyFloat(0.5), "l": MyList([1])})
    assert result.value == {"s": "x", "i": 4, "f": 0.5, "l": [1]}
    assert [type(v) for v in as_dict(result).values()] == [str, int, float, list]


def test_dataclass_becomes_dict_through_the_same_pass() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = prepare_payload(Outer("n", Inner(when, frozenset({"y", "x"})), "hunter2"))
    assert result.value == {
        "name": "n",
        "inner": {"when": "2024-01-02T03:04:05+00:00", "tags": ["x", "y"]},
        "password": REDACTED,
        "_redacted": ["/password"],
    }


def test_msgspec_struct_becomes_dict_of_its_attributes_through_the_same_pass() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = StructOuter("n", StructInner(when, frozenset({"y", "x"})), "hunter2")
    assert prepare_payload(value).value == {
        "full_name": "n",
        "inner": {"when": "2024-01-02T03:04:05+00:00", "tags": ["x", "y"]},
        "password": REDACTED,
        "_redacted": ["/password"],
    }


def test_an_event_in_a_payload_becomes_a_dict_of_its_fields() -> None:
    key = uuid.uuid4()
    event = new_event(session_id=key, user_id=key, event_type="x", payload={"n": 1})
    stored = as_dict(prepare_payload({"failed": event}))["failed"]
    assert stored == {
        "id": str(event.id),
        "session_id": str(key),
        "user_id": str(key),
        "event_type": "x",
        "payload_json": '{"n":1}',
        "created_at": event.created_at.isoformat(),
        "project_id": None,
        "agent_id": None,
        "error_code": None,
        "tool_name": None,
        "approval_status": None,
        "redacted_paths": [],
        "request_id": None,
        "trace_id": None,
        "span_id": None,
    }


def test_json_hook_result_is_prepared_recursively() -> None:
    result = prepare_payload({"h": WithHook({"id": uuid.UUID(int=2), "nested": WithHook([b"x"])})})
    assert result.value == {
        "h": {"id": "00000000-0000-0000-0000-000000000002", "nested": ["eA=="]},
    }


def test_json_hook_wins_over_dataclass_conversion() -> None:
    @dataclasses.dataclass
    class Custom:
        secret_field: int

        def __json__(self) -> object:
            return "custom"

    assert prepare_payload([Custom(1)]).value == ["custom"]


def test_model_dump_is_called_in_json_mode() -> None:
    model = FakeModel()
    result = prepare_payload({"m": model})
    assert result.value == {"m": {"id": "abc", "score": 0.5}}
    assert model.modes == ["json"]


def test_default_hook_converts_unknown_values_recursively() -> None:
    def default(value: object) -> object:
        if isinstance(value, timedelta):
            return {"seconds": value.total_seconds(), "inner": Opaque()}
        if isinstance(value, Opaque):
            return "opaque"
        raise TypeError(f"unsupported {type(value).__name__}")

    result = prepare({"d": [timedelta(minutes=1)]}, default=default)
    assert result.value == {"d": [{"seconds": 60.0, "inner": "opaque"}]}


def test_default_hook_raising_becomes_payload_error_with_path() -> None:
    def default(value: object) -> object:
        raise TypeError("no way")

    error = payload_error({"a": [0, Opaque()]}, default=default)
    assert error.path == "/a/1"
    assert "no way" in str(error)
    assert isinstance(error.__cause__, TypeError)


def test_hook_returning_its_input_is_rejected() -> None:
    error = payload_error({"a": Opaque()}, default=lambda value: value)
    assert error.path == "/a"
    assert "unchanged" in str(error)


def test_hook_returning_new_objects_forever_is_a_payload_error_not_recursion_error() -> None:
    class Endless:
        def __json__(self) -> object:
            return Endless()

    # Stopped by the count of hooks in a row, long before Python's recursion limit: a
    # garbage collection near that limit would run other objects' finalizers with no stack
    # left for them.
    error = payload_error({"e": Endless()})
    assert error.path == "/e"
    assert "hook number 17 in a row" in str(error)
    assert "Endless" in str(error)
    assert "recursion limit" not in str(error)


def test_default_returning_new_objects_forever_is_a_payload_error() -> None:
    error = payload_error([Opaque()], default=lambda value: Opaque())
    assert error.path == "/0"
    assert "PayloadPolicy.default would be hook number 17 in a row" in str(error)


class Steps:
    """Converts to ``Steps(left - 1, then)`` until ``left`` is 0, then to ``then``."""

    def __init__(self, left: int, then: object) -> None:
        self.left = left
        self.then = then

    def __json__(self) -> object:
        return Steps(self.left - 1, self.then) if self.left else self.then


def test_sixteen_hooks_in_a_row_convert_and_the_seventeenth_is_refused() -> None:
    assert prepare({"s": Steps(15, "done")}).value == {"s": "done"}
    error = payload_error({"s": Steps(16, "done")})
    assert error.path == "/s"
    assert "hook number 17 in a row for the test_payload.Steps" in str(error)


def test_hooks_in_a_row_are_counted_per_container_level() -> None:
    class Nest:
        def __init__(self, levels: int) -> None:
            self.levels = levels

        def __json__(self) -> object:
            # 15 hooks in a row at each level (this one and 14 Steps), 75 on the path.
            return Steps(13, {"in": Nest(self.levels - 1)}) if self.levels else "done"

    assert prepare(Nest(5)).value == {"in": {"in": {"in": {"in": {"in": "done"}}}}}


def test_json_hook_exception_is_wrapped() -> None:
    class Broken:
        def __json__(self) -> object:
            raise RuntimeError("boom")

    with pytest.raises(PayloadError, match="boom") as info:
        prepare_payload({"x": {"y": Broken()}})
    assert info.value.path == "/x/y"


@pytest.mark.parametrize(
    ("payload", "path", "type_name"),
    [
        ({"a": {"b": [Opaque()]}}, "/a/b/0", "Opaque"),
        (Opaque(), "", "Opaque"),
        ({"td": timedelta(1)}, "/td", "timedelta"),
        ({"cls": int}, "/cls", "type"),
        ({"cls": WithHook}, "/cls", "type"),
        ({"c": 1j}, "/c", "complex"),
        ({"gen": (i for i in range(2))}, "/gen", "generator"),
    ],
)
def test_unsupported_values_name_path_type_and_fixes(
    payload: object, path: str, type_name: str
) -> None:
    error = payload_error(payload)
    assert error.path == path
    message = str(error)
    assert type_name in message
    assert "__json__" in message
    assert "default=" in message
    assert isinstance(error, ValidationError)
    assert isinstance(error, ValueError)


def test_error_paths_escape_json_pointer_characters() -> None:
    error = payload_error({"a/b": {"c~d": [Opaque()]}})
    assert error.path == "/a~1b/c~0d/0"


def test_big_integers() -> None:
    assert prepare_payload({"n": 10**100}).value == {"n": 10**100}
    error = payload_error({"n": [10**5000]})
    assert error.path == "/n/0"
    assert "digits" in str(error)


# --- keys ------------------------------------------------------------------------------------


def test_non_string_keys_are_converted_like_json_dumps() -> None:
    data = {1: "a", 2.5: "b", False: "c", None: "d", Level.HIGH: "e"}
    result = prepare_payload(data)
    assert result.value == json.loads(json.dumps(data))
    assert list(as_dict(result)) == ["1", "2.5", "false", "null", "3"]


def test_uuid_and_enum_keys() -> None:
    key = uuid.UUID(int=3)
    result = prepare_payload({key: 1, Color.RED: 2, Kind.CHAT: 3, LegacyKind.CHAT: 4})
    assert result.value == {str(key): 1, "red": 2, "chat": 3, "chat-legacy": 4}
    assert all(type(k) is str for k in as_dict(result))


@pytest.mark.parametrize("key", [(1, 2), Opaque(), b"k", Decimal(1), Color.PAIR])
def test_unsupported_keys_name_the_object_path(key: object) -> None:
    error = payload_error({"outer": {"ok": 1, key: 2}})
    assert error.path == "/outer"
    assert "key" in str(error)
    assert "str" in str(error)


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({1: "a", "1": "b"}, "/1"),
        ({"x": {"true": 1, True: 2}}, "/x/true"),
        ({None: 1, "null": 2}, "/null"),
        ({"a\x00": 1, f"a{REPLACEMENT}": 2}, f"/a{REPLACEMENT}"),
    ],
)
def test_keys_that_collide_after_conversion(payload: object, path: str) -> None:
    error = payload_error(payload)
    assert error.path == path
    assert "already" in str(error)


# --- NUL, surrogates, non-finite numbers -----------------------------------------------------


def test_nul_in_values_and_keys_is_replaced_and_recorded() -> None:
    result = prepare_payload({"a": ["ok", "x\x00y"], "k\x00": "v", "both\x00": "\x00"})
    assert result.value == {
        "a": ["ok", f"x{REPLACEMENT}y"],
        f"k{REPLACEMENT}": "v",
        f"both{REPLACEMENT}": REPLACEMENT,
    }
    assert result.replaced_paths == ("/a/1", f"/k{REPLACEMENT}", f"/both{REPLACEMENT}")
    assert "\\u0000" not in result.json_text
    assert "\x00" not in result.json_text


def test_nul_error_mode() -> None:
    error = payload_error({"a": [{"b": "x\x00"}]}, nul="error")
    assert error.path == "/a/0/b"
    assert "NUL" in str(error)
    assert "nul='replace'" in str(error)
    key_error = payload_error({"a": {"b\x00": 1}}, nul="error")
    assert key_error.path == "/a"
    assert "key" in str(key_error)


def test_lone_surrogates_are_replaced_and_recorded() -> None:
    result = prepare_payload({"s": "a\ud800b", "\udfffk": ["\U0001f600 fine"]})
    assert result.value == {"s": f"a{REPLACEMENT}b", f"{REPLACEMENT}k": ["\U0001f600 fine"]}
    assert result.replaced_paths == ("/s", f"/{REPLACEMENT}k")
    result.json_text.encode("utf-8")  # would raise on a surrogate


def test_surrogate_error_mode() -> None:
    error = payload_error({"list": ["ok", "bad\udc80"]}, surrogates="error")
    assert error.path == "/list/1"
    assert "surrogate" in str(error)
    key_error = payload_error({"x": {"\ud83d": 1}}, surrogates="error")
    assert key_error.path == "/x"


def test_non_finite_numbers_become_null_and_are_recorded() -> None:
    data = {"a": [1.0, float("nan"), [float("inf"), float("-inf")]], "b": float("nan")}
    result = prepare_payload(data)
    assert result.value == {"a": [1.0, None, [None, None]], "b": None}
    assert result.replaced_paths == ("/a/1", "/a/2/0", "/a/2/1", "/b")
    assert_consistent(result)


def test_non_finite_error_mode() -> None:
    error = payload_error({"a": [0.0, [float("-inf")]]}, non_finite="error")
    assert error.path == "/a/1/0"
    assert "-inf" in str(error)
    key_error = payload_error({"m": {float("nan"): 1}}, non_finite="error")
    assert key_error.path == "/m"


def test_non_finite_key_becomes_null() -> None:
    result = prepare_payload({"m": {float("inf"): 1}})
    assert result.value == {"m": {"null": 1}}
    assert result.replaced_paths == ("/m/null",)


# --- depth and cycles ------------------------------------------------------------------------


def nested_lists(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_default_max_depth_is_inclusive() -> None:
    assert DEFAULT_MAX_DEPTH == 64
    prepare_payload(nested_lists(64))
    error = payload_error(nested_lists(65))
    assert error.path == "/0" * 64
    assert "max_depth=64" in str(error)


def test_custom_max_depth_names_the_path() -> None:
    assert prepare({"a": {"b": {"c": 1}}}, max_depth=3).value == {"a": {"b": {"c": 1}}}
    error = payload_error({"a": {"b": {"c": {}}}}, max_depth=3)
    assert error.path == "/a/b/c"


def test_very_deep_input_is_a_payload_error() -> None:
    error = payload_error(nested_lists(20_000))
    assert "max_depth" in str(error)


def test_list_containing_itself() -> None:
    loop: list[object] = []
    loop.append(loop)
    error = payload_error(loop)
    assert "cycle" in str(error)
    assert error.path == "/0"


def test_dict_cycle_through_a_list_names_both_paths() -> None:
    root: dict[str, object] = {"ok": 1}
    root["children"] = [{"parent": root}]
    error = payload_error({"wrap": root})
    assert error.path == "/wrap/children/0/parent"
    assert "'/wrap'" in str(error)


def test_shared_references_are_not_cycles() -> None:
    shared = {"x": [1]}
    result = prepare_payload({"a": shared, "b": [shared, shared]})
    assert result.value == {"a": shared, "b": [shared, shared]}


# --- size cap and truncation -----------------------------------------------------------------


def test_size_at_cap_passes_and_one_byte_over_fails() -> None:
    cap = 256
    overhead = len('{"x":""}')
    assert prepare({"x": "a" * (cap - overhead)}, max_bytes=cap).size_bytes == cap
    error = payload_error({"x": "a" * (cap - overhead + 1)}, max_bytes=cap)
    message = str(error)
    assert str(cap + 1) in message
    assert f"max_bytes={cap}" in message
    assert "truncate" in message
    assert error.path == ""


def test_size_is_counted_in_utf8_bytes() -> None:
    value = {"x": "\u00e9" * 200}  # 208 characters, 408 bytes
    with pytest.raises(PayloadError, match="408 bytes"):
        prepare(value, max_bytes=300)
    assert prepare(value, max_bytes=408).size_bytes == 408


def test_default_cap_is_256_kib() -> None:
    assert DEFAULT_MAX_BYTES == 256 * 1024
    with pytest.raises(PayloadError, match=str(DEFAULT_MAX_BYTES)):
        prepare_payload({"x": "a" * DEFAULT_MAX_BYTES})
    assert prepare({"x": "a" * DEFAULT_MAX_BYTES}, max_bytes=None).size_bytes > DEFAULT_MAX_BYTES


@pytest.mark.parametrize("cap", [256, 300, 1000, 4096])
@pytest.mark.parametrize(
    "text", ["a" * 10_000, '"\\\n\x01' * 3000, "\u00e9\U0001f600\u65e5" * 3000]
)
def test_truncation_marker_fits_the_cap(cap: int, text: str) -> None:
    payload = {"text": text, "password": "p"}
    full = prepare(payload, max_bytes=None)
    result = prepare(payload, max_bytes=cap, oversize="truncate")
    assert result.truncated is True
    assert result.size_bytes <= cap
    assert_consistent(result)
    marker = result.value
    assert isinstance(marker, dict)
    assert set(marker) == {"_truncated", "original_bytes", "max_bytes", "preview"}
    assert marker["_truncated"] is True
    assert marker["original_bytes"] == full.size_bytes
    assert marker["max_bytes"] == cap
    preview = marker["preview"]
    assert isinstance(preview, str)
    assert preview
    assert full.json_text.startswith(preview)
    assert result.redacted_paths == ("/password",)


def test_truncation_preview_is_as_long_as_fits() -> None:
    result = prepare({"x": "a" * 10_000}, max_bytes=1000, oversize="truncate")
    assert result.size_bytes in range(990, 1001)
    short = prepare({"x": "a" * 10_000}, max_bytes=1000, oversize="truncate", preview_chars=10)
    assert as_dict(short)["preview"] == '{"x":"aaaa'
    empty = prepare({"x": "a" * 10_000}, max_bytes=1000, oversize="truncate", preview_chars=0)
    assert as_dict(empty)["preview"] == ""


def test_payload_under_cap_is_not_truncated() -> None:
    result = prepare({"x": "small"}, max_bytes=256, oversize="truncate")
    assert result.truncated is False
    assert result.value == {"x": "small"}


# --- redaction -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "PASSWORD",
        "db_password",
        "DB Password",
        "passwd",
        "Authorization",
        "proxy-authorization",
        "Proxy_Authorization",
        "X-API-KEY",
        "x_api_key",
        "api key",
        "apiKey",
        "openai_api_key",
        "OPENAI-API-KEY",
        "access_token",
        "refreshToken",
        "id_token",
        "github_token",
        "Cookie",
        "set-cookie",
        "cookies",
        "client_secret",
        "aws_secret_access_key",
        "private_key",
        "credentials",
        "session_token",
        "card_number",
    ],
)
def test_sensitive_keys_are_redacted(key: str) -> None:
    result = prepare_payload({"outer": [{key: "s3cr3t", "other": 1}]})
    assert result.value == {
        "outer": [{key: REDACTED, "other": 1}],
        "_redacted": [f"/outer/0/{key}"],
    }
    assert result.redacted_paths == (f"/outer/0/{key}",)
    assert "s3cr3t" not in result.json_text


@pytest.mark.parametrize(
    "key",
    [
        "max_tokens",
        "total_tokens",
        "token_count",
        "keyboard",
        "author",
        "password_hint_shown_at",
        "session_id",
        "secretary",
        "cookie_consent",
    ],
)
def test_similar_keys_are_not_redacted(key: str) -> None:
    result = prepare_payload({key: "visible"})
    assert result.value == {key: "visible"}
    assert result.redacted_paths == ()


def test_whole_subtree_is_redacted_without_being_prepared() -> None:
    result = prepare_payload({"credentials": {"user": "u", "pw": [1, Opaque(), float("nan")]}})
    assert result.value == {"credentials": REDACTED, "_redacted": ["/credentials"]}
    assert result.replaced_paths == ()


def test_redacted_paths_are_in_document_order_and_escaped() -> None:
    data = {
        "headers": {"Authorization": "Bearer x", "Accept": "json"},
        "a/b": {"token": "t"},
        "list": [{"password": 1}, {"password": None}],
    }
    result = prepare_payload(data)
    expected = ("/headers/Authorization", "/a~1b/token", "/list/0/password", "/list/1/password")
    assert result.redacted_paths == expected
    assert as_dict(result)["_redacted"] == list(expected)
    assert list(as_dict(result))[-1] == "_redacted"
    assert_consistent(result)


def test_non_dict_payload_reports_redactions_in_metadata_only() -> None:
    result = prepare_payload([{"password": "x"}, "y"])
    assert result.value == [{"password": REDACTED}, "y"]
    assert result.redacted_paths == ("/0/password",)


def test_record_key_can_be_renamed_or_disabled() -> None:
    renamed = prepare({"token": "t"}, redaction_record_key="__redactions")
    assert renamed.value == {"token": REDACTED, "__redactions": ["/token"]}
    off = prepare({"token": "t"}, redaction_record_key=None)
    assert off.value == {"token": REDACTED}
    assert off.redacted_paths == ("/token",)


def test_record_key_is_reserved_at_top_level_only() -> None:
    error = payload_error({"_redacted": []})
    assert error.path == "/_redacted"
    assert "reserved" in str(error)
    assert prepare_payload({"x": {"_redacted": 1}}).value == {"x": {"_redacted": 1}}
    assert prepare({"_redacted": 1}, redaction_record_key=None).value == {"_redacted": 1}


def test_redact_keys_can_be_extended_or_replaced() -> None:
    extended = prepare(
        {"pin": 1, "card_pin": 2, "password": 3}, redact_keys=DEFAULT_REDACT_KEYS | {"pin"}
    )
    assert extended.redacted_paths == ("/pin", "/card_pin", "/password")
    replaced = prepare({"password": 1, "Foo-Bar": 2}, redact_keys=frozenset({"foo_bar"}))
    assert replaced.value == {"password": 1, "Foo-Bar": REDACTED, "_redacted": ["/Foo-Bar"]}
    off = prepare_payload({"password": 1}, policy=NO_REDACTION)
    assert off.value == {"password": 1}


def test_dropping_token_keeps_the_specific_token_names() -> None:
    policy = PayloadPolicy(redact_keys=DEFAULT_REDACT_KEYS - {"token"})
    result = prepare_payload({"token": "hello", "access_token": "a"}, policy=policy)
    assert result.value == {
        "token": "hello",
        "access_token": REDACTED,
        "_redacted": ["/access_token"],
    }


def test_redactor_sees_every_string_value_with_its_path() -> None:
    seen: list[tuple[str, str]] = []

    def redactor(path: str, text: str) -> str:
        seen.append((path, text))
        return text

    data = {"msg": "hi", "n": 1, "id": uuid.UUID(int=4), "list": ["a"], "password": "x", "k": None}
    result = prepare(data, redactor=redactor)
    assert seen == [
        ("/msg", "hi"),
        ("/id", "00000000-0000-0000-0000-000000000004"),
        ("/list/0", "a"),
    ]
    assert result.redacted_paths == ("/password",)


def test_redactor_replacements_are_recorded() -> None:
    email = re.compile(r"[\w.]+@[\w.]+")

    def redactor(path: str, text: str) -> str:
        return email.sub("[EMAIL]", text)

    result = prepare({"m": ["write to a.b@example.com", "nothing here"]}, redactor=redactor)
    assert result.value == {"m": ["write to [EMAIL]", "nothing here"], "_redacted": ["/m/0"]}
    assert result.redacted_paths == ("/m/0",)


def test_redactor_equal_but_new_string_is_not_a_redaction() -> None:
    result = prepare({"m": "abc"}, redactor=lambda path, text: "".join(list(text)))
    assert result.redacted_paths == ()


def test_redactor_sees_repaired_text_and_its_output_is_repaired() -> None:
    seen: list[str] = []

    def redactor(path: str, text: str) -> str:
        seen.append(text)
        return "bad\x00"

    result = prepare({"m": "a\x00"}, redactor=redactor)
    assert seen == [f"a{REPLACEMENT}"]
    assert result.value == {"m": f"bad{REPLACEMENT}", "_redacted": ["/m"]}


def test_redactor_returning_non_str_is_a_configuration_error() -> None:
    bad: Callable[[str, str], Any] = lambda path, text: None  # noqa: E731
    with pytest.raises(ConfigurationError, match="/m/0"):
        prepare({"m": ["x"]}, redactor=bad)


# --- policy ----------------------------------------------------------------------------------


def test_default_policy() -> None:
    policy = PayloadPolicy()
    assert policy == DEFAULT_POLICY
    assert policy.max_depth == 64
    assert policy.max_bytes == 256 * 1024
    assert policy.oversize == "error"
    assert policy.nul == "replace"
    assert policy.surrogates == "replace"
    assert policy.non_finite == "null"
    assert policy.redact_keys == DEFAULT_REDACT_KEYS
    assert policy.redactor is None
    assert policy.default is None
    assert policy.redaction_record_key == "_redacted"
    assert {"password", "api_key", "authorization", "cookie", "token"} <= DEFAULT_REDACT_KEYS


def test_policy_is_frozen_and_keyword_only() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_POLICY.max_depth = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        PayloadPolicy(10)  # type: ignore[call-arg]


def test_policy_accepts_a_set_and_stores_a_frozenset() -> None:
    policy = PayloadPolicy(redact_keys={"pin"})  # type: ignore[arg-type]
    assert policy.redact_keys == frozenset({"pin"})
    assert isinstance(policy.redact_keys, frozenset)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"max_depth": 0}, "max_depth=0"),
        ({"max_depth": 257}, "max_depth=257"),
        ({"max_depth": True}, "max_depth=True"),
        ({"max_depth": "64"}, "max_depth='64'"),
        ({"max_bytes": 255}, "max_bytes=255"),
        ({"max_bytes": 1024.0}, "max_bytes=1024.0"),
        ({"preview_chars": -1}, "preview_chars=-1"),
        ({"oversize": "drop"}, "oversize='drop'"),
        ({"nul": "strip"}, "nul='strip'"),
        ({"surrogates": "ignore"}, "surrogates='ignore'"),
        ({"non_finite": "zero"}, "non_finite='zero'"),
        ({"redact_keys": "password"}, "redact_keys='password'"),
        ({"redact_keys": ["password"]}, "redact_keys=['password']"),
        ({"redact_keys": frozenset({"-_ "})}, "'-_ '"),
        ({"redact_keys": frozenset({1})}, "contains 1"),
        ({"redactor": "x"}, "redactor='x'"),
        ({"default": 3}, "default=3"),
        ({"redaction_record_key": ""}, "redaction_record_key=''"),
        ({"redaction_record_key": "a\x00"}, "redaction_record_key="),
    ],
)
def test_policy_rejects_bad_values_eagerly(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        PayloadPolicy(**kwargs)
    assert fragment in str(info.value)
    assert isinstance(info.value, EventLogError)


# --- properties ------------------------------------------------------------------------------

_SAFE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
    max_size=12,
)


def _normalized(key: str) -> str:
    return key.casefold().replace("-", "").replace("_", "").replace(" ", "")


# The listed names and their plurals (none for token names), as DEFAULT_REDACT_KEYS documents.
_SECRET_SUFFIXES = tuple(
    {_normalized(key) for key in DEFAULT_REDACT_KEYS}
    | {_normalized(key) + "s" for key in DEFAULT_REDACT_KEYS if not key.endswith("token")}
)
_PLAIN_KEYS = _SAFE_TEXT.filter(
    lambda key: key != "_redacted" and not _normalized(key).endswith(_SECRET_SUFFIXES)
)
# Plain text as values too: no secret name (which would make ["pwd", x] a header pair) and
# no URL, the only detected shape short enough for these strings.
_PLAIN_TEXT = _SAFE_TEXT.filter(
    lambda text: not _normalized(text).endswith(_SECRET_SUFFIXES) and "://" not in text
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _PLAIN_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_PLAIN_KEYS, children, max_size=4)
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(_JSON)
def test_json_compatible_input_round_trips_unchanged(data: object) -> None:
    result = prepare_payload(data, policy=PayloadPolicy(max_bytes=None))
    assert result.value == data
    assert json.loads(result.json_text) == data
    assert result.redacted_paths == ()
    assert result.replaced_paths == ()
    assert result.size_bytes == len(result.json_text.encode("utf-8"))


_MESSY_LEAVES = (
    st.none()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.decimals()
    | st.uuids()
    | st.datetimes()
    | st.frozensets(st.integers(), max_size=3)
)
_MESSY = st.recursive(
    _MESSY_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(
            st.text(max_size=8) | st.integers() | st.booleans() | st.none(), children, max_size=4
        )
    ),
    max_leaves=25,
)


def _only_json_types(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _only_json_types(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_only_json_types(item) for item in value)
    if type(value) is float:
        return math.isfinite(value)
    return value is None or type(value) in (str, int, bool)


@settings(max_examples=150, deadline=None)
@given(_MESSY)
def test_any_supported_input_becomes_storable_json(data: object) -> None:
    failure: PayloadError | None = None
    try:
        result = prepare_payload(data, policy=PayloadPolicy(max_bytes=None))
    except PayloadError as error:
        failure = error
    if failure is not None:
        # The only way these inputs fail: two keys such as 1 and "1" that collide.
        assert "already" in str(failure)
        return
    assert _only_json_types(result.value)
    assert "\x00" not in result.json_text
    result.json_text.encode("utf-8")
    assert json.loads(result.json_text) == result.value


# --- pinned behaviour: default names, hook output, boundaries ----------------------------------

# The default denylist as documented, copied on purpose: this literal is the pin. Changing the
# defaults must change this list too (and CHANGELOG.md).
DOCUMENTED_REDACT_KEYS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "client_secret",
    "secret_key",
    "private_key",
    "credential",
    "credentials",
    "pwd",
    "signing_key",
    "encryption_key",
    "master_key",
    "dsn",
    "database_url",
    "database_uri",
    "db_url",
    "connection_string",
    "conn_str",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "session_token",
    "auth_token",
    "bearer_token",
    "csrf_token",
    "jwt",
    "api_key",
    "apikey",
    "x-api-key",
    "access_key",
    "authorization",
    "proxy-authorization",
    "cookie",
    "cookies",
    "set-cookie",
    "card_number",
    "cvv",
    "cvc",
    "ssn",
)


def _spellings(name: str) -> list[str]:
    """How a listed name shows up in real payloads: any case, any separator, as a suffix."""
    words = re.split(r"[-_]", name)
    capitalized = [word.capitalize() for word in words]
    return sorted(
        {
            name,
            name.upper(),
            "_".join(words),
            "-".join(words),
            " ".join(words),
            "-".join(capitalized),  # HTTP header style: X-Api-Key
            words[0] + "".join(capitalized[1:]),  # camelCase
            "".join(capitalized),  # PascalCase
            "".join(words).upper(),
            f"db_{'_'.join(words)}",  # suffix forms
            f"OPENAI_{'_'.join(words).upper()}",
            f"X-{'-'.join(capitalized)}",
            f"upstream{''.join(capitalized)}",
            f"Service {' '.join(capitalized)}",
        }
    )


def test_default_redact_keys_are_exactly_the_documented_list() -> None:
    assert len(set(DOCUMENTED_REDACT_KEYS)) == len(DOCUMENTED_REDACT_KEYS)
    assert frozenset(DOCUMENTED_REDACT_KEYS) == DEFAULT_REDACT_KEYS
    assert PayloadPolicy().redact_keys == frozenset(DOCUMENTED_REDACT_KEYS)


@pytest.mark.parametrize("name", DOCUMENTED_REDACT_KEYS)
def test_every_default_name_is_redacted_in_every_spelling_and_place(name: str) -> None:
    for key in _spellings(name):
        data = {
            key: "s3cr3t",
            "outer": [{"keep": "visible", "inner": {key: ["s3cr3t", {"n": 1}]}}],
        }
        result = prepare_payload(data)
        expected = (f"/{key}", f"/outer/0/inner/{key}")
        assert result.value == {
            key: "[REDACTED]",
            "outer": [{"keep": "visible", "inner": {key: "[REDACTED]"}}],
            "_redacted": list(expected),
        }, key
        assert result.redacted_paths == expected
        assert "s3cr3t" not in result.json_text
        in_list = prepare_payload([{key: "s3cr3t"}, key])
        assert in_list.value == [{key: "[REDACTED]"}, key]  # a name as a value is kept
        assert in_list.redacted_paths == ("/0/" + key,)


@pytest.mark.parametrize("name", DOCUMENTED_REDACT_KEYS)
def test_every_default_name_is_matched_on_its_own(name: str) -> None:
    # Like the *_token names without "token": dropping a shorter listed name that this one
    # ends with (after normalizing) still redacts this one.
    shorter = {
        other
        for other in DEFAULT_REDACT_KEYS
        if other != name and _normalized(name).endswith(_normalized(other))
    }
    policy = PayloadPolicy(redact_keys=DEFAULT_REDACT_KEYS - shorter)
    for key in (name, name.upper(), f"my_{name}"):
        result = prepare_payload({key: "s3cr3t", "other": "x"}, policy=policy)
        assert result.value == {key: "[REDACTED]", "other": "x", "_redacted": [f"/{key}"]}


@pytest.mark.parametrize("name", DOCUMENTED_REDACT_KEYS)
def test_default_names_followed_by_more_words_are_not_redacted(name: str) -> None:
    # The rule is "equals or ends with": a listed name at the start or in the middle is not
    # enough.
    for key in (f"{name}_hint", f"{name}Count", f"{name} length", f"has_{name}_field"):
        result = prepare_payload({key: "visible"})
        assert result.value == {key: "visible"}, key
        assert result.redacted_paths == ()


@pytest.mark.parametrize(
    "key",
    [
        "input_tokens",
        "output_tokens",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "tokenizer",
        "token_ids",
        "password_hint",
        "passwordless",
        "secret_rotated_at",
        "api_version",
        "ssn_last_checked",
        "cookie_policy",
    ],
)
def test_llm_counters_and_look_alike_keys_stay_visible(key: str) -> None:
    result = prepare_payload({"usage": {key: 12}})
    assert result.value == {"usage": {key: 12}}
    assert result.redacted_paths == ()


def test_redaction_matching_uses_case_folding() -> None:
    # casefold(), not lower(): the long s folds to "s".
    result = prepare_payload({"PA\u017f\u017fWORD": "x", "\u017fecret": "y"})
    assert result.value == {
        "PA\u017f\u017fWORD": "[REDACTED]",
        "\u017fecret": "[REDACTED]",
        "_redacted": ["/PA\u017f\u017fWORD", "/\u017fecret"],
    }
    assert result.replaced_paths == ()


def test_redacted_value_is_the_documented_literal() -> None:
    assert REDACTED == "[REDACTED]"
    assert REDACTION_RECORD_KEY == "_redacted"
    assert (
        prepare_payload({"token": 1}).json_text == '{"token":"[REDACTED]","_redacted":["/token"]}'
    )


class SecretField(enum.Enum):
    API_KEY = "api_key"
    HEADER = "X-Api-Key"


class SecretStrField(enum.StrEnum):
    API_KEY = "api_key"


class LegacySecretField(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling of StrEnum
    API_KEY = "api_key"


@pytest.mark.parametrize(
    "key",
    [SecretField.API_KEY, SecretStrField.API_KEY, LegacySecretField.API_KEY, SecretField.HEADER],
)
def test_enum_keys_are_redacted_like_their_string_value(key: enum.Enum) -> None:
    result = prepare_payload({"request": {key: "sk-123", "model": "m"}})
    text_key = key.value
    assert result.value == {
        "request": {text_key: "[REDACTED]", "model": "m"},
        "_redacted": [f"/request/{text_key}"],
    }
    assert [type(k) for k in as_dict(result)["request"]] == [str, str]
    assert "sk-123" not in result.json_text


class KeyValue(enum.Enum):
    NONE = None
    YES = True
    NO = False
    TWO = 2
    HALF = 1.5
    NEGATIVE = -7
    BIG = 10**20
    TEXT = "plain"


def test_enum_keys_convert_their_value_like_json_dumps() -> None:
    result = prepare_payload({member: member.name for member in KeyValue})
    expected = json.loads(json.dumps({member.value: member.name for member in KeyValue}))
    assert result.value == expected
    assert list(as_dict(result)) == [
        "null",
        "true",
        "false",
        "2",
        "1.5",
        "-7",
        str(10**20),
        "plain",
    ]
    assert result.replaced_paths == ()


def test_enum_key_with_a_non_finite_value_follows_the_non_finite_rule() -> None:
    class Limit(enum.Enum):
        NONE = float("inf")

    result = prepare_payload({"m": {Limit.NONE: 1}})
    assert result.value == {"m": {"null": 1}}
    assert result.replaced_paths == ("/m/null",)
    assert payload_error({"m": {Limit.NONE: 1}}, non_finite="error").path == "/m"


def test_enum_key_colliding_with_its_string_value_is_an_error() -> None:
    error = payload_error({"x": {"red": 1, Color.RED: 2}})
    assert error.path == "/x/red"
    assert "already" in str(error)


# Hook output goes through the same repair as any other input.


def test_redactor_output_with_lone_surrogate_is_repaired_and_recorded() -> None:
    def redactor(path: str, text: str) -> str:
        return "masked\ud800" if path == "/m" else text

    result = prepare({"m": "user@example.com", "n": "ok"}, redactor=redactor)
    assert result.value == {"m": f"masked{REPLACEMENT}", "n": "ok", "_redacted": ["/m"]}
    assert result.redacted_paths == ("/m",)
    assert result.replaced_paths == ("/m",)
    result.json_text.encode("utf-8")  # would raise on a surrogate
    assert_consistent(result)


def test_redactor_output_with_nul_and_surrogate_is_repaired_and_recorded() -> None:
    result = prepare({"a": ["clean", "x"]}, redactor=lambda path, text: f"{text}\x00\udfff")
    assert result.value == {
        "a": [f"clean{REPLACEMENT}{REPLACEMENT}", f"x{REPLACEMENT}{REPLACEMENT}"],
        "_redacted": ["/a/0", "/a/1"],
    }
    assert result.replaced_paths == ("/a/0", "/a/1")
    assert "\x00" not in result.json_text
    assert "\\u0000" not in result.json_text
    assert_consistent(result)


def test_repaired_input_and_repaired_redactor_output_record_the_path_once() -> None:
    result = prepare({"m": "a\x00"}, redactor=lambda path, text: "b\x00")
    assert result.value == {"m": f"b{REPLACEMENT}", "_redacted": ["/m"]}
    assert result.replaced_paths == ("/m",)


def test_redactor_output_that_needs_no_repair_is_not_recorded_as_replaced() -> None:
    result = prepare(
        {"m": "card 4111"}, redactor=lambda path, text: "card \u2022\u2022\u2022\u2022"
    )
    assert result.value == {"m": "card \u2022\u2022\u2022\u2022", "_redacted": ["/m"]}
    assert result.replaced_paths == ()


def test_redactor_output_obeys_the_error_modes() -> None:
    nul = payload_error({"m": ["x"]}, redactor=lambda path, text: "y\x00", nul="error")
    assert nul.path == "/m/0"
    assert "NUL" in str(nul)
    surrogate = payload_error(
        {"m": ["x"]}, redactor=lambda path, text: "y\udc80", surrogates="error"
    )
    assert surrogate.path == "/m/0"
    assert "surrogate" in str(surrogate)


def test_redactor_returning_nan_is_a_configuration_error() -> None:
    bad: Callable[[str, str], Any] = lambda path, text: float("nan")  # noqa: E731
    with pytest.raises(
        ConfigurationError, match=r"redactor returned a float for the string at '/m'"
    ):
        prepare({"m": "x"}, redactor=bad)


def test_default_hook_output_is_repaired_recorded_and_seen_by_the_redactor() -> None:
    seen: list[tuple[str, str]] = []

    def redactor(path: str, text: str) -> str:
        seen.append((path, text))
        return text

    def default(value: object) -> object:
        return {"score": float("nan"), "k\x00": "v\ud800", "inf": [float("-inf")], "ok": "fine"}

    result = prepare({"o": Opaque()}, default=default, redactor=redactor)
    assert result.value == {
        "o": {
            "score": None,
            f"k{REPLACEMENT}": f"v{REPLACEMENT}",
            "inf": [None],
            "ok": "fine",
        }
    }
    assert result.replaced_paths == ("/o/score", f"/o/k{REPLACEMENT}", "/o/inf/0")
    assert seen == [(f"/o/k{REPLACEMENT}", f"v{REPLACEMENT}"), ("/o/ok", "fine")]
    assert_consistent(result)


def test_json_hook_output_is_repaired_and_redacted() -> None:
    result = prepare_payload({"h": WithHook({"token": "t", "text": "a\x00", "n": float("inf")})})
    assert result.value == {
        "h": {"token": "[REDACTED]", "text": f"a{REPLACEMENT}", "n": None},
        "_redacted": ["/h/token"],
    }
    assert result.replaced_paths == ("/h/text", "/h/n")


def test_default_hook_is_only_asked_about_values_without_a_built_in_rule() -> None:
    asked: list[object] = []

    def default(value: object) -> object:
        asked.append(value)
        return "converted"

    when = datetime(2024, 1, 1, tzinfo=UTC)
    result = prepare({"d": when, "u": uuid.UUID(int=5), "o": Opaque()}, default=default)
    assert result.value == {
        "d": "2024-01-01T00:00:00+00:00",
        "u": "00000000-0000-0000-0000-000000000005",
        "o": "converted",
    }
    assert [type(value) for value in asked] == [Opaque]


def test_payload_error_raised_by_a_hook_propagates_unchanged() -> None:
    own = PayloadError("rejected by the hook", path="/custom")

    def default(value: object) -> object:
        raise own

    with pytest.raises(PayloadError) as info:
        prepare({"a": Opaque()}, default=default)
    assert info.value is own
    assert info.value.path == "/custom"


def test_json_hook_wins_over_model_dump() -> None:
    class Both(FakeModel):
        def __json__(self) -> object:
            return "from __json__"

    both = Both()
    assert prepare_payload({"b": both}).value == {"b": "from __json__"}
    assert both.modes == []


@pytest.mark.parametrize("cls", [FakeModel, Inner, StructInner])
def test_model_and_dataclass_classes_are_not_converted(cls: type) -> None:
    error = payload_error({"cls": cls})
    assert error.path == "/cls"
    assert re.search(r"cannot store a value of type [\w.]+ at '/cls'", str(error))


def test_endless_hook_error_names_the_path() -> None:
    class Endless:
        def __json__(self) -> object:
            return Endless()

    with pytest.raises(PayloadError) as info:
        prepare_payload({"a": [{"e": Endless()}]})
    assert info.value.path == "/a/0/e"
    assert "'/a/0/e'" in str(info.value)


# Error messages say what and where.


def test_error_messages_name_the_type_and_the_place() -> None:
    top = str(payload_error(Opaque()))
    assert f"type {Opaque.__module__}.Opaque at the top level" in top
    nested = str(payload_error({"td": [timedelta(1)]}))
    assert "type datetime.timedelta at '/td/0'" in nested
    key = str(payload_error({b"k": 1}))
    assert "key b'k' (bytes) in the object at the top level" in key
    loop: list[object] = []
    loop.append(loop)
    assert "same object as its ancestor at the top level" in str(payload_error(loop))


def test_long_values_in_messages_are_shortened_past_80_characters() -> None:
    fits = b"x" * 77  # repr is exactly 80 characters
    assert f"key {fits!r} (bytes)" in str(payload_error({fits: 1}))
    longer = b"x" * 78  # repr is 81 characters
    message = str(payload_error({longer: 1}))
    assert f"key b'{'x' * 75}... (bytes)" in message
    assert repr(longer) not in message


# NUL, surrogates and non-finite numbers: each rule on its own.


def test_nul_error_mode_still_replaces_lone_surrogates() -> None:
    result = prepare({"s": "a\ud800", "\udc00k": 1}, nul="error")
    assert result.value == {"s": f"a{REPLACEMENT}", f"{REPLACEMENT}k": 1}
    assert result.replaced_paths == ("/s", f"/{REPLACEMENT}k")


def test_surrogate_error_mode_still_replaces_nul() -> None:
    # U+FFFD, which replaces NUL, is not a surrogate.
    result = prepare({"s": "a\x00", "k\x00": "v", "\u00e9": "\u65e5"}, surrogates="error")
    assert result.value == {"s": f"a{REPLACEMENT}", f"k{REPLACEMENT}": "v", "\u00e9": "\u65e5"}
    assert result.replaced_paths == ("/s", f"/k{REPLACEMENT}")


def test_valid_non_ascii_keys_and_values_are_not_recorded_as_replaced() -> None:
    data = {"\u00e9t\u00e9": "\U0001f600", "\U0001f600": ["\u65e5\u672c"]}
    result = prepare_payload(data)
    assert result.value == data
    assert result.replaced_paths == ()


def test_nul_and_surrogate_in_one_key_and_its_value_record_the_path_once() -> None:
    result = prepare_payload({"a\x00\ud800": "b\udfff\x00"})
    key = f"a{REPLACEMENT}{REPLACEMENT}"
    assert result.value == {key: f"b{REPLACEMENT}{REPLACEMENT}"}
    assert result.replaced_paths == (f"/{key}",)


def test_non_finite_key_and_value_record_the_path_once() -> None:
    result = prepare_payload({"m": {float("nan"): float("nan")}, "n": float("inf")})
    assert result.value == {"m": {"null": None}, "n": None}
    assert result.replaced_paths == ("/m/null", "/n")


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({None: 1, float("nan"): 2}, "/null"),
        ({"1.0": 1, 1.0: 2}, "/1.0"),
        ({"x": {str(uuid.UUID(int=7)): 1, uuid.UUID(int=7): 2}}, f"/x/{uuid.UUID(int=7)}"),
        ({"\ud800": 1, REPLACEMENT: 2}, f"/{REPLACEMENT}"),
        ({"false": 1, False: 2}, "/false"),
    ],
)
def test_more_keys_that_collide_after_conversion(payload: object, path: str) -> None:
    error = payload_error(payload)
    assert error.path == path
    assert "already" in str(error)


# Integers: Python's str conversion limit and PostgreSQL's numeric limit.


@pytest.fixture
def int_max_str_digits() -> Any:
    original = sys.get_int_max_str_digits()

    def set_limit(digits: int) -> None:
        sys.set_int_max_str_digits(digits)

    yield set_limit
    sys.set_int_max_str_digits(original)


def test_integers_up_to_pythons_digit_limit_are_kept(int_max_str_digits: Any) -> None:
    int_max_str_digits(4300)
    largest = 10**4300 - 1  # 4300 digits
    result = prepare_payload({"n": [largest, -largest]}, policy=PayloadPolicy(max_bytes=None))
    assert result.value == {"n": [largest, -largest]}
    error = payload_error({"n": [1, 10**4300]}, max_bytes=None)  # 4301 digits
    assert error.path == "/n/1"
    assert "too many digits" in str(error)
    as_key = prepare_payload({largest: 1}, policy=PayloadPolicy(max_bytes=None))
    assert as_dict(as_key) == {str(largest): 1}
    key_error = payload_error({"m": {10**4300: 1}}, max_bytes=None)
    assert key_error.path == "/m"


def test_integers_up_to_postgresqls_digit_limit_are_kept(int_max_str_digits: Any) -> None:
    int_max_str_digits(0)  # no Python limit: PostgreSQL's 131072 digits apply
    largest = -(10**131072 - 1)  # 131072 digits and a sign
    result = prepare_payload({"n": largest}, policy=PayloadPolicy(max_bytes=None))
    assert result.value == {"n": largest}
    error = payload_error({"n": 10**131072}, max_bytes=None)  # 131073 digits
    assert error.path == "/n"
    assert "131072" in str(error)


# Depth and cycles at the limits.


def test_max_depth_bounds_are_inclusive() -> None:
    assert MAX_DEPTH_LIMIT == 256
    prepare(nested_lists(256), max_depth=256)
    deepest = payload_error(nested_lists(257), max_depth=256)
    assert deepest.path == "/0" * 256
    assert "max_depth=256" in str(deepest)
    assert prepare({"a": 1, "b": "x"}, max_depth=1).value == {"a": 1, "b": "x"}
    assert prepare([], max_depth=1).value == []
    error = payload_error({"a": 1, "b": []}, max_depth=1)
    assert error.path == "/b"
    assert "max_depth=1" in str(error)


def test_sibling_containers_do_not_add_up_to_the_depth() -> None:
    siblings = {"a": [{"n": i} for i in range(300)], "b": [[1], (2,), {3}]}
    result = prepare(siblings, max_depth=3)
    assert as_dict(result)["a"][299] == {"n": 299}
    assert payload_error({"a": [{}, {"n": [1]}]}, max_depth=3).path == "/a/1/n"


def test_hooks_add_no_level_but_what_they_return_does() -> None:
    assert prepare({"h": WithHook({"x": 1})}, max_depth=2).value == {"h": {"x": 1}}
    assert payload_error({"h": WithHook({"x": [1]})}, max_depth=2).path == "/h/x"
    assert payload_error({"s": {1}}, max_depth=1).path == "/s"
    assert payload_error({"d": Inner(datetime(2024, 1, 1), frozenset())}, max_depth=1).path == "/d"


def test_cycle_reaching_the_depth_limit_is_reported_as_a_cycle() -> None:
    first: list[object] = []
    second: list[object] = [first]
    first.append(second)
    error = payload_error(first, max_depth=2)
    assert error.path == "/0/0"
    assert "cycle" in str(error)
    loop: list[object] = []
    loop.append(loop)
    tight = payload_error(loop, max_depth=1)
    assert tight.path == "/0"
    assert "cycle" in str(tight)


# Size cap and truncation at the boundaries.


def test_truncate_mode_keeps_a_payload_exactly_at_the_cap() -> None:
    cap = 300
    overhead = len('{"x":""}')
    at_cap = prepare({"x": "a" * (cap - overhead)}, max_bytes=cap, oversize="truncate")
    assert at_cap.truncated is False
    assert at_cap.size_bytes == cap
    over = prepare({"x": "a" * (cap - overhead + 1)}, max_bytes=cap, oversize="truncate")
    assert over.truncated is True
    assert as_dict(over)["original_bytes"] == cap + 1
    assert over.size_bytes == cap  # plain ASCII: the preview fills the cap exactly


@pytest.mark.parametrize("cap", [256, 257, 1000])
@pytest.mark.parametrize("text", ["a" * 5000, '"\\\n' * 2000, "\u00e9\U0001f600" * 2000])
def test_truncation_preview_is_the_longest_that_fits(cap: int, text: str) -> None:
    full = prepare({"t": text}, max_bytes=None)
    result = prepare({"t": text}, max_bytes=cap, oversize="truncate")
    marker = as_dict(result)
    preview = marker["preview"]
    assert full.json_text.startswith(preview)
    assert result.size_bytes <= cap
    one_more = {**marker, "preview": full.json_text[: len(preview) + 1]}
    assert len(json.dumps(one_more, ensure_ascii=False, separators=(",", ":")).encode()) > cap


def test_truncation_preview_defaults_to_2048_characters() -> None:
    assert DEFAULT_PREVIEW_CHARS == 2048
    assert PayloadPolicy().preview_chars == 2048
    result = prepare({"x": "a" * 10_000}, max_bytes=5000, oversize="truncate")
    assert len(as_dict(result)["preview"]) == 2048
    exact = prepare({"x": "a" * 10_000}, max_bytes=5000, oversize="truncate", preview_chars=11)
    assert as_dict(exact)["preview"] == '{"x":"aaaaa'


# Redaction records.


def test_key_and_redactor_redactions_are_listed_once_in_document_order() -> None:
    def redactor(path: str, text: str) -> str:
        return "[EMAIL]" if "@" in text else text

    data = {"to": "a@b.c", "password": "a@b.c", "cc": ["x", "d@e.f"], "api_key": "k"}
    result = prepare(data, redactor=redactor)
    expected = ["/to", "/password", "/cc/1", "/api_key"]
    assert result.value == {
        "to": "[EMAIL]",
        "password": "[REDACTED]",
        "cc": ["x", "[EMAIL]"],
        "api_key": "[REDACTED]",
        "_redacted": expected,
    }
    assert list(result.redacted_paths) == expected


# Policy bounds.


def test_policy_bounds_are_inclusive_and_named_in_errors() -> None:
    assert MIN_MAX_BYTES == 256
    assert PayloadPolicy(max_depth=1).max_depth == 1
    assert PayloadPolicy(max_depth=MAX_DEPTH_LIMIT).max_depth == 256
    assert PayloadPolicy(max_bytes=256).max_bytes == 256
    assert PayloadPolicy(preview_chars=0).preview_chars == 0
    assert PayloadPolicy(max_bytes=None).max_bytes is None
    with pytest.raises(ConfigurationError, match="use an int between 1 and 256"):
        PayloadPolicy(max_depth=257)
    with pytest.raises(ConfigurationError, match="use an int at least 256"):
        PayloadPolicy(max_bytes=255)
    with pytest.raises(ConfigurationError, match="use an int at least 0"):
        PayloadPolicy(preview_chars=-1)
    with pytest.raises(ConfigurationError, match="redaction_record_key=5"):
        PayloadPolicy(redaction_record_key=5)  # type: ignore[arg-type]


def test_rule_errors_say_whether_a_key_or_a_string_broke_the_rule() -> None:
    assert str(payload_error({"a": [{"b": "x\x00"}]}, nul="error")).startswith(
        "string 'x\\x00' at '/a/0/b' contains NUL"
    )
    assert str(payload_error({"a": {"b\x00": 1}}, nul="error")).startswith(
        "key 'b\\x00' in the object at '/a' contains NUL"
    )
    assert str(payload_error(["\ud800"], surrogates="error")).startswith(
        "string '\\ud800' at '/0' contains a lone surrogate"
    )
    assert str(payload_error({"\ud800": 1}, surrogates="error")).startswith(
        "key '\\ud800' in the object at the top level contains a lone surrogate"
    )


def test_hook_errors_name_the_hook() -> None:
    class Broken:
        def __json__(self) -> object:
            raise RuntimeError("boom")

    class BrokenModel:
        def model_dump(self, *, mode: str) -> object:
            raise RuntimeError("bad dump")

    def default(value: object) -> object:
        raise TypeError("no way")

    assert "__json__() raised RuntimeError: boom for the " in str(payload_error([Broken()]))
    assert "model_dump() raised RuntimeError: bad dump" in str(payload_error([BrokenModel()]))
    rejected = str(payload_error([Opaque()], default=default))
    assert "PayloadPolicy.default raised TypeError: no way" in rejected
    unchanged = str(payload_error([Opaque()], default=lambda value: value))
    assert unchanged.startswith(f"PayloadPolicy.default returned the {Opaque.__module__}.Opaque")


def test_policy_choice_errors_list_the_valid_options() -> None:
    with pytest.raises(ConfigurationError, match=r"use 'error' or 'truncate'$"):
        PayloadPolicy(oversize="drop")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"use 'null' or 'error'$"):
        PayloadPolicy(non_finite="zero")  # type: ignore[arg-type]


def test_converted_keys_are_not_recorded_as_replaced() -> None:
    data = {uuid.UUID(int=8): 1, Kind.CHAT: 2, 3: 3, 2.5: 4, True: 5, None: 6}
    result = prepare_payload({"m": data})
    assert len(as_dict(result)["m"]) == 6
    assert result.replaced_paths == ()


def test_prepared_payload_is_frozen() -> None:
    result = prepare_payload({"a": 1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.json_text = "{}"  # type: ignore[misc]


def test_redactor_returning_an_equal_new_string_keeps_the_text() -> None:
    result = prepare({"m": ["abc", "d"]}, redactor=lambda path, text: "".join(list(text)))
    assert result.value == {"m": ["abc", "d"]}
    assert result.redacted_paths == ()


def test_policy_repr_shows_the_settings_only() -> None:
    text = repr(PayloadPolicy(max_depth=5))
    assert text.startswith("PayloadPolicy(max_depth=5, max_bytes=262144, ")
    assert "_redact_suffixes" not in text


def test_prepared_payload_defaults_describe_an_unchanged_payload() -> None:
    prepared = PreparedPayload(value={}, json_text="{}", size_bytes=2)
    assert prepared.redacted_paths == ()
    assert prepared.replaced_paths == ()
    assert prepared.truncated is False


def test_a_policy_shows_only_its_settings() -> None:
    shown = repr(PayloadPolicy())
    assert shown.startswith("PayloadPolicy(")
    assert "_masker" not in shown
    assert "_redact_suffixes" not in shown


class Header(enum.StrEnum):
    COOKIE = "Cookie"


class PlainHeader(enum.Enum):
    AUTHORIZATION = "Authorization"
    ACCEPT = "Accept"


def test_a_header_pair_named_by_an_enum_is_redacted_like_its_text() -> None:
    pairs = [
        [Header.COOKIE, "session=abc123"],
        (PlainHeader.AUTHORIZATION, "Basic dXNlcjpwdw=="),
        [PlainHeader.ACCEPT, "*/*"],
    ]
    result = prepare_payload({"headers": pairs})
    assert result.json_text == (
        '{"headers":[["Cookie","[REDACTED]"],["Authorization","[REDACTED]"],["Accept","*/*"]],'
        '"_redacted":["/headers/0/1","/headers/1/1"]}'
    )


class WithUnset(msgspec.Struct):
    a: int
    b: int | msgspec.UnsetType = msgspec.UNSET


@dataclasses.dataclass
class NeverSet:
    a: int
    b: int = dataclasses.field(init=False)


def test_a_struct_field_at_unset_is_left_out_as_msgspec_leaves_it() -> None:
    result = prepare_payload({"s": WithUnset(1), "t": WithUnset(1, 2)})
    assert result.json_text == '{"s":{"a":1},"t":{"a":1,"b":2}}'
    encoded = msgspec.json.encode({"s": WithUnset(1), "t": WithUnset(1, 2)})
    assert result.json_text == encoded.decode()


def test_a_dataclass_field_never_set_is_a_payload_error_naming_it() -> None:
    named = r"^the field 'b' of the .*NeverSet at '/x/0' has no value"
    with pytest.raises(PayloadError, match=named) as raised:
        prepare_payload({"x": [NeverSet(1)]})
    assert raised.value.path == "/x/0"


def test_a_record_key_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="without NUL or lone surrogates"):
        PayloadPolicy(redaction_record_key="_red\ud800")


def test_converted_containers_too_deep_for_the_stack_name_the_depth_and_the_fix() -> None:
    """Within max_depth, but each namedtuple level takes several stack frames."""

    class Level(NamedTuple):
        inner: object

    value: object = "leaf"
    for _ in range(MAX_DEPTH_LIMIT - 1):
        value = Level(value)
    named = r"recursion limit at '/0/0.*\(depth \d+\): each level"
    with pytest.raises(PayloadError, match=named) as raised:
        prepare_payload(value, policy=PayloadPolicy(max_depth=MAX_DEPTH_LIMIT))
    assert "flatten the payload" in str(raised.value)
