"""AsyncEventLogReader returns exactly what EventLogReader returns, for every call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from hostmodels import HostModels
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from test_reader import T0, World, add_events, make_world, timeline_events

from eventlog_persist import ANY_ERROR, UNSCOPED, AsyncEventLogReader, EventFilter, EventLogReader
from eventlog_persist.exceptions import ConfigurationError, ValidationError

SPAN = {"since": T0 - timedelta(days=1), "until": T0 + timedelta(days=1)}


@pytest.fixture
def world(host_engine: Engine, host_models: HostModels) -> World:
    world = make_world(host_engine, host_models)
    add_events(host_engine, host_models, timeline_events(world, 0))
    add_events(host_engine, host_models, timeline_events(world, 1, count=4))
    return world


@pytest_asyncio.fixture
async def async_engine(database_url: URL, host_engine: Engine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


def calls(world: World) -> dict[str, tuple[str, tuple[Any, ...], dict[str, Any]]]:
    user, chat = world.users[0], world.sessions[0][0]
    errors = EventFilter(error_code=ANY_ERROR)
    return {
        "session": ("session_timeline", (chat,), {"user_id": user, "limit": 5}),
        "session oldest": ("session_timeline", (chat,), {"user_id": UNSCOPED, "order": "oldest"}),
        "user": ("user_timeline", (user,), {"filters": errors}),
        "user in project": ("user_timeline", (user,), {"project_id": world.projects[0]}),
        "project": ("project_timeline", (world.projects[0],), {"limit": 2}),
        "agent": ("agent_timeline", (world.agents[0],), {"user_id": user}),
        "count": ("count_by", ("tool_name",), {"user_id": user, **SPAN}),
        "buckets": ("count_by_bucket", ("hour",), {"user_id": user, **SPAN}),
        "project narrowed, offset": (
            "project_timeline",
            (world.projects[0],),
            {"user_id": user, "agent_id": world.agents[0], "limit": 2, "offset": 1},
        ),
        "session narrowed": (
            "session_timeline",
            (chat,),
            {"user_id": user, "agent_id": world.agents[0], "order": "oldest", "limit": 3},
        ),
        "total": ("count", (), {"project_id": world.projects[0], "user_id": user}),
        "count all time": ("count_by", ("event_type",), {"user_id": user, "session_id": chat}),
    }


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name",
    [
        "session",
        "session oldest",
        "user",
        "user in project",
        "project",
        "agent",
        "count",
        "buckets",
        "project narrowed, offset",
        "session narrowed",
        "total",
        "count all time",
    ],
)
async def test_async_matches_sync(
    host_engine: Engine,
    host_models: HostModels,
    async_engine: AsyncEngine,
    world: World,
    name: str,
) -> None:
    method, args, options = calls(world)[name]
    sync_result = getattr(EventLogReader(host_models.EventLog, host_engine), method)(
        *args, **options
    )
    reader = AsyncEventLogReader(host_models.EventLog, async_engine)
    async_result = await getattr(reader, method)(*args, **options)
    assert async_result == sync_result
    assert getattr(async_result, "items", async_result), "the call found nothing to compare"
    cursor = getattr(sync_result, "next_cursor", None)
    if cursor is not None:
        options = {**options, "offset": 0}
        following = await getattr(reader, method)(*args, cursor=cursor, **options)
        assert following == getattr(EventLogReader(host_models.EventLog, host_engine), method)(
            *args, cursor=cursor, **options
        )


@pytest.mark.asyncio
async def test_async_session_and_connection_binds(
    host_models: HostModels, async_engine: AsyncEngine, world: World
) -> None:
    chat, user = world.sessions[0][1], world.users[0]
    async with AsyncSession(async_engine) as session:
        session.add(host_models.EventLog(session_id=chat, user_id=user, event_type="draft"))
        await session.flush()
        page = await AsyncEventLogReader(host_models.EventLog, session).session_timeline(
            chat, user_id=user
        )
        assert [event.event_type for event in page.items] == ["draft"]
        await session.rollback()
    async with async_engine.connect() as connection:
        reader = AsyncEventLogReader(host_models.EventLog, connection)
        assert (await reader.session_timeline(chat, user_id=user)).items == ()
        with pytest.raises(ValidationError, match="UNSCOPED"):
            await reader.session_timeline(chat, user_id=None)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_binds_of_the_wrong_kind_are_refused(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine
) -> None:
    with pytest.raises(ConfigurationError, match="use AsyncEventLogReader"):
        EventLogReader(host_models.EventLog, async_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="use EventLogReader"):
        AsyncEventLogReader(host_models.EventLog, host_engine)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_async_reader_falls_back_to_the_statement(
    host_engine: Engine,
    host_models: HostModels,
    async_engine: AsyncEngine,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from eventlog_persist._read_sql import PreparedQuery

    user = world.users[0]
    expected = EventLogReader(host_models.EventLog, host_engine).count_by(
        "event_type", user_id=user, **SPAN
    )
    monkeypatch.setattr(PreparedQuery, "driver_sql", lambda self, dialect: None)
    reader = AsyncEventLogReader(host_models.EventLog, async_engine)
    assert await reader.count_by("event_type", user_id=user, **SPAN) == expected


@pytest.mark.asyncio
async def test_async_session_with_per_model_binds(
    host_models: HostModels, async_engine: AsyncEngine, world: World
) -> None:
    chat, user = world.sessions[0][0], world.users[0]
    async with AsyncSession(binds={host_models.EventLog: async_engine}) as session:
        reader = AsyncEventLogReader(host_models.EventLog, session)
        assert len((await reader.session_timeline(chat, user_id=user)).items) == 12


@pytest.mark.asyncio
async def test_async_reader_honours_schema_translate_map(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine, world: World
) -> None:
    tenant = host_engine.execution_options(schema_translate_map={None: "tenant_b"})
    with host_engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA tenant_b"))
    host_models.Base.metadata.create_all(tenant)
    with host_engine.begin() as connection:
        for table in host_models.Base.metadata.sorted_tables:
            connection.execute(
                text(f'INSERT INTO tenant_b."{table.name}" SELECT * FROM public."{table.name}"')
            )
        connection.execute(text("UPDATE tenant_b.event_logs SET event_type = 'tenant_b'"))
    chat, user = world.sessions[0][0], world.users[0]

    async def types(bind: Any) -> set[str]:
        page = await AsyncEventLogReader(host_models.EventLog, bind).session_timeline(
            chat, user_id=user
        )
        assert len(page.items) == 12
        return {event.event_type for event in page.items}

    assert "tenant_b" not in await types(async_engine)
    async_tenant = async_engine.execution_options(schema_translate_map={None: "tenant_b"})
    assert await types(async_tenant) == {"tenant_b"}
    async with async_tenant.connect() as connection:
        assert await types(connection) == {"tenant_b"}
    async with AsyncSession(async_tenant) as session:
        assert await types(session) == {"tenant_b"}
