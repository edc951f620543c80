"""The host's chat service: what its request handlers call."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.models import ChatSession, EventLog
from eventlog_persist import EventType, EventWriter


def start_chat(
    session: Session, user_id: uuid.UUID, title: str, *, events: EventWriter[EventLog, uuid.UUID]
) -> ChatSession:
    """Open a chat for ``user_id`` and log it, in the caller's transaction."""
    chat = ChatSession(id=uuid.uuid4(), user_id=user_id, title=title)
    session.add(chat)
    events.record(
        session,
        session_id=chat.id,
        user_id=user_id,
        event_type=EventType.USER_MESSAGE,
        payload={"title": title},
    )
    return chat
