"""Async code paths on a fresh, migrated database."""

from __future__ import annotations

import uuid

import pytest
from app.models import ChatSession, EventLog, User
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from eventlog_persist import EventType, EventWriter


@pytest.mark.asyncio
async def test_error_event_survives_the_rollback(
    eventlog_async_engine: AsyncEngine, eventlog_async_session: AsyncSession
) -> None:
    user = User(id=uuid.uuid4(), name="Ada")
    chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
    eventlog_async_session.add(user)
    await eventlog_async_session.flush()
    eventlog_async_session.add(chat)
    await eventlog_async_session.commit()

    await EventWriter(EventLog).arecord_detached(
        eventlog_async_engine,
        session_id=chat.id,
        user_id=user.id,
        event_type=EventType.ERROR,
        error_code="tool_timeout",
    )
    await eventlog_async_session.rollback()

    count = await eventlog_async_session.scalar(select(func.count()).select_from(EventLog))
    assert count == 1
