"""Feed wake-ups: writers notify once per batch, consumers wait on LISTEN with a poll fallback."""

from __future__ import annotations

import asyncio
import threading
import time
from functools import partial
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from eventlog_persist import (
    AsyncBufferedWriter,
    AsyncEventFeed,
    BufferedWriter,
    EventFeed,
    EventWriter,
    new_event,
    write_events,
)
from eventlog_persist.exceptions import ConfigurationError

# Long enough that a wait which should wake at once but does not fails the test plainly.
NEVER = 30.0


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


def events(keys: tuple[Any, Any], n: int) -> list[Any]:
    user_id, session_id = keys
    return [
        new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
        for i in range(n)
    ]


def listening(feed: EventFeed[Any]) -> None:
    """Start the feed's listener: its first wait returns once it listens."""
    assert feed.wait(timeout=NEVER) is True


def listeners(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = "
                    "'eventlog-persist feed listener' AND datname = current_database()"
                )
            ).scalars()
        )


def test_a_bulk_write_wakes_a_waiting_consumer(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    with EventFeed(host_models.EventLog, host_engine, consumer="c") as feed:
        feed.register(start="earliest")
        listening(feed)
        assert feed.fetch().events == ()
        timer = threading.Timer(
            0.2, write_events, (host_models.EventLog, host_engine, events(keys, 3))
        )
        timer.start()
        started = time.monotonic()
        assert feed.wait(timeout=NEVER) is True
        assert time.monotonic() - started < NEVER / 2
        timer.join()
        assert len(feed.fetch().events) == 3


def test_a_notification_between_fetch_and_wait_is_not_slept_through(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    with EventFeed(host_models.EventLog, host_engine, consumer="c") as feed:
        feed.register(start="latest")
        listening(feed)
        feed.fetch()
        write_events(host_models.EventLog, host_engine, events(keys, 2))
        time.sleep(0.5)  # the listener has the notification before the wait starts
        assert feed.wait(timeout=NEVER) is True
        assert len(feed.fetch().events) == 2


def test_wait_times_out_when_nothing_is_written(
    host_engine: Engine, host_models: HostModels
) -> None:
    with EventFeed(host_models.EventLog, host_engine, consumer="c") as feed:
        feed.register()
        listening(feed)
        feed.fetch()
        assert feed.wait(timeout=0.3) is False


def test_records_in_the_host_transaction_do_not_notify(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    with EventFeed(host_models.EventLog, host_engine, consumer="c") as feed:
        feed.register(start="latest")
        listening(feed)
        feed.fetch()
        with Session(host_engine) as session:
            EventWriter(host_models.EventLog).record(
                session, session_id=session_id, user_id=user_id, event_type="chat"
            )
            session.commit()
        # Only the poll sees it: the wait runs out, the next fetch has it.
        assert feed.wait(timeout=0.5) is False
        assert len(feed.fetch().events) == 1


def test_notifications_of_another_table_do_not_wake(
    host_engine: Engine, host_models: HostModels
) -> None:
    with EventFeed(host_models.EventLog, host_engine, consumer="c") as feed:
        feed.register()
        listening(feed)
        feed.fetch()
        with host_engine.begin() as connection:
            connection.execute(text("SELECT pg_notify('eventlog_persist_feed', 'other.t')"))
        assert feed.wait(timeout=0.5) is False


def test_without_listen_wait_only_sleeps(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    with EventFeed(host_models.EventLog, host_engine, consumer="c", listen=False) as feed:
        feed.register(start="latest")
        assert feed.wait(timeout=0.2) is False
        feed.fetch()
        write_events(host_models.EventLog, host_engine, events(keys, 1))
        assert feed.wait(timeout=0.3) is False
        assert listeners(host_engine) == []
        assert len(feed.fetch().events) == 1


def test_a_buffered_writer_notifies_once_per_batch(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], database_url: URL
) -> None:
    user_id, session_id = keys
    dsn = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN eventlog_persist_feed")
        with BufferedWriter(host_models.EventLog, host_engine, batch_size=20) as writer:
            for i in range(50):
                writer.enqueue(
                    session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i}
                )
        got = [n.payload for n in listener.notifies(timeout=1.0)]
    # One per committed batch (three of 20, 20, 10, or fewer if flushed together), never
    # one per event; the payload names the table.
    assert 1 <= len(got) <= 3
    assert set(got) == {'"event_logs"'}


def test_writers_of_a_table_without_the_feed_do_not_notify(
    engine: Engine, database_url: URL
) -> None:
    models = build_host_models()
    models.Base.metadata.create_all(engine)
    keys = seed(engine, models)
    dsn = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN eventlog_persist_feed")
        write_events(models.EventLog, engine, events(keys, 5))
        assert list(listener.notifies(timeout=0.5)) == []


def test_a_lost_listener_connection_wakes_the_waiter_and_comes_back(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    with EventFeed(host_models.EventLog, host_engine, consumer="c") as feed:
        feed.register(start="latest")
        listening(feed)
        feed.fetch()
        [pid] = listeners(host_engine)
        with host_engine.begin() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        # Notifications may have been missed: the waiter is woken to read.
        assert feed.wait(timeout=NEVER) is True
        deadline = time.monotonic() + 10
        while listeners(host_engine) in ([], [pid]) and time.monotonic() < deadline:
            time.sleep(0.05)
        feed.fetch()
        feed.wait(timeout=0.05)  # the wake-up of the reconnection, if not consumed yet
        feed.fetch()
        write_events(host_models.EventLog, host_engine, events(keys, 1))
        assert feed.wait(timeout=NEVER) is True
        assert len(feed.fetch().events) == 1


@pytest.mark.parametrize("flavor", ["sync", "async"])
def test_the_listener_outlives_an_idle_session_timeout(
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    caplog: pytest.LogCaptureFixture,
    flavor: str,
) -> None:
    """It is idle by design: a database's idle_session_timeout must not end it every period."""
    with host_engine.begin() as connection:
        connection.execute(
            text(f'ALTER DATABASE "{database_url.database}" SET idle_session_timeout = 300')
        )

    probe = create_engine(database_url, poolclass=NullPool)  # no pooled session idles out

    def alive_for(seconds: float, pid: list[int]) -> None:
        time.sleep(seconds)  # several timeouts
        assert listeners(probe) == pid

    if flavor == "sync":
        engine = create_engine(database_url)  # its sessions start after the ALTER
        try:
            with EventFeed(host_models.EventLog, engine, consumer="c") as feed:
                feed.register(start="latest")
                listening(feed)
                pid = listeners(probe)
                alive_for(1.5, pid)
                write_events(host_models.EventLog, host_engine, events(keys, 1))
                assert feed.wait(timeout=NEVER) is True
        finally:
            engine.dispose()
    else:

        async def run() -> list[int]:
            engine = create_async_engine(database_url)
            try:
                async with AsyncEventFeed(host_models.EventLog, engine, consumer="c") as feed:
                    await feed.register(start="latest")
                    assert await feed.wait(timeout=NEVER) is True
                    pid = listeners(probe)
                    await asyncio.sleep(1.5)
                    assert listeners(probe) == pid
                    write_events(host_models.EventLog, host_engine, events(keys, 1))
                    assert await feed.wait(timeout=NEVER) is True
                    return pid
            finally:
                await engine.dispose()

        pid = asyncio.run(run())
    assert len(pid) == 1
    assert not [r for r in caplog.records if "LISTEN connection failed" in r.getMessage()]


def test_the_listeners_tcp_socket_sends_keepalives_after_a_minute_of_silence() -> None:
    """Unless the host's connection string set keepalives of its own."""
    import socket

    from eventlog_persist import _feed_wakeup

    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as client,
    ):
        _feed_wakeup._keep_alive(client.fileno(), {"keepalives_idle": "5"})  # the host's
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        _feed_wakeup._keep_alive(client.fileno(), {"host": "db"})
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 10
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    with socket.socket(socket.AF_UNIX) as unix:
        _feed_wakeup._keep_alive(unix.fileno(), {})  # nothing to set on a Unix socket
        assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


def test_close_stops_listening(host_engine: Engine, host_models: HostModels) -> None:
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c")
    feed.register()
    listening(feed)
    assert len(listeners(host_engine)) == 1
    feed.close()
    deadline = time.monotonic() + 10
    while listeners(host_engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listeners(host_engine) == []


def test_close_does_not_wait_for_a_listener_still_connecting(
    host_models: HostModels, silent_server: str
) -> None:
    """A server that accepts and never answers keeps the listener's connect waiting (no
    connect timeout): close() returns anyway, and the thread ends once the attempt does."""
    port = psycopg.conninfo.conninfo_to_dict(silent_server)["port"]
    engine = create_engine(f"postgresql+psycopg://x@127.0.0.1:{port}/x")
    try:
        feed = EventFeed(host_models.EventLog, engine, consumer="c")
        assert feed.wait(timeout=0.3) is False  # its listener is connecting
        started = time.monotonic()
        feed.close()
        assert time.monotonic() - started < 5
    finally:
        engine.dispose()


@pytest.mark.parametrize("listen", [True, False])
def test_an_async_feed_waits_again_under_another_event_loop(
    host_engine: Engine, host_models: HostModels, database_url: URL, listen: bool
) -> None:
    """A worker that runs each round in its own ``asyncio.run`` keeps one feed (its engine
    pools no connection across loops)."""
    url = database_url.set(drivername="postgresql+psycopg")
    engine = create_async_engine(url, poolclass=NullPool)
    feed = AsyncEventFeed(host_models.EventLog, engine, consumer="c", listen=listen)

    async def round_() -> bool:
        await feed.register(start="latest")
        assert (await feed.fetch()).events == ()
        return await feed.wait(timeout=NEVER if listen else 0.1)

    for _ in range(3):
        assert asyncio.run(round_()) is listen
    asyncio.run(feed.close())
    asyncio.run(engine.dispose())


@pytest.mark.parametrize("timeout", [0, -1, 3601, float("nan"), True, "1"])
def test_a_bad_timeout_is_refused(
    host_engine: Engine, host_models: HostModels, timeout: Any
) -> None:
    with (
        EventFeed(host_models.EventLog, host_engine, consumer="c", listen=False) as feed,
        pytest.raises(ConfigurationError, match="timeout must be a number of seconds"),
    ):
        feed.wait(timeout=timeout)


def test_async_consumer_is_woken_by_an_async_buffered_writer(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], database_url: URL
) -> None:
    user_id, session_id = keys

    async def main() -> int:
        engine = create_async_engine(database_url.set(drivername="postgresql+psycopg"))
        try:
            async with AsyncEventFeed(host_models.EventLog, engine, consumer="c") as feed:
                await feed.register(start="latest")
                assert await feed.wait(timeout=NEVER) is True
                assert (await feed.fetch()).events == ()

                async def produce() -> None:
                    await asyncio.sleep(0.2)
                    async with AsyncBufferedWriter(host_models.EventLog, engine) as writer:
                        for i in range(4):
                            await writer.enqueue(
                                session_id=session_id,
                                user_id=user_id,
                                event_type="chat",
                                payload={"i": i},
                            )

                producer = asyncio.create_task(produce())
                assert await feed.wait(timeout=NEVER) is True
                await producer
                got = 0
                while got < 4:
                    batch = await feed.fetch()
                    got += len(batch.events)
                    await feed.commit(batch)
                    if got < 4:
                        await feed.wait(timeout=NEVER)
                assert await feed.wait(timeout=0.3) is False
                return got
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == 4


def test_an_asyncpg_engine_listens_with_psycopg(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], database_url: URL
) -> None:
    async def main() -> bool:
        engine = create_async_engine(database_url.set(drivername="postgresql+asyncpg"))
        try:
            async with AsyncEventFeed(host_models.EventLog, engine, consumer="c") as feed:
                await feed.register(start="latest")
                await feed.wait(timeout=NEVER)
                await feed.fetch()
                await asyncio.to_thread(
                    write_events, host_models.EventLog, host_engine, events(keys, 1)
                )
                return await feed.wait(timeout=NEVER)
        finally:
            await engine.dispose()

    assert asyncio.run(main()) is True


def test_an_engine_made_by_a_creator_listens_on_its_own_database(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], database_url: URL
) -> None:
    """The listener's connection comes from the engine's pool, made as the engine makes
    its connections: a URL without a database (``creator=``) still listens in the right one."""
    dsn = database_url.set(drivername="postgresql").render_as_string(hide_password=False)
    made = create_engine("postgresql+psycopg://", creator=partial(psycopg.connect, dsn))
    try:
        with EventFeed(host_models.EventLog, made, consumer="c") as feed:
            feed.register(start="latest")
            listening(feed)
            feed.fetch()
            write_events(host_models.EventLog, host_engine, events(keys, 2))
            assert feed.wait(timeout=NEVER) is True
            assert len(feed.fetch().events) == 2
    finally:
        made.dispose()
