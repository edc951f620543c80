"""EventLogReader on real PostgreSQL: timelines, cursors, filters, scoping and counts."""

from __future__ import annotations

import enum
import functools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hostmodels import HostModels, build_host_models
from pgserver import ServerInfo
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Column, Engine, MetaData, Table, create_engine, text
from sqlalchemy.orm import Session

from eventlog_persist import (
    ANY_ERROR,
    UNSCOPED,
    BucketCount,
    EventFilter,
    EventLogReader,
    EventRecord,
    GroupCount,
    Page,
)
from eventlog_persist._cursor import decode_cursor, encode_cursor
from eventlog_persist._read_sql import MAX_OFFSET, MAX_PAGE_SIZE
from eventlog_persist._table import COLUMNS
from eventlog_persist.exceptions import ConfigurationError, InvalidCursorError, ValidationError

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    """Two users; each has two sessions, a project and an agent."""

    users: list[Any]
    sessions: list[list[Any]]
    projects: list[Any]
    agents: list[Any]


def make_world(engine: Engine, models: HostModels) -> World:
    world = World([], [], [], [])
    with Session(engine) as session:
        for _ in range(2):
            user = models.User(id=models.new_key())
            session.add(user)
            session.flush()
            chats = [models.ChatSession(id=models.new_key(), user_id=user.id) for _ in range(2)]
            project = models.UserProject(id=models.new_key(), user_id=user.id)
            agent = models.UserAgent(id=models.new_key(), user_id=user.id)
            session.add_all([*chats, project, agent])
            session.flush()
            world.users.append(user.id)
            world.sessions.append([chat.id for chat in chats])
            world.projects.append(project.id)
            world.agents.append(agent.id)
        session.commit()
    return world


def add_events(engine: Engine, models: HostModels, events: list[dict[str, Any]]) -> list[Any]:
    with Session(engine) as session:
        rows = [models.EventLog(**event) for event in events]
        session.add_all(rows)
        session.commit()
        return [row.id for row in rows]


def timeline_events(world: World, who: int = 0, count: int = 12) -> list[dict[str, Any]]:
    """Events of one user's first session, two per second so created_at ties occur."""
    kinds = ["user_message", "tool_call", "tool_result", "error", "approval_requested"]
    return [
        {
            "session_id": world.sessions[who][0],
            "user_id": world.users[who],
            "project_id": world.projects[who] if n % 2 else None,
            "agent_id": world.agents[who] if n % 3 else None,
            "event_type": kinds[n % len(kinds)],
            "payload": {"n": n},
            "created_at": T0 + timedelta(seconds=n // 2),
            "error_code": "timeout" if kinds[n % len(kinds)] == "error" else None,
            "tool_name": "search" if n % 5 in (1, 2) else None,
            "approval_status": "pending" if n % 5 == 4 else None,
        }
        for n in range(count)
    ]


@pytest.fixture
def world(host_engine: Engine, host_models: HostModels) -> World:
    world = make_world(host_engine, host_models)
    add_events(host_engine, host_models, timeline_events(world, 0))
    add_events(host_engine, host_models, timeline_events(world, 1, count=4))
    return world


@pytest.fixture
def reader(host_engine: Engine, host_models: HostModels) -> EventLogReader[Any]:
    return EventLogReader(host_models.EventLog, host_engine)


def keys(page: Page[Any]) -> list[tuple[datetime, uuid.UUID]]:
    return [(event.created_at, event.id) for event in page.items]


def walk(fetch: Any, cursor: str | None = None, **options: Any) -> list[EventRecord[Any]]:
    """Every event of a timeline (from ``cursor``), following cursors."""
    seen: list[EventRecord[Any]] = []
    while True:
        page = fetch(cursor=cursor, **options)
        seen.extend(page.items)
        if page.next_cursor is None:
            return seen
        cursor = page.next_cursor


def test_session_timeline_is_newest_first_with_id_tiebreak(
    reader: EventLogReader[Any], world: World
) -> None:
    page = reader.session_timeline(world.sessions[0][0], user_id=world.users[0])
    assert len(page.items) == 12
    assert page.next_cursor is None
    assert keys(page) == sorted(keys(page), reverse=True)
    first = page.items[0]
    assert isinstance(first, EventRecord)
    assert first.payload == {"n": first.payload["n"]}  # type: ignore[index,call-overload]
    assert first.created_at == T0 + timedelta(seconds=5)
    assert first.created_at.utcoffset() is not None


@pytest.mark.parametrize("order", ["newest", "oldest"])
@pytest.mark.parametrize("limit", [1, 3, 5, 12])
def test_pages_cover_the_timeline_once_in_order(
    reader: EventLogReader[Any], world: World, order: Any, limit: int
) -> None:
    seen = walk(
        reader.session_timeline,
        session_id=world.sessions[0][0],
        user_id=world.users[0],
        order=order,
        limit=limit,
    )
    pairs = [(event.created_at, event.id) for event in seen]
    assert len(pairs) == len(set(pairs)) == 12
    assert pairs == sorted(pairs, reverse=order == "newest")


def test_last_full_page_has_no_cursor(reader: EventLogReader[Any], world: World) -> None:
    page = reader.session_timeline(world.sessions[0][0], user_id=world.users[0], limit=6)
    assert page.next_cursor is not None
    last = reader.session_timeline(
        world.sessions[0][0], user_id=world.users[0], limit=6, cursor=page.next_cursor
    )
    assert len(last.items) == 6
    assert last.next_cursor is None


def pairs_of(events: Any) -> list[tuple[datetime, uuid.UUID]]:
    return [(event.created_at, event.id) for event in events]


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_inserts_between_pages_never_shift_or_repeat_paged_events(
    host_engine: Engine, host_models: HostModels, world: World, order: Any
) -> None:
    """The guarantee: resumed pages hold exactly what sorts after the cursor, nothing else.

    Whether an event inserted meanwhile is returned depends on where its created_at sorts,
    not on when it was committed: one stamped behind the cursor is never returned.
    """
    reader = EventLogReader(host_models.EventLog, host_engine)
    chat, user = world.sessions[0][0], world.users[0]
    first = reader.session_timeline(chat, user_id=user, order=order, limit=5)
    assert first.next_cursor is not None
    edge = (first.items[-1].created_at, first.items[-1].id)

    def beyond(pair: tuple[datetime, uuid.UUID]) -> bool:
        return pair < edge if order == "newest" else pair > edge

    # Newer events, events at the very instant of the page boundary, and an older one.
    boundary = first.items[-1].created_at
    late = [
        {"session_id": chat, "user_id": user, "event_type": f"late {n}", "created_at": when}
        for n, when in enumerate(
            (T0 + timedelta(hours=1), boundary, boundary, T0 - timedelta(hours=1))
        )
    ]
    late_ids = add_events(host_engine, host_models, late)
    resumed = walk(
        reader.session_timeline,
        session_id=chat,
        user_id=user,
        order=order,
        limit=5,
        cursor=first.next_cursor,
    )
    now = walk(reader.session_timeline, session_id=chat, user_id=user, order=order, limit=5)
    assert len(now) == 16
    read = pairs_of((*first.items, *resumed))
    assert len(read) == len(set(read)), "an event was returned twice"
    assert read == sorted(read, reverse=order == "newest")
    assert pairs_of(resumed) == [pair for pair in pairs_of(now) if beyond(pair)]
    returned = {event.id for event in resumed}
    newer, older = late_ids[0], late_ids[3]
    if order == "newest":
        # Newest first: a newer event sorts behind the cursor; start again to see it.
        assert newer not in returned
        assert older in returned
    else:
        # Oldest first: an event stamped before the cursor is never returned by this walk.
        assert newer in returned
        assert older not in returned
    assert len(read) < 16


def test_oldest_first_tail_sees_late_commits_only_with_a_lag(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    """docs/reading.md: a tail that stays MAX_FLUSH_DELAY behind the clock misses nothing."""
    reader = EventLogReader(host_models.EventLog, host_engine)
    chat, user = world.sessions[1][1], world.users[1]
    base = T0 + timedelta(days=1)
    max_flush_delay = timedelta(seconds=5)

    def write(*seconds: float) -> list[Any]:
        events = [
            {
                "session_id": chat,
                "user_id": user,
                "event_type": f"at {second}",
                "created_at": base + timedelta(seconds=second),
            }
            for second in seconds
        ]
        return add_events(host_engine, host_models, events)

    def window(since: datetime, until: datetime | None = None) -> list[EventRecord[Any]]:
        filters = EventFilter(since=since, until=until)
        return walk(
            reader.session_timeline,
            session_id=chat,
            user_id=user,
            order="oldest",
            filters=filters,
            limit=3,
        )

    write(*range(10))  # committed on time: stamped at base+0s .. base+9s
    # The clock reads base+10s. A buffered writer has stamped an event at base+7s (its own
    # clock, at build time) and flushes it at base+11s, after the tails below have read.
    now = base + timedelta(seconds=10)

    # A tail that reads up to now and resumes after the last event it saw misses it.
    naive = window(base)
    lagging = window(base, now - max_flush_delay)
    (late,) = write(7)
    naive += window(naive[-1].created_at + timedelta(microseconds=1))
    assert late not in {event.id for event in naive}
    assert len(naive) == 10

    # A tail that reads only up to now - MAX_FLUSH_DELAY, and starts the next window where
    # this one ended, reads every event once: base+7s had not been read yet.
    assert len(lagging) == 5
    now = base + timedelta(seconds=20)
    lagging += window(base + timedelta(seconds=5), now - max_flush_delay)
    ids = [event.id for event in lagging]
    assert late in ids
    assert len(ids) == len(set(ids)) == 11


def test_session_timeline_is_scoped_to_the_owner(reader: EventLogReader[Any], world: World) -> None:
    chat = world.sessions[0][0]
    assert reader.session_timeline(chat, user_id=world.users[1]).items == ()
    assert len(reader.session_timeline(chat, user_id=UNSCOPED).items) == 12
    with pytest.raises(ValidationError, match="user_id=UNSCOPED"):
        reader.session_timeline(chat, user_id=None)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="user_id=UNSCOPED"):
        reader.agent_timeline(world.agents[0], user_id=None)  # type: ignore[arg-type]


def test_user_project_and_agent_timelines(reader: EventLogReader[Any], world: World) -> None:
    user, project, agent = world.users[0], world.projects[0], world.agents[0]
    mine = reader.user_timeline(user).items
    assert len(mine) == 12
    assert {event.user_id for event in mine} == {user}
    in_project = reader.user_timeline(user, project_id=project).items
    assert {event.project_id for event in in_project} == {project}
    assert len(in_project) == 6
    assert reader.project_timeline(project).items == in_project
    assert reader.project_timeline(project, user_id=world.users[1]).items == ()
    by_agent = reader.agent_timeline(agent, user_id=user).items
    assert len(by_agent) == 8
    assert {event.agent_id for event in by_agent} == {agent}
    assert reader.agent_timeline(agent, user_id=world.users[1]).items == ()
    assert reader.agent_timeline(agent, user_id=UNSCOPED).items == by_agent


def test_filters_combine(reader: EventLogReader[Any], world: World) -> None:
    user = world.users[0]

    def events(**conditions: Any) -> list[int]:
        page = reader.user_timeline(user, filters=EventFilter(**conditions), order="oldest")
        return [event.payload["n"] for event in page.items]  # type: ignore[call-overload,index]

    assert events(event_types={"error", "tool_call"}) == [1, 3, 6, 8, 11]
    assert events(error_code=ANY_ERROR) == [3, 8]
    assert events(error_code="timeout") == [3, 8]
    assert events(error_code="nope") == []
    assert events(tool_name="search") == [1, 2, 6, 7, 11]
    assert events(approval_status="pending") == [4, 9]
    assert events(tool_name="search", event_types=["tool_call"]) == [1, 6, 11]
    # since is inclusive, until exclusive.
    assert events(since=T0 + timedelta(seconds=1), until=T0 + timedelta(seconds=3)) == [2, 3, 4, 5]
    paged = walk(
        reader.user_timeline,
        user_id=user,
        filters=EventFilter(tool_name="search"),
        limit=2,
    )
    assert [event.payload["n"] for event in paged] == [11, 7, 6, 2, 1]  # type: ignore[call-overload,index]


def test_an_event_type_longer_than_the_column_matches_nothing(
    host_engine: Engine, host_models: HostModels, reader: EventLogReader[Any], world: World
) -> None:
    # Not cut to the column's 64 characters first: "t" * 65 is not the stored "t" * 64.
    user = world.users[0]
    longest = "t" * 64
    add_events(
        host_engine,
        host_models,
        [{"session_id": world.sessions[0][0], "user_id": user, "event_type": longest}],
    )
    for asked, found in (({longest}, 1), ({longest + "t"}, 0), ({longest + "t", longest}, 1)):
        filters = EventFilter(event_types=asked)
        assert len(reader.user_timeline(user, filters=filters).items) == found
        assert reader.count(user_id=user, filters=filters) == found
        assert reader.count_by("event_type", user_id=user, filters=filters) == (
            [GroupCount(longest, 1)] if found else []
        )


@pytest.mark.parametrize(
    ("conditions", "message"),
    [
        ({"since": datetime(2025, 1, 1)}, "naive datetime"),
        ({"until": datetime(2025, 1, 1)}, "aware one"),
        ({"since": T0, "until": T0}, "since must be before until"),
        ({"until": datetime.max.replace(tzinfo=timezone(-timedelta(hours=1)))}, "after 9999"),
        ({"event_types": set()}, "match nothing"),
        ({"event_types": "error"}, "collection of event types"),
        ({"event_types": [["error"]]}, r"collection of event types \(str\)"),
        ({"event_types": {""}}, "non-empty str"),
        ({"tool_name": ""}, "tool_name"),
        ({"error_code": 42}, "error_code"),
        (
            {"tool_name": "a\ud800"},
            r"tool_name=\.\.\.\) got 'a\\ud800', which holds U\+D800 at index 1",
        ),
        ({"error_code": "\x00"}, r"U\+0000 at index 0: NUL and lone surrogates cannot be sent"),
        ({"approval_status": "ok\udfff"}, "U\\+DFFF at index 2"),
        ({"event_types": {"chat", "x\udc80"}}, r"event_types=\.\.\.\) got 'x\\udc80'"),
    ],
)
def test_filter_validation(conditions: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EventFilter(**conditions)


def test_argument_validation(reader: EventLogReader[Any], world: World) -> None:
    user = world.users[0]
    with pytest.raises(ValidationError, match="limit must be"):
        reader.user_timeline(user, limit=0)
    with pytest.raises(ValidationError, match="limit must be"):
        reader.user_timeline(user, limit=MAX_PAGE_SIZE + 1)
    with pytest.raises(ValidationError, match="order must be"):
        reader.user_timeline(user, order="latest")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"uuid\.UUID\(\.\.\.\)"):
        reader.user_timeline(str(user))  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="EventFilter or None"):
        reader.user_timeline(user, filters={"tool_name": "x"})  # type: ignore[arg-type]


def test_a_page_holds_50_events_by_default_and_at_most_1000(
    host_engine: Engine, host_models: HostModels, reader: EventLogReader[Any], world: World
) -> None:
    user = world.users[1]  # 4 events; 60 more
    add_events(host_engine, host_models, timeline_events(world, 1, count=60))
    page = reader.user_timeline(user)
    assert len(page.items) == 50
    assert page.next_cursor is not None
    assert len(reader.user_timeline(user, limit=1000).items) == 64
    with pytest.raises(ValidationError, match=r"limit must be an int from 1 to 1000 "):
        reader.user_timeline(user, limit=1001)


def test_a_key_of_the_other_type_is_refused_before_any_query(
    reader: EventLogReader[Any], world: World
) -> None:
    """An int for a UUID column used to reach PostgreSQL: 'operator does not exist'."""
    user, chat = world.users[0], world.sessions[0][0]
    span = {"since": T0, "until": T0 + timedelta(hours=1)}
    calls = {
        "user_id=5 (int)": lambda: reader.user_timeline(5),
        "user_id=7 (int)": lambda: reader.session_timeline(chat, user_id=7),
        "session_id=8 (int)": lambda: reader.session_timeline(8, user_id=user),
        "project_id=3 (int)": lambda: reader.user_timeline(user, project_id=3),
        "agent_id=4 (int)": lambda: reader.agent_timeline(4, user_id=UNSCOPED),
        "project_id=9 (int)": lambda: reader.count_by("event_type", project_id=9, **span),
        "agent_id=6 (int)": lambda: reader.count_by_bucket(
            "day",
            user_id=user,
            agent_id=6,
            **span,
        ),
    }
    for shown, call in calls.items():
        with pytest.raises(ValidationError) as raised:
            call()
        column = shown.split("=")[0]
        assert str(raised.value) == (
            f"{shown} does not fit the uuid column {column}; pass a uuid.UUID"
        )


def test_integer_keyed_reader_refuses_uuids_and_keys_out_of_range(engine: Engine) -> None:
    models = build_host_models(keys="integer")  # INTEGER keys, a BIGINT chat_sessions.id
    models.Base.metadata.create_all(engine)
    integer = EventLogReader(models.EventLog, engine)
    with pytest.raises(
        ValidationError,
        match=r"user_id=UUID\('.*'\) \(UUID\) does not fit the "
        r"int4 column user_id; pass an int",
    ):
        integer.user_timeline(uuid.uuid4())
    with pytest.raises(ValidationError, match="user_id=2147483648 is out of range for the int4"):
        integer.user_timeline(2**31)
    assert integer.user_timeline(2**31 - 1).items == ()
    with pytest.raises(ValidationError, match="session_id=9223372036854775808 is out of range"):
        integer.session_timeline(2**63, user_id=1)
    assert integer.session_timeline(2**63 - 1, user_id=1).items == ()
    with pytest.raises(ValidationError, match=r"uuid\.UUID or an int"):
        integer.user_timeline(True)
    with pytest.raises(ValidationError, match=r"got str '42'; convert it with int\(\.\.\.\)$"):
        integer.user_timeline("42")  # type: ignore[arg-type]


class Who(enum.IntEnum):
    ANN = 1
    BOB = 2


def test_a_cursor_of_one_int_enum_key_is_refused_for_another(engine: Engine) -> None:
    """Keys are compared with their type and value: two members of one IntEnum differ."""
    models = build_host_models(keys="integer")
    models.Base.metadata.create_all(engine)
    with Session(engine) as session:
        for who in Who:
            session.add(models.User(id=int(who)))
            session.flush()
            session.add(models.ChatSession(id=int(who), user_id=int(who)))
        session.flush()
        session.add_all(
            models.EventLog(session_id=1, user_id=1, event_type="user_message") for _ in range(2)
        )
        session.commit()
    integer = EventLogReader(models.EventLog, engine)
    cursor = integer.user_timeline(Who.ANN, limit=1).next_cursor
    assert cursor is not None
    assert integer.user_timeline(Who.ANN, limit=1, cursor=cursor).items
    with pytest.raises(InvalidCursorError, match="belongs to another query"):
        integer.user_timeline(Who.BOB, limit=1, cursor=cursor)


def test_cursor_from_another_query_or_altered_is_refused(
    reader: EventLogReader[Any], world: World
) -> None:
    chat, user = world.sessions[0][0], world.users[0]
    cursor = reader.session_timeline(chat, user_id=user, limit=2).next_cursor
    assert cursor is not None
    assert reader.session_timeline(chat, user_id=user, limit=7, cursor=cursor).items
    foreign = [
        lambda: reader.session_timeline(chat, user_id=UNSCOPED, cursor=cursor),
        lambda: reader.session_timeline(chat, user_id=user, order="oldest", cursor=cursor),
        lambda: reader.user_timeline(user, cursor=cursor),
        lambda: reader.session_timeline(
            chat, user_id=user, filters=EventFilter(tool_name="x"), cursor=cursor
        ),
    ]
    for call in foreign:
        with pytest.raises(InvalidCursorError, match="belongs to another query"):
            call()
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    with pytest.raises(InvalidCursorError, match="altered"):
        reader.session_timeline(chat, user_id=user, cursor=flipped)
    for garbage in ("", "not a cursor!", cursor[:-4], "AAAA" * 20):
        with pytest.raises(InvalidCursorError, match=r"Page\.next_cursor") as raised:
            reader.session_timeline(chat, user_id=user, cursor=garbage)
        assert isinstance(raised.value, ValidationError)
        assert isinstance(raised.value, ValueError)


def test_cursor_round_trip_keeps_microseconds() -> None:
    when = datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    event_id = uuid.uuid4()
    token = encode_cursor((when, event_id), "q")
    assert decode_cursor(token, "q") == (when, event_id)
    assert "=" not in token
    assert token == token.encode("ascii").decode()
    with pytest.raises(InvalidCursorError, match="str"):
        decode_cursor(42, "q")  # type: ignore[arg-type]


def test_counts(reader: EventLogReader[Any], world: World) -> None:
    user, project = world.users[0], world.projects[0]
    span = {"since": T0, "until": T0 + timedelta(minutes=1)}
    by_type = reader.count_by("event_type", user_id=user, **span)
    assert by_type[0].count >= by_type[-1].count
    assert sum(group.count for group in by_type) == 12
    assert GroupCount("error", 2) in by_type
    assert reader.count_by("tool_name", user_id=user, **span) == [
        GroupCount(None, 7),
        GroupCount("search", 5),
    ]
    errors = reader.count_by(
        "error_code", user_id=user, filters=EventFilter(error_code=ANY_ERROR), **span
    )
    assert errors == [GroupCount("timeout", 2)]
    by_agent = reader.count_by("agent_id", project_id=project, **span)
    assert by_agent == [GroupCount(world.agents[0], 4), GroupCount(None, 2)]
    narrowed = reader.count_by("event_type", user_id=user, agent_id=world.agents[0], **span)
    assert sum(group.count for group in narrowed) == 8
    assert reader.count_by("event_type", user_id=world.users[1], project_id=project, **span) == []
    # A filter's range intersects the aggregate's.
    late = EventFilter(since=T0 + timedelta(seconds=5))
    assert (
        sum(g.count for g in reader.count_by("event_type", user_id=user, filters=late, **span)) == 2
    )


def test_count_by_bucket(reader: EventLogReader[Any], world: World) -> None:
    user = world.users[0]
    span = {"since": T0 - timedelta(days=1), "until": T0 + timedelta(days=1)}
    buckets = reader.count_by_bucket(timedelta(seconds=2), user_id=user, **span)
    assert buckets == [
        BucketCount(T0, 4),
        BucketCount(T0 + timedelta(seconds=2), 4),
        BucketCount(T0 + timedelta(seconds=4), 4),
    ]
    assert reader.count_by_bucket("day", user_id=user, **span) == [
        BucketCount(datetime(2025, 3, 1, tzinfo=UTC), 12)
    ]
    # Midnight in Tokyo (UTC+9) cuts the day at 15:00 UTC the day before.
    assert reader.count_by_bucket("day", user_id=user, time_zone="Asia/Tokyo", **span) == [
        BucketCount(datetime(2025, 2, 28, 15, tzinfo=UTC), 12)
    ]
    assert reader.count_by_bucket("week", user_id=user, **span)[0].start == datetime(
        2025, 2, 24, tzinfo=UTC
    )
    assert reader.count_by_bucket(timedelta(days=7), user_id=user, **span)[0].start == datetime(
        2025, 2, 24, tzinfo=UTC
    )


def test_calendar_buckets_follow_daylight_saving(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    # Paris moved to summer time on 2025-03-30: that local day lasted 23 hours, from 23:00 UTC
    # to 22:00 UTC. These two events share a UTC day but not a Paris one.
    chat, user = world.sessions[1][0], world.users[1]
    instants = [
        datetime(2025, 3, 30, 21, 30, tzinfo=UTC),
        datetime(2025, 3, 30, 22, 30, tzinfo=UTC),
    ]
    add_events(
        host_engine,
        host_models,
        [
            {"session_id": chat, "user_id": user, "event_type": "x", "created_at": t}
            for t in instants
        ],
    )
    reader = EventLogReader(host_models.EventLog, host_engine)
    buckets = reader.count_by_bucket(
        "day",
        user_id=user,
        since=datetime(2025, 3, 29, tzinfo=UTC),
        until=datetime(2025, 4, 1, tzinfo=UTC),
        time_zone="Europe/Paris",
    )
    assert buckets == [
        BucketCount(datetime(2025, 3, 29, 23, tzinfo=UTC), 1),
        BucketCount(datetime(2025, 3, 30, 22, tzinfo=UTC), 1),
    ]


def test_bounds_in_one_zone_across_a_clocks_back_hour_compare_as_instants(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    """Python compares two times of one zone object by their clocks (fold ignored): 01:50 EDT
    reads later than 01:10 EST, which is 20 minutes after it."""
    new_york = ZoneInfo("America/New_York")
    first = datetime(2024, 11, 3, 1, 50, tzinfo=new_york)  # 05:50 UTC
    later = datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=new_york)  # 06:10 UTC
    chat, user = world.sessions[1][0], world.users[1]
    add_events(
        host_engine,
        host_models,
        [
            {"session_id": chat, "user_id": user, "event_type": "x", "created_at": at}
            for at in (
                datetime(2024, 11, 3, 6, tzinfo=UTC),
                datetime(2024, 11, 3, 6, 20, tzinfo=UTC),
            )
        ],
    )
    reader = EventLogReader(host_models.EventLog, host_engine)
    # A range that is not empty (one event, at 06:00 UTC).
    assert len(reader.user_timeline(user, since=first, until=later).items) == 1
    assert reader.count(user_id=user, since=first, until=later) == 1
    # The bounds given both ways intersect: the later since, the earlier until.
    two_hours = first + timedelta(hours=2)
    assert reader.count(user_id=user, since=first, until=two_hours, filters=after(later)) == 1
    hour_before = first - timedelta(hours=1)
    assert reader.count(user_id=user, since=hour_before, until=first, filters=before(later)) == 0
    page = reader.user_timeline(user, since=first, until=two_hours, filters=after(later))
    assert [event.created_at for event in page.items] == [datetime(2024, 11, 3, 6, 20, tzinfo=UTC)]
    with pytest.raises(ValidationError, match="is an empty range"):
        reader.user_timeline(user, since=later, until=first)


def after(moment: datetime) -> EventFilter:
    return EventFilter(since=moment)


def before(moment: datetime) -> EventFilter:
    return EventFilter(until=moment)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"user_id": None}, "needs a scope"),
        ({"user_id": UNSCOPED}, "user_id=UNSCOPED lifts the owner check"),
        ({"since": datetime(2025, 1, 1)}, "naive"),
        ({"until": T0 - timedelta(days=9)}, "empty range"),
        ({"until": None}, "needs a time range"),
        ({"bucket": "fortnight"}, "bucket must be"),
        ({"bucket": timedelta(0)}, "positive"),
        ({"bucket": timedelta(days=365_250, microseconds=1)}, "at most 1000 years"),
        ({"bucket": timedelta.max}, r"at most 1000 years \(timedelta\(days=365250\)\)"),
        ({"bucket": timedelta(hours=1), "time_zone": "Europe/Paris"}, "calendar buckets only"),
        ({"time_zone": "Mars/Olympus"}, "IANA"),
        ({"time_zone": "Europe"}, r"'Europe' is not an IANA time zone"),
        ({"time_zone": "a" * 300}, "is not an IANA time zone"),
        ({"time_zone": "CET"}, "a fixed offset without daylight saving.*'Europe/Paris'"),
        ({"time_zone": "WET"}, "'Europe/Lisbon'"),
        ({"time_zone": "eet"}, "'Europe/Athens'"),
        ({"time_zone": "localtime"}, "this machine's zone"),
        # Files of the zone folder that PostgreSQL does not know as zones.
        ({"time_zone": "posix/Europe/Paris"}, "is not an IANA time zone"),
        ({"time_zone": "right/Europe/Paris"}, "is not an IANA time zone"),
        ({"time_zone": "posixrules"}, "is not an IANA time zone"),
        ({"since": date(2025, 1, 1)}, r"pass a timezone-aware datetime, e\.g\. datetime\("),
        ({"filters": "x"}, "EventFilter"),
    ],
)
def test_aggregate_validation(
    reader: EventLogReader[Any], world: World, arguments: dict[str, Any], message: str
) -> None:
    options: dict[str, Any] = {
        "bucket": "day",
        "user_id": world.users[0],
        "since": T0 - timedelta(days=1),
        "until": T0,
        **arguments,
    }
    with pytest.raises(ValidationError, match=message):
        reader.count_by_bucket(**options)
    if not {"bucket", "time_zone"} & arguments.keys() and message != "needs a time range":
        del options["bucket"]
        with pytest.raises(ValidationError, match=message):
            reader.count_by("event_type", **options)
    if arguments.get("user_id", 0) is UNSCOPED:
        with pytest.raises(ValidationError, match=message):
            reader.count(user_id=UNSCOPED, project_id=world.projects[0])
    with pytest.raises(ValidationError, match="cannot count by"):
        reader.count_by("payload", user_id=world.users[0], since=T0, until=T0 + timedelta(1))  # type: ignore[arg-type]


def test_connection_and_session_binds_join_the_callers_transaction(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    chat, user = world.sessions[0][1], world.users[0]
    with Session(host_engine) as session:
        session.add(host_models.EventLog(session_id=chat, user_id=user, event_type="draft"))
        session.flush()
        page = EventLogReader(host_models.EventLog, session).session_timeline(chat, user_id=user)
        assert [event.event_type for event in page.items] == ["draft"]
        session.rollback()
    with host_engine.connect() as connection:
        reader = EventLogReader(host_models.EventLog, connection)
        assert reader.session_timeline(chat, user_id=user).items == ()


def test_integer_keyed_host(engine: Engine) -> None:
    models = build_host_models(keys="integer")
    models.Base.metadata.create_all(engine)
    world = make_world(engine, models)
    add_events(engine, models, timeline_events(world, 0))
    reader = EventLogReader(models.EventLog, engine)
    everything = walk(reader.user_timeline, user_id=world.users[0], limit=5)
    assert len(everything) == 12
    assert all(isinstance(event.session_id, int) for event in everything)
    span = {"since": T0, "until": T0 + timedelta(hours=1)}
    assert reader.count_by("agent_id", user_id=world.users[0], **span)[0] == GroupCount(
        world.agents[0], 8
    )


def test_reader_rejects_what_it_cannot_use(host_engine: Engine, host_models: HostModels) -> None:
    with pytest.raises(ConfigurationError, match="Engine, Connection or Session"):
        EventLogReader(host_models.EventLog, "postgresql://")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="EventLog model class"):
        EventLogReader(host_models.User, host_engine)
    lacking = Table("event_logs", MetaData(), *(Column(name) for name in COLUMNS[1:]))
    with pytest.raises(ConfigurationError, match="EventLog model class"):
        EventLogReader(lacking, host_engine)


def test_a_table_with_more_columns_than_the_event_log_is_read(engine: Engine) -> None:
    """The opt-in feed's xid (and a host's own columns) are left out of the records."""
    models = build_host_models(feed=True)
    models.Base.metadata.create_all(engine)
    assert EventLogReader(models.EventLog, engine).user_timeline(uuid.uuid4()).items == ()


def test_statement_path_matches_the_driver_path(
    host_engine: Engine, host_models: HostModels, world: World
) -> None:
    """Drivers other than psycopg run the SQLAlchemy statement; both paths agree."""
    from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

    from eventlog_persist._read_sql import bucket_query, count_query, event_table, timeline_query

    table = event_table(host_models.EventLog)
    span = {"since": T0, "until": T0 + timedelta(hours=1)}
    queries = [
        timeline_query(
            table,
            column="session_id",
            key=world.sessions[0][0],
            user_id=world.users[0],
            filters=EventFilter(event_types={"error", "tool_call"}, tool_name="search"),
        ).query,
        count_query(table, "tool_name", user_id=world.users[0], **span),
        bucket_query(table, timedelta(seconds=2), project_id=world.projects[0], **span),
    ]
    positional = PGDialect_psycopg(paramstyle="format")
    with host_engine.connect() as connection:
        for query in queries:
            driver_sql = query.driver_sql(connection.dialect)
            assert driver_sql is not None
            expected = connection.exec_driver_sql(*driver_sql).all()
            assert expected
            assert connection.execute(query.statement(), query.params).all() == expected
            sql, parameters = query.driver_sql(positional) or ("", ())
            assert isinstance(parameters, tuple)
            assert connection.exec_driver_sql(sql, parameters).all() == expected
    other = type("Other", (), {"driver": "asyncpg"})()
    assert queries[0].driver_sql(other) is None  # type: ignore[arg-type]


def test_readers_fall_back_to_the_statement(
    reader: EventLogReader[Any], world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventlog_persist._read_sql import PreparedQuery

    expected = reader.session_timeline(world.sessions[0][0], user_id=world.users[0], limit=4)
    monkeypatch.setattr(PreparedQuery, "driver_sql", lambda self, dialect: None)
    assert (
        reader.session_timeline(world.sessions[0][0], user_id=world.users[0], limit=4) == expected
    )


@pytest.fixture
def tenant_engine(host_engine: Engine, host_models: HostModels, world: World) -> Engine:
    """The host's tables again in schema tenant_b, via schema_translate_map, with the same
    keys as in public but every event typed "tenant_b"."""
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
    return tenant


def test_schema_translate_map_is_honoured(
    host_engine: Engine, host_models: HostModels, world: World, tenant_engine: Engine
) -> None:
    """Schema-per-tenant hosts: the reader reads the schema the bind translates to."""
    chat, user = world.sessions[0][0], world.users[0]
    span = {"since": T0, "until": T0 + timedelta(hours=1)}

    def types(bind: Any) -> set[str]:
        reader = EventLogReader(host_models.EventLog, bind)
        events = walk(reader.session_timeline, session_id=chat, user_id=user, limit=5)
        assert len(events) == 12
        counted = reader.count_by("event_type", user_id=user, **span)
        assert {group.key for group in counted} <= {event.event_type for event in events}
        return {event.event_type for event in events}

    # public first, so its SQL is cached before the tenant's calls.
    assert "tenant_b" not in types(host_engine)
    assert types(tenant_engine) == {"tenant_b"}
    with tenant_engine.connect() as connection:
        assert types(connection) == {"tenant_b"}
    with Session(tenant_engine) as session:
        assert types(session) == {"tenant_b"}
    with host_engine.connect() as connection:
        connection.execution_options(schema_translate_map={None: "tenant_b"})
        assert types(connection) == {"tenant_b"}
    assert "tenant_b" not in types(host_engine)


@pytest.fixture
def other_engine(pg_server: ServerInfo, host_models: HostModels) -> Iterator[Engine]:
    """A second database with the same (empty) tables: the wrong place to read from."""
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=f"evl_other_{uuid.uuid4().hex[:12]}",
    )
    janitor.init()
    engine = create_engine(pg_server.sqlalchemy_url(janitor.dbname))
    try:
        host_models.Base.metadata.create_all(engine)
        yield engine
    finally:
        engine.dispose()
        janitor.drop()


def test_session_with_per_model_binds_reads_the_models_database(
    host_engine: Engine, host_models: HostModels, world: World, other_engine: Engine
) -> None:
    chat, user = world.sessions[0][0], world.users[0]
    model = host_models.EventLog
    for options in (
        {"binds": {model: host_engine}},  # no default bind
        {"bind": other_engine, "binds": {model: host_engine}},  # a default bind elsewhere
        {"bind": other_engine, "binds": {host_models.Base: host_engine}},  # per Base class
    ):
        with Session(**options) as session:  # type: ignore[arg-type]
            page = EventLogReader(model, session).session_timeline(chat, user_id=user)
            assert len(page.items) == 12, options
    with Session(bind=other_engine) as session:
        assert EventLogReader(model, session).session_timeline(chat, user_id=user).items == ()


def test_crafted_cursor_with_an_impossible_time_is_refused(
    reader: EventLogReader[Any], world: World, host_models: HostModels
) -> None:
    """The tag is a checksum anyone can rebuild: a crafted position must fail cleanly."""
    import base64

    from eventlog_persist import _cursor as cursors
    from eventlog_persist._read_sql import event_table, timeline_query

    chat, user = world.sessions[0][0], world.users[0]
    key = timeline_query(
        event_table(host_models.EventLog), column="session_id", key=chat, user_id=user
    ).query_key

    def crafted(micros: int) -> str:
        body = cursors._BODY.pack(cursors._VERSION, micros, uuid.uuid4().bytes)
        token = base64.urlsafe_b64encode(body + cursors._tag(body, key))
        return token.rstrip(b"=").decode()

    def micros_of(when: datetime) -> int:
        return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    first = micros_of(datetime.min.replace(tzinfo=UTC))
    last = micros_of(datetime.max.replace(tzinfo=UTC))
    for micros in (2**63 - 1, -(2**63), last + 1, first - 1, 2**62):
        with pytest.raises(InvalidCursorError, match=r"outside.*Page\.next_cursor"):
            reader.session_timeline(chat, user_id=user, cursor=crafted(micros))
    # The extremes themselves are valid positions, and PostgreSQL takes them.
    assert len(reader.session_timeline(chat, user_id=user, cursor=crafted(last)).items) == 12
    assert reader.session_timeline(chat, user_id=user, cursor=crafted(first)).items == ()


def test_distinct_filters_never_share_a_cursor() -> None:
    from eventlog_persist._read_sql import event_table, timeline_query

    table = event_table(build_host_models().EventLog)
    user = uuid.uuid4()

    def key(filters: EventFilter | None, **options: Any) -> str:
        return timeline_query(
            table, column="user_id", key=options.pop("key", user), filters=filters, **options
        ).query_key

    pairs = [
        (EventFilter(event_types={"a,b"}), EventFilter(event_types={"a", "b"})),
        (EventFilter(event_types={"a|b"}), EventFilter(event_types={"a", "b"})),
        (EventFilter(tool_name="x|'y'"), EventFilter(tool_name="x", approval_status="'y'")),
        (EventFilter(error_code=ANY_ERROR), EventFilter(error_code="any")),
        (EventFilter(tool_name="None"), None),
    ]
    position = (T0, uuid.uuid4())
    for one, other in pairs:
        assert key(one) != key(other), (one, other)
        with pytest.raises(InvalidCursorError, match="belongs to another query"):
            decode_cursor(encode_cursor(position, key(one)), key(other))
    # A key's type is part of the query: int 1 (an integer-keyed host) is not UUID 1.
    int_table = event_table(build_host_models(keys="integer").EventLog)
    int_key = timeline_query(int_table, column="user_id", key=1).query_key
    assert int_key != key(None, key=uuid.UUID(int=1))
    # The same filter, written differently, is the same query.
    paris = T0.astimezone(ZoneInfo("Europe/Paris"))
    assert key(EventFilter(since=T0, event_types=["b", "a"])) == key(
        EventFilter(since=paris, event_types={"a", "b"})
    )


# -- narrowing, offsets and totals (the analytics a host API serves) ----------------------


@pytest.fixture
def two_sessions(host_engine: Engine, host_models: HostModels, world: World) -> World:
    """User 0 also has events in a second session, in the same project and agent."""
    second = [
        {
            "session_id": world.sessions[0][1],
            "user_id": world.users[0],
            "project_id": world.projects[0] if n != 4 else None,
            "agent_id": world.agents[0] if n % 2 else None,
            "event_type": "tool_call" if n % 2 else "error",
            "error_code": None if n % 2 else "rate_limited",
            "payload": {"n": 100 + n},
            "created_at": T0 + timedelta(seconds=3, milliseconds=250 * n),
        }
        for n in range(6)
    ]
    add_events(host_engine, host_models, second)
    return world


def narrowed_calls(world: World) -> list[tuple[str, dict[str, Any]]]:
    """(timeline method, its scope and filters as keywords)."""
    user, project, agent = world.users[0], world.projects[0], world.agents[0]
    first, second = world.sessions[0]
    calls = EventFilter(event_types={"tool_call"})
    return [
        ("user_timeline", {"user_id": user, "project_id": project}),
        ("user_timeline", {"user_id": user, "agent_id": agent}),
        ("user_timeline", {"user_id": user, "session_id": second}),
        (
            "user_timeline",
            {"user_id": user, "project_id": project, "agent_id": agent, "session_id": first},
        ),
        ("project_timeline", {"project_id": project, "user_id": user, "agent_id": agent}),
        ("project_timeline", {"project_id": project, "session_id": second}),
        (
            "project_timeline",
            {"project_id": project, "user_id": user, "agent_id": agent, "filters": calls},
        ),
        ("session_timeline", {"session_id": second, "user_id": user, "agent_id": agent}),
        ("session_timeline", {"session_id": first, "user_id": user, "project_id": project}),
        ("agent_timeline", {"agent_id": agent, "user_id": user, "project_id": project}),
        ("agent_timeline", {"agent_id": agent, "user_id": user, "session_id": second}),
    ]


def matches(event: EventRecord[Any], scope: dict[str, Any]) -> bool:
    filters = scope.get("filters")
    if filters is not None and event.event_type not in filters.event_types:
        return False
    return all(getattr(event, name) == value for name, value in scope.items() if name != "filters")


def call_timeline(reader: Any, method: str, scope: dict[str, Any], **options: Any) -> Any:
    """``reader.<method>(key, **rest, **options)``: the scope's own key goes positionally."""
    column = method.replace("_timeline", "_id")
    rest = {name: value for name, value in scope.items() if name != column}
    return getattr(reader, method)(scope[column], **rest, **options)


def test_timelines_narrow_by_every_other_key(
    reader: EventLogReader[Any], two_sessions: World
) -> None:
    world = two_sessions
    everything = walk(reader.user_timeline, user_id=world.users[0], limit=MAX_PAGE_SIZE)
    assert len(everything) == 18
    for method, scope in narrowed_calls(world):
        expected = [event for event in everything if matches(event, scope)]
        assert expected, (method, scope)
        assert len(expected) < len(everything), (method, scope)
        page = call_timeline(reader, method, scope, limit=MAX_PAGE_SIZE)
        assert list(page.items) == expected, (method, scope)
        walked = walk(functools.partial(call_timeline, reader, method, scope), limit=2)
        assert walked == expected, (method, scope)
        oldest = call_timeline(reader, method, scope, order="oldest").items
        assert list(oldest) == expected[::-1], (method, scope)
        # count() takes the same scope and filters, all as keywords: the page's total.
        assert reader.count(**scope) == len(expected), (method, scope)


def test_narrowing_never_reaches_another_users_events(
    reader: EventLogReader[Any], two_sessions: World
) -> None:
    world = two_sessions
    mine, theirs = world.users
    assert reader.project_timeline(world.projects[0], user_id=theirs).items == ()
    assert reader.user_timeline(theirs, agent_id=world.agents[0]).items == ()
    assert reader.user_timeline(theirs, session_id=world.sessions[0][1]).items == ()
    assert reader.session_timeline(world.sessions[0][1], user_id=theirs, agent_id=None).items == ()
    assert reader.count(user_id=theirs, project_id=world.projects[0]) == 0
    assert reader.count(user_id=theirs, session_id=world.sessions[0][0]) == 0
    assert reader.count(user_id=theirs) == 4
    unscoped = reader.session_timeline(
        world.sessions[0][1], user_id=UNSCOPED, agent_id=world.agents[0]
    )
    assert {event.user_id for event in unscoped.items} == {mine}
    assert len(unscoped.items) == 3


def test_a_narrowed_timeline_has_cursors_of_its_own(
    reader: EventLogReader[Any], two_sessions: World
) -> None:
    world = two_sessions
    user, agent, second = world.users[0], world.agents[0], world.sessions[0][1]
    cursor = reader.user_timeline(user, agent_id=agent, limit=2).next_cursor
    assert cursor is not None
    assert reader.user_timeline(user, agent_id=agent, cursor=cursor).items
    for other in (
        {},
        {"session_id": second},
        {"agent_id": agent, "session_id": second},
        {"project_id": world.projects[0]},
    ):
        with pytest.raises(InvalidCursorError, match="belongs to another query"):
            reader.user_timeline(user, cursor=cursor, **other)
    # A narrowing by agent is not one by session, even for the same key value.
    agent_key = reader.user_timeline(user, agent_id=agent, limit=1).next_cursor
    with pytest.raises(InvalidCursorError, match="belongs to another query"):
        reader.user_timeline(user, session_id=agent, cursor=agent_key)


@pytest.mark.parametrize("order", ["newest", "oldest"])
@pytest.mark.parametrize("limit", [1, 4, 7])
def test_offset_pages_are_slices_of_the_timeline(
    reader: EventLogReader[Any], two_sessions: World, order: Any, limit: int
) -> None:
    world = two_sessions
    scope = {"project_id": world.projects[0], "user_id": world.users[0]}
    everything = walk(reader.project_timeline, order=order, limit=MAX_PAGE_SIZE, **scope)
    assert len(everything) == 11
    for offset in range(len(everything) + 2):
        page = reader.project_timeline(order=order, limit=limit, offset=offset, **scope)
        assert list(page.items) == everything[offset : offset + limit], offset
        if offset + limit < len(everything):
            # The cursor of an offset page continues right after it.
            assert page.next_cursor is not None
            following = reader.project_timeline(
                order=order, limit=limit, cursor=page.next_cursor, **scope
            )
            assert list(following.items) == everything[offset + limit : offset + 2 * limit]
        else:
            assert page.next_cursor is None
    assert reader.count(**scope) == len(everything)


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (-1, r"offset must be an int from 0 to 10000 \(MAX_OFFSET\), got int -1"),
        (True, r"offset must be an int from 0 to 10000 \(MAX_OFFSET\), got bool True"),
        ("20", r"offset must be an int .* got str '20'"),
        (2.0, r"offset must be an int .* got float 2\.0"),
        (None, r"offset must be an int .* got NoneType None"),
        (
            MAX_OFFSET + 1,
            r"offset=10001 is beyond MAX_OFFSET \(10000\): .* page further with "
            r"cursor=page\.next_cursor",
        ),
        (10**12, r"offset=1000000000000 is beyond MAX_OFFSET"),
    ],
)
def test_offset_out_of_bounds_is_refused(
    reader: EventLogReader[Any], world: World, offset: Any, message: str
) -> None:
    user, chat = world.users[0], world.sessions[0][0]
    for call in (
        lambda: reader.user_timeline(user, offset=offset),
        lambda: reader.session_timeline(chat, user_id=user, offset=offset),
        lambda: reader.project_timeline(world.projects[0], offset=offset),
        lambda: reader.agent_timeline(world.agents[0], user_id=UNSCOPED, offset=offset),
    ):
        with pytest.raises(ValidationError, match=message):
            call()


def test_offset_with_a_cursor_is_refused(reader: EventLogReader[Any], world: World) -> None:
    user = world.users[0]
    first = reader.user_timeline(user, limit=3)
    assert first.next_cursor is not None
    with pytest.raises(
        ValidationError,
        match=r"offset=3 was given with a cursor, which already says where the page starts; "
        r"pass the cursor alone \(offset=0\)",
    ):
        reader.user_timeline(user, limit=3, offset=3, cursor=first.next_cursor)
    second = reader.user_timeline(user, limit=3, offset=0, cursor=first.next_cursor)
    assert second == reader.user_timeline(user, limit=3, offset=3)
    # The deepest offset allowed runs (and finds nothing here).
    assert reader.user_timeline(user, offset=MAX_OFFSET).items == ()


def test_count_is_the_total_of_a_timeline(reader: EventLogReader[Any], two_sessions: World) -> None:
    world = two_sessions
    user, project = world.users[0], world.projects[0]
    assert reader.count(user_id=user) == 18
    assert reader.count(project_id=project) == 11
    assert reader.count(user_id=user, session_id=world.sessions[0][1]) == 6
    errors = EventFilter(error_code=ANY_ERROR)
    assert reader.count(user_id=user, filters=errors) == 5
    assert reader.count(user_id=user, filters=EventFilter(error_code="rate_limited")) == 3
    # since is inclusive, until exclusive; a filter's range intersects the call's.
    window = {"since": T0 + timedelta(seconds=1), "until": T0 + timedelta(seconds=3)}
    assert reader.count(user_id=user, **window) == 4
    assert reader.count(user_id=user, filters=EventFilter(**window)) == 4
    assert reader.count(user_id=user, since=window["since"]) == 16
    assert reader.count(user_id=user, until=window["until"]) == 6
    assert (
        reader.count(
            user_id=user,
            since=T0,
            filters=EventFilter(since=window["since"], until=T0 + timedelta(1)),
        )
        == 16
    )
    assert reader.count(user_id=user, since=T0 + timedelta(days=1)) == 0


def test_count_by_takes_an_optional_range(reader: EventLogReader[Any], two_sessions: World) -> None:
    world = two_sessions
    user = world.users[0]
    all_time = reader.count_by("event_type", user_id=user)
    assert sum(group.count for group in all_time) == 18
    wide = {"since": T0 - timedelta(days=1), "until": T0 + timedelta(days=1)}
    assert reader.count_by("event_type", user_id=user, **wide) == all_time
    assert reader.count_by(
        "error_code", user_id=user, filters=EventFilter(error_code=ANY_ERROR)
    ) == [
        GroupCount("rate_limited", 3),
        GroupCount("timeout", 2),
    ]
    assert reader.count_by("agent_id", project_id=world.projects[0], session_id=None) == [
        GroupCount(world.agents[0], 7),
        GroupCount(None, 4),
    ]
    since_only = reader.count_by("event_type", user_id=user, since=T0 + timedelta(seconds=5))
    assert sum(group.count for group in since_only) == 2
    until_only = reader.count_by("tool_name", user_id=user, until=T0 + timedelta(seconds=1))
    assert sum(group.count for group in until_only) == 2
    in_session = reader.count_by("event_type", user_id=user, session_id=world.sessions[0][1])
    assert in_session == [GroupCount("error", 3), GroupCount("tool_call", 3)]
    assert sum(b.count for b in reader.count_by_bucket("day", user_id=user, **wide)) == 18


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "needs a scope: pass user_id=..., project_id=... or both"),
        ({"session_id": "the session"}, r"with session_id, pass the session's owner as user_id"),
        ({"agent_id": "the agent"}, "agent_id and session_id only narrow a scope"),
        ({"user_id": "42"}, r"user_id must be a uuid\.UUID or an int .* convert it"),
        ({"user_id": UNSCOPED}, r"user_id=UNSCOPED lifts the owner check of a timeline"),
        ({"user_id": "me", "session_id": 7}, r"session_id=7 \(int\) does not fit the uuid column"),
        ({"user_id": "me", "agent_id": True}, r"agent_id must be a uuid\.UUID or an int"),
        ({"user_id": "me", "since": datetime(2025, 1, 1)}, "naive datetime"),
        ({"user_id": "me", "since": T0, "until": T0}, "since must be before until"),
        ({"user_id": "me", "until": "2025-01-01"}, r"until=\.\.\.\) must be a datetime"),
        (
            {"user_id": "me", "filters": {"event_types": ["error"]}},
            r"got dict .* EventFilter\(\.\.\.\)",
        ),
    ],
)
def test_count_refuses_what_cannot_be_counted(
    reader: EventLogReader[Any], world: World, arguments: dict[str, Any], message: str
) -> None:
    values = {
        "me": world.users[0],
        "the session": world.sessions[0][0],
        "the agent": world.agents[0],
    }
    options = {
        name: values.get(value, value) if isinstance(value, str) and name != "until" else value
        for name, value in arguments.items()
    }
    if options.get("user_id") == "42":
        options["user_id"] = "42"
    with pytest.raises(ValidationError, match=message):
        reader.count(**options)
    with pytest.raises(ValidationError, match=message):
        reader.count_by("event_type", **options)


@pytest.mark.parametrize(
    ("narrowing", "message"),
    [
        ({"agent_id": "agent-7"}, r"agent_id must be a uuid\.UUID or an int .* got str 'agent-7'"),
        ({"session_id": 12}, r"session_id=12 \(int\) does not fit the uuid column session_id"),
        ({"project_id": UNSCOPED}, r"project_id must be a uuid\.UUID or an int .* got Unscoped"),
        ({"agent_id": 1.5}, r"agent_id must be a uuid\.UUID or an int .* got float 1\.5"),
        ({"filters": "error"}, r"filters must be an EventFilter or None, got str 'error'"),
        ({"filters": [EventFilter()]}, r"filters must be an EventFilter or None, got list"),
    ],
)
def test_narrowing_of_the_wrong_type_is_refused_before_any_query(
    reader: EventLogReader[Any], world: World, narrowing: dict[str, Any], message: str
) -> None:
    user = world.users[0]
    calls = [lambda: reader.user_timeline(user, **narrowing)]
    if "agent_id" not in narrowing:
        calls.append(lambda: reader.agent_timeline(world.agents[0], user_id=user, **narrowing))
    if "session_id" not in narrowing:
        calls.append(
            lambda: reader.session_timeline(world.sessions[0][0], user_id=user, **narrowing)
        )
    if "project_id" not in narrowing:
        calls.append(lambda: reader.project_timeline(world.projects[0], **narrowing))
    for call in calls:
        with pytest.raises(ValidationError, match=message):
            call()


def test_a_timeline_cannot_be_narrowed_by_its_own_key(
    reader: EventLogReader[Any], world: World
) -> None:
    """An agent timeline narrowed to an agent makes no sense: the signature has no such
    keyword, and the shared statement builder refuses it too."""
    from eventlog_persist._read_sql import event_table, timeline_query

    user, agent, (chat, other_chat) = world.users[0], world.agents[0], world.sessions[0]
    with pytest.raises(TypeError, match="agent_id"):
        reader.agent_timeline(agent, user_id=user, agent_id=world.agents[1])  # type: ignore[misc]
    with pytest.raises(TypeError, match="session_id"):
        reader.session_timeline(chat, user_id=user, session_id=other_chat)  # type: ignore[misc]
    table = event_table(reader._table)
    with pytest.raises(ValidationError, match=r"scoped by agent_id already; drop agent_id="):
        timeline_query(table, column="agent_id", key=agent, agent_id=agent)
