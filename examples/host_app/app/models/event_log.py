"""The event log, bound to this host's Base."""

from __future__ import annotations

import uuid

from app.database import Base
from eventlog_persist import EventLogMixin


class EventLog(EventLogMixin[uuid.UUID], Base):
    """Every user-agent interaction event (table ``event_logs``)."""
