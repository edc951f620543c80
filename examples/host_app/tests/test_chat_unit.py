"""Unit tests of the chat service: no database, the events are captured."""

from __future__ import annotations

import uuid
from unittest import mock

from app.chat import start_chat
from app.models import EventLog

from eventlog_persist.testing import CapturingWriter


def test_start_chat_records_the_title() -> None:
    events = CapturingWriter(EventLog)
    user_id = uuid.uuid4()

    chat = start_chat(mock.Mock(), user_id, "hello", events=events)

    event = events.assert_recorded(
        event_type="user_message", via="record", payload={"title": "hello"}
    )
    assert event.session_id == chat.id
    assert event.user_id == user_id
    assert events.event_types == ["user_message"]
