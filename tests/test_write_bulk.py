"""Bulk COPY: UUID and integer hosts, idempotent replays, one bad row in a batch, async."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, build_host_models
from pgserver import ServerInfo
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist.bulk import awrite_events, write_events
from eventlog_persist.events import NewEvent, new_event
from eventlog_persist.retry import ErrorKind, RetriesExhaustedError, RetryPolicy, classify_error


def seed(engine: Engine, models: HostModels) -> tuple[Any, Any]:
    with Session(engine) as session:
        user = models.User(id=models.new_key())
        session.add(user)
        session.flush()
        chat = models.ChatSession(id=models.new_key(), user_id=user.id)
        session.add(chat)
        session.commit()
        return user.id, chat.id


def events(user_id: Any, session_id: Any, n: int) -> list[NewEvent]:
    return [
        new_event(
            session_id=session_id,
            user_id=user_id,
            event_type="tool_result",
            tool_name="search",
            payload={"i": i, "text": "é" * 20, "nested": {"ok": True}},
        )
        for i in range(n)
    ]


def stored(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id, payload FROM event_logs ORDER BY id")).all())


def test_bulk_copy_uuid_host_and_idempotent_replay(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 250)
    first = write_events(host_engine, host_models.EventLog, batch, batch_size=100)
    assert (first.written, first.duplicates, first.dead_lettered) == (250, 0, [])
    again = write_events(
        host_engine, host_models.EventLog, batch[:150] + events(user_id, session_id, 5)
    )
    assert (again.written, again.duplicates) == (155, 150)
    rows = stored(host_engine)
    assert len(rows) == 255
    assert {row[0] for row in rows} >= {event.id for event in batch}
    assert rows[0][1]["nested"] == {"ok": True}


@pytest.mark.parametrize("keys", ["integer"])
def test_bulk_copy_integer_host(engine: Engine, keys: str) -> None:
    models = build_host_models(keys=keys)
    models.Base.metadata.create_all(engine)
    user_id, session_id = seed(engine, models)
    assert isinstance(session_id, int)
    with psycopg.connect(
        engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    ) as conn:
        result = write_events(conn, models.EventLog, events(user_id, session_id, 30))
    assert result.written == 30
    too_big = new_event(session_id=2**40, user_id=user_id, event_type="x")  # int8 fits
    bad_user = new_event(session_id=session_id, user_id=2**40, event_type="x")  # int4 doesn't
    dead: list[tuple[NewEvent, BaseException]] = []
    result = write_events(
        engine,
        models.EventLog,
        [*events(user_id, session_id, 3), too_big, bad_user],
        on_dead_letter=lambda event, error: dead.append((event, error)),
    )
    assert result.written == 3
    assert [event for event, _ in dead] == [too_big, bad_user]
    assert isinstance(dead[0][1], psycopg.errors.ForeignKeyViolation)
    assert len(stored(engine)) == 33


def test_one_fk_violating_row_does_not_sink_the_batch(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 999)
    orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="tool_call")
    batch.insert(617, orphan)
    dead: list[tuple[NewEvent, BaseException]] = []
    result = write_events(
        host_engine,
        host_models.EventLog,
        batch,
        on_dead_letter=lambda event, error: dead.append((event, error)),
    )
    assert result.written == 999
    assert len(dead) == 1
    assert dead[0][0] is orphan
    assert isinstance(dead[0][1], psycopg.errors.ForeignKeyViolation)
    assert "fk_event_logs_session_id" in str(dead[0][1])
    assert result.dead_lettered == dead
    assert len(stored(host_engine)) == 999


def test_a_setup_error_dead_letters_the_batch_without_retrying(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as conn:
        conn.execute(text("ALTER TABLE event_logs RENAME TO event_logs_gone"))
    result = write_events(host_engine, host_models.EventLog, events(user_id, session_id, 4))
    assert result.written == 0
    assert len(result.dead_lettered) == 4
    assert classify_error(result.dead_lettered[0][1]) is ErrorKind.BATCH
    assert result.retries == 0


def test_unreachable_database_exhausts_retries(host_models: HostModels) -> None:
    key = uuid.uuid4()
    result = write_events(
        "host=/nonexistent-dir port=1 dbname=x connect_timeout=1",
        host_models.EventLog,
        [new_event(session_id=key, user_id=key, event_type="x")],
        retry=RetryPolicy(max_attempts=3, initial_delay=0.01),
    )
    assert result.retries == 2
    ((_event, error),) = result.dead_lettered
    assert isinstance(error, RetriesExhaustedError)
    assert isinstance(error.__cause__, psycopg.OperationalError)


@pytest.mark.asyncio
async def test_async_bulk_copy(
    host_engine: Engine, host_models: HostModels, database_url: URL, pg_server: ServerInfo
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 40)
    orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x")
    engine = create_async_engine(database_url)
    try:
        result = await awrite_events(engine, host_models.EventLog, [*batch, orphan])
    finally:
        await engine.dispose()
    assert result.written == 40
    assert [event for event, _ in result.dead_lettered] == [orphan]
    async with await psycopg.AsyncConnection.connect(
        **pg_server.connect_kwargs(database_url.database or "")
    ) as conn:
        replay = await awrite_events(conn, host_models.EventLog, batch)
    assert (replay.written, replay.duplicates) == (40, 40)
    assert len(stored(host_engine)) == 40


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (psycopg.errors.SerializationFailure(), ErrorKind.TRANSIENT),
        (psycopg.errors.DeadlockDetected(), ErrorKind.TRANSIENT),
        (psycopg.errors.AdminShutdown(), ErrorKind.TRANSIENT),
        (psycopg.OperationalError("connection lost"), ErrorKind.TRANSIENT),
        (psycopg.errors.ForeignKeyViolation(), ErrorKind.ROW),
        (psycopg.errors.UndefinedTable(), ErrorKind.BATCH),
        (ValueError("cannot dump"), ErrorKind.ROW),
    ],
)
def test_error_classification(error: BaseException, kind: ErrorKind) -> None:
    assert classify_error(error) is kind


def test_retry_policy_limits() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=None, initial_delay=1.0, max_delay=1.5)
    assert 0 <= (policy.delay(0, 0.0) or 0) <= 1.0
    assert 0 <= (policy.delay(1, 0.0) or 0) <= 1.5
    assert policy.delay(2, 0.0) is None
    assert RetryPolicy(max_attempts=None, max_elapsed=1.0).delay(99, 1.0) is None
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
