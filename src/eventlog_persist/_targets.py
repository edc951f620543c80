"""Where the event log's foreign keys point: the host's tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from eventlog_persist.exceptions import ConfigurationError

__all__ = ["ForeignKeyTargets"]

# PostgreSQL truncates identifiers at 63 bytes; a truncated name would silently point elsewhere.
_MAX_IDENTIFIER_BYTES = 63
_PLAIN_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ForeignKeyTargets:
    """The host tables that ``event_logs`` references, each by its ``id`` primary key.

    Args:
        users: Table of users; ``event_logs.user_id`` references it (ON DELETE CASCADE).
        chat_sessions: Table of chat sessions; ``session_id`` references it (ON DELETE CASCADE).
        user_projects: Table of projects; ``project_id`` references it (ON DELETE SET NULL).
        user_agents: Table of agents; ``agent_id`` references it (ON DELETE SET NULL).
        schema: Schema of the host tables, which is also where ``event_logs`` is created.
            ``None`` uses the connection's ``search_path``.
    """

    users: str = "users"
    chat_sessions: str = "chat_sessions"
    user_projects: str = "user_projects"
    user_agents: str = "user_agents"
    schema: str | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "schema":
                continue
            _check_identifier(field.name, value)

    def qualified(self, table: str) -> str:
        """Return ``schema.table.id`` (or ``table.id``), the form ``ForeignKey`` takes."""
        prefix = f"{self.schema}." if self.schema else ""
        return f"{prefix}{table}.id"


def _check_identifier(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigurationError(
            f"ForeignKeyTargets.{name} must be a table or schema name (str), got {value!r}"
        )
    if not _PLAIN_IDENTIFIER.match(value):
        raise ConfigurationError(
            f"ForeignKeyTargets.{name}={value!r} is not a plain SQL identifier; use letters, "
            "digits and underscores, starting with a letter or underscore (no dots: pass the "
            "schema separately as schema=...)"
        )
    if len(value.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ConfigurationError(
            f"ForeignKeyTargets.{name}={value!r} is longer than PostgreSQL's "
            f"{_MAX_IDENTIFIER_BYTES}-byte identifier limit"
        )
