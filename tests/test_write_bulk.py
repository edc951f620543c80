"""Bulk COPY: UUID and integer hosts, idempotent replays, one bad row in a batch, async."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from hostmodels import HostModels, build_host_models, seed
from pgserver import ServerInfo
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    BufferedWriter,
    NewEvent,
    RetryPolicy,
    awrite_events,
    new_event,
    write_events,
)
from eventlog_persist._failures import ErrorKind, RowEncodingError, classify_error
from eventlog_persist._table import COLUMNS
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventWriteError,
    RetriesExhaustedError,
)


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
    first = write_events(host_models.EventLog, host_engine, batch, batch_size=100)
    assert (first.written, first.duplicates, first.dead_lettered) == (250, 0, [])
    again = write_events(
        host_models.EventLog, host_engine, batch[:150] + events(user_id, session_id, 5)
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
        result = write_events(models.EventLog, conn, events(user_id, session_id, 30))
    assert result.written == 30
    too_big = new_event(session_id=2**40, user_id=user_id, event_type="x")  # int8 fits
    bad_user = new_event(session_id=session_id, user_id=2**40, event_type="x")  # int4 doesn't
    dead: list[tuple[NewEvent, EventWriteError]] = []
    result = write_events(
        models.EventLog,
        engine,
        [*events(user_id, session_id, 3), too_big, bad_user],
        on_dead_letter=lambda event, error: dead.append((event, error)),
    )
    assert result.written == 3
    assert [event for event, _ in dead] == [too_big, bad_user]
    assert isinstance(dead[0][1].__cause__, psycopg.errors.ForeignKeyViolation)
    assert len(stored(engine)) == 33


def test_one_fk_violating_row_does_not_sink_the_batch(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 999)
    orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="tool_call")
    batch.insert(617, orphan)
    dead: list[tuple[NewEvent, EventWriteError]] = []
    result = write_events(
        host_models.EventLog,
        host_engine,
        batch,
        on_dead_letter=lambda event, error: dead.append((event, error)),
    )
    assert result.written == 999
    assert len(dead) == 1
    assert dead[0][0] is orphan
    error = dead[0][1]
    assert isinstance(error, EventWriteError)
    assert error.event is orphan
    assert error.sqlstate == "23503"
    assert isinstance(error.__cause__, psycopg.errors.ForeignKeyViolation)
    assert str(orphan.id) in str(error)
    assert "fk_event_logs_session_id" in str(error)
    assert result.dead_lettered == dead
    assert len(stored(host_engine)) == 999


def test_a_setup_error_dead_letters_the_batch_without_retrying(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as conn:
        conn.execute(text("ALTER TABLE event_logs RENAME TO event_logs_gone"))
    result = write_events(host_models.EventLog, host_engine, events(user_id, session_id, 4))
    assert result.written == 0
    assert len(result.dead_lettered) == 4
    error = result.dead_lettered[0][1]
    assert error.sqlstate == "42P01"
    assert error.__cause__ is not None
    assert classify_error(error.__cause__) is ErrorKind.BATCH
    assert "run its migrations" in str(error)
    assert result.retries == 0


@pytest.mark.parametrize("api", ["sync", "async"])
def test_unreachable_database_exhausts_retries(host_models: HostModels, api: str) -> None:
    key = uuid.uuid4()
    arguments: Any = (
        host_models.EventLog,
        "host=/nonexistent-dir port=1 dbname=x connect_timeout=1",
        [new_event(session_id=key, user_id=key, event_type="x")],
    )
    retry = RetryPolicy(max_attempts=3, initial_delay=0.01)
    if api == "sync":
        result = write_events(*arguments, retry=retry)
    else:
        result = asyncio.run(awrite_events(*arguments, retry=retry))
    assert (result.retries, result.read_only_retries) == (2, 0)
    ((_event, error),) = result.dead_lettered
    assert isinstance(error, RetriesExhaustedError)
    assert isinstance(error.__cause__, psycopg.OperationalError)
    assert "3 attempts failed with transient errors" in str(error)
    assert "check that the database is reachable" in str(error)


def test_wrong_arguments_are_refused_before_anything_runs(host_models: HostModels) -> None:
    key = uuid.uuid4()
    batch = [new_event(session_id=key, user_id=key, event_type="x")]
    down = "host=/nonexistent-dir port=1 dbname=x"
    refusals: list[tuple[dict[str, Any], str]] = [
        *(
            ({"batch_size": bad}, f"batch_size={bad!r} is not valid; use an int >= 1")
            for bad in (0, -1, True, 2.0, "10")
        ),
        *(
            ({"retry": bad}, f"retry={bad!r} is not valid; pass a RetryPolicy")
            for bad in (None, 30)
        ),
        *(
            ({name: bad}, f"{name}={bad!r} is not valid; use seconds (a number > 0), or None")
            for name, bad in (
                ("connect_timeout", 0),
                ("lock_timeout", -1),
                ("tcp_user_timeout", "5"),
            )
        ),
    ]
    refusals += [
        ({"on_dead_letter": 5}, "on_dead_letter=5 is not valid; pass a callable or None"),
        ({"events": None}, "events must be an iterable of NewEvent (a list, a generator), got"),
        ({"events": batch[0]}, "events is one NewEvent; pass an iterable of them: [event]"),
    ]
    for arguments, message in refusals:
        arguments = {"events": batch, **arguments}
        with pytest.raises(ConfigurationError) as caught:
            write_events(host_models.EventLog, down, **arguments)
        assert str(caught.value).startswith(message)
        with pytest.raises(ConfigurationError) as caught:
            asyncio.run(awrite_events(host_models.EventLog, down, **arguments))
        assert str(caught.value).startswith(message)
    assert inspect.signature(write_events).parameters["batch_size"].default == 10_000
    assert inspect.signature(awrite_events).parameters["batch_size"].default == 10_000


def test_each_batch_is_committed_before_the_next_event_is_taken(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    committed_when_taken: list[int] = []

    def source(n: int) -> Iterator[NewEvent]:
        for _ in range(n):
            with host_engine.connect() as conn:
                committed_when_taken.append(conn.scalar(text("SELECT count(*) FROM event_logs")))
            yield new_event(session_id=session_id, user_id=user_id, event_type="x")

    assert write_events(host_models.EventLog, host_engine, source(4), batch_size=1).written == 4
    assert committed_when_taken == [0, 1, 2, 3]
    committed_when_taken.clear()
    assert write_events(host_models.EventLog, host_engine, source(5), batch_size=2).written == 5
    assert committed_when_taken == [4, 4, 6, 6, 8]


@pytest.mark.asyncio
async def test_async_bulk_copy(
    host_engine: Engine, host_models: HostModels, database_url: URL, pg_server: ServerInfo
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 40)
    orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x")
    engine = create_async_engine(database_url)
    try:
        result = await awrite_events(host_models.EventLog, engine, [*batch, orphan])
    finally:
        await engine.dispose()
    assert result.written == 40
    assert [event for event, _ in result.dead_lettered] == [orphan]
    async with await psycopg.AsyncConnection.connect(
        **pg_server.connect_kwargs(database_url.database or "")
    ) as conn:
        replay = await awrite_events(host_models.EventLog, conn, batch)
    assert (replay.written, replay.duplicates) == (40, 40)
    assert len(stored(host_engine)) == 40


class _DriverError(Exception):
    """An error of a driver other than psycopg (psycopg2 has ``pgcode``, asyncpg ``sqlstate``)."""

    def __init__(self, message: str, *, pgcode: str | None = None, sqlstate: str | None = None):
        super().__init__(message)
        self.pgcode = pgcode
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (psycopg.errors.SerializationFailure(), ErrorKind.TRANSIENT),
        (psycopg.errors.DeadlockDetected(), ErrorKind.TRANSIENT),
        (psycopg.errors.AdminShutdown(), ErrorKind.TRANSIENT),
        (psycopg.OperationalError("connection lost"), ErrorKind.TRANSIENT),
        (psycopg.errors.ForeignKeyViolation(), ErrorKind.ROW),
        (psycopg.errors.UndefinedTable(), ErrorKind.BATCH),
        (RowEncodingError("cannot dump"), ErrorKind.ROW),
        # Not psycopg: the pool, SQLAlchemy's driver-agnostic errors, other drivers.
        (sa_exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached"), ErrorKind.TRANSIENT),
        (sa_exc.DisconnectionError("gone"), ErrorKind.TRANSIENT),
        (
            sa_exc.OperationalError("SELECT 1", {}, _DriverError("server closed")),
            ErrorKind.TRANSIENT,
        ),
        (sa_exc.InterfaceError("SELECT 1", {}, _DriverError("closed")), ErrorKind.TRANSIENT),
        (
            sa_exc.DBAPIError("x", {}, _DriverError("x"), connection_invalidated=True),
            ErrorKind.TRANSIENT,
        ),
        (sa_exc.IntegrityError("x", {}, _DriverError("fk", pgcode="23503")), ErrorKind.ROW),
        (
            sa_exc.DBAPIError("x", {}, _DriverError("deadlock", sqlstate="40P01")),
            ErrorKind.TRANSIENT,
        ),
        (
            sa_exc.ProgrammingError("x", {}, _DriverError("no table", pgcode="42P01")),
            ErrorKind.BATCH,
        ),
        (sa_exc.DBAPIError("x", {}, _DriverError("???")), ErrorKind.UNEXPECTED),
        (ConnectionResetError(), ErrorKind.TRANSIENT),
        (ValueError("cannot dump"), ErrorKind.UNEXPECTED),
        (RuntimeError("a bug"), ErrorKind.UNEXPECTED),
    ],
)
def test_error_classification(error: BaseException, kind: ErrorKind) -> None:
    assert classify_error(error) is kind


def test_retry_policy_limits() -> None:
    policy = RetryPolicy(max_attempts=3, max_elapsed=None, initial_delay=1.0, max_delay=1.5)
    first, second = policy.delay(0, 0.0), policy.delay(1, 0.0)
    assert first is not None
    assert 0 <= first <= 1.0
    assert second is not None
    assert 0 <= second <= 1.5
    assert policy.delay(2, 0.0) is None
    assert RetryPolicy(max_attempts=None, max_elapsed=1.0).delay(99, 1.0) is None
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


def test_unexpected_errors_are_retried_then_dead_lettered_with_the_real_error(
    host_engine: Engine,
    host_models: HostModels,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import eventlog_persist._delivery as delivery

    user_id, session_id = seed(host_engine, host_models)
    calls = 0

    def broken(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(delivery, "_store", broken)
    result = write_events(
        host_models.EventLog,
        host_engine,
        events(user_id, session_id, 3),
        retry=RetryPolicy(max_attempts=None, max_elapsed=None, initial_delay=0.001),
    )
    assert calls == 3  # retried, but not forever even with an unlimited policy
    assert len(result.dead_lettered) == 3
    error = result.dead_lettered[0][1]
    assert isinstance(error.__cause__, RuntimeError)
    assert "unexpected error" in str(error)
    assert "refused" not in str(error)  # not blamed on the data
    (logged,) = [r for r in caplog.records if r.getMessage() == "unexpected error writing 3 events"]
    assert logged.levelno == logging.ERROR
    assert logged.exc_info is not None
    assert isinstance(logged.exc_info[1], RuntimeError)


@pytest.mark.fault
@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_a_batch_that_keeps_hitting_statement_timeout_is_halved_down_to_the_slow_event(
    host_engine: Engine, host_models: HostModels, flavor: str
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as conn:  # one event makes any statement writing it slow
        conn.execute(
            text(
                # A sequence is not transactional: it counts the attempts that rolled back.
                "CREATE SEQUENCE slow_attempts; "
                "CREATE FUNCTION slow_event() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.event_type = 'slow' THEN PERFORM nextval('slow_attempts'); "
                "PERFORM pg_sleep(2); END IF; RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER slow_event BEFORE INSERT ON event_logs "
                "FOR EACH ROW EXECUTE FUNCTION slow_event()"
            )
        )
    target = host_engine.url.update_query_dict({"options": "-c statement_timeout=150"})
    batch = events(user_id, session_id, 15)
    slow = new_event(session_id=session_id, user_id=user_id, event_type="slow")
    batch.insert(9, slow)
    started = time.monotonic()
    # The buffered writers' kind of policy: no limit, so only splitting ends the loop
    # (max_elapsed only stops the test from running forever if it does not).
    policy = RetryPolicy(max_attempts=None, max_elapsed=8, initial_delay=0.001, max_delay=0.01)
    if flavor == "sync":
        result = write_events(host_models.EventLog, target, batch, retry=policy)
    else:
        result = asyncio.run(awrite_events(host_models.EventLog, target, batch, retry=policy))
    assert time.monotonic() - started < 6
    assert result.written == 15
    ((event, error),) = result.dead_lettered
    assert event is slow
    assert error.sqlstate == "57014"
    assert not isinstance(error, RetriesExhaustedError)
    assert "statement_timeout" in str(error)
    assert len(stored(host_engine)) == 15
    # Two attempts per size (16, 8, 4, 2, 1), none more: a timeout is not a reason to
    # switch to the staging table, and each halving starts a fresh count.
    with host_engine.connect() as conn:
        assert conn.execute(text("SELECT last_value FROM slow_attempts")).scalar() == 10


REQUIRED = {"id", "session_id", "user_id", "event_type", "payload", "created_at"}
OPTIONAL = tuple(column for column in COLUMNS if column not in REQUIRED)


def filled(user_id: Any, session_id: Any, project_id: Any, agent_id: Any) -> NewEvent:
    return new_event(
        session_id=session_id,
        user_id=user_id,
        event_type="tool_call",
        payload={"filled": True},
        project_id=project_id,
        agent_id=agent_id,
        error_code="E1",
        tool_name="search",
        approval_status="approved",
        request_id="req-1",
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
    )


@pytest.mark.parametrize(
    "shape",
    [
        "empty, filled, empty",
        "tool only, filled, empty",
        "filled, empty",
        "empty, empty",
    ],
)
@pytest.mark.parametrize("api", ["write_events", "awrite_events", "BufferedWriter"])
def test_columns_left_none_by_some_events_and_filled_by_others_are_stored_as_given(
    host_engine: Engine, host_models: HostModels, shape: str, api: str
) -> None:
    """Every writer's COPY stores each optional column as the event gives it, whatever the
    events before and after it fill."""
    user_id, session_id = seed(host_engine, host_models)
    with Session(host_engine) as session:
        project = host_models.UserProject(id=host_models.new_key(), user_id=user_id)
        agent = host_models.UserAgent(id=host_models.new_key(), user_id=user_id)
        session.add_all([project, agent])
        session.commit()
        project_id, agent_id = project.id, agent.id
    makers = {
        "empty": lambda: new_event(session_id=session_id, user_id=user_id, event_type="chat"),
        "tool only": lambda: new_event(
            session_id=session_id, user_id=user_id, event_type="chat", tool_name="t"
        ),
        "filled": lambda: filled(user_id, session_id, project_id, agent_id),
    }
    batch = [makers[kind]() for kind in shape.split(", ") for _ in range(3)]
    model = host_models.EventLog
    if api == "write_events":
        assert write_events(model, host_engine, batch).written == len(batch)
    elif api == "awrite_events":
        url = host_engine.url.set(drivername="postgresql+psycopg")
        engine = create_async_engine(url)
        try:
            written = asyncio.run(awrite_events(model, engine, batch)).written
        finally:
            asyncio.run(engine.dispose())
        assert written == len(batch)
    else:
        with BufferedWriter(model, host_engine) as writer:
            for event in batch:
                writer.enqueue(event)
    columns = ", ".join(OPTIONAL)
    with host_engine.connect() as conn:
        rows = {
            row[0]: tuple(row[1:])
            for row in conn.execute(text(f"SELECT id, {columns} FROM event_logs")).all()
        }
    assert rows == {
        event.id: tuple(getattr(event, column) for column in OPTIONAL) for event in batch
    }
