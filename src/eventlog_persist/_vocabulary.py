"""Event types and approval statuses, and the checks on the text columns and ``created_at``."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final, cast

from eventlog_persist._schema import (
    APPROVAL_STATUS_LENGTH,
    CREATED_AT_MAX,
    CREATED_AT_MIN,
    ERROR_CODE_LENGTH,
    EVENT_TYPE_LENGTH,
    REQUEST_ID_LENGTH,
    SPAN_ID_LENGTH,
    TOOL_NAME_LENGTH,
    TRACE_ID_LENGTH,
)
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = [
    "APPROVAL_STATUS_MAX_LENGTH",
    "DEFAULT_FIELD_RULES",
    "DEFAULT_MAX_FUTURE",
    "ERROR_CODE_MAX_LENGTH",
    "EVENT_TYPE_MAX_LENGTH",
    "EVENT_TYPE_PATTERN",
    "OTEL_OPERATION_NAMES",
    "TOOL_NAME_MAX_LENGTH",
    "ApprovalStatus",
    "EventFieldRules",
    "EventType",
    "check_key",
    "check_request_id",
    "forbidden_character",
    "validate_created_at",
    "validate_fields",
]

EVENT_TYPE_MAX_LENGTH: Final = EVENT_TYPE_LENGTH
"""Most characters in ``event_type`` (64)."""
ERROR_CODE_MAX_LENGTH: Final = ERROR_CODE_LENGTH
"""Most characters in ``error_code`` (128)."""
TOOL_NAME_MAX_LENGTH: Final = TOOL_NAME_LENGTH
"""Most characters in ``tool_name`` (128)."""
APPROVAL_STATUS_MAX_LENGTH: Final = APPROVAL_STATUS_LENGTH
"""Most characters in ``approval_status`` (32)."""

EVENT_TYPE_PATTERN: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
"""What a whole ``event_type`` must match: an ASCII letter, then ASCII letters, digits, ``_.:-``.

Dots and colons leave room for namespaced custom types such as ``"myapp.review:done"``.
"""

DEFAULT_MAX_FUTURE: Final = timedelta(days=1)
"""How far ahead of the clock ``created_at`` may be, unless `EventFieldRules` says otherwise."""

# Characters no text column takes: C0 controls (tab and newlines included), DEL, C1 controls,
# the Unicode line and paragraph separators, and lone surrogates (UTF-8 cannot encode them).
_FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CHARACTER_NAMES: Final = {
    "\t": "tab",
    "\n": "line feed",
    "\r": "carriage return",
    "\x7f": "DEL",
    "\u2028": "line separator",
    "\u2029": "paragraph separator",
}


class EventType(StrEnum):
    """Common event types; the vocabulary is open, so any other name that passes the checks works.

    The first eight describe an agent conversation step by step. The last seven are the
    OpenTelemetry GenAI ``gen_ai.operation.name`` values, spelled the same (see
    `OTEL_OPERATION_NAMES`), for events that record a whole operation. ``TOOL_CALL`` is the
    model asking for a tool; ``EXECUTE_TOOL`` is the tool run itself.
    """

    USER_MESSAGE = "user_message"
    """A message from the user to the agent."""
    AGENT_MESSAGE = "agent_message"
    """A message from the agent to the user."""
    TOOL_CALL = "tool_call"
    """The model asked for a tool to be called."""
    TOOL_RESULT = "tool_result"
    """A tool call's result went back to the model."""
    APPROVAL_REQUESTED = "approval_requested"
    """The agent asked a human to approve an action."""
    APPROVAL_GRANTED = "approval_granted"
    """A human approved the action."""
    APPROVAL_DENIED = "approval_denied"
    """A human refused the action."""
    ERROR = "error"
    """Something failed; ``error_code`` says what."""
    CHAT = "chat"
    """A chat completion (OTel ``chat``)."""
    INVOKE_AGENT = "invoke_agent"
    """An agent was invoked (OTel ``invoke_agent``)."""
    CREATE_AGENT = "create_agent"
    """An agent was created (OTel ``create_agent``)."""
    EXECUTE_TOOL = "execute_tool"
    """A tool was executed (OTel ``execute_tool``)."""
    EMBEDDINGS = "embeddings"
    """Embeddings were computed (OTel ``embeddings``)."""
    GENERATE_CONTENT = "generate_content"
    """Multimodal content was generated (OTel ``generate_content``)."""
    TEXT_COMPLETION = "text_completion"
    """A legacy text completion (OTel ``text_completion``)."""


OTEL_OPERATION_NAMES: Final[Mapping[EventType, str]] = MappingProxyType(
    {
        EventType.CHAT: "chat",
        EventType.INVOKE_AGENT: "invoke_agent",
        EventType.CREATE_AGENT: "create_agent",
        EventType.EXECUTE_TOOL: "execute_tool",
        EventType.EMBEDDINGS: "embeddings",
        EventType.GENERATE_CONTENT: "generate_content",
        EventType.TEXT_COMPLETION: "text_completion",
    }
)
"""Event types that are OpenTelemetry GenAI operations, to their ``gen_ai.operation.name``."""


class ApprovalStatus(StrEnum):
    """Where a human approval stands; other statuses that pass the checks are allowed too."""

    PENDING = "pending"
    """Asked for, not answered yet (goes with ``approval_requested``)."""
    GRANTED = "granted"
    """Approved (goes with ``approval_granted``)."""
    DENIED = "denied"
    """Refused (goes with ``approval_denied``)."""
    EXPIRED = "expired"
    """Not answered in time; the action did not run."""


@dataclass(frozen=True, slots=True)
class _Column:
    name: str
    max_length: int
    limit_name: str
    required: bool
    rules_field: str
    plural: str


_EVENT_TYPE: Final = _Column(
    "event_type", EVENT_TYPE_MAX_LENGTH, "EVENT_TYPE_MAX_LENGTH", True, "event_types", "event types"
)
_ERROR_CODE: Final = _Column(
    "error_code",
    ERROR_CODE_MAX_LENGTH,
    "ERROR_CODE_MAX_LENGTH",
    False,
    "error_codes",
    "error codes",
)
_TOOL_NAME: Final = _Column(
    "tool_name", TOOL_NAME_MAX_LENGTH, "TOOL_NAME_MAX_LENGTH", False, "tool_names", "tool names"
)
_APPROVAL_STATUS: Final = _Column(
    "approval_status",
    APPROVAL_STATUS_MAX_LENGTH,
    "APPROVAL_STATUS_MAX_LENGTH",
    False,
    "approval_statuses",
    "approval statuses",
)


def _show(value: str) -> str:
    if len(value) <= 40:
        return repr(value)
    return f"{value[:40]!r}... ({len(value)} characters)"


def forbidden_character(name: str, value: str) -> str | None:
    """Say which character of ``value`` no text column may hold, and where; or return None.

    The message shows the value with ``repr`` escapes and names the character by its code
    point, so it never carries the raw character into a log line.
    """
    found = _FORBIDDEN.search(value)
    if found is None:
        return None
    char = found.group()
    where = f"(U+{ord(char):04X}) at index {found.start()}"
    if char == "\x00":
        why = f"NUL {where}, which PostgreSQL text columns cannot store; remove it"
    elif "\ud800" <= char <= "\udfff":
        why = (
            f"a lone surrogate {where}, which UTF-8 cannot encode (text decoded with "
            "errors='surrogateescape', or half of a broken UTF-16 pair); decode the source "
            "text correctly, or remove the character"
        )
    else:
        why = (
            f"a {_CHARACTER_NAMES.get(char, 'control character')} {where}; these names are "
            "single-line identifiers, so control characters (tabs and newlines too) are "
            "refused: remove it"
        )
    return f"{name} {_show(value)} contains {why}"


def _problem(column: _Column, value: object) -> str | None:
    """Say what is wrong with a non-None ``value`` for ``column``, or return None."""
    name = column.name
    if not isinstance(value, str):
        expected = "a str" if column.required else "a str or None"
        return f"{name} must be {expected}, got {type(value).__name__} {value!r}"
    if not value:
        fix = "pass a name such as 'tool_call'" if column.required else "pass None instead"
        return f"{name} is empty; {fix}"
    if value != value.strip():
        return f"{name} {_show(value)} has leading or trailing whitespace; strip it"
    problem = forbidden_character(name, value)
    if problem is not None:
        return problem
    if len(value) > column.max_length:
        return (
            f"{name} {_show(value)} is {len(value)} characters, over the limit of "
            f"{column.max_length} ({column.limit_name}); shorten it"
        )
    if column is _EVENT_TYPE and EVENT_TYPE_PATTERN.fullmatch(value) is None:
        return (
            f"event_type {_show(value)} does not match {EVENT_TYPE_PATTERN.pattern!r}: start "
            "with an ASCII letter and use only ASCII letters, digits and '_', '.', ':', '-' "
            "(e.g. 'tool_call' or 'myapp.review:done')"
        )
    return None


def _allowed(value: object, column: _Column) -> frozenset[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"EventFieldRules({column.rules_field}={value!r}) is not valid; pass a set (or "
            f"any iterable of str) of allowed {column.plural}, or None to allow any"
        )
    value = frozenset(value)
    if column.required and not value:
        raise ConfigurationError(
            f"EventFieldRules({column.rules_field}=set()) would reject every event; "
            "list at least one event type, or pass None to allow any"
        )
    for entry in value:
        problem = _problem(column, entry)
        if problem is not None:
            raise ConfigurationError(
                f"EventFieldRules({column.rules_field}=...) lists a value that can never be "
                f"stored: {problem}"
            )
    return frozenset(value)


@dataclass(frozen=True, slots=True, init=False)
class EventFieldRules:
    """Which values the denormalized columns and ``created_at`` accept, beyond the fixed checks.

    Each set field is a set of allowed values, or ``None`` (the default) to allow any value
    that passes the fixed checks. Allowed values are themselves checked on creation. Example,
    to accept only the built-in vocabulary::

        EventFieldRules(event_types=EventType, approval_statuses=ApprovalStatus)

    Each set argument takes any iterable of str (a set, a list, a `StrEnum` class); it is
    stored as a frozenset.

    Attributes:
        event_types: Allowed ``event_type`` values; must not be empty.
        error_codes: Allowed ``error_code`` values (``None`` as a value is always fine).
        tool_names: Allowed ``tool_name`` values.
        approval_statuses: Allowed ``approval_status`` values.
        max_future: How far ahead of the client's clock a given ``created_at`` may be, when
            the event is built: `DEFAULT_MAX_FUTURE` (one day) unless set; ``None`` for no
            limit. A time far ahead would stay first in every newest-first timeline; it is
            nearly always a wrong clock, time zone or unit.

    .. versionadded:: 0.3.0 ``max_future``.
    """

    event_types: frozenset[str] | None = None
    error_codes: frozenset[str] | None = None
    tool_names: frozenset[str] | None = None
    approval_statuses: frozenset[str] | None = None
    max_future: timedelta | None = DEFAULT_MAX_FUTURE

    def __init__(
        self,
        *,
        event_types: Iterable[str] | None = None,
        error_codes: Iterable[str] | None = None,
        tool_names: Iterable[str] | None = None,
        approval_statuses: Iterable[str] | None = None,
        max_future: timedelta | None = DEFAULT_MAX_FUTURE,
    ) -> None:
        given = {
            "event_types": event_types,
            "error_codes": error_codes,
            "tool_names": tool_names,
            "approval_statuses": approval_statuses,
        }
        for column in _COLUMNS:
            checked = _allowed(given[column.rules_field], column)
            object.__setattr__(self, column.rules_field, checked)
        if max_future is not None and (
            not isinstance(max_future, timedelta) or max_future < timedelta(0)
        ):
            raise ConfigurationError(
                f"EventFieldRules(max_future={max_future!r}) is not valid; pass a timedelta "
                ">= 0 (how far ahead of the clock created_at may be), or None for no limit"
            )
        object.__setattr__(self, "max_future", max_future)


_COLUMNS: Final = (_EVENT_TYPE, _ERROR_CODE, _TOOL_NAME, _APPROVAL_STATUS)
# Values of each column that passed the fixed checks, which depend on the text alone: a
# memo, so that the same event types and tool names are not checked again on every event.
_PASSED: Final[tuple[set[str], ...]] = tuple(set() for _ in _COLUMNS)
_PASSED_MAX: Final = 1024

DEFAULT_FIELD_RULES: Final = EventFieldRules()
"""Rules that allow any value passing the fixed checks, and a ``created_at`` up to one day
ahead of the clock (`DEFAULT_MAX_FUTURE`)."""


_REQUEST_ID: Final = _Column(
    "request_id", REQUEST_ID_LENGTH, "the request_id column", False, "", "request ids"
)
_HEX_IDS: Final = {
    "trace_id": (TRACE_ID_LENGTH, re.compile(r"[0-9a-f]{32}")),
    "span_id": (SPAN_ID_LENGTH, re.compile(r"[0-9a-f]{16}")),
}


def check_key(name: str, value: object, *, required: bool) -> None:
    """Raise `ValidationError` unless ``value`` is a host key: ``uuid.UUID``, ``int`` (or None)."""
    if value is None and not required:
        return
    if isinstance(value, uuid.UUID) or (type(value) is int):
        return
    what = "a uuid.UUID or int" if required else "a uuid.UUID, int or None"
    raise ValidationError(
        f"{name} must be {what} (the host's primary-key value), got "
        f"{type(value).__name__} {value!r}"
    )


def check_request_id(value: object) -> None:
    """Raise `ValidationError` unless ``value`` is None or a request id the column takes."""
    if value is not None:
        problem = _problem(_REQUEST_ID, value)
        if problem is not None:
            raise ValidationError(problem)


def _check_hex_id(name: str, value: object) -> None:
    length, pattern = _HEX_IDS[name]
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ValidationError(
            f"{name} must be {length} lowercase hex digits (W3C trace context) or None, got "
            f"{type(value).__name__} {value!r}; format an OpenTelemetry id with "
            f"format(id, '0{length}x')"
        )
    if value == "0" * length:
        raise ValidationError(
            f"{name} {value!r} is all zeros, which W3C trace context defines as invalid; pass "
            "None when there is no span"
        )


def validate_fields(
    *,
    event_type: str,
    error_code: str | None = None,
    tool_name: str | None = None,
    approval_status: str | None = None,
    rules: EventFieldRules = DEFAULT_FIELD_RULES,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
) -> None:
    """Check the denormalized columns of one event before it is written.

    Fixed checks: ``event_type`` is a non-empty str of at most `EVENT_TYPE_MAX_LENGTH`
    characters that fully matches `EVENT_TYPE_PATTERN`. The others are ``None`` or a
    non-empty str within `ERROR_CODE_MAX_LENGTH`, `TOOL_NAME_MAX_LENGTH` or
    `APPROVAL_STATUS_MAX_LENGTH` characters. None may begin or end with whitespace, or
    contain a control character (C0 with tab and newlines, DEL, C1), a Unicode line or
    paragraph separator, or a lone surrogate (see `forbidden_character`). Then each value
    must be in its set in ``rules``, when that set is not None. ``request_id`` follows the
    same fixed checks within 128 characters; ``trace_id`` and ``span_id`` are None or 32 and
    16 lowercase hex digits, not all zeros.

    Args:
        event_type: The event type, e.g. ``EventType.TOOL_CALL`` or a custom name.
        error_code: The error code, if any.
        tool_name: The tool's name, if any.
        approval_status: The approval status, e.g. ``ApprovalStatus.PENDING``, if any.
        rules: Allowed values; `DEFAULT_FIELD_RULES` (any) unless given.
        request_id: The id of the request that recorded the event, if any.
        trace_id: The OpenTelemetry trace id, if any.
        span_id: The OpenTelemetry span id, if any.

    Raises:
        ValidationError: A value breaks a check; the message names the field, the value,
            the limit or the allowed values, and the fix.

    .. versionchanged:: 0.3.0
       ``request_id``, ``trace_id`` and ``span_id``.
    """
    check_fields(
        event_type, error_code, tool_name, approval_status, rules, request_id, trace_id, span_id
    )


def check_fields(
    event_type: object,
    error_code: object,
    tool_name: object,
    approval_status: object,
    rules: EventFieldRules,
    request_id: object,
    trace_id: object,
    span_id: object,
) -> None:
    """`validate_fields`, positional: what the event builders call for every event."""
    types, codes, tools, statuses = _PASSED
    if not (  # values seen before, no allowed sets: the checks are done
        isinstance(event_type, str)
        and event_type in types
        and (error_code is None or (isinstance(error_code, str) and error_code in codes))
        and (tool_name is None or (isinstance(tool_name, str) and tool_name in tools))
        and (
            approval_status is None
            or (isinstance(approval_status, str) and approval_status in statuses)
        )
        and rules.event_types is None
        and rules.error_codes is None
        and rules.tool_names is None
        and rules.approval_statuses is None
    ):
        _check_columns((event_type, error_code, tool_name, approval_status), rules)
    if request_id is not None:
        check_request_id(request_id)
    if trace_id is not None:
        _check_hex_id("trace_id", trace_id)
    if span_id is not None:
        _check_hex_id("span_id", span_id)


def _check_columns(values: tuple[object, ...], rules: EventFieldRules) -> None:
    for column, value, passed in zip(_COLUMNS, values, _PASSED, strict=True):
        if value is None and not column.required:
            continue
        if not (isinstance(value, str) and value in passed):
            problem = _problem(column, value)
            if problem is not None:
                raise ValidationError(problem)
            if len(passed) < _PASSED_MAX:
                # The text of a str subclass (an Enum member's value), never its str().
                passed.add(str.__str__(cast("str", value)))
        allowed: frozenset[str] | None = getattr(rules, column.rules_field)
        if allowed is not None and value not in allowed:
            shown = _show(str.__str__(cast("str", value)))
            raise ValidationError(
                f"{column.name} {shown} is not one of the allowed {column.plural} "
                f"({_listing(allowed)}); use one of them, or add it to "
                f"EventFieldRules({column.rules_field}=...)"
            )


def _listing(allowed: frozenset[str], shown: int = 10) -> str:
    names = sorted(str.__str__(name) for name in allowed)
    if not names:
        return "none"
    head = ", ".join(repr(name) for name in names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"


def validate_created_at(
    created_at: object,
    *,
    rules: EventFieldRules = DEFAULT_FIELD_RULES,
    now: datetime | None = None,
) -> None:
    """Check an event time given by the caller, before the event is written.

    Fixed checks: ``created_at`` is a timezone-aware ``datetime`` whose UTC value lies from
    ``CREATED_AT_MIN`` (0001-01-02) to ``CREATED_AT_MAX`` (9999-12-30 23:59:59.999999):
    PostgreSQL stores far more, but only these read back as Python datetimes under any
    session time zone. Then it is at most ``rules.max_future`` ahead of ``now``.

    Args:
        created_at: The event time.
        rules: Its ``max_future`` bounds how far ahead of the clock the time may be.
        now: The current time; default: ``datetime.now(UTC)``.

    Raises:
        ValidationError: The time is naive, not a datetime, out of range or too far ahead;
            the message names the value, the limit and the fix.
    """
    if not isinstance(created_at, datetime) or created_at.utcoffset() is None:
        raise ValidationError(
            f"created_at must be a timezone-aware datetime, got {created_at!r}; use e.g. "
            "datetime.now(UTC), or leave it out to use the current time"
        )
    try:
        utc: datetime | None = created_at.astimezone(UTC)
    except OverflowError:  # beyond year 9999, or before year 1, once moved to UTC
        utc = None
    if utc is None or not CREATED_AT_MIN <= utc <= CREATED_AT_MAX:
        if utc is None:
            in_utc = (
                " (after the year 9999 in UTC)"
                if created_at.year > 1
                else " (before the year 1 in UTC)"
            )
        elif created_at.utcoffset():
            in_utc = f" ({utc.isoformat()} in UTC)"
        else:
            in_utc = ""
        raise ValidationError(
            f"created_at {created_at.isoformat()}{in_utc} is outside the times an event can "
            f"have, {CREATED_AT_MIN.isoformat()} to {CREATED_AT_MAX.isoformat()}: PostgreSQL "
            "would store it, but Python could not read it back in every time zone; pass the "
            "real time of the event, or leave it out to use the current time"
        )
    limit = rules.max_future
    if limit is None:
        return
    now = datetime.now(UTC) if now is None else now
    ahead = utc - now
    if ahead > limit:
        raise ValidationError(
            f"created_at {created_at.isoformat()} is {ahead} ahead of the current time "
            f"({now.astimezone(UTC).isoformat()}), more than EventFieldRules(max_future="
            f"{limit}) allows; check the clock, time zone or unit that produced it, or raise "
            "the limit with EventFieldRules(max_future=...) (None: no limit)"
        )
