"""Event types and approval statuses, and the checks on the denormalized text columns."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from eventlog_persist._schema import (
    APPROVAL_STATUS_LENGTH,
    ERROR_CODE_LENGTH,
    EVENT_TYPE_LENGTH,
    TOOL_NAME_LENGTH,
)
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = [
    "APPROVAL_STATUS_MAX_LENGTH",
    "DEFAULT_FIELD_RULES",
    "ERROR_CODE_MAX_LENGTH",
    "EVENT_TYPE_MAX_LENGTH",
    "EVENT_TYPE_PATTERN",
    "OTEL_OPERATION_NAMES",
    "TOOL_NAME_MAX_LENGTH",
    "ApprovalStatus",
    "EventFieldRules",
    "EventType",
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


def _problem(column: _Column, value: object) -> str | None:
    """Say what is wrong with a non-None ``value`` for ``column``, or return None."""
    name = column.name
    if not isinstance(value, str):
        expected = "a str" if column.required else "a str or None"
        return f"{name} must be {expected}, got {type(value).__name__} {value!r}"
    if not value:
        fix = "pass a name such as 'tool_call'" if column.required else "pass None instead"
        return f"{name} is empty; {fix}"
    if "\x00" in value:
        return (
            f"{name} {_show(value)} contains NUL (\\u0000), which PostgreSQL text columns "
            "cannot store; remove it"
        )
    if value != value.strip():
        return f"{name} {_show(value)} has leading or trailing whitespace; strip it"
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
    """Which values the denormalized columns accept, beyond the fixed checks.

    Each field is a set of allowed values, or ``None`` (the default) to allow any value that
    passes the fixed checks. Allowed values are themselves checked on creation. Example, to
    accept only the built-in vocabulary::

        EventFieldRules(event_types=EventType, approval_statuses=ApprovalStatus)

    Each argument takes any iterable of str (a set, a list, a `StrEnum` class); it is
    stored as a frozenset.

    Attributes:
        event_types: Allowed ``event_type`` values; must not be empty.
        error_codes: Allowed ``error_code`` values (``None`` as a value is always fine).
        tool_names: Allowed ``tool_name`` values.
        approval_statuses: Allowed ``approval_status`` values.
    """

    event_types: frozenset[str] | None = None
    error_codes: frozenset[str] | None = None
    tool_names: frozenset[str] | None = None
    approval_statuses: frozenset[str] | None = None

    def __init__(
        self,
        *,
        event_types: Iterable[str] | None = None,
        error_codes: Iterable[str] | None = None,
        tool_names: Iterable[str] | None = None,
        approval_statuses: Iterable[str] | None = None,
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


_COLUMNS: Final = (_EVENT_TYPE, _ERROR_CODE, _TOOL_NAME, _APPROVAL_STATUS)

DEFAULT_FIELD_RULES: Final = EventFieldRules()
"""Rules that allow any value passing the fixed checks."""


def validate_fields(
    *,
    event_type: str,
    error_code: str | None = None,
    tool_name: str | None = None,
    approval_status: str | None = None,
    rules: EventFieldRules = DEFAULT_FIELD_RULES,
) -> None:
    """Check the denormalized columns of one event before it is written.

    Fixed checks: ``event_type`` is a non-empty str of at most `EVENT_TYPE_MAX_LENGTH`
    characters that fully matches `EVENT_TYPE_PATTERN`. The others are ``None`` or a
    non-empty str within `ERROR_CODE_MAX_LENGTH`, `TOOL_NAME_MAX_LENGTH` or
    `APPROVAL_STATUS_MAX_LENGTH` characters. None may contain NUL or begin or end with
    whitespace. Then each value must be in its set in ``rules``, when that set is not None.

    Args:
        event_type: The event type, e.g. ``EventType.TOOL_CALL`` or a custom name.
        error_code: The error code, if any.
        tool_name: The tool's name, if any.
        approval_status: The approval status, e.g. ``ApprovalStatus.PENDING``, if any.
        rules: Allowed values; `DEFAULT_FIELD_RULES` (any) unless given.

    Raises:
        ValidationError: A value breaks a check; the message names the field, the value,
            the limit or the allowed values, and the fix.
    """
    values = (event_type, error_code, tool_name, approval_status)
    for column, value in zip(_COLUMNS, values, strict=True):
        if value is None and not column.required:
            continue
        problem = _problem(column, value)
        if problem is not None:
            raise ValidationError(problem)
        allowed: frozenset[str] | None = getattr(rules, column.rules_field)
        if allowed is not None and value not in allowed:
            raise ValidationError(
                f"{column.name} {_show(str(value))} is not one of the allowed {column.plural} "
                f"({_listing(allowed)}); use one of them, or add it to "
                f"EventFieldRules({column.rules_field}=...)"
            )


def _listing(allowed: frozenset[str], shown: int = 10) -> str:
    names = sorted(str(name) for name in allowed)
    if not names:
        return "none"
    head = ", ".join(repr(name) for name in names[:shown])
    return head if len(names) <= shown else f"{head} and {len(names) - shown} more"
