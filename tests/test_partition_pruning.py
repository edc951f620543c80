"""The readers prune partitions: a bounded timeline, a later page and a lookup by id read only
the partitions that can hold their events, proven with EXPLAIN on the partitioned layout."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, event, text

from eventlog_persist import (
    UNSCOPED,
    EventFilter,
    EventLogReader,
    ensure_partitions,
    new_event,
    new_event_id,
    write_events,
)

# Eight weekly partitions, the first week starting on Monday 2026-06-01.
FIRST_MONDAY = datetime(2026, 6, 1, tzinfo=UTC)
WEEKS = 8
PER_WEEK = 40


def week(n: int) -> datetime:
    return FIRST_MONDAY + timedelta(weeks=n)


def partition(n: int) -> str:
    return f"event_logs_p{week(n):%Y%m%d}"


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(partitioned=True)


@pytest.fixture
def loaded(engine: Engine, host_models: HostModels) -> tuple[Engine, EventLogReader[Any], Any, Any]:
    """``PER_WEEK`` events of one session in each of ``WEEKS`` weekly partitions, analyzed."""
    host_models.Base.metadata.create_all(engine)
    model = host_models.EventLog
    created = ensure_partitions(model, engine, ahead=WEEKS - 1, now=week(0) + timedelta(hours=1))
    assert created == tuple(partition(n) for n in range(WEEKS))
    user_id, session_id = seed(engine, host_models)
    events = [
        new_event(
            session_id=session_id,
            user_id=user_id,
            event_type="user_message",
            created_at=week(n) + timedelta(hours=4 * i),
            payload={"week": n, "i": i},
        )
        for n in range(WEEKS)
        for i in range(PER_WEEK)
    ]
    write_events(model, engine, events)
    with engine.begin() as connection:
        connection.execute(text("ANALYZE event_logs"))
    return engine, EventLogReader(model, engine), user_id, session_id


def statements(engine: Engine, call: Any) -> list[tuple[str, Any]]:
    """The SQL and parameters a reader call sends (an observed engine: the same SQL)."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", hook)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", hook)
    assert len(seen) == 1, seen
    return seen


def plan(engine: Engine, call: Any, *, analyze: bool = False) -> dict[str, Any]:
    ((sql, parameters),) = statements(engine, call)
    options = "ANALYZE, FORMAT JSON" if analyze else "FORMAT JSON"
    with engine.connect() as connection:
        result = connection.exec_driver_sql(f"EXPLAIN ({options}) {sql}", parameters)
        found: dict[str, Any] = result.scalar_one()[0]["Plan"]
        return found


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def partitions_read(node: dict[str, Any], *, executed_only: bool = False) -> set[str]:
    """The partitions the plan reads; with ``executed_only``, those EXPLAIN ANALYZE ran."""
    return {
        found["Relation Name"]
        for found in nodes(node)
        if found.get("Relation Name", "").startswith("event_logs_")
        and not (executed_only and found.get("Actual Loops", 0) == 0)
    }


def every_partition() -> set[str]:
    return {partition(n) for n in range(WEEKS)}


def test_an_unbounded_timeline_reads_every_partition(loaded: Any) -> None:
    engine, reader, user_id, session_id = loaded
    read = plan(engine, lambda: reader.session_timeline(session_id, user_id=user_id))
    assert partitions_read(read) == every_partition()


@pytest.mark.parametrize("name", ["session", "user"])
def test_a_since_bound_reads_the_partitions_from_there_on(loaded: Any, name: str) -> None:
    engine, reader, user_id, session_id = loaded
    since = week(6) + timedelta(days=2)

    def call() -> object:
        if name == "session":
            return reader.session_timeline(session_id, user_id=user_id, since=since)
        return reader.user_timeline(user_id, since=since)

    assert partitions_read(plan(engine, call)) == {partition(6), partition(7)}
    # Given in the filter, the same.
    in_filter = plan(
        engine, lambda: reader.user_timeline(user_id, filters=EventFilter(since=since))
    )
    assert partitions_read(in_filter) == {partition(6), partition(7)}


def test_a_two_sided_bound_reads_its_partitions_only(loaded: Any) -> None:
    engine, reader, user_id, session_id = loaded
    read = plan(
        engine,
        lambda: reader.session_timeline(
            session_id, user_id=user_id, since=week(2) + timedelta(days=1), until=week(3)
        ),
    )
    assert partitions_read(read) == {partition(2)}


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_a_later_page_skips_the_partitions_already_read(loaded: Any, order: str) -> None:
    engine, reader, user_id, session_id = loaded
    # Newest first, 70 events reach back into week 6; oldest first, into week 1.
    first = reader.session_timeline(session_id, user_id=user_id, order=order, limit=70)
    assert first.next_cursor is not None
    cursor_week = (first.items[-1].created_at - FIRST_MONDAY) // timedelta(weeks=1)
    assert cursor_week == (6 if order == "newest" else 1)
    read = plan(
        engine,
        lambda: reader.session_timeline(
            session_id, user_id=user_id, order=order, cursor=first.next_cursor
        ),
    )
    later = range(cursor_week + 1) if order == "newest" else range(cursor_week, WEEKS)
    assert partitions_read(read) == {partition(n) for n in later}


def test_a_lookup_by_id_reads_one_partition(loaded: Any) -> None:
    engine, reader, user_id, session_id = loaded
    # Away from the week's start: a window across a bound reads both partitions.
    target = reader.session_timeline(
        session_id, user_id=user_id, since=week(3) + timedelta(days=1), order="oldest", limit=1
    ).items[0]
    assert target.created_at < week(4)
    read = plan(engine, lambda: reader.event(target.id, user_id=user_id), analyze=True)
    assert partitions_read(read, executed_only=True) == {partition(3)}
    # Planned, the second branch would look everywhere else; it never ran.
    assert partitions_read(read) == every_partition()


def test_an_id_that_records_another_time_is_found_in_every_partition(
    loaded: Any, host_models: HostModels
) -> None:
    engine, reader, user_id, session_id = loaded
    chosen = new_event_id(week(0) - timedelta(days=900))
    write_events(
        host_models.EventLog,
        engine,
        [
            new_event(
                id=chosen,
                session_id=session_id,
                user_id=user_id,
                event_type="user_message",
                created_at=week(5),
            )
        ],
    )
    read = plan(engine, lambda: reader.event(chosen, user_id=user_id), analyze=True)
    # Its window holds no partition; the rest are read in order until the event is found.
    assert partitions_read(read, executed_only=True) == {partition(n) for n in range(6)}
    found = reader.event(chosen, user_id=UNSCOPED)
    assert found is not None
    assert found.created_at == week(5)
    # An id of no time at all (v4) has one plan: every partition.
    assert partitions_read(plan(engine, lambda: reader.event(uuid.uuid4(), user_id=user_id))) == (
        every_partition()
    )
    # Not even when its first 48 bits would read as a time inside a partition.
    v4 = uuid.UUID(int=new_event_id(week(3)).int & ~(0xF << 76) | 4 << 76)
    assert v4.version == 4
    ((_, parameters),) = statements(engine, lambda: reader.event(v4, user_id=user_id))
    assert "window_start" not in parameters


@pytest.mark.parametrize("partitioned", [True, False])
def test_open_sides_are_bound_for_the_spread_timelines_on_the_partitioned_layout(
    partitioned: bool,
) -> None:
    """A user's, project's or agent's page leaves no side of its range open on the
    partitioned layout (a generic plan then prunes at start-up); a session's does, and the
    plain layout never binds them (docs/benchmarks/scaleout.md)."""
    from eventlog_persist._read_sql import event_table, timeline_query

    table = event_table(build_host_models(partitioned=partitioned).EventLog)
    since = datetime(2026, 1, 1, tzinfo=UTC)
    for column in ("user_id", "project_id", "agent_id", "session_id"):
        shape = timeline_query(table, column=column, key=uuid.uuid4(), since=since).query.shape
        bound = partitioned and column != "session_id"
        assert ("until:open" in shape) is bound, column
        assert "since:open" not in shape  # given
        assert "since" in shape
