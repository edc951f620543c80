"""Persist AI-agent interaction events in PostgreSQL: model, migrations, writers and readers.

Every name a host application writes in its own code is importable from here; the modules
whose names start with ``_`` are private. Public topic modules: `eventlog_persist.exceptions`,
`eventlog_persist.testing` (a pytest plugin and capturing writers for host test suites),
`eventlog_persist.metrics` (exporters for prometheus-client and OpenTelemetry, which are
imported only when used) and `eventlog_persist.fastapi` (lifespan, dependencies and
request-id middleware for FastAPI and Starlette, which only that module imports).

The Alembic helpers (`check_setup`, `include_name`, `include_object`, `skip_partitions`,
`write_linear_revisions`, `MIGRATIONS_LOCATION`, `SetupReport`) are loaded on first use, so
that importing the package in a web worker does not import Alembic.
"""

from __future__ import annotations

import sys as _sys
from importlib.metadata import version as _version
from typing import TYPE_CHECKING, Any

from eventlog_persist._audit_leaf import audit_leaf_hash
from eventlog_persist._audit_seal import (
    AsyncAuditSealer,
    AuditSealer,
    FileAnchor,
    LogAnchor,
    Seal,
    SealAnchor,
    seal_events,
)
from eventlog_persist._audit_verify import AuditProblem, AuditReport, verify_audit
from eventlog_persist._buffered import AsyncBufferedWriter, BufferedWriter
from eventlog_persist._bulk import BulkResult, awrite_events, write_events
from eventlog_persist._context import EventContext, current_event_context, event_context
from eventlog_persist._conversion import ConversionResult, convert_to_partitioned
from eventlog_persist._events import DeadLetterHook, EventFields, NewEvent, new_event
from eventlog_persist._feed import AsyncEventFeed, EventFeed, FeedBatch
from eventlog_persist._feed_status import ConsumerStatus, FeedBlocker, afeed_status, feed_status
from eventlog_persist._feed_tail import AsyncEventTail, EventTail, TailEntry, TailPage
from eventlog_persist._genai import genai_payload
from eventlog_persist._ids import new_event_id
from eventlog_persist._model import EventLogMixin, JSONValue, event_log_model
from eventlog_persist._partitions import (
    DropResult,
    PartitionInfo,
    drop_partitions,
    ensure_partitions,
    list_partitions,
)
from eventlog_persist._payload import (
    DEFAULT_DETECTORS,
    DEFAULT_REDACT_KEYS,
    PayloadPolicy,
    PreparedPayload,
    prepare_payload,
)
from eventlog_persist._read_sql import MAX_OFFSET, MAX_PAGE_SIZE
from eventlog_persist._read_types import (
    ANY_ERROR,
    UNSCOPED,
    BucketCount,
    EventFilter,
    EventRecord,
    GroupCount,
    Page,
    TokenUsage,
)
from eventlog_persist._reader import AsyncEventLogReader, EventLogReader
from eventlog_persist._retention import PurgeResult, count_purgeable, purge_events
from eventlog_persist._retry import RetryPolicy
from eventlog_persist._spool import Spool
from eventlog_persist._stats import LastError, WriterCounters, WriterStats
from eventlog_persist._targets import ForeignKeyTargets
from eventlog_persist._vocabulary import ApprovalStatus, EventFieldRules, EventType
from eventlog_persist._writer import EventWriter
from eventlog_persist.exceptions import EventLogError

if TYPE_CHECKING:
    from eventlog_persist._alembic_setup import (
        MIGRATIONS_LOCATION,
        SetupReport,
        check_setup,
        include_name,
        include_object,
        skip_partitions,
        write_linear_revisions,
    )

__version__ = _version("eventlog-persist")

_ALEMBIC_HELPERS = frozenset(
    {
        "MIGRATIONS_LOCATION",
        "SetupReport",
        "check_setup",
        "include_name",
        "include_object",
        "skip_partitions",
        "write_linear_revisions",
    }
)


def __getattr__(name: str) -> Any:
    if name in _ALEMBIC_HELPERS:
        from eventlog_persist import _alembic_setup

        return getattr(_alembic_setup, name)
    raise AttributeError(f"module 'eventlog_persist' has no attribute {name!r}")


__all__ = [
    "ANY_ERROR",
    "DEFAULT_DETECTORS",
    "DEFAULT_REDACT_KEYS",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "MIGRATIONS_LOCATION",
    "UNSCOPED",
    "ApprovalStatus",
    "AsyncAuditSealer",
    "AsyncBufferedWriter",
    "AsyncEventFeed",
    "AsyncEventLogReader",
    "AsyncEventTail",
    "AuditProblem",
    "AuditReport",
    "AuditSealer",
    "BucketCount",
    "BufferedWriter",
    "BulkResult",
    "ConsumerStatus",
    "ConversionResult",
    "DeadLetterHook",
    "DropResult",
    "EventContext",
    "EventFeed",
    "EventFieldRules",
    "EventFields",
    "EventFilter",
    "EventLogError",
    "EventLogMixin",
    "EventLogReader",
    "EventRecord",
    "EventTail",
    "EventType",
    "EventWriter",
    "FeedBatch",
    "FeedBlocker",
    "FileAnchor",
    "ForeignKeyTargets",
    "GroupCount",
    "JSONValue",
    "LastError",
    "LogAnchor",
    "NewEvent",
    "Page",
    "PartitionInfo",
    "PayloadPolicy",
    "PreparedPayload",
    "PurgeResult",
    "RetryPolicy",
    "Seal",
    "SealAnchor",
    "SetupReport",
    "Spool",
    "TailEntry",
    "TailPage",
    "TokenUsage",
    "WriterCounters",
    "WriterStats",
    "afeed_status",
    "audit_leaf_hash",
    "awrite_events",
    "check_setup",
    "convert_to_partitioned",
    "count_purgeable",
    "current_event_context",
    "drop_partitions",
    "ensure_partitions",
    "event_context",
    "event_log_model",
    "feed_status",
    "genai_payload",
    "include_name",
    "include_object",
    "list_partitions",
    "new_event",
    "new_event_id",
    "prepare_payload",
    "purge_events",
    "seal_events",
    "skip_partitions",
    "verify_audit",
    "write_events",
    "write_linear_revisions",
]


def _refuse_a_cut_location() -> None:
    """Fail at once, instead of hanging, when imported by a mis-configured Alembic ``env.py``.

    Only inside a running Alembic environment (its ``context.config`` is set only then), so
    Alembic is never imported here. See `_alembic_setup.refuse_cut_location`.
    """
    config = getattr(_sys.modules.get("alembic.context"), "config", None)
    if config is not None:
        from eventlog_persist._alembic_setup import refuse_cut_location

        refuse_cut_location(config)


_refuse_a_cut_location()
