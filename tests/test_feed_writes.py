"""Every write path fills ``event_logs.xid`` with its transaction's id, through the default."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, create_partitions, seed
from sqlalchemy import Engine, event, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    EventWriter,
    NewEvent,
    awrite_events,
    new_event,
    write_events,
)
from eventlog_persist._delivery import _copy_sql, _move_sql
from eventlog_persist._table import COLUMNS, EventTable


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


def stored_xids(engine: Engine) -> dict[uuid.UUID, int | None]:
    with engine.connect() as connection:
        return {
            event_id: None if xid is None else int(xid)
            for event_id, xid in connection.execute(
                text("SELECT id, xid::text FROM event_logs")
            ).all()
        }


def events(user_id: Any, session_id: Any, n: int) -> list[NewEvent]:
    return [
        new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
        for i in range(n)
    ]


def test_the_writers_never_name_the_column() -> None:
    """The COPY and INSERT column lists leave ``xid`` to its default."""
    table = EventTable.of(build_host_models(feed=True).EventLog)
    assert "xid" not in COLUMNS
    for sql in (_copy_sql(table, staged=False), _copy_sql(table, staged=True), _move_sql(table)):
        assert "xid" not in sql.replace('"', " ").split("(")[1].split(")")[0].split(", ")


def test_record_stores_the_callers_transaction_id(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    inserts: list[str] = []

    def seen(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT"):
            inserts.append(statement)

    event.listen(host_engine, "before_cursor_execute", seen)
    with Session(host_engine) as session:
        first = writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
        second = writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
        session.flush()
        own = int(session.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())
        session.commit()
        assert first.xid == second.xid == own  # loaded on access, read back as an int
    event.remove(host_engine, "before_cursor_execute", seen)
    # The INSERT does not read the default back (RETURNING on every write cost ~20 %).
    assert inserts
    assert not [statement for statement in inserts if "RETURNING" in statement]
    assert stored_xids(host_engine) == {first.id: own, second.id: own}
    with Session(host_engine) as session:
        found = session.scalars(
            select(host_models.EventLog.id).where(host_models.EventLog.xid == own)
        ).all()
        assert sorted(found) == sorted([first.id, second.id])


def test_record_in_an_async_session(database_url: URL, host_engine: Engine) -> None:
    models = build_host_models(feed=True)
    user_id, session_id = seed(host_engine, models)
    writer = EventWriter(models.EventLog)

    async def main() -> int:
        engine = create_async_engine(database_url)
        try:
            async with AsyncSession(engine) as session:
                writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
                await session.flush()
                own = await session.scalar(text("SELECT pg_current_xact_id()::text"))
                await session.commit()
                return int(str(own))
        finally:
            await engine.dispose()

    own = asyncio.run(main())
    assert set(stored_xids(host_engine).values()) == {own}


def test_detached_writes_each_store_their_own_transaction_id(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(host_models.EventLog)
    one = writer.record_detached(
        host_engine, session_id=session_id, user_id=user_id, event_type="a"
    )
    two = writer.record_detached(
        host_engine, session_id=session_id, user_id=user_id, event_type="b"
    )

    async def detached() -> NewEvent:
        engine = create_async_engine(database_url)
        try:
            return await writer.arecord_detached(
                engine, session_id=session_id, user_id=user_id, event_type="c"
            )
        finally:
            await engine.dispose()

    three = asyncio.run(detached())
    found = stored_xids(host_engine)
    assert None not in found.values()
    assert len({found[one.id], found[two.id], found[three.id]}) == 3
    assert found[one.id] < found[two.id] < found[three.id]  # xid8 never wraps


def test_bulk_copy_stores_one_transaction_id_per_batch(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 250)
    result = write_events(host_models.EventLog, host_engine, batch, batch_size=100)
    assert result.written == 250
    found = stored_xids(host_engine)
    assert None not in found.values()
    assert len(set(found.values())) == 3  # 100 + 100 + 50, each batch a transaction

    async def copy_async() -> None:
        engine = create_async_engine(database_url)
        try:
            await awrite_events(host_models.EventLog, engine, events(user_id, session_id, 10))
        finally:
            await engine.dispose()

    asyncio.run(copy_async())
    found = stored_xids(host_engine)
    assert len(found) == 260
    assert None not in found.values()
    assert len(set(found.values())) == 4


def test_a_retried_batch_through_the_staging_table_stores_its_transaction_id(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    batch = events(user_id, session_id, 20)
    write_events(host_models.EventLog, host_engine, batch[:10])
    # The stored ten make the first COPY fail; the retry goes through the staging table.
    again = write_events(host_models.EventLog, host_engine, batch)
    assert (again.written, again.duplicates) == (20, 10)  # written counts the duplicates
    found = stored_xids(host_engine)
    assert None not in found.values()
    first, second = {found[event.id] for event in batch[:10]}, {found[e.id] for e in batch[10:]}
    assert len(first) == len(second) == 1
    assert first != second


def test_buffered_writers_store_their_batch_transaction_ids(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(host_models.EventLog, host_engine, batch_size=50) as writer:
        for event in events(user_id, session_id, 120):
            writer.enqueue(event)
        assert writer.flush(timeout=10)

    async def buffered_async() -> None:
        engine = create_async_engine(database_url)
        try:
            async with AsyncBufferedWriter(host_models.EventLog, engine) as writer:
                for event in events(user_id, session_id, 30):
                    await writer.enqueue(event)
                assert await writer.flush(timeout=10)
        finally:
            await engine.dispose()

    asyncio.run(buffered_async())
    found = stored_xids(host_engine)
    assert len(found) == 150
    assert None not in found.values()


def test_a_model_that_did_not_opt_in_still_fills_the_column(
    host_engine: Engine, host_models: HostModels
) -> None:
    """After the migration, code that still has the plain model writes transaction ids too."""
    plain = build_host_models()
    assert plain.EventLog.xid is None
    user_id, session_id = seed(host_engine, host_models)
    writer = EventWriter(plain.EventLog)
    with Session(host_engine) as session:
        writer.record(session, session_id=session_id, user_id=user_id, event_type="chat")
        session.commit()
    write_events(plain.EventLog, host_engine, events(user_id, session_id, 5))
    assert None not in stored_xids(host_engine).values()


def test_partitioned_feed_model_created_by_create_all(engine: Engine) -> None:
    models = build_host_models(partitioned=True, feed=True)
    models.Base.metadata.create_all(engine)
    create_partitions(engine)
    user_id, session_id = seed(engine, models)
    write_events(models.EventLog, engine, events(user_id, session_id, 30))
    found = stored_xids(engine)
    assert len(found) == 30
    assert len(set(found.values())) == 1
    with engine.connect() as connection:
        valid = connection.execute(
            text(
                "SELECT count(*) FILTER (WHERE i.indisvalid), count(*) FROM pg_index i "
                "WHERE pg_get_indexdef(i.indexrelid) LIKE '%(xid, id)'"
            )
        ).one()
    assert valid[0] == valid[1] > 1
