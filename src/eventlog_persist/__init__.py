"""Persist AI-agent interaction events in PostgreSQL: model, migrations, writers and readers.

The names here are the everyday API. Options and result types live in the modules that own
them: `eventlog_persist.exceptions`, `.payload` (`PayloadPolicy`), `.vocabulary`
(`EventFieldRules`), `.retry` (`RetryPolicy`), `.events` (`NewEvent`), `.queries`
(`EventRecord`, `Page`), `.retention` (`PurgeResult`).
"""

from __future__ import annotations

from importlib.metadata import version as _version

from eventlog_persist.alembic_setup import (
    MIGRATIONS_LOCATION,
    check_setup,
    include_name,
    write_linear_revisions,
)
from eventlog_persist.buffered import AsyncBufferedWriter, BufferedWriter
from eventlog_persist.bulk import awrite_events, write_events
from eventlog_persist.exceptions import EventLogError
from eventlog_persist.model import EventLogMixin, event_log_model
from eventlog_persist.queries import ANY_ERROR, UNSCOPED, EventFilter
from eventlog_persist.reader import AsyncEventLogReader, EventLogReader
from eventlog_persist.retention import purge_events
from eventlog_persist.targets import ForeignKeyTargets
from eventlog_persist.vocabulary import ApprovalStatus, EventType
from eventlog_persist.writer import EventWriter

__version__ = _version("eventlog-persist")

__all__ = [
    "ANY_ERROR",
    "MIGRATIONS_LOCATION",
    "UNSCOPED",
    "ApprovalStatus",
    "AsyncBufferedWriter",
    "AsyncEventLogReader",
    "BufferedWriter",
    "EventFilter",
    "EventLogError",
    "EventLogMixin",
    "EventLogReader",
    "EventType",
    "EventWriter",
    "ForeignKeyTargets",
    "awrite_events",
    "check_setup",
    "event_log_model",
    "include_name",
    "purge_events",
    "write_events",
    "write_linear_revisions",
]
