"""FastAPI app: eventlog_lifespan starts and stops an AsyncBufferedWriter with the app."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.testclient import TestClient
from sqlalchemy import ForeignKey, create_engine, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import (
    ApprovalStatus,
    AsyncBufferedWriter,
    EventType,
    EventWriter,
    event_log_model,
)
from eventlog_persist.fastapi import EventContextMiddleware, event_writer, eventlog_lifespan


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class ChatSession(Base):
    __tablename__ = "chat_sessions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class UserProject(Base):
    __tablename__ = "user_projects"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class UserAgent(Base):
    __tablename__ = "user_agents"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


EventLog = event_log_model(Base)

Events = Annotated[AsyncBufferedWriter[uuid.UUID], Depends(event_writer)]
router = APIRouter()


def create_app(database_url: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        app.state.engine = engine
        async with eventlog_lifespan(app, EventLog, engine) as events:  # start ... close
            yield
        # Leaving the block wrote what was queued; anything unwritten went to on_dead_letter.
        print("event writer closed:", events.counters)
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(EventContextMiddleware)  # an X-Request-ID on every event
    app.include_router(router)
    return app


@router.post("/sessions/{session_id}/send_email")
async def run_tool(
    session_id: uuid.UUID, user_id: uuid.UUID, events: Events, request: Request
) -> None:
    """A request handler: enqueue is cheap, and the database is never on its path."""
    await events.enqueue(
        session_id=session_id,
        user_id=user_id,
        event_type=EventType.APPROVAL_REQUESTED,
        tool_name="send_email",
        approval_status=ApprovalStatus.PENDING,
        payload={"to": "someone@example.com"},
    )
    # An event that must commit with the business change goes through the session instead.
    async with AsyncSession(request.app.state.engine) as session:
        EventWriter(EventLog).record(
            session, session_id=session_id, user_id=user_id, event_type=EventType.TOOL_RESULT
        )
        await session.commit()


def main(url: str) -> int:
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        user = User(id=uuid.uuid4())
        session.add(user)
        session.flush()
        chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
        session.add(chat)
        session.commit()
        user_id, session_id = user.id, chat.id
    with TestClient(create_app(url)) as client:  # runs the lifespan, as an ASGI server does
        for _ in range(20):
            client.post(f"/sessions/{session_id}/send_email", params={"user_id": str(user_id)})
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(EventLog)) or 0
        request_ids = session.scalar(select(func.count(func.distinct(EventLog.request_id))))
    engine.dispose()
    print("request ids:", request_ids)
    print("events stored:", total)
    return total


if __name__ == "__main__":
    main(sys.argv[1])
