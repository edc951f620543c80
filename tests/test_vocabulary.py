"""Tests for the event vocabulary and the checks on the denormalized columns."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from eventlog_persist import ApprovalStatus, EventFieldRules, EventType
from eventlog_persist import _schema as schema
from eventlog_persist._vocabulary import (
    APPROVAL_STATUS_MAX_LENGTH,
    DEFAULT_FIELD_RULES,
    ERROR_CODE_MAX_LENGTH,
    EVENT_TYPE_MAX_LENGTH,
    EVENT_TYPE_PATTERN,
    OTEL_OPERATION_NAMES,
    TOOL_NAME_MAX_LENGTH,
    validate_fields,
)
from eventlog_persist.exceptions import ConfigurationError, EventLogError, ValidationError

OTEL_NAMES = {
    "chat",
    "invoke_agent",
    "create_agent",
    "execute_tool",
    "embeddings",
    "generate_content",
    "text_completion",
}

OPTIONAL_FIELDS = [
    ("error_code", ERROR_CODE_MAX_LENGTH, "ERROR_CODE_MAX_LENGTH"),
    ("tool_name", TOOL_NAME_MAX_LENGTH, "TOOL_NAME_MAX_LENGTH"),
    ("approval_status", APPROVAL_STATUS_MAX_LENGTH, "APPROVAL_STATUS_MAX_LENGTH"),
]


def rejection(**fields: Any) -> str:
    fields.setdefault("event_type", "tool_call")
    with pytest.raises(ValidationError) as info:
        validate_fields(**fields)
    return str(info.value)


# --- constants and vocabulary ----------------------------------------------------------------


def test_length_limits_match_the_table() -> None:
    assert (EVENT_TYPE_MAX_LENGTH, ERROR_CODE_MAX_LENGTH) == (64, 128)
    assert (TOOL_NAME_MAX_LENGTH, APPROVAL_STATUS_MAX_LENGTH) == (128, 32)
    assert EVENT_TYPE_MAX_LENGTH == schema.EVENT_TYPE_LENGTH
    assert ERROR_CODE_MAX_LENGTH == schema.ERROR_CODE_LENGTH
    assert TOOL_NAME_MAX_LENGTH == schema.TOOL_NAME_LENGTH
    assert APPROVAL_STATUS_MAX_LENGTH == schema.APPROVAL_STATUS_LENGTH


def test_event_types() -> None:
    expected = {
        "user_message",
        "agent_message",
        "tool_call",
        "tool_result",
        "approval_requested",
        "approval_granted",
        "approval_denied",
        "error",
    } | OTEL_NAMES
    assert {member.value for member in EventType} == expected
    assert str(EventType.TOOL_CALL) == "tool_call"
    assert isinstance(EventType.TOOL_CALL, str)
    assert EventType("execute_tool") is EventType.EXECUTE_TOOL


@pytest.mark.parametrize("member", list(EventType))
def test_every_event_type_passes_the_checks(member: EventType) -> None:
    assert EVENT_TYPE_PATTERN.fullmatch(member.value)
    validate_fields(event_type=member)
    validate_fields(event_type=member.value)


def test_otel_operation_names() -> None:
    assert set(OTEL_OPERATION_NAMES.values()) == OTEL_NAMES
    for member, operation in OTEL_OPERATION_NAMES.items():
        assert isinstance(member, EventType)
        assert member.value == operation
    with pytest.raises(TypeError):
        OTEL_OPERATION_NAMES[EventType.ERROR] = "error"  # type: ignore[index]


def test_approval_statuses() -> None:
    assert [status.value for status in ApprovalStatus] == [
        "pending",
        "granted",
        "denied",
        "expired",
    ]
    for status in ApprovalStatus:
        validate_fields(event_type=EventType.APPROVAL_REQUESTED, approval_status=status)


# --- event_type ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event_type",
    ["x", "Chat", "myapp.review:done", "a-b_c.d:e9", "a" * EVENT_TYPE_MAX_LENGTH],
)
def test_custom_event_types_are_accepted(event_type: str) -> None:
    validate_fields(event_type=event_type)


@pytest.mark.parametrize(
    ("event_type", "fragments"),
    [
        ("", ["event_type is empty"]),
        (" chat", ["' chat'", "whitespace", "strip"]),
        ("chat\n", ["whitespace"]),
        ("chat\x00", ["NUL"]),
        ("1chat", ["'1chat'", "does not match", "ASCII letter"]),
        ("_chat", ["does not match"]),
        ("chat type", ["does not match"]),
        ("chat/x", ["does not match"]),
        ("caf\u00e9", ["does not match"]),
        ("a" * 65, ["65 characters", "limit of 64", "EVENT_TYPE_MAX_LENGTH", "shorten"]),
        (5, ["event_type must be a str", "int 5"]),
        (None, ["event_type must be a str", "None"]),
        (b"chat", ["must be a str", "bytes"]),
    ],
)
def test_bad_event_types(event_type: object, fragments: list[str]) -> None:
    message = rejection(event_type=event_type)
    assert message.startswith("event_type")
    for fragment in fragments:
        assert fragment in message


def test_long_values_are_shortened_in_messages() -> None:
    message = rejection(event_type="x" * 500)
    assert "500 characters" in message
    assert "x" * 41 not in message
    assert len(message) < 300


# --- optional columns ------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "limit", "limit_name"), OPTIONAL_FIELDS)
def test_optional_fields_accept_none_and_values_up_to_the_limit(
    field: str, limit: int, limit_name: str
) -> None:
    for value in (None, "v" * limit, "HTTP 500 / weird-ch@rs \u00e9"[:limit]):
        fields: dict[str, Any] = {"event_type": "tool_call", field: value}
        validate_fields(**fields)


@pytest.mark.parametrize(("field", "limit", "limit_name"), OPTIONAL_FIELDS)
def test_optional_fields_over_the_limit(field: str, limit: int, limit_name: str) -> None:
    message = rejection(**{field: "v" * (limit + 1)})
    assert message.startswith(field)
    assert f"{limit + 1} characters" in message
    assert f"limit of {limit}" in message
    assert limit_name in message


@pytest.mark.parametrize(("field", "limit", "limit_name"), OPTIONAL_FIELDS)
@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "pass None"),
        (" x", "whitespace"),
        ("x\t", "whitespace"),
        ("a\x00b", "NUL"),
        (7, "a str or None, got int 7"),
    ],
)
def test_optional_fields_bad_values(
    field: str, limit: int, limit_name: str, value: object, fragment: str
) -> None:
    message = rejection(**{field: value})
    assert message.startswith(field)
    assert fragment in message


def test_event_type_is_checked_before_the_optional_fields() -> None:
    message = rejection(event_type="", tool_name="")
    assert message.startswith("event_type")


# --- allowed sets ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "rules_field", "allowed", "bad"),
    [
        ("event_type", "event_types", {"tool_call", "chat"}, "user_message"),
        ("error_code", "error_codes", {"E_TIMEOUT"}, "E_OTHER"),
        ("tool_name", "tool_names", {"search", "fetch"}, "shell"),
        ("approval_status", "approval_statuses", {"pending"}, "granted"),
    ],
)
def test_allowed_sets(field: str, rules_field: str, allowed: set[str], bad: str) -> None:
    rules = EventFieldRules(**{rules_field: frozenset(allowed)})
    base = {"event_type": "tool_call"}
    for value in allowed:
        validate_fields(**{**base, field: value}, rules=rules)
    with pytest.raises(ValidationError) as info:
        validate_fields(**{**base, field: bad}, rules=rules)
    message = str(info.value)
    assert message.startswith(f"{field} {bad!r} is not one of the allowed")
    for value in allowed:
        assert repr(value) in message
    assert f"EventFieldRules({rules_field}=...)" in message


def test_allowed_set_does_not_require_optional_fields() -> None:
    rules = EventFieldRules(tool_names=frozenset({"search"}))
    validate_fields(event_type="chat", tool_name=None, rules=rules)


def test_closed_vocabulary_accepts_enum_members_and_their_strings() -> None:
    rules = EventFieldRules(
        event_types=frozenset(EventType), approval_statuses=frozenset(ApprovalStatus)
    )
    validate_fields(event_type="chat", approval_status=ApprovalStatus.DENIED, rules=rules)
    validate_fields(event_type=EventType.ERROR, approval_status="expired", rules=rules)
    with pytest.raises(ValidationError, match=r"myapp\.custom"):
        validate_fields(event_type="myapp.custom", rules=rules)


def test_long_allowed_lists_are_shortened() -> None:
    rules = EventFieldRules(tool_names=frozenset(f"tool{i:02}" for i in range(25)))
    message = rejection(tool_name="other", rules=rules)
    assert "'tool09'" in message
    assert "'tool10'" not in message
    assert "and 15 more" in message


# --- EventFieldRules -------------------------------------------------------------------------


def test_default_rules_allow_anything_valid() -> None:
    assert EventFieldRules() == DEFAULT_FIELD_RULES
    for field in dataclasses.fields(EventFieldRules):
        assert getattr(DEFAULT_FIELD_RULES, field.name) is None


def test_rules_are_frozen_keyword_only_and_store_frozensets() -> None:
    rules = EventFieldRules(tool_names={"a"})  # type: ignore[arg-type]
    assert rules.tool_names == frozenset({"a"})
    assert isinstance(rules.tool_names, frozenset)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rules.tool_names = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        EventFieldRules(None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"event_types": frozenset()}, "reject every event"),
        ({"event_types": "chat"}, "event_types='chat'"),
        ({"tool_names": "a"}, "tool_names='a'"),
        ({"event_types": frozenset({"bad type"})}, "does not match"),
        ({"error_codes": frozenset({"e" * 129})}, "limit of 128"),
        ({"tool_names": frozenset({""})}, "tool_name is empty"),
        ({"approval_statuses": frozenset({"x" * 33})}, "limit of 32"),
        ({"approval_statuses": frozenset({3})}, "got int 3"),
    ],
)
def test_rules_reject_bad_allowed_sets(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        EventFieldRules(**kwargs)
    assert fragment in str(info.value)


def test_empty_optional_allowed_set_means_only_none() -> None:
    rules = EventFieldRules(error_codes=frozenset())
    validate_fields(event_type="chat", rules=rules)
    with pytest.raises(ValidationError, match="allowed error codes \\(none\\)"):
        validate_fields(event_type="error", error_code="E1", rules=rules)


def test_validation_error_hierarchy() -> None:
    with pytest.raises(ValidationError) as info:
        validate_fields(event_type="")
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, EventLogError)
