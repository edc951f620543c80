"""Persist AI-agent interaction events in PostgreSQL: model, migrations, writers and readers."""

from __future__ import annotations

from importlib.metadata import version as _version

from eventlog_persist.alembic_setup import (
    ANCHOR_REVISION,
    BRANCH_LABEL,
    MIGRATIONS_LOCATION,
    check_setup,
    include_name,
    write_linear_revisions,
)
from eventlog_persist.buffered import (
    AsyncBufferedWriter,
    BufferedWriter,
    QueueFullError,
    WriterClosedError,
    WriterCounters,
)
from eventlog_persist.bulk import BulkResult, awrite_events, write_events
from eventlog_persist.cursor import InvalidCursorError
from eventlog_persist.events import NewEvent, new_event
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventLogError,
    MigrationSetupError,
    PayloadError,
    ValidationError,
)
from eventlog_persist.ids import new_event_id
from eventlog_persist.model import EventLogMixin, JSONValue, event_log_model
from eventlog_persist.payload import PayloadPolicy, prepare_payload
from eventlog_persist.queries import (
    ANY_ERROR,
    UNSCOPED,
    BucketCount,
    EventFilter,
    EventRecord,
    GroupCount,
    Page,
)
from eventlog_persist.reader import AsyncEventLogReader, EventLogReader
from eventlog_persist.retention import PurgeResult, count_purgeable, purge_events
from eventlog_persist.retry import RetriesExhaustedError, RetryPolicy
from eventlog_persist.targets import ForeignKeyTargets
from eventlog_persist.vocabulary import ApprovalStatus, EventFieldRules, EventType
from eventlog_persist.writer import EventWriteError, EventWriter

__version__ = _version("eventlog-persist")

__all__ = [
    "ANCHOR_REVISION",
    "ANY_ERROR",
    "BRANCH_LABEL",
    "MIGRATIONS_LOCATION",
    "UNSCOPED",
    "ApprovalStatus",
    "AsyncBufferedWriter",
    "AsyncEventLogReader",
    "BucketCount",
    "BufferedWriter",
    "BulkResult",
    "ConfigurationError",
    "EventFieldRules",
    "EventFilter",
    "EventLogError",
    "EventLogMixin",
    "EventLogReader",
    "EventRecord",
    "EventType",
    "EventWriteError",
    "EventWriter",
    "ForeignKeyTargets",
    "GroupCount",
    "InvalidCursorError",
    "JSONValue",
    "MigrationSetupError",
    "NewEvent",
    "Page",
    "PayloadError",
    "PayloadPolicy",
    "PurgeResult",
    "QueueFullError",
    "RetriesExhaustedError",
    "RetryPolicy",
    "ValidationError",
    "WriterClosedError",
    "WriterCounters",
    "awrite_events",
    "check_setup",
    "count_purgeable",
    "event_log_model",
    "include_name",
    "new_event",
    "new_event_id",
    "prepare_payload",
    "purge_events",
    "write_events",
    "write_linear_revisions",
]
