"""Names and sizes of the ``event_logs`` table, shared by the model, the helpers and the tests.

Released migration revisions do not import this module: they carry their own frozen copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

__all__ = [
    "APPROVAL_STATUS_LENGTH",
    "CONSUMERS_TABLE",
    "CONSUMER_NAME_LENGTH",
    "CREATED_AT_MAX",
    "CREATED_AT_MIN",
    "ERROR_CODE_LENGTH",
    "EVENT_TYPE_LENGTH",
    "FEED_INDEX_NAME",
    "FK_NAMES",
    "INDEX_NAMES",
    "PK_NAME",
    "REQUEST_ID_LENGTH",
    "SPAN_ID_LENGTH",
    "TABLE_NAME",
    "TOOL_NAME_LENGTH",
    "TRACE_ID_LENGTH",
    "XID_COLUMN",
    "quote_identifier",
]

TABLE_NAME: Final = "event_logs"

EVENT_TYPE_LENGTH: Final = 64
ERROR_CODE_LENGTH: Final = 128
TOOL_NAME_LENGTH: Final = 128
APPROVAL_STATUS_LENGTH: Final = 32
# Since revision evl_0002: W3C trace context ids as lowercase hex, and the host's request id.
TRACE_ID_LENGTH: Final = 32
SPAN_ID_LENGTH: Final = 16
REQUEST_ID_LENGTH: Final = 128

# The created_at values that survive a round trip: PostgreSQL stores 4713 BC to 294276 AD, but
# Python's datetime ends at years 1 and 9999, and psycopg returns each value in the session's
# time zone. One day inside Python's range, a value stays in it under any UTC offset (they
# are all under 16 hours), so it reads back whatever the reader's TimeZone setting.
CREATED_AT_MIN: Final = datetime(1, 1, 2, tzinfo=UTC)
"""Earliest ``created_at`` the writers accept and the readers return (0001-01-02 UTC)."""
CREATED_AT_MAX: Final = datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=UTC)
"""Latest ``created_at`` the writers accept and the readers return (9999-12-30 UTC)."""

PK_NAME: Final = "pk_event_logs"
FK_NAMES: Final = {
    "session_id": "fk_event_logs_session_id",
    "user_id": "fk_event_logs_user_id",
    "project_id": "fk_event_logs_project_id",
    "agent_id": "fk_event_logs_agent_id",
}
INDEX_NAMES: Final = (
    "ix_event_logs_session_id_created_at",
    "ix_event_logs_user_id_created_at",
    "ix_event_logs_project_id_created_at",
    "ix_event_logs_agent_id_created_at",
)

# Since revision evlfeed_0001 (the opt-in feed): the writing transaction's id, its index, and
# the consumers' checkpoints.
XID_COLUMN: Final = "xid"
FEED_INDEX_NAME: Final = "ix_event_logs_xid_id"
CONSUMERS_TABLE: Final = "event_log_consumers"
CONSUMER_NAME_LENGTH: Final = 128


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier, whatever characters it holds."""
    return '"' + name.replace('"', '""') + '"'
