"""eventlog_persist.fastapi: the lifespan, the dependencies and the request-id middleware,
served through a real ASGI lifespan and httpx, against the database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import httpx2 as httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request, WebSocket
from fastapi.responses import PlainTextResponse
from fastapi.testclient import TestClient
from hostmodels import HostModels, seed
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import Engine, create_engine, func, pool, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.types import ASGIApp, Message

import eventlog_persist
from eventlog_persist import (
    UNSCOPED,
    AsyncBufferedWriter,
    AsyncEventLogReader,
    EventLogReader,
    EventRecord,
    current_event_context,
    event_context,
)
from eventlog_persist.exceptions import ConfigurationError, WriterClosedError
from eventlog_persist.fastapi import (
    EventContextMiddleware,
    WriterOptions,
    event_reader,
    event_writer,
    eventlog_lifespan,
)

Events = Annotated[AsyncBufferedWriter[Any], Depends(event_writer)]
Reader = Annotated[AsyncEventLogReader[Any], Depends(event_reader)]


@asynccontextmanager
async def running(app: ASGIApp) -> AsyncIterator[None]:
    """Run the app's ASGI lifespan as a server does: startup now, shutdown on leaving."""
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    started = await from_app.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        stopped = await from_app.get()
        await task
        assert stopped["type"] == "lifespan.shutdown.complete", stopped


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def chat_context(session_id: uuid.UUID, user_id: uuid.UUID) -> AsyncIterator[None]:
    """The documented pattern: an async dependency with yield opens the event context."""
    with event_context(session_id=session_id, user_id=user_id):
        yield


def sync_chat_context(session_id: uuid.UUID, user_id: uuid.UUID) -> Iterator[None]:
    """A plain ``def`` dependency: FastAPI runs each half in a worker thread, on a copy."""
    with event_context(session_id=session_id, user_id=user_id):
        yield


def seen() -> dict[str, Any]:
    context = current_event_context()
    if context is None:
        return {"request_id": None, "user_id": None}
    user_id = None if context.user_id is None else str(context.user_id)
    return {"request_id": context.request_id, "user_id": user_id}


def make_app(models: HostModels, url: URL, **writer_options: Any) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with eventlog_lifespan(app, models.EventLog, engine, **writer_options) as writer:
            app.state.yielded = writer
            yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(EventContextMiddleware)

    @app.post("/events", dependencies=[Depends(chat_context)])
    async def post_event(n: int, events: Events, background: BackgroundTasks) -> dict[str, Any]:
        await asyncio.sleep(0.01 * (n % 3))  # let concurrent requests interleave
        await events.enqueue(event_type="chat", payload={"n": n})
        background.add_task(events.enqueue, event_type="after_response", payload={"n": n})
        return seen()

    @app.post("/events/sync", dependencies=[Depends(chat_context)])
    def post_event_sync() -> dict[str, Any]:
        return seen()  # a def endpoint runs in a worker thread, on a copy of the context

    @app.get("/context/sync-dependency", dependencies=[Depends(sync_chat_context)])
    async def sync_dependency() -> dict[str, Any]:
        app.state.seen = seen()
        return app.state.seen  # type: ignore[no-any-return]

    @app.get("/same")
    async def same(events: Events, reader: Reader) -> dict[str, bool]:
        state = app.state
        return {"writer": events is state.yielded, "reader": reader is state.eventlog_reader}

    return app


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


def params(keys: tuple[Any, Any], **more: Any) -> dict[str, Any]:
    user_id, session_id = keys
    return {"user_id": str(user_id), "session_id": str(session_id), **more}


def timeline(engine: Engine, models: HostModels, session_id: Any) -> list[EventRecord[Any]]:
    page = EventLogReader(models.EventLog, engine).session_timeline(
        session_id, user_id=UNSCOPED, order="oldest", limit=500
    )
    return list(page.items)


# -- lifespan and dependencies ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_lifespan_writes_the_queue_on_shutdown(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    # No batch is due while the app runs: only the shutdown can write these events.
    app = make_app(host_models, host_engine.url, flush_interval=60)
    async with running(app), client(app) as http:
        for n in range(5):
            response = await http.post("/events", params=params(keys, n=n))
            assert response.status_code == 200
        assert (await http.get("/same")).json() == {"writer": True, "reader": True}
        with host_engine.connect() as conn:
            count = select(func.count()).select_from(host_models.EventLog)
            assert conn.scalar(count) == 0
    events = timeline(host_engine, host_models, keys[1])
    assert sorted(e.event_type for e in events) == ["after_response"] * 5 + ["chat"] * 5
    assert not hasattr(app.state, "eventlog_writer")
    assert not hasattr(app.state, "eventlog_reader")
    # The lifespan can run again (a test client per test, a server restarted in-process).
    async with running(app), client(app) as http:
        assert (await http.get("/same")).json() == {"writer": True, "reader": True}


@pytest.mark.asyncio
@pytest.mark.parametrize(("path", "name"), [("/writer", "writer"), ("/reader", "reader")])
async def test_a_dependency_without_the_lifespan_names_the_fix(path: str, name: str) -> None:
    app = FastAPI()

    @app.get("/writer")
    async def writer(events: Events) -> None:
        pass

    @app.get("/reader")
    async def reader(reader: Reader) -> None:
        pass

    async with client(app) as http:
        with pytest.raises(ConfigurationError, match=rf"no event {name} on app.state: run ") as e:
            await http.get(path)
    assert "in tests, start the lifespan too (with TestClient(app) as client" in str(e.value)


@pytest.mark.asyncio
async def test_an_endpoint_of_a_mounted_sub_application_finds_the_writer_and_reader(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    """Starlette gives a mounted application's endpoints its own (empty) app.state."""
    outer = make_app(host_models, host_engine.url)
    api = FastAPI()

    @api.post("/events", dependencies=[Depends(chat_context)])
    async def post(events: Events, reader: Reader) -> dict[str, bool]:
        await events.enqueue(event_type="mounted")
        state = outer.state
        return {"writer": events is state.yielded, "reader": reader is state.eventlog_reader}

    inner = FastAPI()  # mounted in the mounted one
    inner.post("/events", dependencies=[Depends(chat_context)])(post)
    api.mount("/inner", inner)
    outer.mount("/api", api)
    other = FastAPI()  # an application of its own, whose lifespan did not run
    other.post("/events")(post)
    async with running(outer), client(outer) as http:
        for path in ("/api/events", "/api/inner/events"):
            answer = await http.post(path, params=params(keys))
            assert answer.json() == {"writer": True, "reader": True}
        # Another application never gets this one's writer (its events would go there).
        async with client(other) as elsewhere:
            with pytest.raises(ConfigurationError, match=r"no event writer on app\.state"):
                await elsewhere.post("/events", params=params(keys))
    assert [e.event_type for e in timeline(host_engine, host_models, keys[1])] == ["mounted"] * 2
    async with client(outer) as http:  # the lifespan ended: named, as before
        with pytest.raises(ConfigurationError, match="an application mounted in that one finds"):
            await http.post("/api/events", params=params(keys))


@pytest.mark.asyncio
async def test_the_lifespan_runs_once_per_app(host_models: HostModels, database_url: URL) -> None:
    app = FastAPI()
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    async with eventlog_lifespan(app, host_models.EventLog, engine) as writer:
        assert app.state.eventlog_writer is writer
        with pytest.raises(ConfigurationError, match="runs an eventlog_lifespan already"):
            async with eventlog_lifespan(app, host_models.EventLog, engine):
                pass
        assert app.state.eventlog_writer is writer
    with pytest.raises(ConfigurationError, match="batch_size"):
        async with eventlog_lifespan(app, host_models.EventLog, engine, batch_size=0):
            pass
    assert not hasattr(app.state, "eventlog_writer")


@pytest.mark.fault
@pytest.mark.asyncio
async def test_the_lifespans_shutdown_keeps_to_its_close_timeout(
    host_models: HostModels, silent_server: str
) -> None:
    app = FastAPI()
    port = conninfo_to_dict(silent_server)["port"]
    engine = create_async_engine(f"postgresql+psycopg://x@127.0.0.1:{port}/x")
    dead: list[BaseException] = []
    async with eventlog_lifespan(
        app,
        host_models.EventLog,
        engine,
        close_timeout=0.3,
        on_dead_letter=lambda _, e: dead.append(e),
    ) as writer:
        key = uuid.uuid4()
        await writer.enqueue(session_id=key, user_id=key, event_type="x")  # never written
        started = asyncio.get_running_loop().time()
    assert asyncio.get_running_loop().time() - started < 0.3 + 1.5
    assert [type(error) for error in dead] == [WriterClosedError]
    assert not hasattr(app.state, "eventlog_writer")


@pytest.mark.asyncio
async def test_a_sync_engine_or_a_url_is_refused_naming_create_async_engine(
    host_models: HostModels, database_url: URL
) -> None:
    app = FastAPI()
    sync = create_engine(database_url)
    url = database_url.render_as_string(hide_password=False)
    for given in (sync, url):
        with pytest.raises(ConfigurationError, match=r"make one with create_async_engine\(url\)"):
            async with eventlog_lifespan(app, host_models.EventLog, given):  # type: ignore[arg-type]
                pass
        assert not hasattr(app.state, "eventlog_writer")
    sync.dispose()
    with pytest.raises(ConfigurationError, match=r"an engine made with create_async_engine\("):
        AsyncEventLogReader(host_models.EventLog, url)  # type: ignore[arg-type]


@pytest.mark.asyncio
@pytest.mark.parametrize("value", [-1, "30", float("nan"), True])
async def test_a_bad_close_timeout_is_refused_at_startup(
    host_models: HostModels, database_url: URL, value: Any
) -> None:
    app = FastAPI()
    engine = create_async_engine(database_url, poolclass=pool.NullPool)
    with pytest.raises(ConfigurationError, match=rf"close_timeout={value!r} is not valid; use "):
        async with eventlog_lifespan(app, host_models.EventLog, engine, close_timeout=value):
            pass
    assert not hasattr(app.state, "eventlog_writer")


def test_writer_options_are_the_async_writers_keyword_arguments() -> None:
    hints = get_type_hints(AsyncBufferedWriter.__init__)
    del hints["model"], hints["target"], hints["return"]
    assert get_type_hints(WriterOptions) == hints


def test_test_client_runs_the_lifespan(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    app = make_app(host_models, host_engine.url)
    with TestClient(app) as http:
        response = http.post("/events", params=params(keys, n=1), headers={"X-Request-ID": "tc"})
        assert response.json() == {"request_id": "tc", "user_id": str(keys[0])}
    events = timeline(host_engine, host_models, keys[1])
    assert [(e.event_type, e.request_id) for e in events] == [
        ("chat", "tc"),
        ("after_response", "tc"),
    ]


def test_the_dependencies_serve_websockets_and_the_middleware_lets_them_pass(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    app = make_app(host_models, host_engine.url)

    @app.websocket("/ws")
    async def chat(websocket: WebSocket, events: Events) -> None:
        await websocket.accept()
        text = await websocket.receive_text()
        with event_context(session_id=keys[1], user_id=keys[0]):
            await events.enqueue(event_type="chat", payload={"text": text})
        await websocket.send_json(seen())

    with TestClient(app) as http, http.websocket_connect("/ws") as websocket:
        websocket.send_text("hi")
        assert websocket.receive_json() == {"request_id": None, "user_id": None}
    [event] = timeline(host_engine, host_models, keys[1])
    assert (event.payload, event.request_id) == ({"text": "hi"}, None)


# -- the middleware: request ids -------------------------------------------------------------


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app that answers with the context's request id, and a header of its own."""
    context = current_event_context()
    body = (context.request_id if context else "none") or "none"
    headers = [(b"x-request-id", b"the-apps-own"), (b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})


@pytest.mark.asyncio
async def test_the_request_id_header_is_used_and_echoed() -> None:
    async with client(EventContextMiddleware(echo_app)) as http:
        response = await http.get("/", headers={"X-Request-ID": "req-42/a:b"})
    assert response.text == "req-42/a:b"
    assert response.headers.get_list("x-request-id") == ["req-42/a:b"]


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["wrapped", "added"])
async def test_a_500_has_the_id_when_the_middleware_wraps_the_app(how: str) -> None:
    """Starlette builds the 500 of an unhandled exception, and runs the ``Exception``
    handler, outside every middleware added with ``add_middleware`` (docs/integrations.md)."""
    app = FastAPI()
    seen: list[str | None] = []

    @app.exception_handler(Exception)
    async def on_error(request: Request, error: Exception) -> PlainTextResponse:
        context = current_event_context()
        seen.append(None if context is None else context.request_id)
        return PlainTextResponse("failed", status_code=500)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    served: ASGIApp = app
    if how == "wrapped":
        served = EventContextMiddleware(app)
    else:
        app.add_middleware(EventContextMiddleware)
    transport = httpx.ASGITransport(app=served, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/boom", headers={"X-Request-ID": "req-500"})
    assert (response.status_code, response.text) == (500, "failed")
    if how == "wrapped":
        assert response.headers.get_list("x-request-id") == ["req-500"]
        assert seen == ["req-500"]
    else:
        assert "x-request-id" not in response.headers
        assert seen == [None]


@pytest.mark.asyncio
async def test_a_request_without_the_header_gets_a_new_id() -> None:
    async with client(EventContextMiddleware(echo_app)) as http:
        first, second = await http.get("/"), await http.get("/")
    for response in (first, second):
        assert uuid.UUID(response.text).version == 4
        assert response.headers.get_list("x-request-id") == [response.text]
    assert first.text != second.text


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"r" * 129,
        b"two words",
        b"caf\xc3\xa9",
        b"tab\there",
        b"\x7f",
        b"a" * 10_000,
    ],
)
async def test_an_invalid_header_is_replaced_never_a_500(value: bytes) -> None:
    async with client(EventContextMiddleware(echo_app)) as http:
        response = await http.get("/", headers=[(b"X-Request-ID", value)])
    assert response.status_code == 200
    assert uuid.UUID(response.text).version == 4
    assert response.headers["x-request-id"] == response.text


@pytest.mark.asyncio
async def test_the_header_name_is_configurable() -> None:
    app = EventContextMiddleware(echo_app, header="X-Correlation-ID")
    assert app.header == "X-Correlation-ID"
    async with client(app) as http:
        response = await http.get("/", headers={"x-correlation-id": "c-1", "X-Request-ID": "no"})
    assert response.text == "c-1"
    assert response.headers["X-Correlation-ID"] == "c-1"
    assert response.headers["X-Request-ID"] == "the-apps-own"  # not the middleware's header
    longest = "r" * 128
    async with client(app) as http:
        response = await http.get("/", headers={"X-Correlation-ID": longest})
    assert response.text == longest


@pytest.mark.parametrize("header", ["", "X Request", "X-Request-ID:", "Ünïcode", None])
def test_a_bad_header_name_is_refused(header: Any) -> None:
    with pytest.raises(ConfigurationError, match="header must be an HTTP header name"):
        EventContextMiddleware(echo_app, header=header)


# -- the event context in requests -----------------------------------------------------------


@pytest.mark.asyncio
async def test_events_of_a_request_carry_its_request_id(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    app = make_app(host_models, host_engine.url)
    async with running(app), client(app) as http:
        given = await http.post("/events", params=params(keys, n=1), headers={"X-Request-ID": "r1"})
        made = await http.post("/events", params=params(keys, n=2))
    assert given.json() == {"request_id": "r1", "user_id": str(keys[0])}
    generated = made.headers["X-Request-ID"]
    assert made.json()["request_id"] == generated
    events = timeline(host_engine, host_models, keys[1])
    by_n = {(e.event_type, e.payload["n"]): e for e in events}  # type: ignore[index,call-overload]
    for kind in ("chat", "after_response"):  # the endpoint's, and its background task's
        assert by_n[kind, 1].request_id == "r1"
        assert by_n[kind, 2].request_id == generated
        assert (by_n[kind, 1].user_id, by_n[kind, 1].session_id) == keys
    assert len(events) == 4


@pytest.mark.asyncio
async def test_concurrent_requests_keep_their_own_context(
    host_engine: Engine, host_models: HostModels
) -> None:
    pairs = [seed(host_engine, host_models) for _ in range(4)]
    app = make_app(host_models, host_engine.url)

    async def one(http: httpx.AsyncClient, n: int) -> httpx.Response:
        user_id, session_id = pairs[n % 4]
        headers = {"X-Request-ID": f"req-{n}"}
        return await http.post(
            "/events", params=params((user_id, session_id), n=n), headers=headers
        )

    async with running(app), client(app) as http:
        responses = await asyncio.gather(*(one(http, n) for n in range(20)))
    for n, response in enumerate(responses):
        assert response.json() == {"request_id": f"req-{n}", "user_id": str(pairs[n % 4][0])}
        assert response.headers["X-Request-ID"] == f"req-{n}"
    events = [e for _, session_id in pairs for e in timeline(host_engine, host_models, session_id)]
    assert len(events) == 40
    for event in events:
        n = event.payload["n"]  # type: ignore[index,call-overload]
        assert event.request_id == f"req-{n}"
        assert (event.user_id, event.session_id) == pairs[n % 4]
    assert current_event_context() is None


@pytest.mark.asyncio
async def test_only_an_async_dependency_can_open_the_context(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    app = make_app(host_models, host_engine.url)
    headers = {"X-Request-ID": "r"}
    async with running(app), client(app) as http:
        # async def dependency with yield: seen by a def endpoint too (its thread gets a copy).
        in_thread = await http.post("/events/sync", params=params(keys), headers=headers)
        # def dependency: it entered the block on a copy the endpoint never sees, and leaves
        # it on another copy, which fails the request.
        with pytest.raises(ConfigurationError, match="another context than the one it began in"):
            await http.get("/context/sync-dependency", params=params(keys), headers=headers)
    assert in_thread.json() == {"request_id": "r", "user_id": str(keys[0])}
    assert app.state.seen == {"request_id": "r", "user_id": None}


# -- optional dependency ---------------------------------------------------------------------

_LIGHT_IMPORT = """
import sys
import eventlog_persist
loaded = sorted(n for n in sys.modules if n.split(".")[0] in ("fastapi", "starlette", "pydantic"))
assert not loaded, loaded
"""

_MISSING = """
import sys
sys.modules["starlette"] = None  # what the import system does when it is not installed
try:
    import eventlog_persist.fastapi
except ModuleNotFoundError as exc:
    print(exc)
"""


def _python(code: str) -> subprocess.CompletedProcess[str]:
    source = str(Path(eventlog_persist.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_importing_the_package_imports_no_web_framework() -> None:
    result = _python(_LIGHT_IMPORT)
    assert result.returncode == 0, result.stderr


def test_without_the_extra_the_module_names_it() -> None:
    result = _python(_MISSING)
    assert result.returncode == 0, result.stderr
    assert "install eventlog-persist[fastapi]" in result.stdout
