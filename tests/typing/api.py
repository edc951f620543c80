"""The public API as a host writes it; type-checked by mypy --strict in CI, never run."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from alembic.config import Config
from sqlalchemy import Engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import eventlog_persist
from eventlog_persist import (
    ANY_ERROR,
    BufferedWriter,
    BulkResult,
    EventFilter,
    EventLogMixin,
    EventLogReader,
    EventRecord,
    EventType,
    EventWriter,
    ForeignKeyTargets,
    JSONValue,
    NewEvent,
    Page,
    PurgeResult,
    WriterCounters,
    check_setup,
    event_log_model,
    include_name,
    purge_events,
    write_events,
)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)


class EventLog(EventLogMixin[uuid.UUID], Base):
    __eventlog_targets__ = ForeignKeyTargets(users="users")


class IntBase(DeclarativeBase):
    pass


IntEventLog = event_log_model(IntBase, key_type=int)


def record(session: Session, user: User, session_id: uuid.UUID) -> uuid.UUID:
    payload: JSONValue = {"text": "hi", "n": [1, 2.5, None]}
    event = EventLog(
        session_id=session_id,
        user_id=user.id,
        event_type="user_message",
        payload=payload,
        created_at=datetime.now(UTC),
    )
    session.add(event)
    agent: uuid.UUID | None = event.agent_id
    assert agent is None
    return event.id


def count_int_events(session: Session) -> int:
    event = IntEventLog(session_id=1, user_id=2, event_type="error", error_code="timeout")
    session.add(event)
    key: int = event.session_id
    rows = session.scalars(select(IntEventLog).where(IntEventLog.user_id == key)).all()
    return len(rows)


def setup_ok(config: Config) -> bool:
    keep: bool = include_name("event_logs", "table", {})
    location: str = eventlog_persist.MIGRATIONS_LOCATION
    return check_setup(config).ok and keep and bool(location)


def write(engine: Engine, session: Session, user: User, chat: uuid.UUID) -> int:
    writer = EventWriter(EventLog)
    writer.record(session, session_id=chat, user_id=user.id, event_type=EventType.TOOL_CALL)
    event: NewEvent = writer.record_detached(
        engine, session_id=chat, user_id=user.id, event_type="error", error_code="timeout"
    )
    result: BulkResult = write_events(EventLog, engine, [event])
    with BufferedWriter(EventLog, engine) as buffered:
        buffered.enqueue(session_id=chat, user_id=user.id, event_type="tool_result")
    counters: WriterCounters = buffered.counters
    return result.written + counters.written


def read(engine: Engine, user: User, chat: uuid.UUID) -> list[str]:
    reader = EventLogReader(EventLog, engine)
    page: Page[uuid.UUID] = reader.session_timeline(chat, user_id=user.id, limit=20)
    errors = reader.user_timeline(user.id, filters=EventFilter(error_code=ANY_ERROR))
    items: tuple[EventRecord[uuid.UUID], ...] = page.items + errors.items
    if page.next_cursor is not None:
        items += reader.session_timeline(chat, user_id=user.id, cursor=page.next_cursor).items
    purged: PurgeResult = purge_events(EventLog, engine, older_than=datetime.now(UTC))
    return [item.event_type for item in items] + [str(purged.deleted)]
