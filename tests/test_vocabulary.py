"""Tests for the event vocabulary and the checks on the denormalized columns."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from eventlog_persist import ApprovalStatus, EventFieldRules, EventType
from eventlog_persist import _schema as schema
from eventlog_persist._vocabulary import (
    APPROVAL_STATUS_MAX_LENGTH,
    DEFAULT_FIELD_RULES,
    DEFAULT_MAX_FUTURE,
    ERROR_CODE_MAX_LENGTH,
    EVENT_TYPE_MAX_LENGTH,
    EVENT_TYPE_PATTERN,
    OTEL_OPERATION_NAMES,
    TOOL_NAME_MAX_LENGTH,
    validate_created_at,
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


def test_default_rules_allow_anything_valid_up_to_a_day_ahead() -> None:
    assert EventFieldRules() == DEFAULT_FIELD_RULES
    for field in dataclasses.fields(EventFieldRules):
        if field.name != "max_future":
            assert getattr(DEFAULT_FIELD_RULES, field.name) is None
    assert DEFAULT_FIELD_RULES.max_future == DEFAULT_MAX_FUTURE == timedelta(days=1)


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


# --- characters no text column takes ---------------------------------------------------------

ALL_FIELDS = ["event_type", "error_code", "tool_name", "approval_status"]

# Each refused character, its code point as the message names it, and a word of the reason.
FORBIDDEN = [
    ("\x00", "U+0000", "NUL"),
    ("\x01", "U+0001", "control character"),
    ("\t", "U+0009", "tab"),
    ("\n", "U+000A", "line feed"),
    ("\r", "U+000D", "carriage return"),
    ("\x1b", "U+001B", "control character"),
    ("\x1f", "U+001F", "control character"),
    ("\x7f", "U+007F", "DEL"),
    ("\x80", "U+0080", "control character"),
    ("\x85", "U+0085", "control character"),
    ("\x9f", "U+009F", "control character"),
    ("\u2028", "U+2028", "line separator"),
    ("\u2029", "U+2029", "paragraph separator"),
    ("\ud800", "U+D800", "lone surrogate"),
    ("\udbff", "U+DBFF", "lone surrogate"),
    ("\udc80", "U+DC80", "lone surrogate"),
    ("\udfff", "U+DFFF", "lone surrogate"),
]


@pytest.mark.parametrize("field", ALL_FIELDS)
@pytest.mark.parametrize(("char", "code", "word"), FORBIDDEN)
def test_every_text_column_refuses_control_characters_and_lone_surrogates(
    field: str, char: str, code: str, word: str
) -> None:
    value = f"ab{char}cd"  # inside the value: no whitespace at either end to strip
    message = rejection(**{field: value})
    assert message.startswith(f"{field} 'ab")
    assert f"{word} ({code}) at index 2" in message
    assert "remove" in message
    # The character itself never reaches the message: it is shown escaped, so the message
    # can be logged and encoded as is.
    assert char not in message
    assert message.isprintable()
    message.encode("utf-8")


def test_the_position_is_that_of_the_first_refused_character() -> None:
    message = rejection(tool_name="x" * 300 + "\udc80" + "\x00")
    assert "lone surrogate (U+DC80) at index 300" in message
    assert "'... (302 characters) contains" in message  # the value itself is cut short


@pytest.mark.parametrize("field", ["error_code", "tool_name", "approval_status"])
@pytest.mark.parametrize(
    "value",
    [
        "caf\u00e9",
        "a b",
        "a\u00a0b",  # no-break space: whitespace inside, not a control character
        "\U0001f527 wrench",  # outside the BMP: a surrogate pair in UTF-16, one code point here
        "\ud7ff\ue000",  # the code points on either side of the surrogate block
        "a ~\xa0b",  # on either side of DEL and the C1 block
        "a\u2027\u202ab",
    ],
)
def test_other_characters_are_accepted(field: str, value: str) -> None:
    validate_fields(**{"event_type": "tool_call", field: value})


def test_surrounding_whitespace_is_reported_before_the_character() -> None:
    # Stripping is the whole fix for a trailing newline, so that is what the message says.
    assert "strip it" in rejection(tool_name="search\n")
    assert "tab (U+0009)" in rejection(tool_name="search\ttool")


@pytest.mark.parametrize(
    "rules_field", ["event_types", "error_codes", "tool_names", "approval_statuses"]
)
def test_rules_refuse_allowed_values_with_control_characters(rules_field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        EventFieldRules(**{rules_field: {"fine", "bad\ud800"}})
    message = str(info.value)
    assert "can never be stored" in message
    assert "lone surrogate (U+D800) at index 3" in message


# --- created_at ------------------------------------------------------------------------------

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
MINUS_12 = timezone(timedelta(hours=-12))
PLUS_14 = timezone(timedelta(hours=14))
US = timedelta(microseconds=1)
NO_LIMIT = EventFieldRules(max_future=None)


def time_rejection(created_at: object, rules: EventFieldRules = NO_LIMIT) -> str:
    with pytest.raises(ValidationError) as info:
        validate_created_at(created_at, rules=rules, now=NOW)
    return str(info.value)


@pytest.mark.parametrize(
    "created_at",
    [
        datetime(1, 1, 2, tzinfo=UTC),
        datetime(1, 1, 2, 14, tzinfo=PLUS_14),
        datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(9999, 12, 30, 11, 59, 59, 999999, tzinfo=MINUS_12),
        NOW,
    ],
)
def test_times_from_the_second_day_of_year_1_to_the_eve_of_year_10000_are_accepted(
    created_at: datetime,
) -> None:
    validate_created_at(created_at, rules=NO_LIMIT, now=NOW)


@pytest.mark.parametrize(
    ("created_at", "shown"),
    [
        # The case: a valid local time that is year 10000 in UTC.
        (datetime(9999, 12, 31, 23, 59, tzinfo=MINUS_12), "after the year 9999 in UTC"),
        (datetime(1, 1, 1, 1, tzinfo=PLUS_14), "before the year 1 in UTC"),
        (datetime.max.replace(tzinfo=UTC), "9999-12-31T23:59:59.999999+00:00 is outside"),
        (datetime.min.replace(tzinfo=UTC), "0001-01-01T00:00:00+00:00 is outside"),
        (datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC) + US, "is outside"),
        (datetime(1, 1, 2, tzinfo=UTC) - US, "is outside"),
        (
            datetime(9999, 12, 31, 10, tzinfo=timezone(timedelta(hours=1))),
            "(9999-12-31T09:00:00+00:00 in UTC) is outside",
        ),
    ],
)
def test_times_python_cannot_read_back_in_every_time_zone_are_refused(
    created_at: datetime, shown: str
) -> None:
    message = time_rejection(created_at)
    assert message.startswith(f"created_at {created_at.isoformat()}")
    assert shown in message
    assert "0001-01-02T00:00:00+00:00 to 9999-12-30T23:59:59.999999+00:00" in message
    assert "leave it out" in message


@pytest.mark.parametrize("created_at", [datetime(2026, 1, 1), "2026-01-01T00:00:00Z", 1.5e9])
def test_naive_or_non_datetime_times_are_refused(created_at: object) -> None:
    assert "timezone-aware datetime" in time_rejection(created_at)


def test_max_future_bounds_how_far_ahead_of_the_clock_a_time_may_be() -> None:
    rules = EventFieldRules(max_future=timedelta(hours=1))
    validate_created_at(NOW + timedelta(hours=1), rules=rules, now=NOW)
    validate_created_at(NOW - timedelta(days=3650), rules=rules, now=NOW)
    ahead = (NOW + timedelta(hours=1) + US).astimezone(MINUS_12)
    message = time_rejection(ahead, rules)
    assert message.startswith(f"created_at {ahead.isoformat()} is 1:00:00.000001 ahead")
    assert "(2026-06-01T12:00:00+00:00)" in message
    assert "EventFieldRules(max_future=1:00:00)" in message
    assert "None: no limit" in message


def test_default_max_future_is_one_day() -> None:
    validate_created_at(NOW + timedelta(days=1), now=NOW)
    message = time_rejection(NOW + timedelta(days=1, seconds=1), DEFAULT_FIELD_RULES)
    assert "max_future=1 day, 0:00:00" in message
    # Without a limit, any time Python reads back is accepted.
    validate_created_at(datetime(9999, 12, 30, tzinfo=UTC), rules=NO_LIMIT, now=NOW)
    # The clock is read when none is given.
    validate_created_at(datetime.now(UTC) + timedelta(hours=23))
    with pytest.raises(ValidationError, match="ahead of the current time"):
        validate_created_at(datetime.now(UTC) + timedelta(days=2))


def test_zero_max_future_refuses_any_future_time() -> None:
    rules = EventFieldRules(max_future=timedelta(0))
    validate_created_at(NOW, rules=rules, now=NOW)
    assert "0:00:00.000001 ahead" in time_rejection(NOW + US, rules)


@pytest.mark.parametrize("bad", [3600, timedelta(seconds=-1), True, "1 day"])
def test_rules_reject_a_bad_max_future(bad: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        EventFieldRules(max_future=bad)  # type: ignore[arg-type]
    assert f"EventFieldRules(max_future={bad!r}) is not valid" in str(info.value)
    assert "None for no limit" in str(info.value)
