"""FastAPI and Starlette integration: a lifespan helper, dependencies and a request-id middleware.

Install with the extra ``eventlog-persist[fastapi]``. Only this module imports Starlette; it
needs nothing of FastAPI itself, so a plain Starlette application can use it too. The
lifespan helper puts the writer and the reader on ``app.state.eventlog_writer`` and
``app.state.eventlog_reader`` while the application runs. See docs/integrations.md.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, TypedDict

from sqlalchemy.ext.asyncio import AsyncEngine
from typing_extensions import Unpack

from eventlog_persist._buffered import AsyncBufferedWriter, WhenFull, check_seconds
from eventlog_persist._context import event_context
from eventlog_persist._events import DeadLetterHook
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._payload import PayloadPolicy
from eventlog_persist._reader import AsyncEventLogReader
from eventlog_persist._retry import RetryPolicy
from eventlog_persist._spool import Spool
from eventlog_persist._urls import shown
from eventlog_persist._vocabulary import EventFieldRules
from eventlog_persist.exceptions import ConfigurationError

try:
    from starlette.applications import Starlette
    from starlette.requests import HTTPConnection
    from starlette.routing import Mount
    from starlette.types import ASGIApp, Message, Receive, Scope, Send
except ModuleNotFoundError as exc:  # pragma: no cover - tested in a subprocess
    if exc.name is None or exc.name.split(".")[0] != "starlette":
        raise
    raise ModuleNotFoundError(
        "eventlog_persist.fastapi needs FastAPI (or Starlette), which is not installed: "
        "install eventlog-persist[fastapi]",
        name=exc.name,
    ) from exc

__all__ = [
    "EventContextMiddleware",
    "WriterOptions",
    "event_reader",
    "event_writer",
    "eventlog_lifespan",
]

_WRITER: Final = "eventlog_writer"
_READER: Final = "eventlog_reader"
_FIX: Final = (
    "run eventlog_lifespan in the application's lifespan (async with eventlog_lifespan(app, "
    "EventLog, engine): yield); in tests, start the lifespan too (with TestClient(app) as "
    "client, or an ASGI lifespan driver: httpx's ASGITransport does not run it); an "
    "endpoint of an application mounted in that one finds its writer and reader when the "
    "mount was there before the lifespan started"
)

# A request id taken from a header: 1 to 128 visible ASCII characters, no spaces. Safe to
# store, to log and to send back in a response header.
_VALID_ID: Final = re.compile(rb"[\x21-\x7e]{1,128}")
# An HTTP header name (RFC 9110 token).
_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class WriterOptions(TypedDict, total=False):
    """The keyword arguments of `AsyncBufferedWriter` that `eventlog_lifespan` passes on.

    .. versionadded:: 0.3.0
    """

    batch_size: int
    flush_interval: float
    max_queued: int
    max_queued_bytes: int
    when_full: WhenFull
    block_timeout: float | None
    retry: RetryPolicy
    on_dead_letter: DeadLetterHook | None
    payload_policy: PayloadPolicy
    field_rules: EventFieldRules
    spool: Spool | None
    connect_timeout: float | None
    tcp_user_timeout: float | None
    lock_timeout: float | None
    missing_partition_timeout: float


@asynccontextmanager
async def eventlog_lifespan(
    app: Starlette,
    model: type[EventLogMixin[KeyT]],
    engine: AsyncEngine,
    /,
    *,
    close_timeout: float | None = 30.0,
    **writer_options: Unpack[WriterOptions],
) -> AsyncIterator[AsyncBufferedWriter[KeyT]]:
    """Run an `AsyncBufferedWriter` and an `AsyncEventLogReader` for the application's lifetime.

    Enter it inside the application's own lifespan, where the engine is made (see the
    example). On entry the writer is started and both are put on ``app.state`` (see `event_writer`
    and `event_reader`); on exit they are taken off again and the writer is closed, which
    writes every queued event for up to ``close_timeout`` seconds (see
    `AsyncBufferedWriter.close`). The engine stays the caller's to dispose of.

    Args:
        app: The FastAPI or Starlette application.
        model: The host's event log model.
        engine: The application's ``AsyncEngine``: the reader runs on its pool, the writer
            opens its own connection to the same database.
        close_timeout: Most seconds the shutdown waits for the queue to be written (None
            waits without limit); keep it below the time the platform gives a stopping
            process, such as Kubernetes' ``terminationGracePeriodSeconds`` (30 by default),
            less what the server spends finishing requests.
        **writer_options: Passed on to `AsyncBufferedWriter` (`WriterOptions`).

    Yields:
        The started writer, e.g. for `eventlog_persist.metrics.register_prometheus`.

    Raises:
        ConfigurationError: The application runs an `eventlog_lifespan` already, or
            ``close_timeout`` or a writer option is not valid.

    Example:
        >>> @asynccontextmanager  # doctest: +SKIP
        ... async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ...     engine = create_async_engine(DATABASE_URL)
        ...     async with eventlog_lifespan(app, EventLog, engine, batch_size=1000):
        ...         yield
        ...     await engine.dispose()

    .. versionadded:: 0.3.0
    """
    check_seconds("close_timeout", close_timeout, allow_none=True)
    if not isinstance(engine, AsyncEngine):
        raise ConfigurationError(
            f"eventlog_lifespan needs the application's AsyncEngine, got {shown(engine)}; make "
            "one with create_async_engine(url) (postgresql+psycopg:// or "
            "postgresql+asyncpg://) and pass it"
        )
    state = app.state
    if getattr(state, _WRITER, None) is not None:
        raise ConfigurationError(
            "this application runs an eventlog_lifespan already (app.state.eventlog_writer "
            "is set); enter eventlog_lifespan once, in the application's own lifespan"
        )
    reader = AsyncEventLogReader(model, engine)
    writer = await AsyncBufferedWriter(model, engine, **writer_options).start()
    setattr(state, _WRITER, writer)
    setattr(state, _READER, reader)
    mounted = [sub for sub in _mounted(app) if sub not in _OUTER]
    _OUTER.update(dict.fromkeys(mounted, state))
    try:
        yield writer
    finally:
        for sub in mounted:
            del _OUTER[sub]
        delattr(state, _WRITER)
        delattr(state, _READER)
        await writer.close(close_timeout)


_OUTER: Final[dict[Any, Any]] = {}
"""Each application mounted in one whose `eventlog_lifespan` runs, and that one's state:
Starlette gives a mounted application's endpoints its own ``app.state``."""


def _mounted(app: Any) -> list[Any]:
    """The applications mounted in ``app``, at any depth."""
    found = []
    for route in getattr(app, "routes", ()):
        sub = getattr(route, "app", None)
        if isinstance(route, Mount) and sub is not None and hasattr(sub, "state"):
            found += [sub, *_mounted(sub)]
    return found


def _running(connection: HTTPConnection, name: str) -> Any:
    app = connection.app
    found = getattr(app.state, name, None)
    if found is None and app in _OUTER:
        found = getattr(_OUTER[app], name, None)
    return found


def event_writer(connection: HTTPConnection) -> AsyncBufferedWriter[Any]:
    """Dependency: the application's `AsyncBufferedWriter`, started by `eventlog_lifespan`.

    Declare it once with the host's key type, and use it in any endpoint (of an application
    mounted in that one too); in plain
    Starlette, call ``event_writer(request)``.

    Raises:
        ConfigurationError: The application did not run `eventlog_lifespan`.

    Example:
        >>> Events = Annotated[AsyncBufferedWriter[uuid.UUID], Depends(event_writer)]

    .. versionadded:: 0.3.0
    """
    writer: AsyncBufferedWriter[Any] | None = _running(connection, _WRITER)
    if writer is None:
        raise ConfigurationError(f"no event writer on app.state: {_FIX}")
    return writer


def event_reader(connection: HTTPConnection) -> AsyncEventLogReader[Any]:
    """Dependency: the application's `AsyncEventLogReader`, made by `eventlog_lifespan`.

    Declare it once with the host's key type, and use it in any endpoint (as `event_writer`).

    Raises:
        ConfigurationError: The application did not run `eventlog_lifespan`.

    Example:
        >>> Reader = Annotated[AsyncEventLogReader[uuid.UUID], Depends(event_reader)]

    .. versionadded:: 0.3.0
    """
    reader: AsyncEventLogReader[Any] | None = _running(connection, _READER)
    if reader is None:
        raise ConfigurationError(f"no event reader on app.state: {_FIX}")
    return reader


class EventContextMiddleware:
    """ASGI middleware: every HTTP request runs inside ``event_context(request_id=...)``.

    The id is the request's header (``X-Request-ID`` by default) when it holds 1 to 128
    visible ASCII characters, else a new UUID4 (a missing, empty, over-long or otherwise
    invalid header never fails the request). Every event recorded while the request is
    served, by the endpoint, its dependencies or its background tasks, carries it in
    ``request_id``; the response carries it in the same header, replacing one the
    application set. Other scopes (lifespan, websocket) pass through unchanged.

    Add it with ``app.add_middleware(EventContextMiddleware)``. It is a plain ASGI
    middleware: the request runs in the very context it opened, in the same task, and the
    response passes through untouched but for the header.

    Args:
        app: The ASGI application to wrap.
        header: The request and response header of the id.

    Raises:
        ConfigurationError: ``header`` is not an HTTP header name.

    .. versionadded:: 0.3.0
    """

    def __init__(self, app: ASGIApp, *, header: str = "X-Request-ID") -> None:
        if not isinstance(header, str) or _TOKEN.fullmatch(header) is None:
            raise ConfigurationError(
                f"header must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-), "
                f"got {header!r}; e.g. header='X-Request-ID'"
            )
        self.app = app
        self.header = header
        self._name = header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self._request_id(scope)
        echoed = (self._name, request_id.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    pair for pair in message.get("headers", ()) if pair[0].lower() != echoed[0]
                ]
                message["headers"] = [*headers, echoed]
            await send(message)

        with event_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)

    def _request_id(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name.lower() == self._name:
                if _VALID_ID.fullmatch(value) is not None:
                    request_id: str = value.decode("ascii")
                    return request_id
                break
        return str(uuid.uuid4())
