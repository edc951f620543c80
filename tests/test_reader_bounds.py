"""Time bounds on every timeline, and the lookup of one event by id (scoped to its user).

Both run on the plain layout here and on the partitioned one in test_partitioned_layout.
"""

from __future__ import annotations

import copy
import pickle
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hostmodels import HostModels
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from test_reader import T0, World, add_events, make_world, timeline_events, walk

from eventlog_persist import (
    UNSCOPED,
    AsyncEventLogReader,
    EventFilter,
    EventLogReader,
    new_event,
    new_event_id,
    write_events,
)
from eventlog_persist.exceptions import ValidationError

TIMELINES = ("session", "user", "project", "agent")


@pytest.fixture
def world(host_engine: Engine, host_models: HostModels) -> World:
    world = make_world(host_engine, host_models)
    add_events(host_engine, host_models, timeline_events(world, 0))
    add_events(host_engine, host_models, timeline_events(world, 1, count=4))
    return world


@pytest.fixture
def reader(host_engine: Engine, host_models: HostModels) -> EventLogReader[Any]:
    return EventLogReader(host_models.EventLog, host_engine)


def timeline(reader: Any, name: str, world: World, **options: Any) -> Any:
    """The first user's timeline ``name`` (its first session, project or agent)."""
    user = world.users[0]
    if name == "session":
        return reader.session_timeline(world.sessions[0][0], user_id=user, **options)
    if name == "user":
        return reader.user_timeline(user, **options)
    if name == "project":
        return reader.project_timeline(world.projects[0], **options)
    return reader.agent_timeline(world.agents[0], user_id=user, **options)


def numbers(page: Any) -> list[int]:
    return [event.payload["n"] for event in page.items]


@pytest.mark.parametrize("name", TIMELINES)
def test_every_timeline_takes_since_and_until(
    reader: EventLogReader[Any], world: World, name: str
) -> None:
    since, until = T0 + timedelta(seconds=1), T0 + timedelta(seconds=4)
    everything = numbers(timeline(reader, name, world, order="oldest"))
    bounded = numbers(timeline(reader, name, world, since=since, until=until, order="oldest"))
    # Two events a second from T0: n // 2 is the second each was created in.
    assert bounded == [n for n in everything if 1 <= n // 2 < 4]
    assert bounded
    # The same as the filter's range, and the two ranges intersect.
    in_filter = timeline(reader, name, world, filters=EventFilter(since=since, until=until))
    assert numbers(timeline(reader, name, world, since=since, until=until)) == numbers(in_filter)
    narrower = timeline(
        reader, name, world, since=T0, until=until, filters=EventFilter(since=since), order="oldest"
    )
    assert numbers(narrower) == bounded
    assert timeline(reader, name, world, since=until, filters=EventFilter(until=since)).items == ()


def test_a_bound_given_either_way_pages_with_the_same_cursors(
    reader: EventLogReader[Any], world: World
) -> None:
    user, since = world.users[0], T0 + timedelta(seconds=1)
    as_argument = reader.user_timeline(user, since=since, limit=3)
    in_filter = reader.user_timeline(user, filters=EventFilter(since=since), limit=3)
    assert as_argument.next_cursor == in_filter.next_cursor is not None
    pages = walk(reader.user_timeline, user_id=user, since=since, limit=3)
    assert [event.payload for event in pages] == [
        event.payload
        for event in walk(reader.user_timeline, user_id=user, filters=EventFilter(since=since))
    ]
    assert len(pages) == 10


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ({"since": datetime(2025, 3, 1)}, "naive datetime"),
        ({"until": "2025-03-01"}, "must be a datetime"),
        ({"since": T0, "until": T0}, "empty range"),
        (
            {"since": datetime.min.replace(tzinfo=timezone(timedelta(hours=5)))},
            r"since=0001-01-01T00:00:00\+05:00\) is before year 1 or after 9999 once moved",
        ),
        ({"until": datetime.max.replace(tzinfo=timezone(-timedelta(hours=5)))}, "after 9999"),
    ],
)
def test_bad_bounds_are_refused(
    reader: EventLogReader[Any], world: World, bounds: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        reader.session_timeline(world.sessions[0][0], user_id=world.users[0], **bounds)


def test_an_event_is_found_by_id_for_its_user_only(
    reader: EventLogReader[Any], world: World, host_engine: Engine, host_models: HostModels
) -> None:
    page = reader.session_timeline(world.sessions[0][0], user_id=world.users[0])
    for listed in page.items:
        assert reader.event(listed.id, user_id=world.users[0]) == listed
        assert reader.event(listed.id, user_id=UNSCOPED) == listed
        assert reader.event(listed.id, user_id=world.users[1]) is None
    assert reader.event(new_event_id(), user_id=world.users[0]) is None
    assert reader.event(uuid.uuid4(), user_id=UNSCOPED) is None


def test_ids_the_caller_chose_are_found_wherever_their_time_points(
    reader: EventLogReader[Any], world: World, host_engine: Engine, host_models: HostModels
) -> None:
    """A v4 id records no time; a v7 id minted years away from the event's created_at
    points outside it: the lookup still finds both."""
    user, chat = world.users[0], world.sessions[0][0]
    far = new_event_id(T0 + timedelta(days=400))
    earlier = new_event_id(T0 - timedelta(days=3000))
    chosen = [uuid.uuid4(), far, earlier]
    add_events(
        host_engine,
        host_models,
        [
            {"id": key, "session_id": chat, "user_id": user, "event_type": "x", "created_at": T0}
            for key in chosen
        ],
    )
    for key in chosen:
        found = reader.event(key, user_id=user)
        assert found is not None
        assert (found.id, found.created_at) == (key, T0)
        assert reader.event(key, user_id=world.users[1]) is None


def test_ids_at_the_edges_of_their_time_window_are_found(
    reader: EventLogReader[Any], world: World, host_engine: Engine, host_models: HostModels
) -> None:
    """An id is looked for within a minute of its time first (start included, end not), then
    everywhere else: a created_at exactly on either edge is found once."""
    user, chat = world.users[0], world.sessions[0][0]
    minute = timedelta(minutes=1)
    edges = {new_event_id(T0): T0 - minute, new_event_id(T0 + minute): T0 + 2 * minute}
    add_events(
        host_engine,
        host_models,
        [
            {"id": key, "session_id": chat, "user_id": user, "event_type": "x", "created_at": at}
            for key, at in edges.items()
        ],
    )
    for key, at in edges.items():
        found = reader.event(key, user_id=user)
        assert found is not None
        assert (found.id, found.created_at) == (key, at)


def test_backfilled_events_get_ids_of_their_own_time(
    reader: EventLogReader[Any], world: World, host_engine: Engine, host_models: HostModels
) -> None:
    user, chat = world.users[0], world.sessions[0][0]
    at = datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC)
    events = [
        new_event(session_id=chat, user_id=user, event_type="x", created_at=at, payload={"n": n})
        for n in range(50)
    ]
    write_events(host_models.EventLog, host_engine, events)
    for event in events:
        assert event.id.version == 7
        # The id's 48-bit millisecond time is created_at's, truncated.
        assert event.id.int >> 80 == int(at.timestamp() * 1000) == 1_709_251_199_999
        assert reader.event(event.id, user_id=user) is not None
    # Made at one instant, they keep the order they were made in.
    assert [event.id for event in events] == sorted(event.id for event in events)
    oldest_first = reader.session_timeline(
        chat, user_id=user, since=at, until=at + timedelta(seconds=1), order="oldest"
    )
    assert [event.payload for event in oldest_first.items] == [{"n": n} for n in range(50)]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"event_id": str(uuid.UUID(int=7)), "user_id": UNSCOPED}, r"convert it with uuid\.UUID"),
        ({"event_id": 7, "user_id": UNSCOPED}, "event_id must be a uuid.UUID"),
        ({"event_id": uuid.UUID(int=7), "user_id": None}, "user_id=UNSCOPED"),
        ({"event_id": uuid.UUID(int=7), "user_id": "someone"}, "user_id must be"),
    ],
)
def test_bad_lookups_are_refused(
    reader: EventLogReader[Any], arguments: dict[str, Any], message: str
) -> None:
    # A copy: test_partitioned_layout runs this test too, with the same parameter dicts.
    arguments = dict(arguments)
    event_id = arguments.pop("event_id")
    with pytest.raises(ValidationError, match=message):
        reader.event(event_id, **arguments)


def test_new_event_id_records_the_instant_given() -> None:
    at = datetime(2031, 5, 6, 7, 8, 9, 10_500, tzinfo=UTC)
    made = [new_event_id(at) for _ in range(3)]
    assert {key.int >> 80 for key in made} == {int(at.timestamp() * 1000)}
    assert made == sorted(made)
    assert len(set(made)) == 3
    assert all((key.version, key.variant) == (7, uuid.RFC_4122) for key in made)
    assert new_event_id(datetime(1970, 1, 1, tzinfo=UTC)).int >> 80 == 0  # the first instant
    # Before 1970 no UUIDv7 time exists: the id records now.
    now = datetime.now(UTC).timestamp() * 1000
    assert abs((new_event_id(datetime(1960, 1, 1, tzinfo=UTC)).int >> 80) - now) < 60_000
    with pytest.raises(ValidationError, match="time-zone aware"):
        new_event_id(datetime(2031, 5, 6))


def test_a_new_event_id_is_a_standard_uuid_in_every_respect() -> None:
    for key in (new_event_id(), new_event_id(datetime(2031, 5, 6, tzinfo=UTC))):
        same = uuid.UUID(str(key))
        assert (key, hash(key), key.is_safe) == (same, hash(same), uuid.SafeUUID.unknown)
        assert pickle.loads(pickle.dumps(key)) == key
        assert copy.deepcopy(key) == key


@pytest.mark.asyncio
async def test_async_reader_takes_bounds_and_looks_up_by_id(
    database_url: URL, reader: EventLogReader[Any], world: World, host_models: HostModels
) -> None:
    engine = create_async_engine(database_url)
    try:
        await async_bounds_and_lookup(
            AsyncEventLogReader(host_models.EventLog, engine), reader, world
        )
    finally:
        await engine.dispose()


async def async_bounds_and_lookup(
    areader: AsyncEventLogReader[Any], reader: EventLogReader[Any], world: World
) -> None:
    since = T0 + timedelta(seconds=2)
    for name in TIMELINES:
        bounded = await timeline(areader, name, world, since=since)
        assert bounded == timeline(reader, name, world, since=since)
    listed = reader.user_timeline(world.users[0]).items[3]
    assert await areader.event(listed.id, user_id=world.users[0]) == listed
    assert await areader.event(listed.id, user_id=world.users[1]) is None
    with pytest.raises(ValidationError, match="user_id=UNSCOPED"):
        await areader.event(listed.id, user_id=None)
