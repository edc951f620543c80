"""The delivery engine under the bulk writers: the connections it opens and closes, its
network timeouts, a lost connection replaced by a fresh one, dead letters without a hook.

Every test runs through `write_events` and `awrite_events` alike; the connections are real,
only watched on their way out of psycopg's ``connect``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import psycopg
import pytest
from hostmodels import HostModels, seed
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    BulkResult,
    NewEvent,
    RetryPolicy,
    awrite_events,
    new_event,
    write_events,
)
from eventlog_persist._failures import RowEncodingError
from eventlog_persist.exceptions import ConfigurationError, RetriesExhaustedError

FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.001, max_delay=0.01)


def batch(user_id: Any, session_id: Any, n: int) -> list[NewEvent]:
    return [
        new_event(session_id=session_id, user_id=user_id, event_type="message", payload={"i": i})
        for i in range(n)
    ]


def conninfo(engine: Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def stored_ids(engine: Engine) -> list[uuid.UUID]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT id FROM event_logs")).scalars())


@dataclass
class Opened:
    """The connections a writer opened, with the conninfo it asked for."""

    conninfos: list[str]
    connections: list[Any]

    def params(self, index: int = 0) -> dict[str, Any]:
        return conninfo_to_dict(self.conninfos[index])


def _called_by_the_package() -> bool:
    """True in a ``connect`` the writer made, not SQLAlchemy's pool or the test itself."""
    caller = sys._getframe(2).f_globals.get("__name__", "")
    return caller.startswith("eventlog_persist")


class Flavor:
    """Runs the sync or the async bulk writer and watches the connections it opens."""

    def __init__(self, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = name
        self.opened = Opened([], [])
        self.after_connect: Callable[[Any], None] | None = None
        if name == "sync":
            real = psycopg.connect

            def spy(conninfo: str = "", **kwargs: Any) -> Any:
                conn = real(conninfo, **kwargs)
                if _called_by_the_package():
                    self._seen(conninfo, conn)
                return conn

            monkeypatch.setattr(psycopg, "connect", spy)
        else:
            areal = psycopg.AsyncConnection.connect

            async def aspy(conninfo: str = "", **kwargs: Any) -> Any:
                conn = await areal(conninfo, **kwargs)
                if _called_by_the_package():
                    self._seen(conninfo, conn)
                return conn

            monkeypatch.setattr(psycopg.AsyncConnection, "connect", aspy)

    def _seen(self, conninfo: str, conn: Any) -> None:
        self.opened.conninfos.append(conninfo)
        self.opened.connections.append(conn)
        if self.after_connect is not None:
            self.after_connect(conn)

    def write(self, model: Any, target: Any, events: list[NewEvent], **kwargs: Any) -> BulkResult:
        if self.name == "sync":
            return write_events(model, target, events, **kwargs)
        return asyncio.run(self._awrite(model, target, events, **kwargs))

    async def _awrite(self, model: Any, target: Any, events: Any, **kwargs: Any) -> BulkResult:
        if isinstance(target, Engine):  # the async writer takes an AsyncEngine
            engine = create_async_engine(target.url.set(drivername="postgresql+psycopg"))
            try:
                return await awrite_events(model, engine, events, **kwargs)
            finally:
                await engine.dispose()
        return await awrite_events(model, target, events, **kwargs)

    def given_connection(self, conninfo: str, model: Any, events: list[NewEvent]) -> BulkResult:
        """Write through a connection the caller opened, closed first when ``events`` is []."""
        if self.name == "sync":
            with psycopg.connect(conninfo) as conn:
                if not events:
                    conn.close()
                    key = uuid.uuid4()
                    events = [new_event(session_id=key, user_id=key, event_type="x")]
                result = write_events(model, conn, events, retry=FAST_RETRY)
                self.still_open = not conn.closed and conn.execute("SELECT 1").fetchone() == (1,)
                return result

        async def run() -> BulkResult:
            nonlocal events
            async with await psycopg.AsyncConnection.connect(conninfo) as conn:
                if not events:
                    await conn.close()
                    key = uuid.uuid4()
                    events = [new_event(session_id=key, user_id=key, event_type="x")]
                result = await awrite_events(model, conn, events, retry=FAST_RETRY)
                self.still_open = not conn.closed and (
                    await (await conn.execute("SELECT 1")).fetchone() == (1,)
                )
                return result

        return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def flavor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Flavor:
    return Flavor(request.param, monkeypatch)


# --- the connection string ---------------------------------------------------------------


def test_own_connections_get_the_documented_network_timeouts(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    result = flavor.write(
        host_models.EventLog, conninfo(host_engine), batch(user_id, session_id, 3)
    )
    assert result.written == 3
    params = flavor.opened.params()
    assert params["connect_timeout"] == "10"
    assert params["tcp_user_timeout"] == "60000"  # milliseconds: 60 s


@pytest.mark.parametrize(
    ("connect_timeout", "tcp_user_timeout", "expected"),
    [
        (0.5, 0.0001, ("2", "1")),  # libpq's minimum of 2 s; at least 1 ms
        (2.1, 1.5, ("3", "1500")),  # whole seconds, rounded up; milliseconds
        (None, None, (None, None)),  # left to libpq and the system
    ],
)
def test_timeouts_are_converted_to_what_libpq_takes(
    flavor: Flavor,
    host_engine: Engine,
    host_models: HostModels,
    connect_timeout: float | None,
    tcp_user_timeout: float | None,
    expected: tuple[str | None, str | None],
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    result = flavor.write(
        host_models.EventLog,
        conninfo(host_engine),
        batch(user_id, session_id, 1),
        connect_timeout=connect_timeout,
        tcp_user_timeout=tcp_user_timeout,
    )
    assert result.written == 1
    params = flavor.opened.params()
    assert (params.get("connect_timeout"), params.get("tcp_user_timeout")) == expected


def test_timeouts_in_the_conninfo_win(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    target = make_conninfo(conninfo(host_engine), connect_timeout=7, tcp_user_timeout=4321)
    flavor.write(host_models.EventLog, target, batch(user_id, session_id, 1), connect_timeout=30)
    params = flavor.opened.params()
    assert (params["connect_timeout"], params["tcp_user_timeout"]) == ("7", "4321")


def test_an_engine_is_reached_through_its_url_password_included(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with_password = host_engine.url.set(password="not-a-real-secret")
    engine = create_engine(with_password)
    try:
        result = flavor.write(host_models.EventLog, engine, batch(user_id, session_id, 2))
    finally:
        engine.dispose()
    assert result.written == 2
    params = flavor.opened.params()
    assert params["password"] == "not-a-real-secret"
    assert params["dbname"] == host_engine.url.database


def test_a_non_postgresql_engine_is_refused_by_name(host_models: HostModels) -> None:
    key = uuid.uuid4()
    event = new_event(session_id=key, user_id=key, event_type="x")
    with pytest.raises(ConfigurationError, match=r"^'Engine\(sqlite://\)' is not a PostgreSQL"):
        write_events(host_models.EventLog, create_engine("sqlite://"), [event])


@pytest.mark.parametrize("name", ["connect_timeout", "tcp_user_timeout"])
@pytest.mark.parametrize(
    "value", [0, 0.0, -1, True, "5", 1e6, float("nan"), float("inf"), float("-inf")]
)
def test_a_bad_timeout_is_refused_before_anything_runs(
    flavor: Flavor, host_models: HostModels, name: str, value: object
) -> None:
    with pytest.raises(ConfigurationError, match=rf"{name}={value!r} is not valid"):
        flavor.write(host_models.EventLog, "host=/nonexistent-dir dbname=x", [], **{name: value})
    assert flavor.opened.conninfos == []


@pytest.mark.parametrize("value", [None, 0.001, 1, 999_999.9])
def test_timeouts_in_range_are_accepted(
    flavor: Flavor, host_models: HostModels, value: float | None
) -> None:
    result = flavor.write(
        host_models.EventLog,
        "host=/nonexistent-dir dbname=x",
        [],
        connect_timeout=value,
        tcp_user_timeout=value,
    )
    assert result.written == 0
    assert flavor.opened.conninfos == []  # nothing to write, nothing opened


# --- the connections' lifetime ------------------------------------------------------------


def test_own_connections_are_closed_when_the_write_returns(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    result = flavor.write(
        host_models.EventLog, conninfo(host_engine), batch(user_id, session_id, 25), batch_size=10
    )
    assert result.written == 25
    (conn,) = flavor.opened.connections  # one connection for all three batches
    assert conn.closed


def test_a_lost_connection_is_replaced_and_the_batch_stored_once(
    flavor: Flavor,
    host_engine: Engine,
    host_models: HostModels,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, session_id = seed(host_engine, host_models)

    def kill_the_first(conn: Any) -> None:
        if len(flavor.opened.connections) == 1:
            with host_engine.connect() as admin:
                admin.execute(
                    text("SELECT pg_terminate_backend(:pid)"), {"pid": conn.info.backend_pid}
                )

    flavor.after_connect = kill_the_first
    events = batch(user_id, session_id, 30)
    with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
        result = flavor.write(host_models.EventLog, conninfo(host_engine), events, retry=FAST_RETRY)
    assert (result.written, result.duplicates, result.retries) == (30, 0, 1)
    # One retry, for the lost connection itself: a broken connection is not bisected.
    (retried,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert "terminating connection due to administrator command" in retried
    assert result.dead_lettered == []
    first, second = flavor.opened.connections
    assert first.closed
    assert second.closed
    assert sorted(stored_ids(host_engine)) == sorted(event.id for event in events)


def test_a_connection_the_caller_gave_is_used_and_left_open(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x")
    events = [*batch(user_id, session_id, 5), orphan]
    result = flavor.given_connection(conninfo(host_engine), host_models.EventLog, events)
    assert result.written == 5
    assert [event for event, _ in result.dead_lettered] == [orphan]
    assert flavor.still_open
    assert flavor.opened.conninfos == []  # the writer opened none of its own


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transactional"])
def test_a_connection_the_caller_gave_is_idle_after_a_write_that_started_over(
    flavor: Flavor, host_engine: Engine, host_models: HostModels, autocommit: bool
) -> None:
    """Two of the events are stored already: the first attempt's transaction is rolled back
    and the batch written again through the staging table, in one more transaction."""
    user_id, session_id = seed(host_engine, host_models)
    events = batch(user_id, session_id, 5)
    write_events(host_models.EventLog, host_engine, events[:2])
    target = conninfo(host_engine)
    if flavor.name == "sync":
        with psycopg.connect(target, autocommit=autocommit) as conn:
            result = write_events(host_models.EventLog, conn, events)
            status = conn.info.transaction_status
    else:

        async def run() -> tuple[BulkResult, psycopg.pq.TransactionStatus]:
            async with await psycopg.AsyncConnection.connect(target, autocommit=autocommit) as conn:
                written = await awrite_events(host_models.EventLog, conn, events)
                return written, conn.info.transaction_status

        result, status = asyncio.run(run())
    assert (result.written, result.duplicates, result.retries) == (5, 2, 0)
    assert status == psycopg.pq.TransactionStatus.IDLE
    assert sorted(stored_ids(host_engine)) == sorted(event.id for event in events)


def test_a_closed_connection_the_caller_gave_is_not_reopened(
    flavor: Flavor,
    host_engine: Engine,
    host_models: HostModels,
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = flavor.given_connection(conninfo(host_engine), host_models.EventLog, [])
    assert result.written == 0
    assert result.retries == 0  # no retry can reopen it: given up at once, the fix named
    ((_event, error),) = result.dead_lettered
    assert not isinstance(error, RetriesExhaustedError)
    assert "the psycopg connection given to the writer is closed" in str(error)
    assert "give the writer a URL or an Engine, which it reconnects" in str(error)
    assert "replaying it (write_events) is safe" in str(error)
    assert isinstance(error.__cause__, ConfigurationError)
    assert flavor.opened.conninfos == []
    assert not [r for r in caplog.records if "unexpected error" in r.getMessage()]


# --- dead letters ---------------------------------------------------------------------------


def test_without_a_hook_each_dead_letter_is_logged_once(
    flavor: Flavor,
    host_engine: Engine,
    host_models: HostModels,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    orphans = [
        new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x") for _ in range(2)
    ]
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        result = flavor.write(
            host_models.EventLog, host_engine, [*batch(user_id, session_id, 3), *orphans]
        )
    assert result.written == 3
    logged = [r.getMessage() for r in caplog.records if r.name == "eventlog_persist"]
    assert len(logged) == 2
    for orphan, message in zip(orphans, logged, strict=True):
        assert message.count(str(orphan.id)) == 1
        assert "was not written" in message
        assert "the database refused it" in message


def test_a_failing_hook_is_logged_and_the_next_event_still_reported(
    flavor: Flavor,
    host_engine: Engine,
    host_models: HostModels,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, _ = seed(host_engine, host_models)
    orphans = [
        new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x") for _ in range(2)
    ]
    reported: list[NewEvent] = []

    def hook(event: NewEvent, error: Exception) -> None:
        reported.append(event)
        if len(reported) == 1:
            raise RuntimeError("the hook's own bug")

    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        result = flavor.write(host_models.EventLog, host_engine, orphans, on_dead_letter=hook)
    assert reported == orphans
    assert len(result.dead_lettered) == 2
    (record,) = [r for r in caplog.records if r.name == "eventlog_persist"]
    assert f"the dead-letter hook failed for event {orphans[0].id}" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_a_row_refused_by_a_host_constraint_names_it_and_points_at_the_constraints(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as conn:  # a host's own rule on its table
        conn.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT ck_no_forbidden_tool "
                "CHECK (tool_name IS DISTINCT FROM 'forbidden')"
            )
        )
    bad = new_event(
        session_id=session_id, user_id=user_id, event_type="tool_call", tool_name="forbidden"
    )
    result = flavor.write(host_models.EventLog, host_engine, [*batch(user_id, session_id, 4), bad])
    assert result.written == 4
    ((event, error),) = result.dead_lettered
    assert event is bad
    assert error.sqlstate == "23514"
    assert isinstance(error.__cause__, psycopg.errors.CheckViolation)
    message = str(error)
    assert "ck_no_forbidden_tool" in message
    assert "check the event's values against the table's constraints" in message
    assert result.retries == 0


def test_a_value_the_client_cannot_encode_sinks_only_its_own_event(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    good = batch(user_id, session_id, 6)
    # A payload text built by hand, past the checks of new_event: a lone surrogate cannot
    # be encoded as UTF-8, so the client fails on that row before the server sees it.
    bad = msgspec.structs.replace(good[2], id=uuid.uuid4(), payload_json='{"text": "a\ud800b"}')
    result = flavor.write(host_models.EventLog, host_engine, [*good[:3], bad, *good[3:]])
    assert result.written == 6
    ((event, error),) = result.dead_lettered
    assert event is bad
    assert "cannot encode event" in str(error)
    assert "the database refused it" in str(error)
    assert isinstance(error.__cause__, RowEncodingError)
    assert isinstance(error.__cause__.__cause__, UnicodeEncodeError)
    assert sorted(stored_ids(host_engine)) == sorted(e.id for e in good)


def test_each_attempt_sets_the_lock_timeout(
    flavor: Flavor, host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as conn:  # each row records the lock_timeout it was written under
        conn.execute(
            text(
                "CREATE FUNCTION note_lock_timeout() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN NEW.error_code := current_setting('lock_timeout'); RETURN NEW; END $$; "
                "CREATE TRIGGER note_lock_timeout BEFORE INSERT ON event_logs "
                "FOR EACH ROW EXECUTE FUNCTION note_lock_timeout()"
            )
        )
    target = conninfo(host_engine)
    flavor.write(host_models.EventLog, target, batch(user_id, session_id, 2))  # default
    flavor.write(host_models.EventLog, target, batch(user_id, session_id, 1), lock_timeout=0.25)
    flavor.write(host_models.EventLog, target, batch(user_id, session_id, 1), lock_timeout=None)
    with host_engine.connect() as conn:
        noted = conn.execute(
            text("SELECT error_code, count(*) FROM event_logs GROUP BY 1 ORDER BY 1")
        ).all()
    assert noted == [("0", 1), ("250ms", 1), ("5s", 2)]  # None: the server's (no limit)


def test_a_read_only_database_is_logged_at_most_every_30_seconds(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from eventlog_persist._delivery import Connector

    connector = Connector(
        "host=/nonexistent-dir dbname=x", api="write_events"
    )  # opens nothing until used
    read_only = psycopg.errors.lookup("25006")("cannot execute INSERT in a read-only transaction")
    now = 1000.0
    with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
        for step in (0.0, 29.9, 0.1, 29.9, 0.1):  # the clock at 1000, 1029.9, 1030, ...
            now += step
            monkeypatch.setattr(time, "monotonic", lambda now=now: now)
            assert connector.failed(read_only)
            monkeypatch.undo()
        assert not connector.failed(psycopg.OperationalError("connection lost"))
    alarms = [r for r in caplog.records if "accepts only reads" in r.getMessage()]
    assert len(alarms) == 3  # at 1000, 1030 and 1060
    assert "cannot execute INSERT in a read-only transaction" in alarms[0].getMessage()


def test_retries_wait_between_attempts(flavor: Flavor, host_models: HostModels) -> None:
    """Against a database that refuses at once, the waits, not the attempts, fill the time."""
    key = uuid.uuid4()
    started = time.monotonic()
    result = flavor.write(
        host_models.EventLog,
        "host=/nonexistent-dir port=1 dbname=x",
        [new_event(session_id=key, user_id=key, event_type="x")],
        retry=RetryPolicy(max_elapsed=0.6, initial_delay=0.2, max_delay=0.2),
    )
    assert time.monotonic() - started >= 0.6  # the deadline, reached by waiting
    assert 2 <= result.retries <= 40  # about 6 waits of 0.1 s on average, not a busy loop


@pytest.mark.parametrize("kind", ["thread", "task"])
def test_a_buffered_writer_waits_between_attempts_too(kind: str, host_models: HostModels) -> None:
    key = uuid.uuid4()
    down = "host=/nonexistent-dir port=1 dbname=x"
    policy = RetryPolicy(max_elapsed=None, initial_delay=0.2, max_delay=0.2)
    if kind == "thread":
        writer = BufferedWriter(host_models.EventLog, down, flush_interval=0.01, retry=policy)
        writer.start()
        writer.enqueue(session_id=key, user_id=key, event_type="x")
        time.sleep(1.0)
        retried = writer.counters.retried
        writer.close(timeout=0.1)
    else:

        async def run() -> int:
            writer = AsyncBufferedWriter(
                host_models.EventLog, down, flush_interval=0.01, retry=policy
            )
            await writer.start()
            await writer.enqueue(session_id=key, user_id=key, event_type="x")
            await asyncio.sleep(1.0)
            retried = writer.counters.retried
            await writer.close(timeout=0.1)
            return retried

        retried = asyncio.run(run())
    assert 2 <= retried <= 60  # about ten waits of 0.1 s on average, not a busy loop


def test_a_refused_row_on_a_connection_that_then_dies_is_retried_not_blamed(
    flavor: Flavor,
    host_engine: Engine,
    host_models: HostModels,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The row's error arrives, then the connection dies before the savepoint is rolled back:
    the batch is retried on a new connection, and only the bad row is reported."""
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.begin() as conn:
        conn.execute(
            text(
                "CREATE SEQUENCE first_refusal; "
                "CREATE FUNCTION refuse_and_die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.tool_name = 'refused' THEN "
                "  IF nextval('first_refusal') = 1 THEN "
                "    PERFORM pg_terminate_backend(pg_backend_pid()); "
                "  END IF; "
                "  RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; "
                "END IF; RETURN NEW; END $$; "
                "CREATE TRIGGER refuse_and_die BEFORE INSERT ON event_logs "
                "FOR EACH ROW EXECUTE FUNCTION refuse_and_die()"
            )
        )
    events = batch(user_id, session_id, 6)
    bad = new_event(
        session_id=session_id, user_id=user_id, event_type="tool_call", tool_name="refused"
    )
    with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
        result = flavor.write(
            host_models.EventLog,
            conninfo(host_engine),
            [*events[:3], bad, *events[3:]],
            retry=FAST_RETRY,
        )
    assert result.retries == 1
    # Retried for the lost connection, without bisecting the batch on the dead one first.
    (retried,) = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert "terminating connection due to administrator command" in retried
    assert result.written == 6
    ((event, error),) = result.dead_lettered
    assert event is bad
    assert error.sqlstate == "23514"
    assert sorted(stored_ids(host_engine)) == sorted(e.id for e in events)


def test_a_batch_is_four_round_trips(
    flavor: Flavor, host_engine: Engine, host_models: HostModels, tmp_path: Any
) -> None:
    """Its opening (``BEGIN``, ``lock_timeout``, the savepoint) in one query, the COPY's
    start and end, and the ``COMMIT``: each round trip costs the writer thread the GIL."""
    user_id, session_id = seed(host_engine, host_models)
    path = tmp_path / "libpq.trace"
    with path.open("w") as trace:

        def traced(conn: Any) -> None:
            conn.pgconn.trace(trace.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

        flavor.after_connect = traced
        result = flavor.write(
            host_models.EventLog, conninfo(host_engine), batch(user_id, session_id, 3)
        )
    assert result.written == 3
    sent = [line.split("\t")[2:] for line in path.read_text().splitlines() if line[:2] == "F\t"]
    assert [message[0] for message in sent] == [
        "Query",
        "Query",
        "CopyData",
        "CopyDone",
        "Query",
        "Terminate",
    ]
    assert sent[0][1] == ' "BEGIN; SET LOCAL lock_timeout = 5000; SAVEPOINT eventlog_part"'
    assert sent[1][1].startswith(' "COPY "event_logs" (id, ')
    assert sent[4][1] == ' "COMMIT"'
