"""Through PgBouncer in transaction pooling mode: consecutive transactions of one client may
run on different server connections, and several clients share one. With a pool of a single
server connection every client's transactions interleave on it, so anything that leans on
session state (a prepared statement, a session setting, a temporary table outliving its
transaction) shows up at once.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, seed
from pgbouncer import pgbouncer
from pgserver import ServerInfo
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    AsyncBufferedWriter,
    AsyncEventLogReader,
    BufferedWriter,
    EventLogReader,
    EventWriter,
    NewEvent,
    awrite_events,
    new_event,
    purge_events,
    write_events,
)

pytestmark = pytest.mark.fault


@pytest.fixture
def bouncer(pg_server: ServerInfo) -> Iterator[ServerInfo]:
    with pgbouncer(pg_server, pool_size=1) as info:
        yield info


def through(bouncer: ServerInfo, database_url: URL, driver: str = "psycopg") -> URL:
    return bouncer.sqlalchemy_url(str(database_url.database), driver)


def libpq(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


# What the docs tell hosts to pass to their own engines behind a transaction pooler.
NO_PREPARED_STATEMENTS: dict[str, Any] = {"prepare_threshold": None}


def events(user_id: Any, session_id: Any, n: int, kind: str) -> list[NewEvent]:
    return [
        new_event(session_id=session_id, user_id=user_id, event_type=kind, payload={"n": i})
        for i in range(n)
    ]


def stored(engine: Engine, model: Any) -> tuple[int, int]:
    with engine.connect() as conn:
        total, distinct = conn.execute(select(func.count(), func.count(model.id.distinct()))).one()
    return total, distinct


def test_the_writers_share_one_pooled_server_connection_without_trouble(
    host_engine: Engine, host_models: HostModels, database_url: URL, bouncer: ServerInfo
) -> None:
    """Bulk (with a resend that takes the staging path), async bulk, and both buffered
    writers, all at once, through a pool of one server connection."""
    user_id, session_id = seed(host_engine, host_models)
    target = libpq(through(bouncer, database_url))
    model = host_models.EventLog
    failures: list[BaseException] = []

    def bulk() -> None:
        try:
            for round_ in range(6):
                batch = events(user_id, session_id, 50, f"bulk{round_}")
                assert write_events(model, target, batch).written == 50
                resent = write_events(model, target, batch)  # ids already stored
                assert (resent.written, resent.duplicates) == (50, 50)
        except BaseException as exc:
            failures.append(exc)

    def buffered() -> None:
        try:
            with BufferedWriter(model, target, batch_size=20, flush_interval=0.01) as writer:
                for event in events(user_id, session_id, 300, "buffered"):
                    writer.enqueue(event)
        except BaseException as exc:
            failures.append(exc)

    async def in_the_loop() -> None:
        async with AsyncBufferedWriter(model, target, batch_size=20, flush_interval=0.01) as writer:
            for round_ in range(6):
                result = await awrite_events(
                    model, target, events(user_id, session_id, 50, f"abulk{round_}")
                )
                assert result.written == 50
                for event in events(user_id, session_id, 50, "abuffered"):
                    await writer.enqueue(event)

    threads = [threading.Thread(target=bulk), threading.Thread(target=buffered)]
    for thread in threads:
        thread.start()
    asyncio.run(in_the_loop())
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert stored(host_engine, model) == (6 * 50 + 300 + 6 * 50 + 6 * 50,) * 2


def test_reads_detached_records_and_purges_through_the_pooler_with_the_documented_settings(
    host_engine: Engine, host_models: HostModels, database_url: URL, bouncer: ServerInfo
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    model = host_models.EventLog
    old = datetime.now(UTC) - timedelta(days=400)
    write_events(model, host_engine, events(user_id, session_id, 30, "x"))
    write_events(
        model,
        host_engine,
        [
            new_event(session_id=session_id, user_id=user_id, event_type="old", created_at=old)
            for _ in range(5)
        ],
    )
    url = through(bouncer, database_url)
    engines = [create_engine(url, connect_args=NO_PREPARED_STATEMENTS) for _ in range(2)]
    try:
        writer = EventWriter(model)
        readers = [EventLogReader(model, engine) for engine in engines]
        since = datetime.now(UTC) - timedelta(days=1000)
        until = datetime.now(UTC) + timedelta(days=1)
        # The same statements many times over from two clients on one server connection:
        # psycopg would prepare them after five runs if it were allowed to.
        for round_ in range(8):
            for engine, reader in zip(engines, readers, strict=True):
                writer.record_detached(
                    engine, session_id=session_id, user_id=user_id, event_type="detached"
                )
                page = reader.session_timeline(session_id, user_id=user_id, limit=10)
                assert len(page.items) == 10
                counts = reader.count_by("event_type", since=since, until=until, user_id=user_id)
                assert {c.key: c.count for c in counts}["detached"] >= round_ + 1
        with Session(engines[0]) as session:
            assert session.scalar(select(func.count()).select_from(model)) == 35 + 16
        result = purge_events(model, engines[1], older_than=old + timedelta(days=1))
        assert result.deleted == 5
    finally:
        for engine in engines:
            engine.dispose()
    assert stored(host_engine, model) == (30 + 16, 30 + 16)


def test_async_reads_through_the_pooler_with_the_documented_settings(
    host_engine: Engine, host_models: HostModels, database_url: URL, bouncer: ServerInfo
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    model = host_models.EventLog
    write_events(model, host_engine, events(user_id, session_id, 12, "x"))

    async def main() -> None:
        engines = [
            create_async_engine(through(bouncer, database_url), connect_args=NO_PREPARED_STATEMENTS)
            for _ in range(2)
        ]
        try:
            readers = [AsyncEventLogReader(model, engine) for engine in engines]
            for _ in range(8):
                pages = await asyncio.gather(
                    *(r.session_timeline(session_id, user_id=user_id) for r in readers)
                )
                assert [len(page.items) for page in pages] == [12, 12]
        finally:
            for engine in engines:
                await engine.dispose()

    asyncio.run(main())


def test_why_hosts_turn_prepared_statements_off_behind_a_transaction_pooler(
    database_url: URL, bouncer: ServerInfo
) -> None:
    """psycopg prepares a statement on its fifth run, on whichever server connection the
    transaction had; another client's statement of the same name then collides with it.
    This is what the docs' ``prepare_threshold=None`` avoids."""
    conninfo = libpq(through(bouncer, database_url))
    first = psycopg.connect(conninfo, autocommit=True)
    second = psycopg.connect(conninfo, autocommit=True)

    def take_turns() -> None:
        for _ in range(6):
            for conn in (first, second):
                conn.execute("SELECT %s::text", (uuid.uuid4().hex,))

    try:
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
            take_turns()
    finally:
        first.close()
        second.close()
