"""The sync reader's two ways to run a statement give the same records, errors and side effects.

On psycopg, with nobody observing executions, the reader runs its SQL on the DBAPI cursor
(``_read_direct``); otherwise through SQLAlchemy's ``exec_driver_sql`` or ``execute``. These
tests run the same calls both ways, on every kind of bind, and compare.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels
from psycopg.types.json import set_json_loads
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from test_reader import T0, World, add_events, make_world, timeline_events, walk
from test_urls import driver_url

from eventlog_persist import AsyncEventLogReader, EventFilter, EventLogReader, EventRecord
from eventlog_persist import _reader as reader_module
from eventlog_persist._read_types import event_records

# JSON that json.loads and a faster decoder could read differently: ints beyond 64 bits,
# floats that need correct rounding, a number beyond the float range (json.loads: inf),
# escapes, non-ASCII text, deep nesting.
ODD_PAYLOADS = [
    '{"big": 123456789012345678901234567890, "neg": -9223372036854775809}',
    '{"f": [0.1, 2.2250738585072011e-308, 4.9406564584124654e-324, 1.7976931348623157e308]}',
    '{"f": 9007199254740993.0, "g": 1.00000000000000011102230246251565404236316680908203125}',
    '{"huge": 1e400, "huge_fraction": ' + "1" + "0" * 400 + ".5}",
    '{"text": "tab\\t newline\\n quote\\" \\u0001 é 日本 🍝", "": null, "t": true}',
    "[" * 200 + "1" + "]" * 200,
]


@pytest.fixture
def world(host_engine: Engine, host_models: HostModels) -> World:
    world = make_world(host_engine, host_models)
    ids = add_events(host_engine, host_models, timeline_events(world, 0, count=14))
    add_events(host_engine, host_models, timeline_events(world, 1, count=4))
    with host_engine.begin() as connection:
        for event_id, payload in zip(ids, ODD_PAYLOADS, strict=False):
            connection.execute(
                text("UPDATE event_logs SET payload = CAST(:payload AS jsonb) WHERE id = :id"),
                {"payload": payload, "id": event_id},
            )
    return world


def calls(reader: EventLogReader[Any], world: World) -> dict[str, Any]:
    """What a host asks: every page of timelines (with cursors and filters), and counts."""
    chat, user = world.sessions[0][0], world.users[0]
    span = {"since": T0, "until": T0 + timedelta(hours=1)}
    return {
        "session": walk(reader.session_timeline, session_id=chat, user_id=user, limit=4),
        "oldest": walk(
            reader.session_timeline, session_id=chat, user_id=user, order="oldest", limit=5
        ),
        "user, filtered": walk(
            reader.user_timeline, user_id=user, filters=EventFilter(tool_name="search"), limit=2
        ),
        "offset": reader.project_timeline(world.projects[0], offset=2, limit=3),
        "count": reader.count(user_id=user),
        "count_by": reader.count_by("event_type", user_id=user, **span),
        "buckets": reader.count_by_bucket("hour", user_id=user, **span),
        "tokens": reader.token_usage(user_id=user, **span),
    }


def async_session_timeline(url: URL, model: Any, world: World) -> list[EventRecord[Any]]:
    """Every page of the session timeline through `AsyncEventLogReader` on ``url``."""
    chat, user = world.sessions[0][0], world.users[0]

    async def run() -> list[EventRecord[Any]]:
        engine = create_async_engine(url)
        reader = AsyncEventLogReader(model, engine)
        seen: list[EventRecord[Any]] = []
        cursor = None
        try:
            while True:
                page = await reader.session_timeline(chat, user_id=user, limit=4, cursor=cursor)
                seen.extend(page.items)
                if page.next_cursor is None:
                    return seen
                cursor = page.next_cursor
        finally:
            await engine.dispose()

    return asyncio.run(run())


class Spy:
    """Counts the reader's direct (DBAPI cursor) runs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.direct = 0
        for name in ("fetch", "fetch_autocommit"):
            original = getattr(reader_module, name)
            monkeypatch.setattr(reader_module, name, self._counting(original))

    def _counting(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            self.direct += 1
            return original(*args)

        return counted


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


@pytest.fixture
def engines(database_url: URL) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(url: URL | None = None, **options: Any) -> Engine:
        made.append(create_engine(url or database_url, **options))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


def listened(target: Any, identifier: str = "before_cursor_execute") -> list[str]:
    """Statements an instrumentation listener (as OpenTelemetry's) sees on ``engine``."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]) if identifier.endswith("cursor_execute") else identifier)

    event.listen(target, identifier, record)
    return seen


def test_direct_and_sqlalchemy_paths_return_the_same_records(
    host_engine: Engine,
    host_models: HostModels,
    world: World,
    database_url: URL,
    engines: Callable[..., Engine],
    spy: Spy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = host_models.EventLog
    expected = calls(EventLogReader(model, host_engine), world)
    assert spy.direct > 0
    # Every payload is what json.loads makes of PostgreSQL's own text of it.
    with host_engine.connect() as connection:
        texts = dict(connection.execute(text("SELECT id, payload::text FROM event_logs")).all())
    assert len(expected["oldest"]) == 14
    for record in expected["oldest"]:
        assert record.payload == json.loads(texts[record.id])
    payloads = [record.payload for record in expected["oldest"]]
    assert {"huge": 10**400, "huge_fraction": math.inf} in payloads

    def same(bind: Any, *, direct: bool) -> None:
        before = spy.direct
        assert calls(EventLogReader(model, bind), world) == expected
        assert (spy.direct > before) is direct, bind

    with host_engine.connect() as connection:
        same(connection, direct=True)
        connection.commit()
        connection.execution_options(isolation_level="AUTOCOMMIT")
        same(connection, direct=True)
    with Session(host_engine) as session:
        same(session, direct=True)
    same(engines(isolation_level="AUTOCOMMIT"), direct=True)

    # Observed: listeners on the engine, on the connection, on the dialect; SQL logging.
    for identifier in ("before_cursor_execute", "after_execute", "handle_error", "do_execute"):
        engine = engines()
        listened(engine, identifier)
        same(engine, direct=False)
    engine = engines()
    seen = listened(engine)
    same(engine, direct=False)
    assert seen
    assert all("event_logs" in statement for statement in seen)
    with engines().connect() as connection:
        seen = listened(connection)
        same(connection, direct=False)
        assert seen
    with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
        same(engines(), direct=False)
    assert any("event_logs" in record.getMessage() for record in caplog.records)

    # Not psycopg, or a statement SQLAlchemy must rewrite.
    same(engines(driver_url(database_url, "psycopg2")), direct=False)
    same(host_engine.execution_options(schema_translate_map={None: None}), direct=False)

    for driver in ("asyncpg", "psycopg"):
        url = driver_url(database_url, driver)
        assert async_session_timeline(url, model, world) == expected["session"]


def test_event_records_are_the_records_init_makes() -> None:
    row = (
        uuid.uuid4(),
        uuid.uuid4(),
        uuid.uuid4(),
        None,
        7,
        "tool_call",
        {"a": [1, 2.5]},
        T0,
        None,
        "search",
        "pending",
        "req",
        "0" * 32,
        "1" * 16,
    )
    (made,) = event_records([row])
    assert made == EventRecord(*row)
    assert type(made) is EventRecord
    assert repr(made) == repr(EventRecord(*row))
    assert hash(made.id) == hash(row[0])
    with pytest.raises(AttributeError):
        made.event_type = "other"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unpack"):
        event_records([row[:-1]])


def host_decoded(payload: object) -> bool:
    return isinstance(payload, dict) and list(payload) == ["host"]


def test_a_host_json_deserializer_is_kept(
    host_models: HostModels, world: World, engines: Callable[..., Engine], spy: Spy
) -> None:
    """The faster JSONB decoding is the reader's only where psycopg would use json.loads."""

    def tagged(document: str | bytes) -> Any:
        return {"host": json.loads(document)}

    reader = EventLogReader(host_models.EventLog, engines(json_deserializer=tagged))
    page = reader.session_timeline(world.sessions[0][0], user_id=world.users[0])
    assert spy.direct == 1
    assert all(host_decoded(item.payload) for item in page.items)

    set_json_loads(tagged)
    try:
        reader = EventLogReader(host_models.EventLog, engines())
        page = reader.session_timeline(world.sessions[0][0], user_id=world.users[0])
    finally:
        set_json_loads(json.loads)
    assert spy.direct == 2
    assert all(host_decoded(item.payload) for item in page.items)


def test_the_engine_path_returns_its_connection_as_it_took_it(
    host_models: HostModels, world: World, engines: Callable[..., Engine], spy: Spy
) -> None:
    """Autocommit for the read only: the pool hands the connection out in a transaction."""
    engine = engines(pool_size=1, max_overflow=0)
    reader = EventLogReader(host_models.EventLog, engine)
    reader.session_timeline(world.sessions[0][0], user_id=world.users[0])
    assert spy.direct == 1
    with engine.connect() as connection:
        dbapi: Any = connection.connection.dbapi_connection
        assert dbapi.autocommit is False
        connection.execute(text("CREATE TEMP TABLE scratch (n int)"))
        connection.rollback()
        assert connection.execute(text("SELECT to_regclass('scratch')")).scalar() is None


@pytest.mark.parametrize("observed", [False, True], ids=["direct", "sqlalchemy"])
def test_database_errors_are_sqlalchemy_errors_on_both_paths(
    observed: bool,
    host_engine: Engine,
    host_models: HostModels,
    world: World,
    engines: Callable[..., Engine],
    spy: Spy,
) -> None:
    """A lock wait past lock_timeout: OperationalError caused by psycopg's LockNotAvailable."""
    engine = engines(pool_size=2, max_overflow=0, connect_args={"options": "-c lock_timeout=50"})
    if observed:
        listened(engine)
    chat, user = world.sessions[0][0], world.users[0]
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))  # in a transaction, with no lock on event_logs
        in_transaction = EventLogReader(host_models.EventLog, connection)
        with host_engine.connect() as holder:
            holder.execute(text("LOCK TABLE event_logs IN ACCESS EXCLUSIVE MODE"))
            for reader in (EventLogReader(host_models.EventLog, engine), in_transaction):
                with pytest.raises(OperationalError) as raised:
                    reader.session_timeline(chat, user_id=user)
                assert isinstance(raised.value.orig, psycopg.errors.LockNotAvailable)
                assert "event_logs" in str(raised.value.statement)
                assert not raised.value.connection_invalidated
            holder.rollback()
        assert not connection.invalidated
        connection.rollback()
        assert in_transaction.count(user_id=user) == 14
    assert (spy.direct > 0) is not observed
    with engine.connect() as one, engine.connect() as two:  # the pool's two: as they were
        for connection in (one, two):
            dbapi: Any = connection.connection.dbapi_connection
            assert dbapi.autocommit is False
            assert connection.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize("observed", [False, True], ids=["direct", "sqlalchemy"])
def test_a_lost_connection_invalidates_the_pool_on_both_paths(
    observed: bool,
    host_engine: Engine,
    host_models: HostModels,
    world: World,
    engines: Callable[..., Engine],
    spy: Spy,
) -> None:
    """After a restart, one call fails and the next gets a new connection, not a dead one."""
    name = f"evl-reader-{uuid.uuid4().hex[:8]}"
    engine = engines(pool_size=2, max_overflow=0, connect_args={"application_name": name})
    if observed:
        listened(engine)
    with engine.connect() as one, engine.connect() as two:  # two pooled connections
        one.execute(text("SELECT 1"))
        two.execute(text("SELECT 1"))
    with host_engine.connect() as admin:
        killed = admin.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"
            ),
            {"name": name},
        ).scalar()
    assert killed == 2
    reader = EventLogReader(host_models.EventLog, engine)
    chat, user = world.sessions[0][0], world.users[0]
    with pytest.raises(OperationalError) as raised:
        reader.session_timeline(chat, user_id=user)
    assert raised.value.connection_invalidated
    assert isinstance(raised.value.orig, psycopg.OperationalError)
    assert len(reader.session_timeline(chat, user_id=user).items) == 14
    assert (spy.direct > 0) is not observed
