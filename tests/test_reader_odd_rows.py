"""Rows another tool stored with times Python cannot read never break a read, nor its pages.

PostgreSQL stores ``timestamptz`` values from 4713 BC to 294276 AD and ``±infinity``; Python's
datetime ends at years 1 and 9999, and psycopg returns each value in the session's time
zone. The writers refuse such times, but an older version, a SQL console or another tool may
have stored one. The readers return it at the nearest bound (``CREATED_AT_MIN`` /
``CREATED_AT_MAX``) and page across it exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from hostmodels import HostModels
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DataError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import Session
from test_reader import T0, World, add_events, make_world, timeline_events, walk

from eventlog_persist import (
    UNSCOPED,
    AsyncEventLogReader,
    BucketCount,
    EventFieldRules,
    EventFilter,
    EventLogReader,
    EventWriter,
    GroupCount,
)

FIRST = datetime(1, 1, 2, tzinfo=UTC)  # the earliest time a reader returns
LAST = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)  # the latest

# Stored times, as PostgreSQL reads them, and the time the readers return for each.
ODD_TIMES = [
    ("10000-01-01 11:59:00+00", LAST),  # the 9999-12-31 23:59 at UTC-12
    ("10000-01-01 11:59:00+00", LAST),  # the same instant twice: only the id orders them
    ("12345-06-07 08:09:10+00", LAST),
    ("294276-12-31 23:59:59.999999+00", LAST),  # PostgreSQL's last timestamptz
    ("infinity", LAST),
    ("9999-12-31 12:00:00+00", LAST),  # in Python's range in UTC, year 10000 at UTC+14
    ("9999-12-30 23:59:59.999999+00", LAST),  # exactly the bound: returned as it is
    ("0001-01-01 00:00:00+00", FIRST),  # Python's datetime.min, year 0 at UTC-12
    ("0001-01-01 00:00:00+00 BC", FIRST),
    ("4713-11-24 00:00:00+00 BC", FIRST),  # PostgreSQL's first timestamptz
    ("-infinity", FIRST),
]


@pytest.fixture
def world(host_engine: Engine, host_models: HostModels) -> World:
    world = make_world(host_engine, host_models)
    add_events(host_engine, host_models, timeline_events(world, 0))
    return world


@pytest.fixture
def odd_ids(host_engine: Engine, world: World) -> dict[uuid.UUID, datetime]:
    """Insert the odd rows into user 0's first session, with SQL; return id -> time read."""
    ids: dict[uuid.UUID, datetime] = {}
    with host_engine.begin() as connection:
        for stored, returned in ODD_TIMES:
            event_id = uuid.uuid4()
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, project_id, agent_id, "
                    "event_type, created_at) VALUES (:id, :chat, :user, :project, :agent, "
                    "'imported', CAST(:stored AS timestamptz))"
                ),
                {
                    "id": event_id,
                    "chat": world.sessions[0][0],
                    "user": world.users[0],
                    "project": world.projects[0],
                    "agent": world.agents[0],
                    "stored": stored,
                },
            )
            ids[event_id] = returned
    return ids


def stored_order(engine: Engine, chat: Any, order: str) -> list[uuid.UUID]:
    """The session's event ids in the order of the stored times, as PostgreSQL sorts them."""
    direction = "DESC" if order == "newest" else "ASC"
    with engine.connect() as connection:
        return list(
            connection.scalars(
                text(
                    f"SELECT id FROM event_logs WHERE session_id = :chat "
                    f"ORDER BY created_at {direction}, id {direction}"
                ),
                {"chat": chat},
            )
        )


@pytest.fixture(params=["UTC", "Pacific/Kiritimati", "Etc/GMT+12"])
def zoned_engine(request: pytest.FixtureRequest, database_url: URL) -> Iterator[Engine]:
    """An engine whose sessions run in a time zone 14 hours ahead of UTC, 12 behind, or UTC."""
    engine = create_engine(database_url, connect_args={"options": f"-c TimeZone={request.param}"})
    try:
        yield engine
    finally:
        engine.dispose()


def test_the_odd_rows_do_break_a_plain_read(
    host_engine: Engine, host_models: HostModels, world: World, odd_ids: dict[uuid.UUID, Any]
) -> None:
    """What the readers guard against: psycopg cannot load these times at all."""
    with Session(host_engine) as session, pytest.raises(DataError, match="timestamp too"):
        session.scalars(
            text("SELECT created_at FROM event_logs WHERE event_type = 'imported'")
        ).all()


@pytest.mark.parametrize("order", ["newest", "oldest"])
@pytest.mark.parametrize("limit", [1, 2, 50])
def test_pages_cover_odd_rows_exactly_once_in_stored_order(
    host_engine: Engine,
    host_models: HostModels,
    world: World,
    odd_ids: dict[uuid.UUID, datetime],
    zoned_engine: Engine,
    order: Any,
    limit: int,
) -> None:
    chat, user = world.sessions[0][0], world.users[0]
    reader = EventLogReader(host_models.EventLog, zoned_engine)
    seen = walk(reader.session_timeline, session_id=chat, user_id=user, order=order, limit=limit)
    assert [event.id for event in seen] == stored_order(host_engine, chat, order)
    assert len(seen) == 12 + len(ODD_TIMES)
    for event in seen:
        if event.id in odd_ids:
            assert event.created_at == odd_ids[event.id]
        else:  # the events the writers stored come back unchanged
            assert T0 <= event.created_at < T0 + timedelta(minutes=1)
        assert event.created_at.utcoffset() is not None


def test_every_timeline_and_count_reads_past_odd_rows(
    world: World, odd_ids: dict[uuid.UUID, datetime], host_models: HostModels, zoned_engine: Engine
) -> None:
    reader = EventLogReader(host_models.EventLog, zoned_engine)
    user, project, agent = world.users[0], world.projects[0], world.agents[0]
    total = 12 + len(ODD_TIMES)
    assert len(walk(reader.user_timeline, user_id=user, limit=4)) == total
    assert len(walk(reader.user_timeline, user_id=user, project_id=project, limit=4)) == 6 + 11
    assert len(walk(reader.project_timeline, project_id=project, order="oldest", limit=4)) == 17
    assert len(walk(reader.agent_timeline, agent_id=agent, user_id=UNSCOPED, limit=4)) == 8 + 11
    imported = EventFilter(event_types={"imported"})
    page = reader.user_timeline(user, filters=imported)
    assert {event.created_at for event in page.items} == {FIRST, LAST}
    # The widest range a caller can give reaches the rows at the very ends of Python's range.
    everything = {
        "since": datetime.min.replace(tzinfo=UTC),
        "until": datetime.max.replace(tzinfo=UTC),
    }
    counted = reader.count_by("event_type", user_id=user, filters=imported, **everything)
    assert counted == [GroupCount("imported", 3)]  # 0001-01-01, 9999-12-30 and 9999-12-31
    buckets = reader.count_by_bucket(
        "month", user_id=user, filters=imported, time_zone="Pacific/Kiritimati", **everything
    )
    # On Kiritimati, 0001-01-01 00:00 UTC falls in December of the year 0 (its local mean
    # time was 10:29 behind UTC) and 9999-12-31 12:00 UTC in January of the year 10000: those
    # months start beyond what Python reads, so they come back at the bounds.
    assert buckets == [
        BucketCount(FIRST, 1),
        BucketCount(datetime(9999, 11, 30, 10, tzinfo=UTC), 1),  # December 9999 at UTC+14
        BucketCount(LAST, 1),
    ]
    days = reader.count_by_bucket(timedelta(days=1), user_id=user, filters=imported, **everything)
    assert sum(bucket.count for bucket in days) == 3
    # The longest bucket taken: the bin of 0001-01-01 starts near 1000 BC, still a timestamp.
    millennia = reader.count_by_bucket(
        timedelta(days=365_250), user_id=user, filters=imported, **everything
    )
    # 2001-01-01 + 7 * 365250 days
    assert millennia == [BucketCount(FIRST, 1), BucketCount(datetime(9001, 2, 23, tzinfo=UTC), 2)]


@pytest.mark.parametrize("name", ["user", "project", "agent", "session"])
def test_a_range_open_on_one_side_reaches_the_odd_rows_on_that_side(
    host_engine: Engine,
    world: World,
    odd_ids: dict[uuid.UUID, datetime],
    host_models: HostModels,
    name: str,
) -> None:
    """``since`` alone keeps every row after it, up to ``infinity``; ``until`` alone every row
    before it, down to ``-infinity`` (on the partitioned layout the open side is a bound of
    its own in the SQL: it must hold for those rows too)."""
    reader = EventLogReader(host_models.EventLog, host_engine)
    timeline, key = {
        "user": (reader.user_timeline, {"user_id": world.users[0]}),
        "project": (reader.project_timeline, {"project_id": world.projects[0]}),
        "agent": (reader.agent_timeline, {"agent_id": world.agents[0], "user_id": UNSCOPED}),
        "session": (
            reader.session_timeline,
            {"session_id": world.sessions[0][0], "user_id": world.users[0]},
        ),
    }[name]
    later = {event_id for event_id, at in odd_ids.items() if at == LAST}
    earlier = set(odd_ids) - later
    for order in ("newest", "oldest"):
        after = {event.id for event in walk(timeline, **key, since=T0, order=order, limit=4)}
        before = {event.id for event in walk(timeline, **key, until=T0, order=order, limit=4)}
        assert later <= after
        assert not earlier & after
        assert before == earlier


def test_a_purged_edge_row_ends_the_walk_cleanly(
    host_engine: Engine, host_models: HostModels, world: World, odd_ids: dict[uuid.UUID, Any]
) -> None:
    """The cursor of a page ending on an odd row resumes from that row's stored time; if the
    row is gone meanwhile, it resumes from the bound instead, and the normal rows all follow."""
    chat, user = world.sessions[0][0], world.users[0]
    reader = EventLogReader(host_models.EventLog, host_engine)
    first = reader.session_timeline(chat, user_id=user, limit=2)
    assert first.next_cursor is not None
    assert [event.created_at for event in first.items] == [LAST, LAST]
    with host_engine.begin() as connection:
        connection.execute(
            text("DELETE FROM event_logs WHERE id = :id"), {"id": first.items[-1].id}
        )
    rest = walk(reader.session_timeline, session_id=chat, user_id=user, cursor=first.next_cursor)
    normal = [event for event in rest if event.id not in odd_ids]
    assert len(normal) == 12
    assert {event.id for event in rest}.isdisjoint(event.id for event in first.items)


def test_the_statement_path_reads_odd_rows_too(
    host_engine: Engine,
    host_models: HostModels,
    world: World,
    odd_ids: dict[uuid.UUID, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Drivers other than psycopg (and schema_translate_map) run the SQLAlchemy statement."""
    from eventlog_persist._read_sql import PreparedQuery

    chat, user = world.sessions[0][0], world.users[0]
    monkeypatch.setattr(PreparedQuery, "driver_sql", lambda self, dialect: None)
    reader = EventLogReader(host_models.EventLog, host_engine)
    seen = walk(reader.session_timeline, session_id=chat, user_id=user, limit=2)
    assert [event.id for event in seen] == stored_order(host_engine, chat, "newest")


def test_a_page_ending_exactly_at_a_bound_resumes_exactly(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    """Events the writers accept at the very bounds are positions like any other."""
    chat, user = world.sessions[0][0], world.users[0]
    writer = EventWriter(host_models.EventLog, field_rules=EventFieldRules(max_future=None))
    with Session(host_engine) as session:
        for when in (FIRST, FIRST, LAST, LAST):
            writer.record(session, session_id=chat, user_id=user, event_type="e", created_at=when)
        session.commit()
    reader = EventLogReader(host_models.EventLog, host_engine)
    for order in ("newest", "oldest"):
        seen = walk(reader.session_timeline, session_id=chat, user_id=user, order=order, limit=1)
        assert [event.id for event in seen] == stored_order(host_engine, chat, order)


@pytest_asyncio.fixture
async def async_engine(database_url: URL, host_engine: Engine) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        database_url, connect_args={"options": "-c TimeZone=Pacific/Kiritimati"}
    )
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_the_async_reader_pages_across_odd_rows(
    host_engine: Engine,
    host_models: HostModels,
    world: World,
    odd_ids: dict[uuid.UUID, datetime],
    async_engine: AsyncEngine,
) -> None:
    chat, user = world.sessions[0][0], world.users[0]
    reader = AsyncEventLogReader(host_models.EventLog, async_engine)
    seen = []
    cursor = None
    while True:
        page = await reader.session_timeline(
            chat, user_id=user, order="oldest", limit=3, cursor=cursor
        )
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert [event.id for event in seen] == stored_order(host_engine, chat, "oldest")
    assert [event.created_at for event in seen if event.id in odd_ids] == sorted(odd_ids.values())


def test_a_payload_nested_past_pythons_recursion_limit_is_read(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    """jsonb holds thousands of levels; the writers refuse more than 256, another tool may
    store more. msgspec and json.loads recurse per level; the reader's psycopg path then
    decodes without recursion, so the page is read (the other paths: docs/reading.md)."""
    chat, user = world.sessions[0][0], world.users[0]
    depth = 5000
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload, "
                "created_at) VALUES (:id, :chat, :user, 'imported', CAST(:deep AS jsonb), "
                "now() + interval '1 day')"
            ),
            {
                "id": uuid.uuid4(),
                "chat": chat,
                "user": user,
                "deep": '{"a": [1.5, ' * depth + '"end"' + "]}" * depth,
            },
        )
    page = EventLogReader(host_models.EventLog, host_engine).session_timeline(chat, user_id=user)
    assert len(page.items) == 13
    value = page.items[0].payload
    for _ in range(depth):
        assert isinstance(value, dict)
        assert value["a"][0] == 1.5
        value = value["a"][1]
    assert value == "end"
