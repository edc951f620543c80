"""The event to write (`NewEvent`) and how it is built and checked (`new_event`, `EventBuilder`)."""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Generic, NotRequired, TypeAlias, cast

import msgspec
from typing_extensions import TypedDict

from eventlog_persist._context import _CURRENT, Key, merge_extra, span_ids
from eventlog_persist._ids import new_event_id
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._payload import (
    DEFAULT_POLICY,
    PayloadPolicy,
    PreparedPayload,
    payload_text,
    prepare_unchecked,
)
from eventlog_persist._table import EventTable
from eventlog_persist._vocabulary import (
    DEFAULT_FIELD_RULES,
    EventFieldRules,
    check_fields,
    check_key,
    validate_created_at,
    validate_fields,
)
from eventlog_persist.exceptions import ConfigurationError, EventWriteError, ValidationError

__all__ = [
    "DeadLetterHook",
    "EventBuilder",
    "EventFields",
    "Key",
    "NewEvent",
    "build_event",
    "new_event",
]


class EventFields(TypedDict, Generic[KeyT]):
    """The keyword arguments that describe one event (``enqueue(**fields)`` and friends).

    ``session_id`` and ``user_id`` may come from the `event_context` instead.

    .. versionchanged:: 0.3.0
       ``session_id`` and ``user_id`` are not required keys; ``request_id``, ``trace_id``
       and ``span_id``.
    """

    session_id: NotRequired[KeyT | None]
    user_id: NotRequired[KeyT | None]
    event_type: str
    payload: NotRequired[object]
    project_id: NotRequired[KeyT | None]
    agent_id: NotRequired[KeyT | None]
    error_code: NotRequired[str | None]
    tool_name: NotRequired[str | None]
    approval_status: NotRequired[str | None]
    created_at: NotRequired[datetime | None]
    id: NotRequired[uuid.UUID | None]
    request_id: NotRequired[str | None]
    trace_id: NotRequired[str | None]
    span_id: NotRequired[str | None]


class NewEvent(msgspec.Struct, frozen=True, gc=False):
    """One checked event, ready for any writer; build it with `new_event`.

    An event made directly (``NewEvent(...)``, ``msgspec.structs.replace``) gets the fixed
    checks of `new_event` too (types, the text columns, ``created_at``'s range; not a writer's
    `EventFieldRules`), so no writer is ever handed a value that the driver cannot send or
    that Python cannot read back; its ``payload_json`` is taken as given.

    ``msgspec.structs.replace``, ``msgspec.structs.fields`` and ``msgspec.structs.asdict``
    take the place of their `dataclasses` namesakes.

    Raises:
        ValidationError: A field breaks a fixed check (on direct construction only).

    Attributes:
        id: The event's UUIDv7, assigned when it was built.
        session_id: The chat session's key.
        user_id: The user's key.
        event_type: The event type (checked).
        payload_json: The prepared payload as compact JSON text.
        created_at: The event time, timezone-aware; the client's clock unless given.
        project_id: The project's key, if any.
        agent_id: The agent's key, if any.
        error_code: The error code, if any (checked).
        tool_name: The tool's name, if any (checked).
        approval_status: The approval status, if any (checked).
        redacted_paths: JSON pointers of the payload values that were redacted.
        request_id: The id of the request that recorded the event, if any.
        trace_id: The OpenTelemetry trace id (32 lowercase hex digits), if any.
        span_id: The OpenTelemetry span id (16 lowercase hex digits), if any.

    .. versionchanged:: 0.3.0
       A frozen `msgspec.Struct` instead of a frozen dataclass; ``request_id``,
       ``trace_id`` and ``span_id``; ``payload_bytes`` is a property (no longer an argument).
    """

    id: uuid.UUID
    session_id: Key
    user_id: Key
    event_type: str
    payload_json: str
    created_at: datetime
    project_id: Key | None = None
    agent_id: Key | None = None
    error_code: str | None = None
    tool_name: str | None = None
    approval_status: str | None = None
    redacted_paths: tuple[str, ...] = ()
    request_id: str | None = None
    trace_id: str | None = None
    span_id: str | None = None

    def __post_init__(self) -> None:
        trusted = _BUILDING.text
        if trusted is not None and self.payload_json is trusted:
            _BUILDING.text = None  # this one event only
        else:
            _check_made_by_hand(self)

    @property
    def payload_bytes(self) -> int:
        """Length of ``payload_json`` in UTF-8."""
        text = self.payload_json
        if text.isascii():
            return len(text)
        # surrogatepass: a text taken as given may hold what no driver can send; its row is
        # refused when it is written (its own event only), not here.
        return len(text.encode("utf-8", "surrogatepass"))

    @property
    def size_bytes(self) -> int:
        """Estimated bytes this event holds in memory, used by the buffered writers' bound.

        The larger of the payload's UTF-8 size (what the COPY buffer holds) and the size of
        its Python string (1, 2 or 4 bytes per character, by the widest character in it),
        plus a fixed allowance for the rest of the event.
        """
        text = self.payload_json
        in_memory = sys.getsizeof(text)
        if text.isascii():  # its UTF-8 is one byte a character, under the object's size
            return in_memory + _EVENT_OVERHEAD_BYTES
        return max(self.payload_bytes, in_memory) + _EVENT_OVERHEAD_BYTES


# Object headers, the UUID, the datetime and short strings of one NewEvent, rounded up.
_EVENT_OVERHEAD_BYTES: Final = 512


class _Building(threading.local):
    """The payload text of the event `_build` is making of the values it has checked."""

    text: str | None = None


_BUILDING: Final = _Building()


_FIELD_NAMES: Final = EventFields.__required_keys__ | EventFields.__optional_keys__

# An event made by hand keeps to the fixed checks; the allowed sets and max_future are a
# writer's or new_event's choice, which such an event never went through.
_FIXED_ONLY: Final = EventFieldRules(max_future=None)


def _check_made_by_hand(event: NewEvent) -> None:
    """The fixed checks of `build_event`, for a `NewEvent` constructed directly."""
    if not isinstance(event.id, uuid.UUID):
        raise ValidationError(
            f"id must be a uuid.UUID, got {type(event.id).__name__} {event.id!r}; leave it "
            "out of new_event() to get a new UUIDv7"
        )
    check_key("session_id", event.session_id, required=True)
    check_key("user_id", event.user_id, required=True)
    check_key("project_id", event.project_id, required=False)
    check_key("agent_id", event.agent_id, required=False)
    validate_fields(
        event_type=event.event_type,
        error_code=event.error_code,
        tool_name=event.tool_name,
        approval_status=event.approval_status,
        rules=_FIXED_ONLY,
        request_id=event.request_id,
        trace_id=event.trace_id,
        span_id=event.span_id,
    )
    validate_created_at(event.created_at, rules=_FIXED_ONLY)
    if not isinstance(event.payload_json, str):
        raise ValidationError(
            f"payload_json must be a str of JSON text, got {type(event.payload_json).__name__}; "
            "build the event with new_event(), which prepares the payload"
        )
    paths = event.redacted_paths
    if type(paths) is not tuple or not all(type(path) is str for path in paths):
        raise ValidationError(
            f"redacted_paths must be a tuple of str (JSON pointers), got {paths!r}; leave it "
            "out, or pass the PreparedPayload's redacted_paths"
        )


DeadLetterHook: TypeAlias = Callable[[NewEvent, EventWriteError], None]
"""``hook(event, error)``: called once for each event a writer gives up on, with the reason.

The error is an `EventWriteError` (or a subclass) naming the event, the reason and the fix;
the driver's error, if any, is its ``__cause__``. A hook taking ``BaseException`` fits too.
"""


def new_event(
    *,
    event_type: str,
    session_id: Key | None = None,
    user_id: Key | None = None,
    payload: object = None,
    project_id: Key | None = None,
    agent_id: Key | None = None,
    error_code: str | None = None,
    tool_name: str | None = None,
    approval_status: str | None = None,
    created_at: datetime | None = None,
    id: uuid.UUID | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    payload_policy: PayloadPolicy = DEFAULT_POLICY,
    field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
) -> NewEvent:
    """Check an event's fields, prepare its payload and give it an id and a time.

    Inside an `event_context` block, the keys and ``request_id`` left out (or None) come
    from the context, and its extra keys join the payload. When neither ``trace_id`` nor
    ``span_id`` is given and an OpenTelemetry span is current, its ids are recorded.

    Args:
        event_type: An `EventType` or a custom name passing `validate_fields`.
        session_id: The chat session's key (``uuid.UUID`` or ``int``, as the host's keys);
            required here or in the event context.
        user_id: The user's key; required here or in the event context.
        payload: Any value `prepare_payload` accepts; ``None`` stores ``{}``.
        project_id: The project's key, or None.
        agent_id: The agent's key, or None.
        error_code: The error code, or None.
        tool_name: The tool's name, or None.
        approval_status: An `ApprovalStatus` or a custom status, or None.
        created_at: When the event happened (timezone-aware, from 0001-01-02 to 9999-12-30
            in UTC, at most ``field_rules.max_future`` ahead of the clock); default: now, by
            the client's clock.
        id: The event id; default: a new UUIDv7 recording ``created_at`` (see
            `new_event_id`). Pass the same id again to make a retry of your own idempotent.
        request_id: The id of the request being served (at most 128 characters), or None.
        trace_id: A W3C / OpenTelemetry trace id (32 lowercase hex digits), or None.
        span_id: A W3C / OpenTelemetry span id (16 lowercase hex digits), or None.
        payload_policy: How the payload is converted, redacted and capped.
        field_rules: Which ``event_type`` and column values are allowed, and how far ahead
            of the clock ``created_at`` may be.

    Returns:
        The checked event.

    Raises:
        ValidationError: A field is not acceptable or missing; the message says which and
            why.
        PayloadError: The payload cannot be stored; ``path`` says where.
        ConfigurationError: ``payload_policy`` or ``field_rules`` is of the wrong type.

    .. versionchanged:: 0.3.0
       Event context; ``request_id``, ``trace_id`` and ``span_id``.
    """
    if payload_policy is not DEFAULT_POLICY or field_rules is not DEFAULT_FIELD_RULES:
        _check_options(payload_policy, field_rules)
    return _build(
        session_id,
        user_id,
        event_type,
        payload,
        project_id,
        agent_id,
        error_code,
        tool_name,
        approval_status,
        created_at,
        id,
        request_id,
        trace_id,
        span_id,
        payload_policy,
        field_rules,
        None,
    )


def build_event(
    *,
    event_type: str,
    session_id: Key | None = None,
    user_id: Key | None = None,
    payload: object = None,
    project_id: Key | None = None,
    agent_id: Key | None = None,
    error_code: str | None = None,
    tool_name: str | None = None,
    approval_status: str | None = None,
    created_at: datetime | None = None,
    id: uuid.UUID | None = None,
    request_id: str | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
    payload_policy: PayloadPolicy = DEFAULT_POLICY,
    field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
) -> tuple[NewEvent, PreparedPayload]:
    """`new_event` that also returns the prepared payload (its JSON value and redactions)."""
    prepared: list[PreparedPayload] = []
    event = _build(
        session_id,
        user_id,
        event_type,
        payload,
        project_id,
        agent_id,
        error_code,
        tool_name,
        approval_status,
        created_at,
        id,
        request_id,
        trace_id,
        span_id,
        payload_policy,
        field_rules,
        prepared,
    )
    return event, prepared[0]


def _check_options(payload_policy: object, field_rules: object) -> None:
    if not isinstance(payload_policy, PayloadPolicy):
        raise ConfigurationError(
            f"payload_policy={payload_policy!r} is not valid; pass a PayloadPolicy"
        )
    if not isinstance(field_rules, EventFieldRules):
        raise ConfigurationError(
            f"field_rules={field_rules!r} is not valid; pass an EventFieldRules"
        )


def _build(  # the fields of an event, positional: no keyword forwarding
    session_id: Key | None,
    user_id: Key | None,
    event_type: str,
    payload: object,
    project_id: Key | None,
    agent_id: Key | None,
    error_code: str | None,
    tool_name: str | None,
    approval_status: str | None,
    created_at: datetime | None,
    id: uuid.UUID | None,
    request_id: str | None,
    trace_id: str | None,
    span_id: str | None,
    payload_policy: PayloadPolicy,
    field_rules: EventFieldRules,
    prepared: list[PreparedPayload] | None,
) -> NewEvent:
    """`build_event`'s checks and event; the prepared payload is appended to ``prepared``
    when given, else only its text is made (the quick path then copies nothing)."""
    context = _CURRENT.get()
    if context is not None:
        if session_id is None:
            session_id = context.session_id
        if user_id is None:
            user_id = context.user_id
        if project_id is None:
            project_id = context.project_id
        if agent_id is None:
            agent_id = context.agent_id
        if request_id is None:
            request_id = context.request_id
        if context.extra:
            payload = merge_extra(payload, context.extra)
    if trace_id is None and span_id is None:
        ids = span_ids()
        if ids is not None:
            trace_id, span_id = ids
    # The exact types first: the full checks only run for anything else.
    if type(session_id) is not uuid.UUID and type(session_id) is not int:
        session_id = _required_key("session_id", session_id)
    if type(user_id) is not uuid.UUID and type(user_id) is not int:
        user_id = _required_key("user_id", user_id)
    if project_id is not None:
        check_key("project_id", project_id, required=False)
    if agent_id is not None:
        check_key("agent_id", agent_id, required=False)
    if id is not None and not isinstance(id, uuid.UUID):
        raise ValidationError(f"id must be a uuid.UUID or None, got {type(id).__name__} {id!r}")
    check_fields(
        event_type,
        error_code,
        tool_name,
        approval_status,
        field_rules,
        request_id,
        trace_id,
        span_id,
    )
    if created_at is None:
        created_at = datetime.now(UTC)
        if id is None:
            id = new_event_id()
    else:
        validate_created_at(created_at, rules=field_rules)
        if id is None:
            # Minted at the event's own time, so lookups by id find it in its partition.
            id = new_event_id(created_at)
    if payload is None:
        payload = {}
    if prepared is None:
        text, redacted = payload_text(payload, payload_policy)
    else:
        done = prepare_unchecked(payload, payload_policy)
        prepared.append(done)
        text, redacted = done.json_text, done.redacted_paths
    # The text of a str subclass (a `(str, Enum)` member: "summary", not its str()
    # "Kind.SUMMARY"), the text checked above, with no host code run. An exact str is kept
    # as it is: str.__str__ costs 40 ns more than the type test, on every event.
    if type(event_type) is not str:
        event_type = str.__str__(event_type)
    if error_code is not None and type(error_code) is not str:
        error_code = str.__str__(error_code)
    if tool_name is not None and type(tool_name) is not str:
        tool_name = str.__str__(tool_name)
    if approval_status is not None and type(approval_status) is not str:
        approval_status = str.__str__(approval_status)
    # Every value is checked above, so the event's own checks are skipped for the event made
    # of this very text, on this thread. Not a second class: ``msgspec.structs.replace`` (or
    # ``copy.replace``) of the event makes one of the same class, which must check again.
    _BUILDING.text = text
    try:
        return NewEvent(
            id,
            session_id,
            user_id,
            event_type,
            text,
            created_at,
            project_id,
            agent_id,
            error_code,
            tool_name,
            approval_status,
            redacted,
            request_id,
            trace_id,
            span_id,
        )
    finally:
        _BUILDING.text = None


def _required_key(name: str, value: object) -> Key:
    if value is None:
        raise ValidationError(
            f"{name} is missing: pass {name}=... (the host's key), or record the event inside "
            f"event_context({name}=...)"
        )
    check_key(name, value, required=True)
    return cast("Key", value)


@dataclass(frozen=True, slots=True)
class EventBuilder(Generic[KeyT]):
    """Builds checked events for one host model: its key types, payload policy and rules.

    Every writer builds its events through one of these, so `record`, `record_detached`,
    `enqueue` and `new_event` check and prepare an event in exactly the same way.
    """

    table: EventTable
    payload_policy: PayloadPolicy = DEFAULT_POLICY
    field_rules: EventFieldRules = DEFAULT_FIELD_RULES

    @classmethod
    def of(
        cls,
        model: type[EventLogMixin[KeyT]],
        *,
        payload_policy: PayloadPolicy = DEFAULT_POLICY,
        field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
    ) -> EventBuilder[KeyT]:
        """Check the options and read the model's table.

        Raises:
            ConfigurationError: An argument is not valid.
        """
        _check_options(payload_policy, field_rules)
        return cls(EventTable.of(model), payload_policy, field_rules)

    def build(self, fields: EventFields[KeyT]) -> tuple[NewEvent, PreparedPayload]:
        """Check ``fields`` against the table and the rules; return the event and payload."""
        prepared: list[PreparedPayload] = []
        event = self._from_fields(fields, prepared)
        self.table.check_keys(event)
        return event, prepared[0]

    def event(self, fields: EventFields[KeyT]) -> NewEvent:
        """`build`, the event only (no copy of the payload's value is made)."""
        event = self._from_fields(fields, None)
        self.table.check_keys(event)
        return event

    def _from_fields(
        self, fields: EventFields[KeyT], prepared: list[PreparedPayload] | None
    ) -> NewEvent:
        """`_build` from a write verb's keyword fields."""
        if "event_type" not in fields or not _FIELD_NAMES.issuperset(fields):
            options = sorted(fields.keys() & {"payload_policy", "field_rules"})
            if options:  # new_event takes them: it would build an event with them and return
                raise TypeError(
                    f"unexpected keyword argument {options[0]!r}: a writer applies its own "
                    f"{' and '.join(options)}; give {'them' if len(options) > 1 else 'it'} "
                    "to its constructor, e.g. "
                    f"EventWriter(EventLog, {options[0]}=...), or build the event with "
                    f"new_event(..., {options[0]}=...) and pass it"
                )
            new_event(**fields)  # a name missing or unknown: its TypeError names it
        return _build(  # positionally: no second binding of the keywords
            fields.get("session_id"),
            fields.get("user_id"),
            fields["event_type"],
            fields.get("payload"),
            fields.get("project_id"),
            fields.get("agent_id"),
            fields.get("error_code"),
            fields.get("tool_name"),
            fields.get("approval_status"),
            fields.get("created_at"),
            fields.get("id"),
            fields.get("request_id"),
            fields.get("trace_id"),
            fields.get("span_id"),
            self.payload_policy,
            self.field_rules,
            prepared,
        )

    def given(self, event: NewEvent | None, fields: EventFields[KeyT]) -> NewEvent:
        """The event a write verb was given: built already, or built now from ``fields``."""
        if event is None:
            return self.event(fields)
        if not isinstance(event, NewEvent):
            raise ValidationError(
                f"expected a NewEvent (from new_event() or EventWriter.event()), got "
                f"{type(event).__name__} {event!r}; or pass the event's fields as keywords"
            )
        if fields:
            raise ValidationError(
                f"got a NewEvent and the fields {sorted(fields)}; pass one or the other"
            )
        self.table.check_keys(event)
        return event
