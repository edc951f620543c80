"""Tails: a session's or project's events in the feed's order, resumable from any cursor."""

from __future__ import annotations

import asyncio
import base64
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    UNSCOPED,
    AsyncEventTail,
    EventTail,
    EventWriter,
    TailEntry,
    new_event,
    write_events,
)
from eventlog_persist._feed_tail import _tag as tail_tag
from eventlog_persist.exceptions import (
    ConfigurationError,
    InvalidCursorError,
    ValidationError,
)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


def add_session(engine: Engine, models: HostModels, user_id: Any, **extra: Any) -> Any:
    with Session(engine) as session:
        chat = models.ChatSession(id=models.new_key(), user_id=user_id, **extra)
        session.add(chat)
        session.commit()
        return chat.id


def write(
    engine: Engine, models: HostModels, user_id: Any, session_id: Any, n: int, **fields: Any
) -> list[uuid.UUID]:
    batch = [
        new_event(
            session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i}, **fields
        )
        for i in range(n)
    ]
    write_events(models.EventLog, engine, batch, batch_size=3)
    return [event.id for event in batch]


def ids(entries: tuple[TailEntry[Any], ...] | list[TailEntry[Any]]) -> list[uuid.UUID]:
    return [entry.event.id for entry in entries]


def read_all(tail: EventTail[Any], *, limit: int = 4, **scope: Any) -> list[TailEntry[Any]]:
    entries: list[TailEntry[Any]] = []
    page = tail.read(limit=limit, **scope)
    while page.entries:
        entries += page.entries
        page = tail.read(limit=limit, cursor=page.cursor, **scope)
    return entries


def test_a_session_tail_reads_every_event_once_and_resumes_after_any_entry(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    with host_engine.begin() as connection:  # stored before the feed: no transaction id
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at, xid) "
                "VALUES (:id, :s, :u, 'old', now(), NULL)"
            ),
            {"id": uuid.uuid4(), "s": session_id, "u": user_id},
        )
    written = write(host_engine, host_models, user_id, session_id, 10)
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        scope = {"session_id": session_id, "user_id": user_id}
        entries = read_all(tail, **scope)
        assert ids(entries)[1:] == written
        assert entries[0].event.event_type == "old"
        for i, entry in enumerate(entries):
            page = tail.read(cursor=entry.cursor, limit=100, **scope)
            assert ids(page.entries) == ids(entries[i + 1 :]), i
        more = write(host_engine, host_models, user_id, session_id, 2)
        assert ids(tail.read(cursor=entries[-1].cursor, **scope).entries) == more


def test_a_transaction_that_commits_late_is_not_skipped(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    scope = {"session_id": session_id, "user_id": user_id}
    writer = EventWriter(host_models.EventLog)
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        cursor = tail.read(start="latest", **scope).cursor
        with Session(host_engine) as slow:
            writer.record(slow, session_id=session_id, user_id=user_id, event_type="slow")
            slow.flush()  # holds a transaction id, created first, commits last
            fast = write(host_engine, host_models, user_id, session_id, 2)
            page = tail.read(cursor=cursor, **scope)
            assert ids(page.entries) == fast
            cursor = page.entries[-1].cursor  # the client's Last-Event-ID
            slow.commit()
        late = tail.read(cursor=cursor, **scope).entries
        assert [entry.event.event_type for entry in late] == ["slow"]


def test_tails_are_scoped_to_the_owner(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    other_user = host_models.new_key()
    with Session(host_engine) as session:
        session.add(host_models.User(id=other_user))
        session.commit()
    other_session = add_session(host_engine, host_models, other_user)
    mine = write(host_engine, host_models, user_id, session_id, 3)
    write(host_engine, host_models, other_user, other_session, 2)
    # An event of another user in this session (an operator wrote it, say).
    theirs = write(host_engine, host_models, other_user, session_id, 1)
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        assert ids(read_all(tail, session_id=session_id, user_id=user_id)) == mine
        assert ids(read_all(tail, session_id=session_id, user_id=UNSCOPED)) == mine + theirs
        assert ids(read_all(tail, session_id=session_id, user_id=other_user)) == theirs
        with pytest.raises(ValidationError, match="session tail got user_id=None"):
            tail.read(session_id=session_id)


def test_a_project_tail_reads_the_projects_sessions(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    project_id = host_models.new_key()
    with Session(host_engine) as session:
        session.add(host_models.UserProject(id=project_id, user_id=user_id))
        session.commit()
    inside = write(host_engine, host_models, user_id, session_id, 3, project_id=project_id)
    write(host_engine, host_models, user_id, session_id, 2)  # no project
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        assert ids(read_all(tail, project_id=project_id)) == inside
        assert ids(read_all(tail, project_id=project_id, user_id=user_id)) == inside
        assert read_all(tail, project_id=project_id, user_id=host_models.new_key()) == []


def test_start_latest_reads_only_what_commits_after(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    write(host_engine, host_models, user_id, session_id, 3)
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        scope = {"session_id": session_id, "user_id": user_id}
        page = tail.read(start="latest", **scope)
        assert page.entries == ()
        new = write(host_engine, host_models, user_id, session_id, 2)
        assert ids(tail.read(cursor=page.cursor, **scope).entries) == new


def test_cursors_of_another_scope_or_altered_are_refused(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    write(host_engine, host_models, user_id, session_id, 2)
    other = add_session(host_engine, host_models, user_id)
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        cursor = tail.read(session_id=session_id, user_id=user_id).cursor
        with pytest.raises(InvalidCursorError, match="made for another tail"):
            tail.read(session_id=other, user_id=user_id, cursor=cursor)
        with pytest.raises(InvalidCursorError, match="made for another tail"):
            tail.read(session_id=session_id, user_id=UNSCOPED, cursor=cursor)
        body, tag = cursor.split(".")
        altered = ("A" if body[0] != "A" else "B") + body[1:] + "." + tag
        for bad in (altered, "garbage", "a.b.c", "", "." * 3, 42):
            with pytest.raises(InvalidCursorError):
                tail.read(session_id=session_id, user_id=user_id, cursor=bad)  # type: ignore[arg-type]
        # Built by hand, checksum and all (the format is no secret), with transaction ids no
        # xid8 holds: refused, never sent to the database.
        scope_key = f"session:{session_id}:{user_id}"
        event = uuid.uuid4()
        for done, after in (
            (f"1:{2**64}:", ""),
            ("1:2:", f"-5;{event}"),
            ("1:2:", f"{2**64};{event}"),
        ):
            after_xid, after_id = after.split(";") if after else ("", "")
            body = ";".join(("t1", done, "", after_xid, after_id, "0", ""))
            encoded = base64.urlsafe_b64encode(body.encode()).rstrip(b"=").decode()
            forged = f"{encoded}.{tail_tag(body, scope_key)}"
            with pytest.raises(InvalidCursorError, match="is not a tail cursor"):
                tail.read(session_id=session_id, user_id=user_id, cursor=forged)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "pass session_id=... or project_id=..., not neither"),
        ({"session_id": "S", "project_id": "P"}, "not both"),
        ({"session_id": "not-a-uuid", "user_id": "U"}, "session_id must be a uuid.UUID"),
        ({"session_id": "S", "user_id": 7}, "user_id"),
        ({"session_id": "S", "user_id": "U", "start": "first"}, "start must be 'earliest'"),
        (
            {"session_id": "S", "user_id": "U", "start": "first", "cursor": "x.y"},
            "start must be 'earliest'",
        ),
        ({"session_id": "S", "user_id": "U", "limit": 0}, "limit must be an int"),
    ],
)
def test_bad_arguments_name_the_fix(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    arguments: dict[str, Any],
    message: str,
) -> None:
    user_id, session_id = keys
    real = {"S": session_id, "P": host_models.new_key(), "U": user_id}
    given = {name: real.get(value, value) for name, value in arguments.items()}
    with (
        EventTail(host_models.EventLog, host_engine, listen=False) as tail,
        pytest.raises(ValidationError, match=message),
    ):
        tail.read(**given)


def test_follow_refuses_bad_arguments_at_the_call(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    scope = {"session_id": session_id, "user_id": user_id}
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        # No next(): a follower that is never iterated still hears of it.
        with pytest.raises(ConfigurationError, match="poll must be a number of seconds above 0"):
            tail.follow(**scope, poll=0)
        with pytest.raises(ConfigurationError, match=r"stop must be a threading\.Event \(or"):
            tail.follow(**scope, stop="never")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            tail.follow(user_id=user_id)  # no session or project: which events?

    async def follow_async() -> None:
        engine = create_async_engine(database_url)
        try:
            async with AsyncEventTail(host_models.EventLog, engine, listen=False) as tail:
                with pytest.raises(ConfigurationError, match="poll must be a number"):
                    tail.follow(**scope, poll=-1)
        finally:
            await engine.dispose()

    asyncio.run(follow_async())


def test_a_model_without_the_feed_is_refused(engine: Engine) -> None:
    models = build_host_models()
    with pytest.raises(ConfigurationError, match="feed=True"):
        EventTail(models.EventLog, engine)


def test_follow_yields_events_as_writers_commit(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    before = write(host_engine, host_models, user_id, session_id, 2)
    got: list[uuid.UUID] = []
    stop = threading.Event()
    with EventTail(host_models.EventLog, host_engine) as tail:

        def follow() -> None:
            for entry in tail.follow(session_id=session_id, user_id=user_id, poll=0.2, stop=stop):
                got.append(entry.event.id)

        thread = threading.Thread(target=follow)
        thread.start()
        after = write(host_engine, host_models, user_id, session_id, 3)
        deadline = datetime.now(UTC).timestamp() + 20
        while len(got) < 5 and datetime.now(UTC).timestamp() < deadline:
            stop.wait(0.05)
        stop.set()
        thread.join(timeout=10)
    assert got == before + after


def test_async_follow_streams_and_resumes_from_the_last_cursor(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    database_url: URL,
) -> None:
    user_id, session_id = keys
    first = write(host_engine, host_models, user_id, session_id, 3)

    async def main() -> tuple[list[uuid.UUID], list[uuid.UUID], list[uuid.UUID]]:
        engine = create_async_engine(database_url.set(drivername="postgresql+asyncpg"))
        try:
            async with AsyncEventTail(host_models.EventLog, engine) as tail:
                seen: list[TailEntry[Any]] = []
                async for entry in tail.follow(session_id=session_id, user_id=user_id):
                    seen.append(entry)
                    if len(seen) == 2:
                        break  # the client went away after two events
                more = await asyncio.to_thread(
                    write, host_engine, host_models, user_id, session_id, 2
                )
                resumed: list[uuid.UUID] = []
                async for entry in tail.follow(
                    session_id=session_id, user_id=user_id, cursor=seen[-1].cursor, poll=0.2
                ):
                    resumed.append(entry.event.id)
                    if len(resumed) == 3:
                        break
                page = await tail.read(session_id=session_id, user_id=user_id, limit=100)
                assert ids(page.entries) == first + more
                return ids(seen), resumed, more
        finally:
            await engine.dispose()

    seen, resumed, more = asyncio.run(main())
    assert seen == first[:2]
    assert resumed == first[2:] + more


def test_a_session_tail_reads_through_the_sessions_index(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    from test_explain import SESSION_IX, captured, nodes, plan_of

    user_id, session_id = keys
    sessions = [add_session(host_engine, host_models, user_id) for _ in range(40)]
    batch = [
        new_event(session_id=sessions[i % 40], user_id=user_id, event_type="chat")
        for i in range(8_000)
    ]
    write_events(host_models.EventLog, host_engine, batch, batch_size=200)
    mine = write(host_engine, host_models, user_id, session_id, 5)
    with host_engine.begin() as connection:
        connection.execute(text("ANALYZE event_logs"))
    with EventTail(host_models.EventLog, host_engine, listen=False) as tail:
        scope = {"session_id": session_id, "user_id": user_id}
        with captured(host_engine) as first:
            page = tail.read(**scope)
        assert ids(page.entries) == mine
        cursor = tail.read(start="latest", **scope).cursor
        write(host_engine, host_models, user_id, session_id, 2)
        with captured(host_engine) as later:
            assert len(tail.read(cursor=cursor, **scope).entries) == 2
    [start, resume] = [
        plan_of(host_engine, sql, params) for sql, params in first + later if "xid >=" in sql
    ]
    for plan in (start, resume):
        assert not [n for n in nodes(plan) if n["Node Type"] == "Seq Scan"], plan
    # From the start: the session's rows, by its index. From a recent cursor: the session's
    # index or the few transactions since the cursor, by the feed's index.
    assert SESSION_IX in {n.get("Index Name") for n in nodes(start)}, start
    used = {n.get("Index Name"): n.get("Index Cond", "") for n in nodes(resume)}
    assert SESSION_IX in used or "xid >=" in used.get("ix_event_logs_xid_id", ""), resume
