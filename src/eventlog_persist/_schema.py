"""Names and sizes of the ``event_logs`` table, shared by the model, the helpers and the tests.

Released migration revisions do not import this module: they carry their own frozen copy.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPROVAL_STATUS_LENGTH",
    "ERROR_CODE_LENGTH",
    "EVENT_TYPE_LENGTH",
    "FK_NAMES",
    "INDEX_NAMES",
    "PK_NAME",
    "TABLE_NAME",
    "TOOL_NAME_LENGTH",
]

TABLE_NAME: Final = "event_logs"

EVENT_TYPE_LENGTH: Final = 64
ERROR_CODE_LENGTH: Final = 128
TOOL_NAME_LENGTH: Final = 128
APPROVAL_STATUS_LENGTH: Final = 32

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
