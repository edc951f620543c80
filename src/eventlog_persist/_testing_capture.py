"""Writers that capture events instead of writing them, and assertions on what they captured."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Self, TypeVar, cast, overload

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import Unpack

from eventlog_persist._buffered import check_wait
from eventlog_persist._events import EventBuilder, EventFields, NewEvent
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._payload import DEFAULT_POLICY, PayloadPolicy
from eventlog_persist._stats import WriterCounters, WriterStats
from eventlog_persist._urls import check_engine
from eventlog_persist._vocabulary import DEFAULT_FIELD_RULES, EventFieldRules
from eventlog_persist._writer import event_row
from eventlog_persist.exceptions import WriterClosedError

__all__ = ["AsyncCapturingWriter", "CapturedEvent", "CapturingWriter", "payload_of"]

ModelT = TypeVar("ModelT", bound=EventLogMixin[Any])

_FIELDS = frozenset(NewEvent.__struct_fields__) - {"payload_json"}
_MATCH_KEYS = _FIELDS | {"payload", "via"}


def payload_of(event: NewEvent) -> Any:
    """The stored payload of ``event`` as JSON values (after conversion and redaction)."""
    return json.loads(event.payload_json)


@dataclass(frozen=True, slots=True)
class CapturedEvent:
    """One captured event and the verb that was called with it.

    Attributes:
        via: ``"record"``, ``"record_detached"``, ``"arecord_detached"`` or ``"enqueue"``.
        event: The checked event, exactly as the real writer would have written it.
    """

    via: str
    event: NewEvent


class _Capture(Generic[KeyT]):
    """What both capturing writers share: the event checks and the assertions."""

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        *,
        payload_policy: PayloadPolicy = DEFAULT_POLICY,
        field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
    ) -> None:
        self._builder: EventBuilder[KeyT] = EventBuilder.of(
            model, payload_policy=payload_policy, field_rules=field_rules
        )
        self.captured: list[CapturedEvent] = []
        self._started = False
        self._closed = False

    # -- what was captured --

    @property
    def events(self) -> list[NewEvent]:
        """The captured events, oldest first."""
        return [item.event for item in self.captured]

    @property
    def event_types(self) -> list[str]:
        """The ``event_type`` of each captured event, oldest first."""
        return [item.event.event_type for item in self.captured]

    def clear(self) -> None:
        """Forget every captured event."""
        self.captured.clear()

    def matching(self, **expected: Any) -> list[NewEvent]:
        """The captured events that match ``expected``, oldest first.

        Args:
            **expected: ``NewEvent`` attributes (``event_type``, ``tool_name``,
                ``session_id``, ...) that must be equal; ``payload``: a dict whose keys must
                hold equal values in the stored payload (other keys are ignored), or any
                other value the stored payload must equal; ``via``: the verb called.

        Raises:
            TypeError: An expected name is not one of those.
        """
        unknown = sorted(set(expected) - _MATCH_KEYS)
        if unknown:
            raise TypeError(
                f"cannot match on {', '.join(unknown)}; use {', '.join(sorted(_MATCH_KEYS))}"
            )
        return [item.event for item in self.captured if _matches(item, expected)]

    def assert_recorded(self, *, count: int | None = None, **expected: Any) -> NewEvent:
        """Assert that an event matching ``expected`` was captured (see `matching`).

        Args:
            count: How many captured events must match (1 or more); default: at least one.
            **expected: As for `matching`.

        Returns:
            The first matching event.

        Raises:
            AssertionError: No event (or not ``count`` events) matched; the message lists
                what was captured.
            ValueError: ``count`` is not a number >= 1.
        """
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 1
        ):
            raise ValueError(
                f"count={count!r} is not valid; use a number >= 1, or assert_not_recorded()"
            )
        found = self.matching(**expected)
        if found and (count is None or len(found) == count):
            return found[0]
        wanted = "an event" if count is None else f"{count} event(s)"
        raise AssertionError(
            f"expected {wanted} matching {_describe(expected)}, found {len(found)}; "
            f"{self._listing()}"
        )

    def assert_not_recorded(self, **expected: Any) -> None:
        """Assert that no captured event matches ``expected`` (see `matching`).

        Raises:
            AssertionError: Some did; the message lists them.
        """
        found = self.matching(**expected)
        if found:
            raise AssertionError(
                f"expected no event matching {_describe(expected)}, found {len(found)}; "
                f"{self._listing()}"
            )

    def _listing(self) -> str:
        if not self.captured:
            return "nothing was captured"
        lines = [f"captured {len(self.captured)}:"]
        lines += [f"  {i}. {_summary(item)}" for i, item in enumerate(self.captured, 1)]
        return "\n".join(lines)

    # -- the writers' common verbs --

    @property
    def payload_policy(self) -> PayloadPolicy:
        """How this writer converts, redacts and caps payloads, as the real writer's."""
        return self._builder.payload_policy

    @property
    def field_rules(self) -> EventFieldRules:
        """Which ``event_type`` and column values this writer allows, as the real writer's."""
        return self._builder.field_rules

    def event(self, **fields: Unpack[EventFields[KeyT]]) -> NewEvent:
        """Build a checked event, as `EventWriter.event` does."""
        return self._builder.event(fields)

    @property
    def counters(self) -> WriterCounters:
        """The counters a buffered writer would show: every enqueued event is written, once
        started (closed without being started, the real writer writes none of them)."""
        enqueued = sum(item.via == "enqueue" for item in self.captured)
        lost = self._closed and not self._started
        return WriterCounters(
            written=0 if lost else enqueued,
            duplicates=0,
            retried=0,
            read_only_retries=0,
            dead_lettered=0,
            dropped=0,
            unwritten=enqueued if lost else 0,
            queued=0,
            queued_bytes=0,
            errors=0,
        )

    @property
    def stats(self) -> WriterStats:
        """The snapshot a buffered writer would give: its `counters`, nothing queued, no
        batch, no error."""
        return WriterStats(
            counters=self.counters,
            oldest_queued_age=None,
            batches=0,
            batch_seconds_total=0.0,
            last_batch_seconds=None,
            recent_batch_seconds_p50=None,
            recent_batch_seconds_max=None,
            last_error=None,
        )

    def _capture(self, via: str, event: NewEvent | None, fields: dict[str, Any]) -> NewEvent:
        event = self._builder.given(event, cast("EventFields[KeyT]", fields))
        self.captured.append(CapturedEvent(via, event))
        return event

    def _enqueue(self, event: NewEvent | None, fields: dict[str, Any]) -> NewEvent:
        event = self._builder.given(event, cast("EventFields[KeyT]", fields))
        if self._closed:
            raise WriterClosedError(
                f"cannot enqueue event {event.id}: the writer is closed; record it with "
                "EventWriter.record_detached() or a new writer",
                event=event,
            )
        self.captured.append(CapturedEvent("enqueue", event))
        return event

    def _start(self) -> None:
        if self._closed:
            raise WriterClosedError(
                f"this {type(self).__name__} is closed; create a new one", event=None
            )
        self._started = True

    def _flush(self, timeout: float | None) -> bool:
        # No refusal of a flush before start(): the stand-in replaces a writer that the
        # application's lifespan starts (a FastAPI dependency override), never itself.
        check_wait("timeout", timeout)
        return True

    def _close(self, timeout: float | None) -> WriterCounters:
        check_wait("timeout", timeout)
        self._closed = True
        return self.counters


class CapturingWriter(_Capture[KeyT], Generic[ModelT, KeyT]):
    """Stands in for `EventWriter` and `BufferedWriter` in unit tests: captures, never writes.

    Every verb checks and builds the event exactly as the real writer does (the same
    `ValidationError` and `PayloadError`), then appends it to `captured` instead of touching
    a session, an engine or a database. Pass it where the host's code expects its writer.

    Covered: `event`, `record`, `record_detached`, `arecord_detached`, `payload_policy` and
    `field_rules` (of `EventWriter`); `enqueue`, `start`, `flush`, `close`, `counters`,
    `stats` and ``with`` (of `BufferedWriter`), with their refusals: ``start`` or
    ``enqueue`` after ``close``, an engine of the other flavour to ``record_detached`` or
    ``arecord_detached`` (``None`` or another stand-in is taken: no engine is used); closed
    without being started, its enqueued events count as unwritten.

    Args:
        model: The host's ``EventLog`` model (its key types are checked; no table is used).
        payload_policy: As for the real writer.
        field_rules: As for the real writer.

    Example:
        >>> writer = CapturingWriter(EventLog)  # doctest: +SKIP
        >>> handle_request(writer)  # doctest: +SKIP
        >>> writer.assert_recorded(event_type="tool_call", tool_name="search")  # doctest: +SKIP
    """

    def __init__(
        self,
        model: type[ModelT],
        *,
        payload_policy: PayloadPolicy = DEFAULT_POLICY,
        field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
    ) -> None:
        super().__init__(model, payload_policy=payload_policy, field_rules=field_rules)
        self.model: type[ModelT] = model

    @overload
    def record(self, session: object, event: NewEvent, /) -> ModelT: ...
    @overload
    def record(self, session: object, /, **fields: Unpack[EventFields[KeyT]]) -> ModelT: ...
    def record(self, session: object, event: NewEvent | None = None, /, **fields: Any) -> ModelT:
        """Capture the event; return the row `EventWriter.record` would add (``session``
        is not used)."""
        event = self._capture("record", event, fields)
        return event_row(self.model, event, payload_of(event))

    @overload
    def record_detached(self, engine: object, event: NewEvent, /) -> NewEvent: ...
    @overload
    def record_detached(
        self, engine: object, /, **fields: Unpack[EventFields[KeyT]]
    ) -> NewEvent: ...
    def record_detached(
        self, engine: object, event: NewEvent | None = None, /, **fields: Any
    ) -> NewEvent:
        """Capture the event, as `EventWriter.record_detached` would write it (``engine``
        is not used; an ``AsyncEngine`` is refused, as there)."""
        _check_flavour(engine, api="record_detached", is_async=False)
        return self._capture("record_detached", event, fields)

    @overload
    async def arecord_detached(self, engine: object, event: NewEvent, /) -> NewEvent: ...
    @overload
    async def arecord_detached(
        self, engine: object, /, **fields: Unpack[EventFields[KeyT]]
    ) -> NewEvent: ...
    async def arecord_detached(
        self, engine: object, event: NewEvent | None = None, /, **fields: Any
    ) -> NewEvent:
        """Capture the event, as `EventWriter.arecord_detached` would write it (``engine``
        is not used; a sync ``Engine`` is refused, as there)."""
        _check_flavour(engine, api="arecord_detached", is_async=True)
        return self._capture("arecord_detached", event, fields)

    @overload
    def enqueue(self, event: NewEvent, /) -> NewEvent: ...
    @overload
    def enqueue(self, /, **fields: Unpack[EventFields[KeyT]]) -> NewEvent: ...
    def enqueue(self, event: NewEvent | None = None, /, **fields: Any) -> NewEvent:
        """Capture the event, as `BufferedWriter.enqueue` would queue it.

        Raises:
            WriterClosedError: `close` was called.
        """
        return self._enqueue(event, fields)

    def start(self) -> Self:
        """Nothing to start; returns the writer.

        Raises:
            WriterClosedError: `close` was called, as the real writer refuses.
        """
        self._start()
        return self

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing to wait for; returns True (started or not: the stand-in may replace a
        writer that the application starts)."""
        return self._flush(timeout)

    def close(self, timeout: float | None = 30.0) -> WriterCounters:
        """Refuse further `enqueue` calls; return the counters (closed without being
        started, the enqueued events count as unwritten, as the real writer loses them)."""
        return self._close(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncCapturingWriter(_Capture[KeyT]):
    """Stands in for `AsyncBufferedWriter` in unit tests: captures, never writes.

    Covered: `event`, ``await enqueue``, ``await start``, ``await flush``, ``await close``,
    `counters` and ``async with``. For `EventWriter`'s ``arecord_detached``, use
    `CapturingWriter`. Arguments as for `CapturingWriter`.
    """

    @overload
    async def enqueue(self, event: NewEvent, /) -> NewEvent: ...
    @overload
    async def enqueue(self, /, **fields: Unpack[EventFields[KeyT]]) -> NewEvent: ...
    async def enqueue(self, event: NewEvent | None = None, /, **fields: Any) -> NewEvent:
        """Capture the event, as `AsyncBufferedWriter.enqueue` would queue it.

        Raises:
            WriterClosedError: `close` was called.
        """
        return self._enqueue(event, fields)

    async def start(self) -> Self:
        """Nothing to start; returns the writer (see `CapturingWriter.start`)."""
        self._start()
        return self

    async def flush(self, timeout: float | None = None) -> bool:
        """Nothing to wait for; returns True (see `CapturingWriter.flush`)."""
        return self._flush(timeout)

    async def close(self, timeout: float | None = 30.0) -> WriterCounters:
        """Refuse further `enqueue` calls; return the counters (see `CapturingWriter.close`)."""
        return self._close(timeout)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _check_flavour(engine: object, *, api: str, is_async: bool) -> None:
    """The real writer's refusal of an engine of the other flavour; anything else (None, a
    stand-in) is taken, as a unit test may have no engine at all."""
    if isinstance(engine, Engine | AsyncEngine):
        check_engine(engine, api=api, is_async=is_async)


def _matches(item: CapturedEvent, expected: dict[str, Any]) -> bool:
    for name, value in expected.items():
        if name == "via":
            if item.via != value:
                return False
        elif name == "payload":
            stored = payload_of(item.event)
            if isinstance(value, dict) and isinstance(stored, dict):
                if any(key not in stored or not _same(stored[key], v) for key, v in value.items()):
                    return False
            elif not _same(stored, value):
                return False
        elif getattr(item.event, name) != value:
            return False
    return True


def _same(stored: Any, expected: Any) -> bool:
    """Equal as JSON values: ``true`` is not ``1`` (Python's ``True == 1``)."""
    if isinstance(stored, bool) or isinstance(expected, bool):
        return type(stored) is type(expected) and stored == expected
    if isinstance(stored, dict) and isinstance(expected, dict):
        return stored.keys() == expected.keys() and all(
            _same(stored[key], expected[key]) for key in stored
        )
    if isinstance(stored, list) and isinstance(expected, list | tuple):
        return len(stored) == len(expected) and all(map(_same, stored, expected))
    return bool(stored == expected)


def _describe(expected: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in expected.items()) or "anything"


def _summary(item: CapturedEvent) -> str:
    event = item.event
    parts = [f"via {item.via}", f"event_type={event.event_type!r}"]
    for name in (
        "session_id",
        "user_id",
        "project_id",
        "agent_id",
        "tool_name",
        "error_code",
        "approval_status",
        "request_id",
    ):
        value = getattr(event, name)
        if value is not None:
            parts.append(f"{name}={value!r}")
    parts.append(f"payload={event.payload_json[:200]}")
    return ", ".join(parts)
