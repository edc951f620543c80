"""The event log, bound to this host's Base."""

from __future__ import annotations

import uuid

from eventlog_persist import EventLogMixin

from app.database import Base


class EventLog(EventLogMixin[uuid.UUID], Base):
    """Every user-agent interaction event (table ``event_logs``)."""
