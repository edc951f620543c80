"""``test_reader_odd_rows`` on the partitioned layout: its catch-all partitions (from
``MINVALUE`` and to ``MAXVALUE``) hold the times Python cannot read, and the readers page
across them as on the plain table. A module of its own: its ``world`` fixture differs from
the one the modules in ``test_partitioned_layout`` share."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from hostmodels import HostModels
from sqlalchemy import Engine, create_engine, text
from test_partitioned_layout import host_engine, host_models  # noqa: F401
from test_reader import World
from test_reader_odd_rows import *  # noqa: F403
from test_reader_odd_rows import stored_order

from eventlog_persist import EventLogReader


@pytest.mark.parametrize("order", ["newest", "oldest"])
@pytest.mark.parametrize("copy_at", ["20000-01-01 00:00+00", "2025-03-01 12:00:30+00"])
def test_an_odd_row_whose_id_is_stored_twice_ends_the_walk_once(
    host_engine: Engine,  # noqa: F811
    host_models: HostModels,  # noqa: F811
    world: World,
    odd_ids: dict[uuid.UUID, datetime],
    order: Any,
    copy_at: str,
) -> None:
    """The key is ``(id, created_at)``, so SQL can store one id twice. A page ending on such
    an id beyond the bound resumes past its rows beyond that bound: the walk ends, the id
    comes once from there; a copy among the normal rows (T0 + 30 s) keeps its place."""
    chat, user = world.sessions[0][0], world.users[0]
    with host_engine.begin() as connection:
        twice = connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at) "
                "SELECT id, session_id, user_id, event_type, CAST(:at AS timestamptz) "
                "FROM event_logs WHERE created_at = '12345-06-07 08:09:10+00' RETURNING id"
            ),
            {"at": copy_at},
        ).scalar_one()
    reader = EventLogReader(host_models.EventLog, host_engine)
    seen: list[uuid.UUID] = []
    cursor = None
    for _ in range(100):
        page = reader.session_timeline(chat, user_id=user, order=order, limit=1, cursor=cursor)
        seen += [event.id for event in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert cursor is None
    expected = stored_order(host_engine, chat, order)
    if copy_at.startswith("20000"):  # both beyond the bound: the id comes once
        expected = list(dict.fromkeys(expected))
    assert seen.count(twice) == expected.count(twice) == (1 if copy_at.startswith("20000") else 2)
    assert seen == expected


def test_an_id_stored_twice_is_looked_up_as_its_earliest_copy_in_its_time_window_first(
    host_engine: Engine,  # noqa: F811
    host_models: HostModels,  # noqa: F811
    world: World,
) -> None:
    """``event()`` answers with one row: the earliest copy within a minute of the id's time
    (where its partition is), else the earliest copy anywhere; whatever the plan, so the
    reader here scans tables in their stored order."""
    scanning = create_engine(
        host_engine.url,
        connect_args={"options": "-c enable_indexscan=off -c enable_bitmapscan=off"},
    )
    try:
        check_earliest_copies(host_engine, EventLogReader(host_models.EventLog, scanning), world)
    finally:
        scanning.dispose()


def check_earliest_copies(
    host_engine: Engine,  # noqa: F811
    reader: EventLogReader[Any],
    world: World,
) -> None:
    user = world.users[0]

    def copy(event_id: uuid.UUID, at: str) -> None:
        with host_engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at) "
                    "SELECT id, session_id, user_id, 'copy', CAST(:at AS timestamptz) "
                    "FROM event_logs WHERE id = :id LIMIT 1"
                ),
                {"id": event_id, "at": at},
            )

    with host_engine.connect() as connection:
        first = connection.execute(
            text(
                "SELECT id, created_at, event_type FROM event_logs WHERE user_id = :u "
                "AND created_at BETWEEN '2000-01-01' AND '3000-01-01' ORDER BY created_at LIMIT 1"
            ),
            {"u": user},
        ).one()
    event_id, at, first_type = first
    found = reader.event(event_id, user_id=user)
    assert found is not None
    assert found.event_type != "copy"
    copy(event_id, (at - timedelta(days=3)).isoformat())  # outside the window, earlier
    copy(event_id, (at + timedelta(seconds=20)).isoformat())  # inside, later
    found = reader.event(event_id, user_id=user)
    assert found is not None
    assert (found.event_type, found.created_at) == (first_type, at)
    copy(event_id, (at - timedelta(seconds=20)).isoformat())  # inside, earlier
    found = reader.event(event_id, user_id=user)
    assert found is not None
    assert (found.event_type, found.created_at) == ("copy", at - timedelta(seconds=20))
    # An id that records no time (not a UUIDv7) has no window: the earliest copy anywhere.
    plain_id = uuid.uuid4()
    with host_engine.begin() as connection:
        connection.execute(
            text("UPDATE event_logs SET id = :new WHERE id = :id"),
            {"new": plain_id, "id": event_id},
        )
    found = reader.event(plain_id, user_id=user)
    assert found is not None
    assert found.created_at == at - timedelta(days=3)
