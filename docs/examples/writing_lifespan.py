"""FastAPI-style app: an AsyncBufferedWriter started and stopped by the lifespan."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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


class App:
    """Stands in for FastAPI(): a ``state`` namespace and a lifespan."""

    def __init__(self, lifespan: Any) -> None:
        self.state: dict[str, Any] = {}
        self.lifespan = lifespan


@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    engine = create_async_engine(app.state["database_url"])
    async with AsyncBufferedWriter(EventLog, engine) as events:  # start ... close
        app.state["engine"] = engine
        app.state["events"] = events
        app.state["writer"] = EventWriter(EventLog)
        yield
    # Leaving the block wrote what was queued; anything unwritten went to on_dead_letter.
    print("event writer closed:", events.counters)
    await engine.dispose()


async def run_tool(app: App, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
    """A request handler: enqueue is cheap, and the database is never on its path."""
    events: AsyncBufferedWriter[uuid.UUID] = app.state["events"]
    await events.enqueue(
        session_id=session_id,
        user_id=user_id,
        event_type=EventType.APPROVAL_REQUESTED,
        tool_name="send_email",
        approval_status=ApprovalStatus.PENDING,
        payload={"to": "someone@example.com"},
    )
    # An event that must commit with the business change goes through the session instead.
    async with AsyncSession(app.state["engine"]) as session:
        app.state["writer"].record(
            session, session_id=session_id, user_id=user_id, event_type=EventType.TOOL_RESULT
        )
        await session.commit()


async def serve(url: str, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
    app = App(lifespan)
    app.state["database_url"] = url
    async with app.lifespan(app):  # what the ASGI server does at startup and shutdown
        await asyncio.gather(*(run_tool(app, session_id, user_id) for _ in range(20)))


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
    asyncio.run(serve(url, session_id, user_id))
    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(EventLog)) or 0
    engine.dispose()
    print("events stored:", total)
    return total


if __name__ == "__main__":
    main(sys.argv[1])
