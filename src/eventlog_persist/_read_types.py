"""What the readers take and return: `EventFilter`, `EventRecord`, `Page` and the counts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final, Generic, Literal, TypeAlias

from eventlog_persist._model import JSONValue, KeyT
from eventlog_persist.exceptions import ValidationError

__all__ = [
    "ANY_ERROR",
    "UNSCOPED",
    "BucketCount",
    "CalendarUnit",
    "CountField",
    "ErrorMatch",
    "EventFilter",
    "EventRecord",
    "GroupCount",
    "Order",
    "Page",
    "TokenGroup",
    "TokenUsage",
    "Unscoped",
    "check_range",
    "event_records",
    "instant_key",
]


Order: TypeAlias = Literal["newest", "oldest"]
"""Timeline order: ``"newest"`` first (the default) or ``"oldest"`` first."""


CountField: TypeAlias = Literal["event_type", "tool_name", "error_code", "agent_id"]
"""A column that `count_query` groups by."""


CalendarUnit: TypeAlias = Literal["hour", "day", "week", "month"]
"""A calendar bucket, cut in a time zone by ``date_trunc``; weeks start on Monday."""


TokenGroup: TypeAlias = Literal["agent_id", "model"]
"""What `token_usage_query` groups by: the ``agent_id`` column, the payload's model."""


class ErrorMatch(Enum):
    """Special values of ``EventFilter.error_code``."""

    ANY = "any"
    """Any event that has an error code (``error_code IS NOT NULL``)."""


ANY_ERROR: Final = ErrorMatch.ANY
"""``EventFilter(error_code=ANY_ERROR)``: every event with an error code."""


class Unscoped(Enum):
    """The explicit opt-out of the owning-user check on session and agent timelines."""

    UNSCOPED = "unscoped"
    """Read every user's events: for operator tools only, never for a user's request."""


UNSCOPED: Final = Unscoped.UNSCOPED
"""Pass as ``user_id=UNSCOPED`` to read a session or agent timeline across every user."""


@dataclass(frozen=True, slots=True, init=False)
class EventFilter:
    """Conditions an event must meet; all given conditions must hold.

    Args:
        event_types: Only these event types (any iterable of str; stored as a frozenset).
        error_code: Only events with this error code, or `ANY_ERROR` for every event that
            has one.
        tool_name: Only events of this tool.
        approval_status: Only events with this approval status.
        since: Only events created at or after this instant (time-zone aware).
        until: Only events created before this instant (time-zone aware, exclusive).

    Raises:
        ValidationError: A value cannot select anything or is ambiguous (empty
            ``event_types``, empty strings, naive datetimes, ``since`` not before ``until``).
    """

    event_types: frozenset[str] | None = None
    error_code: str | ErrorMatch | None = None
    tool_name: str | None = None
    approval_status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __init__(
        self,
        *,
        event_types: Iterable[str] | None = None,
        error_code: str | ErrorMatch | None = None,
        tool_name: str | None = None,
        approval_status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> None:
        types: object = event_types
        if types is not None:
            if isinstance(types, str) or not isinstance(types, Iterable):
                raise ValidationError(
                    f"EventFilter(event_types={types!r}) must be a collection of event types, "
                    "e.g. {'tool_call', 'error'}"
                )
            try:
                chosen = frozenset(types)
            except TypeError:  # an unhashable item, such as a list
                raise ValidationError(
                    f"EventFilter(event_types={types!r}) must be a collection of event types "
                    "(str), e.g. {'tool_call', 'error'}"
                ) from None
            if not chosen:
                raise ValidationError(
                    "EventFilter(event_types=...) is empty and would match nothing; list at "
                    "least one event type, or pass None for every type"
                )
            for name in chosen:
                _check_text("event_types", name)
            types = chosen
        if not isinstance(error_code, ErrorMatch):
            _check_text("error_code", error_code)
        _check_text("tool_name", tool_name)
        _check_text("approval_status", approval_status)
        check_range(since, until, owner="EventFilter")
        object.__setattr__(self, "event_types", types)
        object.__setattr__(self, "error_code", error_code)
        object.__setattr__(self, "tool_name", tool_name)
        object.__setattr__(self, "approval_status", approval_status)
        object.__setattr__(self, "since", since)
        object.__setattr__(self, "until", until)

    def _key(self) -> list[object]:
        """The conditions as JSON-ready values: equal filters, and only those, give equal keys."""
        error: object = self.error_code
        if isinstance(error, ErrorMatch):
            error = {"match": error.value}
        return [
            sorted(self.event_types) if self.event_types is not None else None,
            error,
            self.tool_name,
            self.approval_status,
            instant_key(self.since),
            instant_key(self.until),
        ]


def instant_key(value: datetime | None) -> str | None:
    """An instant as it is keyed in cursors: UTC ISO 8601, or None."""
    return value.astimezone(UTC).isoformat() if value is not None else None


# What no query parameter can carry: NUL (PostgreSQL text) and lone surrogates (UTF-8).
_UNSENDABLE: Final = re.compile(r"[\x00\ud800-\udfff]")


def _check_text(field: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value:
        raise ValidationError(
            f"EventFilter({field}=...) got {value!r}; pass a non-empty str, or None for any"
        )
    found = _UNSENDABLE.search(value)
    if found is not None:
        raise ValidationError(
            f"EventFilter({field}=...) got {value!r}, which holds U+{ord(found.group()):04X} "
            f"at index {found.start()}: NUL and lone surrogates cannot be sent to PostgreSQL, "
            "and no stored event holds them; remove it"
        )


def check_range(since: datetime | None, until: datetime | None, *, owner: str) -> None:
    """Reject naive datetimes and empty ranges.

    Raises:
        ValidationError: ``since`` or ``until`` is naive or out of range in UTC, or ``since``
            is not before ``until``.
    """
    for name, value in (("since", since), ("until", until)):
        if value is None:
            continue
        if not isinstance(value, datetime):
            raise ValidationError(
                f"{owner}({name}=...) must be a datetime, got {value!r}; pass a timezone-aware "
                "datetime, e.g. datetime(2026, 12, 1, tzinfo=UTC)"
            )
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError(
                f"{owner}({name}={value.isoformat()}) is a naive datetime, which PostgreSQL "
                "would read in the session's time zone; pass an aware one, e.g. "
                "datetime.now(UTC) or value.replace(tzinfo=UTC)"
            )
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValidationError(
                f"{owner}({name}={value.isoformat()}) is before year 1 or after 9999 once "
                "moved to UTC; pass a time within that range, or None for no bound"
            ) from None
    # In UTC: two times of one zone object compare by their clocks, fold ignored (DST).
    if since is not None and until is not None and since.astimezone(UTC) >= until.astimezone(UTC):
        raise ValidationError(
            f"{owner}(since={since.isoformat()}, until={until.isoformat()}) is an empty range; "
            "since must be before until (since is inclusive, until exclusive)"
        )


@dataclass(frozen=True, slots=True)
class EventRecord(Generic[KeyT]):
    """One stored event, as the readers return it.

    ``created_at`` lies from 0001-01-02 to 9999-12-30 23:59:59.999999 UTC, what the writers
    accept; a time another tool stored beyond (year 10000, ``infinity``) comes back at the
    nearest of these bounds, so it never fails the read. ``request_id``, ``trace_id`` and
    ``span_id`` say where the event was recorded (see `event_context`).

    .. versionchanged:: 0.3.0
       ``request_id``, ``trace_id`` and ``span_id``.
    """

    id: uuid.UUID
    session_id: KeyT
    user_id: KeyT
    project_id: KeyT | None
    agent_id: KeyT | None
    event_type: str
    payload: JSONValue
    created_at: datetime
    error_code: str | None
    tool_name: str | None
    approval_status: str | None
    request_id: str | None
    trace_id: str | None
    span_id: str | None


def _slot_setters() -> tuple[Callable[[object, object], None], ...]:
    """The ``__set__`` of each slot of `EventRecord`, in field order (what ``__init__`` sets)."""
    slots = vars(EventRecord)
    return tuple(slots[item.name].__set__ for item in fields(EventRecord))


(
    _set_id,
    _set_session_id,
    _set_user_id,
    _set_project_id,
    _set_agent_id,
    _set_event_type,
    _set_payload,
    _set_created_at,
    _set_error_code,
    _set_tool_name,
    _set_approval_status,
    _set_request_id,
    _set_trace_id,
    _set_span_id,
) = _slot_setters()


def event_records(rows: Iterable[Sequence[Any]]) -> tuple[EventRecord[Any], ...]:
    """``tuple(EventRecord(*row) for row in rows)``, at half the cost.

    The rows come from the reader's own ``SELECT`` of every field, in field order, so there
    is nothing to check: each record is allocated and its slots set directly, as the frozen
    dataclass's ``__init__`` would (through ``object.__setattr__``, one call per field).
    """
    records = []
    new = object.__new__
    for row in rows:
        (
            id_,
            session_id,
            user_id,
            project_id,
            agent_id,
            event_type,
            payload,
            created_at,
            error_code,
            tool_name,
            approval_status,
            request_id,
            trace_id,
            span_id,
        ) = row
        record = new(EventRecord)
        _set_id(record, id_)
        _set_session_id(record, session_id)
        _set_user_id(record, user_id)
        _set_project_id(record, project_id)
        _set_agent_id(record, agent_id)
        _set_event_type(record, event_type)
        _set_payload(record, payload)
        _set_created_at(record, created_at)
        _set_error_code(record, error_code)
        _set_tool_name(record, tool_name)
        _set_approval_status(record, approval_status)
        _set_request_id(record, request_id)
        _set_trace_id(record, trace_id)
        _set_span_id(record, span_id)
        records.append(record)
    return tuple(records)


@dataclass(frozen=True, slots=True)
class Page(Generic[KeyT]):
    """One page of a timeline.

    Attributes:
        items: The events, in the requested order.
        next_cursor: Pass it as ``cursor=`` to the same call for the next page; ``None`` when
            this is the last page.
    """

    items: tuple[EventRecord[KeyT], ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class GroupCount:
    """How many events share one value of the grouped column (``None``: the column is NULL)."""

    key: str | uuid.UUID | int | None
    count: int


@dataclass(frozen=True, slots=True)
class BucketCount:
    """How many events fall in the time bucket that starts at ``start``."""

    start: datetime
    count: int


@dataclass(frozen=True, slots=True)
class TokenUsage(Generic[KeyT]):
    """Tokens used by one agent and/or model over a time range (`EventLogReader.token_usage`).

    Attributes:
        agent_id: The agent; ``None`` for events without one, or when not grouped by agent.
        model: ``gen_ai.response.model`` (the model that answered), else
            ``gen_ai.request.model``; ``None`` when the event has neither as a JSON string,
            or when not grouped by model.
        input_tokens: Sum of ``gen_ai.usage.input_tokens``.
        output_tokens: Sum of ``gen_ai.usage.output_tokens``.
        events: How many events reported a count (input, output or both).

    .. versionadded:: 0.3.0
    """

    agent_id: KeyT | None
    model: str | None
    input_tokens: int
    output_tokens: int
    events: int
