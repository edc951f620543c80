"""The asyncio half of the public API as a host writes it; type-checked by mypy --strict in CI,
never run. See ``api.py`` for the conventions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import assert_type

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase

from eventlog_persist import (
    AsyncBufferedWriter,
    AsyncEventFeed,
    AsyncEventLogReader,
    BulkResult,
    EventFilter,
    EventLogMixin,
    EventType,
    EventWriter,
    FeedBatch,
    GroupCount,
    NewEvent,
    Page,
    TokenUsage,
    WriterCounters,
    WriterStats,
    awrite_events,
    new_event,
)
from eventlog_persist.metrics import register_prometheus


class Base(DeclarativeBase):
    pass


class EventLog(EventLogMixin[uuid.UUID], Base):
    __eventlog_feed__ = True


async def consume(engine: AsyncEngine) -> int:
    feed = AsyncEventFeed(EventLog, engine, consumer="warehouse", owner="worker-1")
    assert_type(feed, AsyncEventFeed[uuid.UUID])
    assert_type(await feed.register(start="latest"), bool)
    batch = await feed.fetch()
    assert_type(batch, FeedBatch[uuid.UUID])
    await feed.commit(batch)
    async with engine.begin() as connection:
        await feed.commit(batch, connection=connection)
    parted = AsyncEventFeed(EventLog, engine, consumer="warehouse", parts=2, part=1)
    assert_type(parted.parts, int)
    await feed.release()
    assert_type(await feed.unregister(), bool)
    return len(batch.events)


async def record(engine: AsyncEngine, user_id: uuid.UUID, chat: uuid.UUID) -> None:
    writer = EventWriter(EventLog)
    async with AsyncSession(engine) as session:
        row = writer.record(session, session_id=chat, user_id=user_id, event_type="tool_call")
        assert_type(row, EventLog)
        await session.commit()

    detached = await writer.arecord_detached(
        engine, session_id=chat, user_id=user_id, event_type=EventType.ERROR, error_code="x"
    )
    assert_type(detached, NewEvent)
    assert_type(await writer.arecord_detached(engine, detached), NewEvent)
    await writer.arecord_detached(engine, session_id=1, user_id=user_id, event_type="x")  # type: ignore[call-overload]


async def buffered(engine: AsyncEngine, user_id: uuid.UUID, chat: uuid.UUID) -> int:
    async with AsyncBufferedWriter(EventLog, engine, flush_interval=0.1) as events:
        assert_type(events, AsyncBufferedWriter[uuid.UUID])
        queued = await events.enqueue(session_id=chat, user_id=user_id, event_type="tool_call")
        assert_type(queued, NewEvent)
        assert_type(await events.enqueue(queued), NewEvent)
        assert_type(await events.flush(), bool)
    counters = events.counters
    assert_type(counters, WriterCounters)
    assert_type(events.stats, WriterStats)
    register_prometheus({"events": events}).close()

    by_conninfo = await AsyncBufferedWriter(EventLog, "postgresql://localhost/app").start()
    assert_type(await by_conninfo.close(timeout=5), WriterCounters)

    built = [new_event(session_id=chat, user_id=user_id, event_type="user_message")]
    result = await awrite_events(EventLog, engine, built)
    assert_type(result, BulkResult)
    return counters.written + result.written


async def read(engine: AsyncEngine, user_id: uuid.UUID, chat: uuid.UUID) -> int:
    reader = AsyncEventLogReader(EventLog, engine)
    assert_type(reader, AsyncEventLogReader[uuid.UUID])
    page = await reader.session_timeline(chat, user_id=user_id, order="oldest")
    assert_type(page, Page[uuid.UUID])
    await reader.session_timeline(1, user_id=user_id)  # type: ignore[arg-type]

    async with AsyncSession(engine) as session:
        in_session = AsyncEventLogReader(EventLog, session)
        until = datetime.now(UTC)
        counts = await in_session.count_by(
            "tool_name",
            since=until - timedelta(days=7),
            until=until,
            user_id=user_id,
            filters=EventFilter(event_types=["tool_call", "tool_result"]),
        )
    assert_type(counts, list[GroupCount])
    narrowed = await reader.user_timeline(user_id, session_id=chat, limit=20, offset=40)
    assert_type(narrowed, Page[uuid.UUID])
    total = await reader.count(user_id=user_id, session_id=chat)
    assert_type(total, int)
    await reader.count(user_id=user_id, agent_id=7)  # type: ignore[arg-type]
    until = datetime.now(UTC)
    usage = await reader.token_usage(since=until - timedelta(days=30), until=until, user_id=user_id)
    assert_type(usage, list[TokenUsage[uuid.UUID]])
    await reader.token_usage(since=until, until=until, project_id=chat, by="model")  # type: ignore[arg-type]
    tokens = sum(group.input_tokens + group.output_tokens for group in usage)
    return len(page.items) + sum(count.count for count in counts) + total + tokens
