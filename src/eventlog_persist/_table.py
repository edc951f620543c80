"""Where a host's events go: the model's table, its key column types, and the row layout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import BigInteger, Integer, SmallInteger, Table, Uuid
from sqlalchemy.types import TypeEngine

from eventlog_persist._model import EventLogMixin
from eventlog_persist._schema import XID_COLUMN, quote_identifier
from eventlog_persist.exceptions import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from eventlog_persist._events import NewEvent

COLUMNS: Final = (
    "id",
    "session_id",
    "user_id",
    "project_id",
    "agent_id",
    "event_type",
    "payload",
    "created_at",
    "error_code",
    "tool_name",
    "approval_status",
    "request_id",
    "trace_id",
    "span_id",
)
"""The columns every writer fills, in the order of `EventTable.row`."""

_KEY_COLUMNS: Final = COLUMNS[1:5]
INT_RANGES: Final = {"int2": 2**15, "int4": 2**31, "int8": 2**63}
"""Each integer key type's bound: its values run from ``-bound`` to ``bound - 1``."""
_UUID_KEYS: Final = ("uuid", "uuid", "uuid", "uuid")


@dataclass(frozen=True, slots=True)
class EventTable:
    """Where a host's events go: the table's name and the SQL types of its key columns.

    Build it with `EventTable.of`; writers use it to check keys and to write rows.

    Attributes:
        table: The model's ``Table``.
        qualified_name: The quoted, schema-qualified table name for SQL.
        key_types: The PostgreSQL types of ``session_id``, ``user_id``, ``project_id`` and
            ``agent_id``: each ``"uuid"``, ``"int2"``, ``"int4"`` or ``"int8"``.
        key_columns: The primary key's columns: ``("id",)``, or ``("id", "created_at")``
            in the partitioned layout. An event keeps both on every retry, so
            ``ON CONFLICT`` on them makes every write idempotent in either layout.
        feed: The model opted in to the feed: writers notify its readers of each batch.
    """

    table: Table
    qualified_name: str
    key_types: tuple[str, str, str, str]
    key_columns: tuple[str, ...]
    feed: bool

    @classmethod
    def of(cls, model: type[EventLogMixin[Any]]) -> EventTable:
        """Read the table of a host's ``EventLog`` model.

        Raises:
            ConfigurationError: ``model`` is not an ``EventLog`` model, or a foreign key does
                not resolve to a UUID or integer column.
        """
        table = getattr(model, "__table__", None)
        if not (isinstance(model, type) and issubclass(model, EventLogMixin)) or not isinstance(
            table, Table
        ):
            raise ConfigurationError(
                f"model must be the host's EventLog class (built with event_log_model() or "
                f"inheriting EventLogMixin and the host's Base), got {model!r}"
            )
        name = quoted_name(table)
        types = tuple(
            _key_sql_type(model, table, column)
            for column in ("session_id", "user_id", "project_id", "agent_id")
        )
        key = tuple(column.name for column in table.primary_key.columns)
        return cls(
            table, name, (types[0], types[1], types[2], types[3]), key, XID_COLUMN in table.c
        )

    @property
    def conflict_target(self) -> str:
        """``ON CONFLICT`` target of the primary key: ``(id)`` or ``(id, created_at)``."""
        return f"({', '.join(self.key_columns)})"

    def check_keys(self, event: NewEvent) -> None:
        """Raise `ValidationError` when one of the event's keys does not fit its column's type."""
        session_id, user_id, project_id, agent_id = (
            event.session_id,
            event.user_id,
            event.project_id,
            event.agent_id,
        )
        if (  # the common case, in a few type tests: every key a UUID, into UUID columns
            type(session_id) is uuid.UUID
            and type(user_id) is uuid.UUID
            and (project_id is None or type(project_id) is uuid.UUID)
            and (agent_id is None or type(agent_id) is uuid.UUID)
            and self.key_types == _UUID_KEYS
        ):
            return
        values = (session_id, user_id, project_id, agent_id)
        for name, sql_type, value in zip(_KEY_COLUMNS, self.key_types, values, strict=True):
            if value is not None and not (sql_type == "uuid" and type(value) is uuid.UUID):
                check_key_fits(name, sql_type, value)

    @property
    def copy_types(self) -> list[str]:
        """PostgreSQL types of `COLUMNS`, for a binary COPY."""
        return [
            "uuid",
            *self.key_types,
            "text",
            "jsonb",
            "timestamptz",
            "text",
            "text",
            "text",
            "text",
            "text",
            "text",
        ]

    @staticmethod
    def row(event: NewEvent) -> tuple[object, ...]:
        """Return the event's values in `COLUMNS` order."""
        return (
            event.id,
            event.session_id,
            event.user_id,
            event.project_id,
            event.agent_id,
            event.event_type,
            event.payload_json,
            event.created_at,
            event.error_code,
            event.tool_name,
            event.approval_status,
            event.request_id,
            event.trace_id,
            event.span_id,
        )


def check_key_fits(name: str, sql_type: str | None, value: object) -> None:
    """Raise `ValidationError` when ``value`` does not fit a key column of ``sql_type``.

    Args:
        name: The column, for the message.
        sql_type: ``"uuid"``, ``"int2"``, ``"int4"`` or ``"int8"`` (see `key_sql_type`);
            None (a type the package does not know) accepts any value.
        value: The key value, not None.
    """
    if sql_type == "uuid":
        if not isinstance(value, uuid.UUID):
            raise ValidationError(
                f"{name}={value!r} ({type(value).__name__}) does not fit the uuid column "
                f"{name}; pass a uuid.UUID"
            )
    elif sql_type in INT_RANGES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(
                f"{name}={value!r} ({type(value).__name__}) does not fit the {sql_type} column "
                f"{name}; pass an int"
            )
        limit = INT_RANGES[sql_type]
        if not -limit <= value < limit:
            raise ValidationError(
                f"{name}={value} is out of range for the {sql_type} column {name}; pass an int "
                f"from {-limit} to {limit - 1}"
            )


def key_sql_type(sql_type: TypeEngine[Any]) -> str | None:
    """``"uuid"``, ``"int2"``, ``"int4"`` or ``"int8"`` for a key column's type, else None."""
    if isinstance(sql_type, Uuid):
        return "uuid"
    if isinstance(sql_type, BigInteger):
        return "int8"
    if isinstance(sql_type, SmallInteger):
        return "int2"
    if isinstance(sql_type, Integer):
        return "int4"
    return None


def quoted_name(table: Table) -> str:
    """The quoted, schema-qualified name of ``table`` for SQL."""
    name = quote_identifier(table.name)
    return f"{quote_identifier(table.schema)}.{name}" if table.schema else name


def _key_sql_type(model: type[Any], table: Table, column: str) -> str:
    sql_type = table.c[column].type
    found = key_sql_type(sql_type)
    if found is not None:
        return found
    raise ConfigurationError(
        f"{model.__name__}.{column} has type {sql_type!r}; the writers support UUID, SMALLINT, "
        "INTEGER and BIGINT keys. Declare the host's tables before the EventLog model so the "
        "foreign keys resolve, and use one of these key types"
    )
