"""Event context: the keys, request id and extra payload keys of every event in a block."""

from __future__ import annotations

import asyncio
import sys
import uuid

from sqlalchemy import ForeignKey, create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import (
    UNSCOPED,
    AsyncBufferedWriter,
    EventLogReader,
    EventType,
    event_context,
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


async def run_agent(writer: AsyncBufferedWriter[uuid.UUID]) -> None:
    # No keys given: they come from the context of the request that started the agent.
    await writer.enqueue(event_type=EventType.TOOL_CALL, tool_name="search")
    await asyncio.to_thread(print, "agent done")


async def handle_request(
    writer: AsyncBufferedWriter[uuid.UUID], user: User, chat: ChatSession
) -> None:
    with event_context(session_id=chat.id, user_id=user.id, request_id="req-7f3a", tenant="acme"):
        await writer.enqueue(event_type=EventType.USER_MESSAGE, payload={"text": "Hi"})
        await run_agent(writer)  # its tasks and asyncio.to_thread calls see the same context


async def serve(url: str, user: User, chat: ChatSession) -> None:
    engine = create_async_engine(url)
    async with AsyncBufferedWriter(EventLog, engine) as writer:
        await handle_request(writer, user, chat)
    await engine.dispose()


def main(url: str) -> int:
    engine = create_engine(url)
    Base.metadata.create_all(engine)  # a real host runs its Alembic migrations instead
    with Session(engine, expire_on_commit=False) as session:
        user = User()
        session.add(user)
        session.flush()
        chat = ChatSession(user_id=user.id)
        session.add(chat)
        session.commit()
    asyncio.run(serve(url, user, chat))
    page = EventLogReader(EventLog, engine).session_timeline(
        chat.id, user_id=UNSCOPED, order="oldest"
    )
    for record in page.items:
        print(record.event_type, record.request_id, record.payload)
    print(f"events stored: {len(page.items)}")
    engine.dispose()
    return len(page.items)


if __name__ == "__main__":
    main(sys.argv[1])
