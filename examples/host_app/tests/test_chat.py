"""The chat service against a real database: each test has a fresh, migrated one."""

from __future__ import annotations

from app.chat import start_chat
from app.models import EventLog, User
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from eventlog_persist import EventLogReader, EventWriter


def test_start_chat_logs_the_first_message(eventlog_session: Session, user: User) -> None:
    chat = start_chat(eventlog_session, user.id, "hello", events=EventWriter(EventLog))
    eventlog_session.commit()

    timeline = EventLogReader(EventLog, eventlog_session).session_timeline(chat.id, user_id=user.id)
    assert [event.event_type for event in timeline.items] == ["user_message"]


def test_the_previous_test_left_nothing(eventlog_session: Session) -> None:
    assert eventlog_session.scalar(select(func.count()).select_from(EventLog)) == 0
    assert eventlog_session.scalar(select(func.count()).select_from(User)) == 0
