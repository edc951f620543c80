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
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventLogError,
    MigrationSetupError,
    PayloadError,
    ValidationError,
)
from eventlog_persist.ids import new_event_id
from eventlog_persist.model import EventLogMixin, JSONValue, event_log_model
from eventlog_persist.targets import ForeignKeyTargets

__version__ = _version("eventlog-persist")

__all__ = [
    "ANCHOR_REVISION",
    "BRANCH_LABEL",
    "MIGRATIONS_LOCATION",
    "ConfigurationError",
    "EventLogError",
    "EventLogMixin",
    "ForeignKeyTargets",
    "JSONValue",
    "MigrationSetupError",
    "PayloadError",
    "ValidationError",
    "check_setup",
    "event_log_model",
    "include_name",
    "new_event_id",
    "write_linear_revisions",
]
