"""What the writers refuse in the caller, and how to set how far ahead created_at may be."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import ForeignKey, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import EventFieldRules, EventType, EventWriter, event_log_model, write_events
from eventlog_persist.exceptions import ValidationError


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
    with Session(engine) as session:
        user = User(id=uuid.uuid4())
        session.add(user)
        session.flush()
        chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
        session.add(chat)
        session.commit()
        user_id, session_id = user.id, chat.id

    writer = EventWriter(EventLog)
    with Session(engine) as session:
        session.add(ChatSession(id=uuid.uuid4(), user_id=user_id))  # the host's own change
        try:
            writer.record(
                session,
                session_id=session_id,
                user_id=user_id,
                event_type=EventType.TOOL_CALL,
                tool_name="search\udc80",  # e.g. from bytes decoded with errors="surrogateescape"
            )
        except ValidationError as error:
            print("refused:", error)  # tool_name 'search\udc80' contains a lone surrogate ...
        session.commit()  # the host's own change is stored; no event was added

    # Producers with synchronized clocks: at most five minutes ahead, instead of a day.
    strict = EventWriter(EventLog, field_rules=EventFieldRules(max_future=timedelta(minutes=5)))
    later = datetime.now(UTC) + timedelta(hours=1)
    try:
        strict.event(session_id=session_id, user_id=user_id, event_type="chat", created_at=later)
    except ValidationError as error:
        print("refused:", error)  # created_at ... is 0:59:59.99... ahead of the current time ...

    # An import of events stamped by other clocks, some ahead of this one: no limit.
    importer = EventWriter(EventLog, field_rules=EventFieldRules(max_future=None))
    stamps = [datetime.now(UTC) + timedelta(days=2), datetime(2024, 5, 1, tzinfo=UTC)]
    imported = [
        importer.event(session_id=session_id, user_id=user_id, event_type="chat", created_at=when)
        for when in stamps
    ]
    print("imported:", write_events(EventLog, engine, imported).written)

    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(EventLog)) or 0
        hosts = session.scalar(select(func.count()).select_from(ChatSession)) or 0
    engine.dispose()
    print("chat sessions stored:", hosts)
    print("events stored:", total)
    return total


if __name__ == "__main__":
    main(sys.argv[1])
