"""Recording single events: in the caller's transaction (sync and async) and detached."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import msgspec
import psycopg
import pytest
import pytest_asyncio
from hostmodels import HostModels, seed
from sqlalchemy import Engine, String, Uuid, create_engine, func, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import (
    EventFieldRules,
    EventLogMixin,
    EventType,
    EventWriter,
    NewEvent,
    PayloadPolicy,
    RetryPolicy,
    new_event,
)
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventWriteError,
    PayloadError,
    RetriesExhaustedError,
    ValidationError,
)


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(text("SELECT count(*) FROM event_logs")) or 0)


def test_record_commits_and_rolls_back_with_the_caller(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    with Session(host_engine) as session:
        row = writer.record(
            session,
            session_id=session_id,
            user_id=user_id,
            event_type=EventType.TOOL_CALL,
            tool_name="search",
            payload={"query": "x", "api_key": "sk-123", "at": datetime(2026, 1, 2, tzinfo=UTC)},
        )
        session.commit()
        event_id = row.id
    with Session(host_engine) as session:
        writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
        session.rollback()
    with Session(host_engine) as session:
        stored = session.scalars(select(host_models.EventLog)).one()
    assert stored.id == event_id
    assert stored.event_type == "tool_call"
    assert stored.tool_name == "search"
    assert stored.payload == {
        "query": "x",
        "api_key": "[REDACTED]",
        "at": "2026-01-02T00:00:00+00:00",
        "_redacted": ["/api_key"],
    }
    assert stored.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("fields", "error", "path"),
    [
        ({"event_type": "bad type"}, ValidationError, None),
        ({"event_type": "x", "tool_name": "t" * 129}, ValidationError, None),
        ({"event_type": "x", "payload": {"a": [object()]}}, PayloadError, "/a/0"),
        ({"event_type": "x", "payload": {"s": "\ud800"}, "_nul": "error"}, PayloadError, "/s"),
        ({"event_type": "x", "created_at": datetime(2026, 1, 1)}, ValidationError, None),
        ({"event_type": "x", "session_id": "not-a-key"}, ValidationError, None),
        ({"event_type": "x", "session_id": 7}, ValidationError, None),
    ],
)
def test_bad_input_raises_in_the_caller_and_writes_nothing(
    host_engine: Engine,
    host_models: HostModels,
    fields: dict[str, Any],
    error: type[Exception],
    path: str | None,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    fields = dict(fields)  # the parameter is shared with the partitioned layout's run
    strict = fields.pop("_nul", None) is not None
    writer = EventWriter(
        host_models.EventLog,
        payload_policy=PayloadPolicy(surrogates="error") if strict else PayloadPolicy(),
    )
    args = {"session_id": session_id, "user_id": user_id, **fields}
    with Session(host_engine) as session:
        with pytest.raises(error) as caught:
            writer.record(session, **args)
        session.commit()
    with pytest.raises(error):
        writer.record_detached(host_engine, **args)
    if path is not None:
        assert isinstance(caught.value, PayloadError)
        assert caught.value.path == path
    assert count(host_engine) == 0


def test_field_rules_restrict_the_vocabulary(host_models: HostModels) -> None:
    writer = EventWriter(
        host_models.EventLog, field_rules=EventFieldRules(event_types=frozenset(EventType))
    )
    key = uuid.uuid4()
    writer.event(session_id=key, user_id=key, event_type=EventType.ERROR, error_code="timeout")
    with pytest.raises(ValidationError, match="not one of the allowed event types"):
        writer.event(session_id=key, user_id=key, event_type="custom.thing")


def test_detached_survives_the_callers_rollback_and_is_idempotent(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)  # committed earlier
    writer = EventWriter(host_models.EventLog)
    with Session(host_engine) as session:
        # The caller's transaction is really open, with writes of its own (one referencing
        # the same session row, which takes a KEY SHARE lock on it) when the detached write
        # runs on another connection.
        session.add(host_models.User(id=host_models.new_key()))
        writer.record(session, session_id=session_id, user_id=user_id, event_type="tool_call")
        session.flush()
        assert session.in_transaction()
        event = writer.record_detached(
            host_engine,
            session_id=session_id,
            user_id=user_id,
            event_type=EventType.ERROR,
            error_code="tool_failed",
        )
        session.rollback()
    assert writer.record_detached(host_engine, event) is event  # a retry: no second row
    with host_engine.connect() as conn:
        rows = conn.execute(text("SELECT id, error_code FROM event_logs")).all()
        users = conn.scalar(text("SELECT count(*) FROM users"))
    assert rows == [(event.id, "tool_failed")]
    assert users == 1  # the caller's own writes were rolled back


def test_detached_statements_are_seen_by_listeners_and_the_connection_left_clean(
    host_engine: Engine, host_models: HostModels
) -> None:
    """With a listener the detached write goes through SQLAlchemy (without, on psycopg's
    connection directly): instrumentation sees its one statement, and either way the pooled
    connection comes back with no transaction open."""
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]).split()[0])

    sa_event.listen(host_engine, "before_cursor_execute", record)
    try:
        writer.record_detached(host_engine, session_id=session_id, user_id=user_id, event_type="x")
    finally:
        sa_event.remove(host_engine, "before_cursor_execute", record)
    assert seen == ["INSERT"]
    writer.record_detached(host_engine, session_id=session_id, user_id=user_id, event_type="y")
    assert seen == ["INSERT"]  # the listener is gone: the direct path
    with host_engine.connect() as conn:
        dbapi: Any = conn.connection.dbapi_connection
        assert dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert count(host_engine) == 2


def _note_settings(engine: Engine) -> None:
    """Make each row note the lock_timeout and isolation level it was written under."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION note_settings() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN NEW.error_code := current_setting('lock_timeout') || ' ' "
                "|| current_setting('transaction_isolation'); RETURN NEW; END $$; "
                "CREATE TRIGGER note_settings BEFORE INSERT ON event_logs "
                "FOR EACH ROW EXECUTE FUNCTION note_settings()"
            )
        )


def _noted(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return conn.scalar(text("SELECT error_code FROM event_logs"))


ENGINE_SETTINGS = pytest.mark.parametrize(
    ("isolation", "on_engine", "expected"),
    [
        (None, False, "read committed"),
        ("AUTOCOMMIT", False, "read committed"),
        ("AUTOCOMMIT", True, "read committed"),
        ("REPEATABLE READ", False, "repeatable read"),
        ("REPEATABLE READ", True, "repeatable read"),
    ],
    ids=[
        "default",
        "autocommit-option",
        "autocommit-engine",
        "repeatable-read-option",
        "repeatable-read-engine",
    ],
)
"""An isolation level as an engine's execution option (applied by a listener) or as
``create_engine``'s argument (set on each DBAPI connection), and what a detached write's
transaction should run under."""


@ENGINE_SETTINGS
def test_detached_runs_in_a_transaction_of_its_own_under_the_lock_timeout(
    host_engine: Engine,
    host_models: HostModels,
    isolation: str | None,
    on_engine: bool,
    expected: str,
) -> None:
    """On every engine a host may configure: the lock timeout applies to the INSERT (on an
    autocommit engine too, where a SET LOCAL outside a transaction would do nothing), the
    host's isolation level is kept, and the connection goes back to the pool as it came."""
    user_id, session_id = seed(host_engine, host_models)
    _note_settings(host_engine)
    options = {} if isolation is None else {"isolation_level": isolation}
    engine = create_engine(host_engine.url, **(options if on_engine else {}))
    if not on_engine:
        engine = engine.execution_options(**options)
    try:
        with engine.connect() as conn:
            dbapi: Any = conn.connection.dbapi_connection
            autocommit = dbapi.autocommit
        EventWriter(host_models.EventLog, lock_timeout=0.25).record_detached(
            engine, session_id=session_id, user_id=user_id, event_type="x"
        )
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection is dbapi
            assert dbapi.autocommit is autocommit
            assert dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        engine.dispose()
    assert _noted(host_engine) == f"250ms {expected}"


@pytest.mark.parametrize(
    ("lock_timeout", "expected"), [(None, "1234ms"), (0.75, "750ms")], ids=["server", "writer"]
)
def test_detached_lock_timeout_none_keeps_the_servers_setting(
    host_engine: Engine, host_models: HostModels, lock_timeout: float | None, expected: str
) -> None:
    """``lock_timeout=None`` sends no timeout of its own: the connection's setting holds (here
    set as a libpq option), and the connection keeps it afterwards either way."""
    user_id, session_id = seed(host_engine, host_models)
    _note_settings(host_engine)
    engine = create_engine(host_engine.url, connect_args={"options": "-c lock_timeout=1234"})
    try:
        EventWriter(host_models.EventLog, lock_timeout=lock_timeout).record_detached(
            engine, session_id=session_id, user_id=user_id, event_type="x"
        )
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW lock_timeout")) == "1234ms"
    finally:
        engine.dispose()
    assert _noted(host_engine) == f"{expected} read committed"


def _round_trips(trace: str) -> list[str]:
    """The messages of a libpq trace that wait for the server: a query, or the ``Sync``
    that ends an extended-protocol one."""
    sent = [line.split("\t")[2] for line in trace.splitlines() if line[:2] == "F\t"]
    return [message for message in sent if message in ("Query", "Sync")]


def _trace_of(engine: Engine, tmp_path: Any, write: Callable[[], object]) -> str:
    """What ``write`` sends on the pooled connection it gets, as a libpq trace."""
    path = tmp_path / "libpq.trace"
    with path.open("w") as trace:
        with engine.connect() as conn:  # the pooled connection the write will get
            pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            write()
        finally:
            pgconn.untrace()
    return path.read_text()


def test_detached_is_one_round_trip(
    host_engine: Engine, host_models: HostModels, tmp_path: Any
) -> None:
    """The INSERT sets the lock timeout for its own transaction and runs in autocommit mode:
    one round trip, where a hand-written INSERT and commit on psycopg take three (its own
    BEGIN, the INSERT, COMMIT)."""
    user_id, session_id = seed(host_engine, host_models)
    fields: dict[str, Any] = {"session_id": session_id, "user_id": user_id, "event_type": "x"}
    writer = EventWriter(host_models.EventLog)
    for _ in range(6):  # past psycopg's prepare threshold: the Parse goes before the trace
        writer.record_detached(host_engine, **fields)
    trace = _trace_of(host_engine, tmp_path, lambda: writer.record_detached(host_engine, **fields))
    assert _round_trips(trace) == ["Sync"], trace
    fresh = EventWriter(host_models.EventLog, lock_timeout=0.25)
    trace = _trace_of(host_engine, tmp_path, lambda: fresh.record_detached(host_engine, **fields))
    assert _round_trips(trace) == ["Sync"], trace
    assert "Parse" in trace  # a new writer: its statement is not prepared yet
    assert "set_config('lock_timeout', '250ms', true)" in trace
    # Under a millisecond rounds up: 0 would be no timeout at all for PostgreSQL.
    tiny = EventWriter(host_models.EventLog, lock_timeout=0.0004)
    trace = _trace_of(host_engine, tmp_path, lambda: tiny.record_detached(host_engine, **fields))
    assert "set_config('lock_timeout', '1ms', true)" in trace
    assert count(host_engine) == 9


@pytest.mark.parametrize("bad", [0, -1, 86_400, 86_400.5, True, "5", float("nan")])
def test_a_lock_timeout_that_is_not_a_number_of_seconds_is_refused(
    host_models: HostModels, bad: object
) -> None:
    with pytest.raises(ConfigurationError, match=r"lock_timeout=.* is not valid; use seconds"):
        EventWriter(host_models.EventLog, lock_timeout=bad)  # type: ignore[arg-type]


def test_writer_options_at_their_limits_and_defaults(host_models: HostModels) -> None:
    model = host_models.EventLog
    defaults = EventWriter(model)
    assert defaults.lock_timeout == 5.0  # the documented default
    assert (defaults.payload_policy, defaults.field_rules) == (PayloadPolicy(), EventFieldRules())
    policy, rules = PayloadPolicy(max_depth=8), EventFieldRules(event_types=frozenset({"chat"}))
    given = EventWriter(model, payload_policy=policy, field_rules=rules)
    assert (given.payload_policy, given.field_rules) == (policy, rules)
    for seconds in (0.001, 86_399.5, 3, None):
        assert EventWriter(model, lock_timeout=seconds).lock_timeout == seconds
    with pytest.raises(ConfigurationError, match="retry=3 is not valid; pass a RetryPolicy"):
        EventWriter(model, retry=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_refused_detached_write_gives_its_connection_back_as_it_found_it(
    host_engine: Engine, host_models: HostModels, database_url: URL, flavour: str
) -> None:
    """The direct path runs the insert in autocommit mode: after a refusal the connection
    goes back to the pool out of autocommit mode, and is kept (nothing is wrong with it)."""
    user_id, _ = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog, retry=RetryPolicy(max_attempts=1))
    fields: dict[str, Any] = {"session_id": uuid.uuid4(), "user_id": user_id, "event_type": "x"}
    connects: list[object] = []

    def refuse() -> bool:
        engine = create_engine(database_url, pool_size=1, max_overflow=0)
        sa_event.listen(engine, "connect", lambda *args: connects.append(args[0]))
        try:
            with pytest.raises(EventWriteError, match="the database refused it"):
                writer.record_detached(engine, **fields)
            with engine.connect() as conn:  # the same pooled connection
                return bool(conn.connection.dbapi_connection.autocommit)  # type: ignore[union-attr]
        finally:
            engine.dispose()

    async def arefuse() -> bool:
        engine = create_async_engine(database_url, pool_size=1, max_overflow=0)
        sa_event.listen(engine.sync_engine, "connect", lambda *args: connects.append(args[0]))
        try:
            with pytest.raises(EventWriteError, match="the database refused it"):
                await writer.arecord_detached(engine, **fields)
            async with engine.connect() as conn:
                raw: Any = (await conn.get_raw_connection()).driver_connection
                return bool(raw.autocommit)
        finally:
            await engine.dispose()

    autocommit = refuse() if flavour == "sync" else asyncio.run(arefuse())
    assert (autocommit, len(connects)) == (False, 1)
    assert count(host_engine) == 0


@pytest.mark.parametrize("observed", [False, True], ids=["direct", "sqlalchemy"])
def test_detached_fk_violation_is_a_typed_error(
    host_engine: Engine, host_models: HostModels, observed: bool
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    if observed:  # an instrumented engine: the write goes through SQLAlchemy's execute
        sa_event.listen(host_engine, "before_cursor_execute", lambda *args: None)
    writer = EventWriter(host_models.EventLog, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(EventWriteError, match="the database refused it") as caught:
        writer.record_detached(
            host_engine, session_id=uuid.uuid4(), user_id=user_id, event_type="x"
        )
    error = caught.value
    assert error.event is not None
    assert error.event.event_type == "x"
    assert str(error.event.id) in str(error)
    assert error.sqlstate == "23503"
    assert isinstance(error.__cause__, psycopg.errors.ForeignKeyViolation)
    assert count(host_engine) == 0
    # The pooled connection the refusal came back on is clean: the next write goes through.
    writer.record_detached(host_engine, session_id=session_id, user_id=user_id, event_type="y")
    assert count(host_engine) == 1


def _detached_in_thread(
    writer: EventWriter[Any, Any], engine: Engine, **fields: Any
) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def run() -> None:
        started = time.monotonic()
        try:
            box["result"] = writer.record_detached(engine, **fields)
        except Exception as exc:
            box["result"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_detached_against_the_callers_row_lock_fails_fast_with_the_fix(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog, lock_timeout=0.2)  # default retry policy
    chat = host_models.ChatSession
    with Session(host_engine) as session:
        # A common pattern: serialize the work on one chat session. The detached insert's
        # foreign-key check needs KEY SHARE on that row, which FOR UPDATE blocks.
        session.execute(select(chat).where(chat.id == session_id).with_for_update()).one()
        thread, box = _detached_in_thread(
            writer, host_engine, session_id=session_id, user_id=user_id, event_type="error"
        )
        thread.join(5)
        blocked = thread.is_alive()
        session.rollback()
    thread.join(5)
    assert not blocked, "the detached write waited for the caller's own lock"
    error = box["result"]
    assert isinstance(error, EventWriteError)
    assert not isinstance(error, RetriesExhaustedError)
    assert error.sqlstate == "55P03"
    assert "lock_timeout (0.2 s)" in str(error)
    assert "record(session, ...)" in str(error)
    assert float(box["seconds"]) < 2  # type: ignore[arg-type]  # not retried six times
    assert count(host_engine) == 0


def test_detached_referencing_the_callers_uncommitted_row_explains_why(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, _ = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog, lock_timeout=0.5)
    with Session(host_engine) as session:
        chat = host_models.ChatSession(id=host_models.new_key(), user_id=user_id)
        session.add(chat)
        session.flush()  # inserted, not committed: invisible to the detached transaction
        with pytest.raises(EventWriteError, match="has not committed yet") as caught:
            writer.record_detached(host_engine, session_id=chat.id, user_id=user_id, event_type="x")
        # The fix the message gives: record it in the caller's transaction.
        writer.record(session, session_id=chat.id, user_id=user_id, event_type="x")
        session.commit()
    assert caught.value.sqlstate == "23503"
    assert count(host_engine) == 1


def test_detached_retries_a_pool_timeout(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    engine = create_engine(database_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    writer = EventWriter(host_models.EventLog, retry=RetryPolicy(initial_delay=0.05, max_delay=0.2))
    try:
        held = engine.connect()  # e.g. the caller's own session holds the only connection
        thread, box = _detached_in_thread(
            writer, engine, session_id=session_id, user_id=user_id, event_type="error"
        )
        time.sleep(0.3)
        held.close()
        thread.join(10)
    finally:
        engine.dispose()
    assert isinstance(box["result"], NewEvent), box["result"]
    assert count(host_engine) == 1


@pytest_asyncio.fixture
async def async_engine(host_engine: Engine, database_url: URL) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.asyncio
async def test_async_session_record_and_detached(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    when = datetime.now(UTC) - timedelta(minutes=5)
    async with AsyncSession(async_engine) as session:
        kept = writer.record(
            session, session_id=session_id, user_id=user_id, event_type="chat", created_at=when
        )
        kept_id = kept.id
        await session.commit()
    async with AsyncSession(async_engine) as session:
        writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
        await session.flush()  # the caller's transaction is open, with the row inserted
        assert session.in_transaction()
        detached = await writer.arecord_detached(
            async_engine, session_id=session_id, user_id=user_id, event_type="error"
        )
        await session.rollback()
    assert await writer.arecord_detached(async_engine, detached) is detached  # no second row
    async with AsyncSession(async_engine) as session:
        ids = set(await session.scalars(select(host_models.EventLog.id)))
        stamp = await session.scalar(
            select(func.min(host_models.EventLog.created_at)).where(
                host_models.EventLog.id == kept_id
            )
        )
    assert ids == {kept_id, detached.id}
    assert stamp == when


@pytest.mark.asyncio
@ENGINE_SETTINGS
async def test_async_detached_runs_in_a_transaction_of_its_own_under_the_lock_timeout(
    host_engine: Engine,
    host_models: HostModels,
    database_url: URL,
    isolation: str | None,
    on_engine: bool,
    expected: str,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    _note_settings(host_engine)
    options = {} if isolation is None else {"isolation_level": isolation}
    engine = create_async_engine(database_url, **(options if on_engine else {}))
    if not on_engine:
        engine = engine.execution_options(**options)
    try:
        async with engine.connect() as conn:
            dbapi: Any = (await conn.get_raw_connection()).driver_connection
            autocommit = dbapi.autocommit
        await EventWriter(host_models.EventLog, lock_timeout=0.25).arecord_detached(
            engine, session_id=session_id, user_id=user_id, event_type="x"
        )
        async with engine.connect() as conn:
            assert (await conn.get_raw_connection()).driver_connection is dbapi
            assert dbapi.autocommit is autocommit
            assert dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    finally:
        await engine.dispose()
    assert _noted(host_engine) == f"250ms {expected}"


@pytest.mark.asyncio
async def test_async_detached_cancelled_while_it_waits_stores_nothing_and_frees_its_connection(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine
) -> None:
    """A request cancelled (a client gone, a timeout) while its detached write waits for a
    row lock: nothing is stored, the connection does not stay checked out, and the next
    write goes through."""
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog, lock_timeout=30)
    fields: dict[str, Any] = {"session_id": session_id, "user_id": user_id, "event_type": "x"}
    await writer.arecord_detached(async_engine, **fields)  # a pooled connection exists
    with host_engine.connect() as holder:
        holder.execute(
            text("SELECT 1 FROM chat_sessions WHERE id = :id FOR UPDATE"), {"id": session_id}
        )
        task = asyncio.create_task(writer.arecord_detached(async_engine, **fields))
        for _ in range(500):
            with host_engine.connect() as probe:
                waiting = probe.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE 'INSERT INTO event_logs%' "
                        "AND datname = current_database()"
                    )
                )
            if waiting:
                break
            await asyncio.sleep(0.01)
        assert waiting == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        holder.rollback()
    pool: Any = async_engine.sync_engine.pool
    assert pool.checkedout() == 0
    await writer.arecord_detached(async_engine, **fields)
    with host_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(host_models.EventLog)) == 2


@pytest.mark.asyncio
async def test_async_detached_is_one_round_trip_and_seen_by_listeners(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine, tmp_path: Any
) -> None:
    """As `record_detached`: on psycopg's connection directly when nobody observes the
    engine (one round trip), through SQLAlchemy when a listener does."""
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    await writer.arecord_detached(
        async_engine, session_id=session_id, user_id=user_id, event_type="x"
    )
    path = tmp_path / "libpq.trace"
    with path.open("w") as trace:
        async with async_engine.connect() as conn:  # the pooled connection the write will get
            driver: Any = (await conn.get_raw_connection()).driver_connection
            driver.pgconn.trace(trace.fileno())
            driver.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        try:
            await writer.arecord_detached(
                async_engine, session_id=session_id, user_id=user_id, event_type="y"
            )
        finally:
            driver.pgconn.untrace()
    assert _round_trips(path.read_text()) == ["Sync"]
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]).split()[0])

    sa_event.listen(async_engine.sync_engine, "before_cursor_execute", record)
    try:
        await writer.arecord_detached(
            async_engine, session_id=session_id, user_id=user_id, event_type="z"
        )
    finally:
        sa_event.remove(async_engine.sync_engine, "before_cursor_execute", record)
    assert seen == ["INSERT"]
    async with async_engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver.autocommit is False
        assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert count(host_engine) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("observed", [False, True], ids=["direct", "sqlalchemy"])
async def test_async_detached_fk_violation_is_a_typed_error(
    host_engine: Engine, host_models: HostModels, async_engine: AsyncEngine, observed: bool
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    if observed:
        sa_event.listen(async_engine.sync_engine, "before_cursor_execute", lambda *args: None)
    writer = EventWriter(host_models.EventLog, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(EventWriteError, match="the database refused it") as caught:
        await writer.arecord_detached(
            async_engine, session_id=uuid.uuid4(), user_id=user_id, event_type="x"
        )
    assert caught.value.sqlstate == "23503"
    assert isinstance(caught.value.__cause__, psycopg.errors.ForeignKeyViolation)
    # The pooled connection the refusal came back on is clean: the next write goes through.
    await writer.arecord_detached(
        async_engine, session_id=session_id, user_id=user_id, event_type="y"
    )
    assert count(host_engine) == 1


class _FixedWaits(RetryPolicy):
    """The policy's limits, with every wait exactly ``initial_delay`` (no jitter)."""

    def delay(self, retry: int, elapsed: float) -> float | None:
        return None if super().delay(retry, elapsed) is None else self.initial_delay


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_detached_on_a_server_it_cannot_reach_retries_and_names_the_connect_error(
    host_models: HostModels, flavour: str
) -> None:
    """A checkout that fails (the direct path checks out a bare pooled connection) is a
    transient error like any other: retried after the policy's wait, then reported with
    psycopg's error."""
    down = "postgresql+psycopg://x@/x?host=/nonexistent-eventlog-dir&port=1"
    writer = EventWriter(host_models.EventLog, retry=_FixedWaits(max_attempts=3, initial_delay=0.2))
    fields: dict[str, Any] = {"session_id": uuid.uuid4(), "user_id": uuid.uuid4()}

    def write() -> None:
        engine = create_engine(down)
        try:
            writer.record_detached(engine, event_type="x", **fields)
        finally:
            engine.dispose()

    async def awrite() -> None:
        engine = create_async_engine(down)
        try:
            await writer.arecord_detached(engine, event_type="x", **fields)
        finally:
            await engine.dispose()

    started = time.monotonic()
    with pytest.raises(RetriesExhaustedError) as raised:
        write() if flavour == "sync" else asyncio.run(awrite())
    assert time.monotonic() - started >= 0.4  # two waits of 0.2 s between three attempts
    assert isinstance(raised.value.__cause__, psycopg.OperationalError)
    assert "nonexistent-eventlog-dir" in str(raised.value)
    assert "3 attempts" in str(raised.value)


@pytest.mark.parametrize("observed", [False, True], ids=["direct", "sqlalchemy"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_detached_write_refused_as_read_only_retries_on_a_new_connection(
    host_engine: Engine, host_models: HostModels, database_url: URL, flavour: str, observed: bool
) -> None:
    """A connection that reached a server accepting only reads is never used again: after
    a failover the pool's next connection may reach the new primary."""
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog, retry=RetryPolicy(max_attempts=3, initial_delay=0))
    fields: dict[str, Any] = {"session_id": session_id, "user_id": user_id, "event_type": "x"}
    read_only = {"options": "-c default_transaction_read_only=on"}
    connects: list[object] = []

    def engine_of(sync_engine: Engine) -> None:
        sa_event.listen(sync_engine, "connect", lambda *args: connects.append(args[0]))
        if observed:  # the write goes through SQLAlchemy's Connection
            sa_event.listen(sync_engine, "before_cursor_execute", lambda *args: None)

    def write() -> None:
        engine = create_engine(database_url, connect_args=read_only)
        engine_of(engine)
        try:
            writer.record_detached(engine, **fields)
        finally:
            engine.dispose()

    async def awrite() -> None:
        engine = create_async_engine(database_url, connect_args=read_only)
        engine_of(engine.sync_engine)
        try:
            await writer.arecord_detached(engine, **fields)
        finally:
            await engine.dispose()

    with pytest.raises(RetriesExhaustedError) as raised:
        write() if flavour == "sync" else asyncio.run(awrite())
    assert raised.value.sqlstate == "25006"
    assert len(connects) == 3  # one connection per attempt
    assert count(host_engine) == 0


@pytest.mark.parametrize("pre_ping", [False, True], ids=["no-pre-ping", "pre-ping"])
@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_detached_retries_on_a_new_connection_after_the_server_dropped_one(
    host_engine: Engine, host_models: HostModels, database_url: URL, flavour: str, pre_ping: bool
) -> None:
    """The direct path's lost connection is invalidated as SQLAlchemy's would be: the retry
    takes a new one, and the event is stored once. With ``pool_pre_ping`` the checkout
    finds the connection dead and replaces it first."""
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    fields: dict[str, Any] = {"session_id": session_id, "user_id": user_id, "event_type": "x"}
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_pre_ping": pre_ping}

    def terminate(pid: int) -> None:
        with host_engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})

    if flavour == "sync":
        engine = create_engine(database_url, **options)
        try:
            with engine.connect() as conn:
                before = conn.scalar(text("SELECT pg_backend_pid()"))
            terminate(before)
            writer.record_detached(engine, **fields)
            with engine.connect() as conn:
                after = conn.scalar(text("SELECT pg_backend_pid()"))
        finally:
            engine.dispose()
    else:

        async def run() -> tuple[int, int]:
            aengine = create_async_engine(database_url, **options)
            try:
                async with aengine.connect() as conn:
                    before = await conn.scalar(text("SELECT pg_backend_pid()"))
                terminate(before)
                await writer.arecord_detached(aengine, **fields)
                async with aengine.connect() as conn:
                    return before, await conn.scalar(text("SELECT pg_backend_pid()"))
            finally:
                await aengine.dispose()

        before, after = asyncio.run(run())
    assert after != before
    assert count(host_engine) == 1


def test_new_event_is_a_frozen_checked_value() -> None:
    key = uuid.uuid4()
    event = new_event(
        session_id=key, user_id=key, event_type="user_message", payload={"token": "t"}
    )
    assert event.payload_json == '{"token":"[REDACTED]","_redacted":["/token"]}'
    assert event.redacted_paths == ("/token",)
    assert event.id.version == 7
    with pytest.raises(AttributeError):
        event.event_type = "x"  # type: ignore[misc]


def test_record_takes_an_event_built_beforehand(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    event = writer.event(
        session_id=session_id,
        user_id=user_id,
        event_type="chat",
        payload={"n": 2**70, "api_key": "sk-1", "text": "\u00e9"},
    )
    expected = {"n": 2**70, "api_key": "[REDACTED]", "text": "\u00e9", "_redacted": ["/api_key"]}
    with Session(host_engine) as session:
        row = writer.record(session, event)
        assert (row.id, row.created_at, row.payload) == (event.id, event.created_at, expected)
        session.commit()
    with Session(host_engine) as session:
        stored = session.scalars(select(host_models.EventLog)).one()
    assert (stored.id, stored.event_type, stored.payload) == (event.id, "chat", expected)


def test_record_refuses_a_non_event_an_event_with_fields_and_a_key_of_the_wrong_type(
    host_engine: Engine, host_models: HostModels
) -> None:
    writer = EventWriter(host_models.EventLog)
    key = uuid.uuid4()
    event = new_event(session_id=key, user_id=key, event_type="chat")
    with Session(host_engine) as session:
        with pytest.raises(ValidationError, match=r"^expected a NewEvent .* got dict"):
            writer.record(session, {"event_type": "chat"})  # type: ignore[call-overload]
        with pytest.raises(ValidationError, match=r"fields \['tool_name'\]; pass one or"):
            writer.record(session, event, tool_name="x")  # type: ignore[call-overload]
        with pytest.raises(
            ValidationError, match=r"^user_id=7 \(int\) does not fit the uuid column"
        ):
            writer.record(session, msgspec.structs.replace(event, user_id=7))
        assert not session.new


def test_a_recorded_row_is_a_full_orm_row(host_engine: Engine, host_models: HostModels) -> None:
    """The row record() makes without the constructor behaves as a constructed one."""
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    with Session(host_engine) as session:
        row = writer.record(
            session, session_id=session_id, user_id=user_id, event_type="chat", payload={"a": 1}
        )
        assert row in session.new
        assert (row.event_type, row.payload, row.project_id) == ("chat", {"a": 1}, None)
        row.tool_name = "changed before the flush"
        session.flush()
        assert row not in session.new
        row.approval_status = "granted"  # an update of the flushed row, tracked as usual
        session.commit()
        assert row.payload == {"a": 1}  # reloaded after the commit
    with Session(host_engine) as session:
        key = (row.id, row.created_at) if _partitioned(host_models) else row.id
        stored = session.get(host_models.EventLog, key)
        assert stored is not None
        assert (stored.tool_name, stored.approval_status) == ("changed before the flush", "granted")


def _partitioned(models: HostModels) -> bool:
    return len(models.EventLog.__table__.primary_key.columns) == 2


# The columns record() sets on a row, listed here on purpose (not taken from the package):
# a host's set listener on any one of them sees every recorded row.
RECORDED_COLUMNS = [
    "id",
    "session_id",
    "user_id",
    "event_type",
    "payload",
    "project_id",
    "agent_id",
    "error_code",
    "tool_name",
    "approval_status",
    "created_at",
    "request_id",
    "trace_id",
    "span_id",
]


@pytest.mark.parametrize("column", RECORDED_COLUMNS)
def test_a_set_listener_on_any_column_sees_recorded_rows(
    host_engine: Engine, host_models: HostModels, column: str
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    model: Any = host_models.EventLog
    seen: list[str] = []
    sa_event.listen(getattr(model, column), "set", lambda *_: seen.append(column))
    with Session(host_engine) as session:
        EventWriter(model).record(
            session, session_id=session_id, user_id=user_id, event_type="chat"
        )
    assert seen == [column]


def test_a_hosts_own_constructor_runs_for_recorded_rows(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    model: Any = host_models.EventLog

    class Constructed(model):  # type: ignore[misc,valid-type]
        __tablename__ = None  # single-table: the same event_logs
        __table_args__ = None

        def __init__(self, **fields: Any) -> None:
            fields["tool_name"] = "set by the host's __init__"
            super().__init__(**fields)

    with Session(host_engine) as session:
        row = EventWriter(Constructed).record(
            session, session_id=session_id, user_id=user_id, event_type="chat"
        )
        session.commit()
        assert row.tool_name == "set by the host's __init__"


def test_a_polymorphic_host_model_gets_its_discriminator(engine: Engine) -> None:
    """The mapper's own init listener sets the discriminator: such a row is constructed."""

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True)

    for name in ("chat_sessions", "user_projects", "user_agents"):
        type(name, (Base,), {"__tablename__": name, "id": mapped_column(Uuid, primary_key=True)})

    class EventLog(EventLogMixin[uuid.UUID], Base):
        kind: Mapped[str | None] = mapped_column(String(20))
        __mapper_args__: ClassVar[dict[str, Any]] = {
            "polymorphic_on": "kind",
            "polymorphic_identity": "event",
        }

    class ToolEvent(EventLog):
        __tablename__ = None  # type: ignore[assignment]  # single-table: the same event_logs
        __table_args__ = None
        __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "tool"}

    Base.metadata.create_all(engine)
    user_id, session_id = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO users VALUES (:id)"), {"id": user_id})
        connection.execute(text("INSERT INTO chat_sessions VALUES (:id)"), {"id": session_id})
    with Session(engine) as session:
        for model in (EventLog, ToolEvent):
            EventWriter(model).record(
                session, session_id=session_id, user_id=user_id, event_type="chat"
            )
        session.commit()
    with engine.connect() as connection:
        kinds = connection.scalars(text("SELECT kind FROM event_logs ORDER BY kind")).all()
    assert kinds == ["event", "tool"]


@pytest.mark.parametrize("hook", ["init", "set", "validates"])
def test_host_hooks_on_the_model_still_see_recorded_rows(
    host_engine: Engine, host_models: HostModels, hook: str
) -> None:
    """A host's init or attribute listener, or a validator, sees every value as before."""
    from sqlalchemy.orm import validates

    user_id, session_id = seed(host_engine, host_models)
    seen: list[object] = []
    model: Any = host_models.EventLog
    if hook == "validates":

        class Validated(model):  # type: ignore[misc,valid-type]
            __tablename__ = None  # single-table: the same event_logs
            __table_args__ = None

            @validates("event_type")
            def _check(self, key: str, value: str) -> str:
                seen.append(value)
                return value.upper()

        model = Validated
    elif hook == "init":
        sa_event.listen(
            model, "init", lambda target, args, kwargs: seen.append(kwargs["event_type"])
        )
    else:
        sa_event.listen(model.event_type, "set", lambda target, value, *_: seen.append(value))
    writer = EventWriter(model)
    with Session(host_engine) as session:
        row = writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
        session.commit()
        assert row.event_type == ("CHAT" if hook == "validates" else "chat")
    assert seen == ["chat"]
