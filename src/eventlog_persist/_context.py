"""Event context: defaults for every event recorded inside ``with event_context(...)``."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeAlias

from eventlog_persist._vocabulary import check_key, check_request_id
from eventlog_persist.exceptions import ConfigurationError, ValidationError

__all__ = ["EventContext", "Key", "current_event_context", "event_context", "span_ids"]

Key: TypeAlias = uuid.UUID | int
"""A host primary-key value: ``uuid.UUID`` or ``int``."""

_NO_EXTRA: Final[Mapping[str, object]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EventContext:
    """The defaults in force: what `event_context` blocks, innermost first, have set.

    Attributes:
        session_id: The chat session's key, or None.
        user_id: The user's key, or None.
        project_id: The project's key, or None.
        agent_id: The agent's key, or None.
        request_id: The host's id of the request being served, or None.
        extra: Payload keys added to every event's (object) payload; read-only.
    """

    session_id: Key | None = None
    user_id: Key | None = None
    project_id: Key | None = None
    agent_id: Key | None = None
    request_id: str | None = None
    extra: Mapping[str, object] = field(default_factory=lambda: _NO_EXTRA)


_CURRENT: Final[ContextVar[EventContext | None]] = ContextVar(
    "eventlog_persist.event_context", default=None
)


def current_event_context() -> EventContext | None:
    """The context in force here, or None outside every `event_context` block."""
    return _CURRENT.get()


@contextmanager
def event_context(
    *,
    session_id: Key | None = None,
    user_id: Key | None = None,
    project_id: Key | None = None,
    agent_id: Key | None = None,
    request_id: str | None = None,
    **extra: object,
) -> Iterator[EventContext]:
    """Supply defaults for every event built inside the block, by any writer.

    The values live in a `contextvars.ContextVar`: they follow the code into the asyncio
    tasks it creates and into threads started with a copy of the context
    (``asyncio.to_thread``, ``contextvars.copy_context().run``), and never leak into
    concurrent requests. Blocks nest: an inner block keeps the outer values it does not set.
    An argument left as None sets nothing. When an event is built, a field it is given
    explicitly wins over the context, and ``extra`` keys are added to its payload unless the
    payload has them already (so the payload must be a mapping, or None).

    Args:
        session_id: Default chat session key.
        user_id: Default user key.
        project_id: Default project key.
        agent_id: Default agent key.
        request_id: The request's id (e.g. an ``X-Request-ID`` header), stored in the
            ``request_id`` column: at most 128 characters, no control characters.
        **extra: Payload keys for every event of the block (JSON values; the payload
            policy applies to them as to the rest of the payload).

    Yields:
        The merged `EventContext` now in force.

    Raises:
        ValidationError: A key is not a ``uuid.UUID`` or ``int``, or ``request_id`` is not
            a valid id.
        ConfigurationError: The block ends in another context than it began in (another
            thread or task, e.g. a FastAPI ``def`` dependency).

    .. versionadded:: 0.3.0
    """
    check_key("session_id", session_id, required=False)
    check_key("user_id", user_id, required=False)
    check_key("project_id", project_id, required=False)
    check_key("agent_id", agent_id, required=False)
    check_request_id(request_id)
    outer = _CURRENT.get() or EventContext()
    merged = EventContext(
        outer.session_id if session_id is None else session_id,
        outer.user_id if user_id is None else user_id,
        outer.project_id if project_id is None else project_id,
        outer.agent_id if agent_id is None else agent_id,
        outer.request_id if request_id is None else request_id,
        MappingProxyType({**outer.extra, **extra}) if extra else outer.extra,
    )
    token = _CURRENT.set(merged)
    try:
        yield merged
    finally:
        _leave(token)


def _leave(token: Token[EventContext | None]) -> None:
    try:
        _CURRENT.reset(token)
    except ValueError as exc:
        raise ConfigurationError(
            "event_context() ended in another context than the one it began in, so its values "
            "never reached the code in between: a block opened in one thread or task and closed "
            "in another (FastAPI runs a 'def' dependency's setup and teardown on copies of the "
            "context); open it in an 'async def' dependency, or inside the endpoint"
        ) from exc


def span_ids() -> tuple[str, str] | None:
    """The current OpenTelemetry span's trace and span ids as lowercase hex, if any.

    Looks only when ``opentelemetry.trace`` is imported already: a process that does not
    use OpenTelemetry has no current span, and pays nothing.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x"), format(span_context.span_id, "016x")


def merge_extra(payload: object, extra: Mapping[str, object]) -> object:
    """The payload with the context's ``extra`` keys it lacks (its own keys win).

    Raises:
        ValidationError: The payload is not a mapping, so it has no place for the keys.
    """
    if payload is None:
        return dict(extra)
    if isinstance(payload, Mapping):
        return {**extra, **payload}
    raise ValidationError(
        f"the event context adds the payload keys {sorted(extra)}, but the payload is a "
        f"{type(payload).__name__}, not a mapping; pass a dict payload (e.g. "
        "{'items': [...]}), or set those keys outside event_context(**extra)"
    )
