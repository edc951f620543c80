"""Plain script: record events in a transaction, detached, in bulk and through a buffered writer."""

from __future__ import annotations

import sys
import uuid

from sqlalchemy import ForeignKey, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import BufferedWriter, EventType, EventWriter, event_log_model, write_events


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


def main(url: str) -> int:
    engine = create_engine(url)
    Base.metadata.create_all(engine)  # a real host runs its Alembic migrations instead
    writer = EventWriter(EventLog)

    with Session(engine) as session:
        user = User(id=uuid.uuid4())
        session.add(user)
        session.flush()
        chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
        session.add(chat)
        session.flush()
        # In the caller's transaction: stored only if this transaction commits.
        writer.record(
            session,
            session_id=chat.id,
            user_id=user.id,
            event_type=EventType.USER_MESSAGE,
            payload={"text": "Book a table for two", "authorization": "Bearer abc"},
        )
        session.commit()
        user_id, session_id = user.id, chat.id

    with Session(engine) as session:
        # Detached: its own transaction, so it survives the rollback below.
        writer.record_detached(
            engine,
            session_id=session_id,
            user_id=user_id,
            event_type=EventType.ERROR,
            error_code="booking_api_timeout",
        )
        session.rollback()

    # Bulk: binary COPY, e.g. for an import.
    imported = [
        writer.event(session_id=session_id, user_id=user_id, event_type="chat", payload={"n": n})
        for n in range(1000)
    ]
    print("bulk written:", write_events(EventLog, engine, imported).written)

    # Buffered: the request path only enqueues; close() (or process exit) writes the rest.
    with BufferedWriter(EventLog, engine) as buffered:
        for n in range(500):
            buffered.enqueue(
                session_id=session_id,
                user_id=user_id,
                event_type=EventType.TOOL_CALL,
                tool_name="search",
                payload={"query": f"restaurants {n}"},
            )
    print("buffered:", buffered.counters)

    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(EventLog)) or 0
    engine.dispose()
    print("events stored:", total)
    return total


if __name__ == "__main__":
    main(sys.argv[1])
