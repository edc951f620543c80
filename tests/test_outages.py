"""Outages every deployment lives through: a failover (the database accepts only reads for a
while), a restart of several seconds, a row lock held too long. Each test ends with exact
accounting: every event stored exactly once, or reported, none silently lost.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, seed
from pgserver import ServerInfo, restart, throwaway_server
from psycopg.conninfo import make_conninfo
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from waiting import wait_for

from eventlog_persist import (
    BufferedWriter,
    EventWriter,
    NewEvent,
    RetryPolicy,
    awrite_events,
    new_event,
    write_events,
)
from eventlog_persist.exceptions import EventWriteError, RetriesExhaustedError

pytestmark = pytest.mark.fault


def stored(engine: Engine) -> tuple[int, int]:
    """Rows and distinct ids in event_logs."""
    engine.dispose()  # its pooled connections may have been terminated by the test
    with engine.connect() as conn:
        total, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT id) FROM event_logs")
        ).one()
    return total, distinct


def conninfo(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ReadOnlySpell:
    """Makes a database accept only reads, as a failover or a demoted primary does."""

    def __init__(self, url: URL) -> None:
        self.database = url.database
        # Opened before the spell: a session keeps the default it started with.
        self.admin = psycopg.connect(conninfo(url), autocommit=True)

    def begin(self) -> None:
        self.admin.execute(
            f'ALTER DATABASE "{self.database}" SET default_transaction_read_only = on'
        )
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )

    def end(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.database}" RESET default_transaction_read_only')

    def end_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.end)
        timer.start()
        return timer

    def close(self) -> None:
        self.end()
        self.admin.close()


@pytest.fixture
def spell(database_url: URL) -> Iterator[ReadOnlySpell]:
    spell = ReadOnlySpell(database_url)
    try:
        yield spell
    finally:
        spell.close()


# --- failover: the database accepts only reads for a while ---------------------------------


def test_a_buffered_writer_keeps_its_events_while_the_database_is_read_only(
    host_engine: Engine,
    host_models: HostModels,
    database_url: URL,
    spell: ReadOnlySpell,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    dead: list[tuple[NewEvent, EventWriteError]] = []
    writer = BufferedWriter(
        host_models.EventLog,
        conninfo(database_url),
        flush_interval=0.01,
        retry=RetryPolicy(max_elapsed=None, initial_delay=0.01, max_delay=0.1),
        on_dead_letter=lambda event, error: dead.append((event, error)),
    ).start()
    try:
        for i in range(200):
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="a", payload={"i": i})
        assert writer.flush(timeout=10)
        with caplog.at_level(logging.ERROR, logger="eventlog_persist"):
            spell.begin()
            for _ in range(300):
                writer.enqueue(session_id=session_id, user_id=user_id, event_type="b")
            wait_for(lambda: writer.counters.read_only_retries >= 3)
            during = writer.counters
            spell.end()
            assert writer.flush(timeout=15)
    finally:
        final = writer.close(timeout=15)
    assert dead == []
    assert during.written == 200  # nothing was dead-lettered or lost meanwhile
    assert (final.written, final.dead_lettered, final.dropped, final.unwritten) == (500, 0, 0, 0)
    assert final.read_only_retries >= 3
    assert stored(host_engine) == (500, 500)
    alarms = [r for r in caplog.records if "accepts only reads" in r.getMessage()]
    assert len(alarms) == 1  # said loudly, but once per 30 s, not once per retry
    assert alarms[0].levelno == logging.ERROR
    assert "target_session_attrs=read-write" in alarms[0].getMessage()


def test_a_bulk_write_rides_out_a_read_only_spell_with_the_defaults(
    host_engine: Engine, host_models: HostModels, database_url: URL, spell: ReadOnlySpell
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = [
        new_event(session_id=session_id, user_id=user_id, event_type="x", payload={"i": i})
        for i in range(1000)
    ]
    spell.begin()
    timer = spell.end_after(1.5)
    result = write_events(host_models.EventLog, conninfo(database_url), events, batch_size=250)
    timer.join()
    assert result.dead_lettered == []
    assert result.written == 1000
    assert result.retries >= result.read_only_retries >= 1
    assert stored(host_engine) == (1000, 1000)


def test_an_async_bulk_write_rides_out_a_read_only_spell_with_the_defaults(
    host_engine: Engine, host_models: HostModels, database_url: URL, spell: ReadOnlySpell
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = [
        new_event(session_id=session_id, user_id=user_id, event_type="x", payload={"i": i})
        for i in range(300)
    ]
    spell.begin()
    timer = spell.end_after(1.5)
    result = asyncio.run(
        awrite_events(host_models.EventLog, conninfo(database_url), events, batch_size=100)
    )
    timer.join()
    assert (result.written, result.dead_lettered) == (300, [])
    assert result.retries >= result.read_only_retries >= 1
    assert stored(host_engine) == (300, 300)


def test_a_read_only_spell_longer_than_the_deadline_names_the_cause(
    host_engine: Engine, host_models: HostModels, database_url: URL, spell: ReadOnlySpell
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    spell.begin()
    result = write_events(
        host_models.EventLog,
        conninfo(database_url),
        [new_event(session_id=session_id, user_id=user_id, event_type="x")],
        retry=RetryPolicy(max_elapsed=0.3, initial_delay=0.01, max_delay=0.05),
    )
    ((_event, error),) = result.dead_lettered
    assert isinstance(error, RetriesExhaustedError)
    assert error.sqlstate == "25006"
    message = str(error)
    assert "accepts only reads" in message
    assert "target_session_attrs=read-write" in message
    assert "migrated" not in message  # not blamed on the setup


def test_detached_writes_take_a_new_connection_after_a_read_only_refusal(
    host_engine: Engine, host_models: HostModels, database_url: URL, spell: ReadOnlySpell
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    spell.begin()
    # Pools of one connection each, opened during the spell: reusing that connection after
    # the spell would keep failing, as a connection to a demoted primary does.
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    aengine = create_async_engine(database_url, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW transaction_read_only")).scalar() == "on"
        timer = spell.end_after(1.0)
        sync_event = writer.record_detached(
            engine, session_id=session_id, user_id=user_id, event_type="sync"
        )
        timer.join()
        spell.begin()
        timer = spell.end_after(1.0)
        async_event = asyncio.run(
            writer.arecord_detached(
                aengine, session_id=session_id, user_id=user_id, event_type="async"
            )
        )
        timer.join()
    finally:
        engine.dispose()
        asyncio.run(aengine.dispose())
    host_engine.dispose()
    with host_engine.connect() as conn:
        ids = set(conn.execute(text("SELECT id FROM event_logs")).scalars())
    assert ids == {sync_event.id, async_event.id}


def test_a_multi_host_conninfo_follows_a_failover(host_models: HostModels) -> None:
    """The failover recipe: every host listed, target_session_attrs=read-write."""
    with throwaway_server() as one, throwaway_server() as other:
        multi_host(one[1], other[1], host_models)


def multi_host(first: ServerInfo, second: ServerInfo, host_models: HostModels) -> None:
    engines = [create_engine(info.sqlalchemy_url("postgres")) for info in (first, second)]
    spells = [ReadOnlySpell(info.sqlalchemy_url("postgres")) for info in (first, second)]
    try:
        user_id, session_id = host_models.new_key(), host_models.new_key()
        for engine in engines:  # the same rows on both, as replication would have them
            host_models.Base.metadata.create_all(engine)
            with Session(engine) as session:
                session.add(host_models.User(id=user_id))
                session.flush()
                session.add(host_models.ChatSession(id=session_id, user_id=user_id))
                session.commit()
        target = (
            f"host={first.host},{second.host} port={first.port},{second.port} "
            "dbname=postgres user=postgres target_session_attrs=read-write"
        )
        spells[0].begin()  # the first host listed is the standby
        writer = BufferedWriter(
            host_models.EventLog,
            target,
            flush_interval=0.01,
            retry=RetryPolicy(max_elapsed=None, initial_delay=0.01, max_delay=0.1),
        ).start()
        try:
            for _ in range(100):
                writer.enqueue(session_id=session_id, user_id=user_id, event_type="before")
            assert writer.flush(timeout=10)
            spells[1].begin()  # the failover: the primary is demoted, the standby promoted
            spells[0].end()
            for _ in range(100):
                writer.enqueue(session_id=session_id, user_id=user_id, event_type="after")
            assert writer.flush(timeout=15)
        finally:
            counters = writer.close(timeout=15)
        assert (counters.written, counters.dead_lettered) == (200, 0)
        assert [stored(engine) for engine in engines] == [(100, 100), (100, 100)]
    finally:
        for spell in spells:
            spell.admin.close()
        for engine in engines:
            engine.dispose()


# --- a restart of several seconds ------------------------------------------------------------


def down_for(server: Any, seconds: float, after: float) -> None:
    """Stop the server ``after`` seconds from now, and start it again ``seconds`` later."""
    time.sleep(after)
    restart(server, lambda: time.sleep(seconds))


@pytest.mark.timeout(180)
def test_a_five_second_restart_loses_nothing_with_the_defaults(
    restartable: tuple[Any, ServerInfo], host_models: HostModels
) -> None:
    server, info = restartable
    engine = create_engine(info.sqlalchemy_url("postgres"))
    dsn = info.libpq_dsn("postgres")
    host_models.Base.metadata.create_all(engine)
    user_id, session_id = seed(engine, host_models)
    engine.dispose()
    dead: list[tuple[NewEvent, EventWriteError]] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    sent = {"bulk": 0, "detached": 0, "buffered": 0}

    def bulk_events() -> Iterator[NewEvent]:
        while not stop.is_set():
            for _ in range(10):
                sent["bulk"] += 1
                yield new_event(session_id=session_id, user_id=user_id, event_type="bulk")
            time.sleep(0.02)

    def bulk() -> None:
        try:
            result = write_events(host_models.EventLog, dsn, bulk_events(), batch_size=50)
            dead.extend(result.dead_lettered)
        except BaseException as exc:
            failures.append(exc)

    writer = EventWriter(host_models.EventLog)
    detached_engine = create_engine(info.sqlalchemy_url("postgres"))

    def detached() -> None:
        try:
            while not stop.is_set():
                writer.record_detached(
                    detached_engine, session_id=session_id, user_id=user_id, event_type="one"
                )
                sent["detached"] += 1
                time.sleep(0.05)
        except BaseException as exc:
            failures.append(exc)

    buffered = BufferedWriter(
        host_models.EventLog,
        dsn,
        flush_interval=0.05,
        on_dead_letter=lambda event, error: dead.append((event, error)),
    ).start()
    threads = [threading.Thread(target=bulk), threading.Thread(target=detached)]
    for thread in threads:
        thread.start()
    outage = threading.Thread(target=down_for, args=(server, 5.0, 1.0))
    try:
        outage.start()
        started = time.monotonic()
        while time.monotonic() - started < 9:
            buffered.enqueue(session_id=session_id, user_id=user_id, event_type="queued")
            sent["buffered"] += 1
            time.sleep(0.005)
        outage.join()
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        counters = buffered.close(timeout=60)
    finally:
        stop.set()
        detached_engine.dispose()
    assert failures == []
    assert dead == []
    assert counters.retried >= 1
    assert (counters.dead_lettered, counters.dropped, counters.unwritten) == (0, 0, 0)
    engine = create_engine(info.sqlalchemy_url("postgres"))
    try:
        with engine.connect() as conn:
            by_kind = dict(
                conn.execute(
                    text("SELECT event_type, count(DISTINCT id) FROM event_logs GROUP BY 1")
                ).all()
            )
        total = stored(engine)
    finally:
        engine.dispose()
    assert by_kind == {"bulk": sent["bulk"], "one": sent["detached"], "queued": sent["buffered"]}
    assert total[0] == total[1] == sum(sent.values())


# --- a row lock held too long ------------------------------------------------------------------


def hold_session_lock(url: URL, session_id: Any) -> psycopg.Connection[Any]:
    """Lock the chat session row as a long transaction of the host would."""
    holder = psycopg.connect(conninfo(url))
    holder.execute("SELECT 1 FROM chat_sessions WHERE id = %s FOR UPDATE", (session_id,))
    return holder


def test_a_bulk_write_does_not_wait_forever_behind_a_row_lock(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    holder = hold_session_lock(database_url, session_id)
    try:
        started = time.monotonic()
        result = write_events(
            host_models.EventLog,
            conninfo(database_url),
            [new_event(session_id=session_id, user_id=user_id, event_type="x") for _ in range(3)],
            lock_timeout=0.1,
            retry=RetryPolicy(max_elapsed=2, initial_delay=0.01, max_delay=0.05),
        )
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert elapsed < 5
    assert result.written == 0
    assert result.retries >= 1
    assert len(result.dead_lettered) == 3
    error = result.dead_lettered[0][1]
    assert isinstance(error, RetriesExhaustedError)
    assert error.sqlstate == "55P03"
    assert "longer than lock_timeout (0.1 s)" in str(error)
    assert "pg_locks" in str(error)
    assert stored(host_engine) == (0, 0)


def test_a_lock_released_within_the_deadline_costs_retries_not_events(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    holder = hold_session_lock(database_url, session_id)
    release = threading.Timer(1.0, holder.close)
    release.start()
    try:
        result = write_events(
            host_models.EventLog,
            conninfo(database_url),
            [new_event(session_id=session_id, user_id=user_id, event_type="x") for _ in range(3)],
            lock_timeout=0.2,
        )
    finally:
        release.join()
    assert (result.written, result.dead_lettered) == (3, [])
    assert result.retries >= 1
    assert stored(host_engine) == (3, 3)


def test_a_bad_lock_timeout_is_refused(host_models: HostModels) -> None:
    from eventlog_persist.exceptions import ConfigurationError

    key = uuid.uuid4()
    event = new_event(session_id=key, user_id=key, event_type="x")
    with pytest.raises(ConfigurationError, match="lock_timeout=0 is not valid"):
        write_events(
            host_models.EventLog, "host=/nonexistent-dir dbname=x", [event], lock_timeout=0
        )
    with pytest.raises(ConfigurationError, match="lock_timeout=-1 is not valid"):
        BufferedWriter(host_models.EventLog, "host=/nonexistent-dir dbname=x", lock_timeout=-1)


# --- a statement timeout that can cancel any statement -----------------------------------------


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_statement_timeouts_on_any_statement_cost_no_event_and_no_warning(
    host_engine: Engine,
    host_models: HostModels,
    database_url: URL,
    flavor: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A timeout of a few milliseconds cancels whichever statement runs long on a busy server,
    the savepoint commands of the bisection included; each attempt then ends cleanly (no
    "error ignored in rollback" warning from psycopg) and every event is accounted for."""
    user_id, session_id = seed(host_engine, host_models)
    stranger = uuid.uuid4()  # a session that does not exist: one refused row per batch
    batches = []
    for _ in range(6):
        batch = [
            new_event(session_id=session_id, user_id=user_id, event_type="x", payload={"n": n})
            for n in range(1500)
        ]
        batch.insert(700, new_event(session_id=stranger, user_id=user_id, event_type="x"))
        batches.append(batch)
    target = make_conninfo(conninfo(database_url), options="-c statement_timeout=4")
    policy = RetryPolicy(max_elapsed=2, initial_delay=0.001, max_delay=0.01)
    written, dead = 0, []
    with caplog.at_level(logging.WARNING, logger="psycopg"):
        for batch in batches:
            if flavor == "sync":
                result = write_events(host_models.EventLog, target, batch, retry=policy)
            else:
                result = asyncio.run(
                    awrite_events(host_models.EventLog, target, batch, retry=policy)
                )
            written += result.written
            dead += [event.id for event, _ in result.dead_lettered]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("psycopg")] == []
    assert written + len(dead) == 6 * 1501
    assert len(dead) == len(set(dead))
    assert stored(host_engine) == (written, written)
