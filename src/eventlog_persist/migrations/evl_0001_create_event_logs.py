"""create event_logs

Revision ID: evl_0001
Revises:
Create Date: 2026-11-25

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Settings (first found wins): ``config.attributes["eventlog_persist"]`` (a dict), then
``-x eventlog_persist.<key>=<value>``, then an ``[eventlog_persist]`` section in alembic.ini:

- ``schema``: schema of the host tables and of ``event_logs`` (default: search_path);
- ``users``, ``chat_sessions``, ``user_projects``, ``user_agents``: host table names;
- ``pk_type``: ``uuid``, ``integer`` or ``bigint`` for every target, or per table as
  ``chat_sessions=bigint,users=integer,user_projects=integer,user_agents=integer``.
  Online it is read from the database (and checked against this value when given);
  offline (``--sql``) it is required.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError
from sqlalchemy.dialects import postgresql

revision = "evl_0001"
down_revision = None
branch_labels = ("eventlog",)
depends_on = "eventlog_prereqs"

_SECTION = "eventlog_persist"
_TARGETS = {
    "session_id": ("chat_sessions", "CASCADE", False),
    "user_id": ("users", "CASCADE", False),
    "project_id": ("user_projects", "SET NULL", True),
    "agent_id": ("user_agents", "SET NULL", True),
}
_KEY_TYPES = {"uuid": postgresql.UUID, "integer": sa.Integer, "bigint": sa.BigInteger}


def _setting(key: str) -> str | None:
    config = context.config
    attributes = config.attributes.get(_SECTION) or {}
    if attributes.get(key) is not None:
        return str(attributes[key])
    x_arguments = context.get_x_argument(as_dictionary=True)
    if f"{_SECTION}.{key}" in x_arguments:
        return str(x_arguments[f"{_SECTION}.{key}"])
    if config.file_config.has_option(_SECTION, key):
        return config.file_config.get(_SECTION, key)
    return None


def _table_names() -> dict[str, str]:
    return {table: _setting(table) or table for table, _, _ in _TARGETS.values()}


def _configured_key_types(tables: dict[str, str]) -> dict[str, str] | None:
    raw = _setting("pk_type")
    if raw is None or raw.strip() in ("", "reflect"):
        return None
    raw = raw.strip().lower()
    if "=" not in raw:
        chosen = dict.fromkeys(tables, raw)
    else:
        chosen = {}
        for item in raw.split(","):
            table, _, kind = item.partition("=")
            chosen[table.strip()] = kind.strip()
        missing = sorted(set(tables) - set(chosen))
        if missing:
            raise CommandError(
                f"eventlog_persist: pk_type={raw!r} names no key type for {', '.join(missing)}; "
                "give every table (chat_sessions, users, user_projects, user_agents) or one type "
                "for all, e.g. pk_type=uuid"
            )
    for table, kind in chosen.items():
        if table not in tables or kind not in _KEY_TYPES:
            raise CommandError(
                f"eventlog_persist: pk_type entry {table}={kind!r} is not valid; the tables are "
                f"{', '.join(tables)} and the types are {', '.join(_KEY_TYPES)}"
            )
    return chosen


def _kind_of(column_type: sa.types.TypeEngine[Any]) -> str | None:
    if isinstance(column_type, sa.Uuid):
        return "uuid"
    if isinstance(column_type, sa.BigInteger):
        return "bigint"
    if isinstance(column_type, sa.Integer) and not isinstance(column_type, sa.SmallInteger):
        return "integer"
    return None


def _reflect_key_types(schema: str | None, tables: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Return ``{logical table: (kind, key column)}`` read from the live database."""
    inspector = sa.inspect(op.get_bind())
    found: dict[str, tuple[str, str]] = {}
    where = f"schema {schema!r}" if schema else "the search_path"
    for logical, actual in tables.items():
        if not inspector.has_table(actual, schema=schema):
            raise CommandError(
                f"eventlog_persist: FK target table {actual!r} ({logical}) does not exist in "
                f"{where}. Create the host tables first: the host's revision "
                "'eventlog_prereqs' must come after them (run 'eventlog-persist check'), or set "
                f"'{logical} = <your table>' in the [{_SECTION}] section of alembic.ini"
            )
        key = inspector.get_pk_constraint(actual, schema=schema)["constrained_columns"]
        if key != ["id"]:
            # The EventLog model references "<table>.id"; any other key would drift from it.
            raise CommandError(
                f"eventlog_persist: {actual!r} must have a single-column primary key named "
                f"'id' for event_logs to reference, found {key or 'none'}"
            )
        columns = {c["name"]: c for c in inspector.get_columns(actual, schema=schema)}
        kind = _kind_of(columns[key[0]]["type"])
        if kind is None:
            raise CommandError(
                f"eventlog_persist: {actual}.{key[0]} has type {columns[key[0]]['type']}; "
                "event_logs supports UUID, INTEGER and BIGINT primary keys"
            )
        found[logical] = (kind, key[0])
    return found


def upgrade() -> None:
    schema = _setting("schema")
    tables = _table_names()
    configured = _configured_key_types(tables)
    if context.is_offline_mode():
        if configured is None:
            raise CommandError(
                "eventlog_persist: cannot read the host's key types in offline (--sql) mode; "
                "pass -x eventlog_persist.pk_type=uuid (or integer, bigint) or set pk_type in "
                f"the [{_SECTION}] section of alembic.ini"
            )
        keys = {table: (kind, "id") for table, kind in configured.items()}
    else:
        keys = _reflect_key_types(schema, tables)
        for table, kind in (configured or {}).items():
            if keys[table][0] != kind:
                raise CommandError(
                    f"eventlog_persist: pk_type says {table} keys are {kind}, but the database "
                    f"has {keys[table][0]}; fix or remove pk_type"
                )

    prefix = f"{schema}." if schema else ""
    fk_columns = []
    fk_constraints = []
    for column, (logical, ondelete, nullable) in _TARGETS.items():
        kind, key = keys[logical]
        fk_columns.append(sa.Column(column, _KEY_TYPES[kind](), nullable=nullable))
        fk_constraints.append(
            sa.ForeignKeyConstraint(
                [column],
                [f"{prefix}{tables[logical]}.{key}"],
                name=op.f(f"fk_event_logs_{column}"),
                ondelete=ondelete,
            )
        )
    op.create_table(
        "event_logs",
        sa.Column("id", postgresql.UUID(), nullable=False),
        *fk_columns,
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'")),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            nullable=False,
            server_default=sa.text("now()"),
        ),
        sa.Column("error_code", sa.String(128), nullable=True),
        sa.Column("tool_name", sa.String(128), nullable=True),
        sa.Column("approval_status", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_logs")),
        *fk_constraints,
        schema=schema,
    )
    op.create_index(
        op.f("ix_event_logs_session_id_created_at"),
        "event_logs",
        ["session_id", "created_at"],
        schema=schema,
    )
    op.create_index(
        op.f("ix_event_logs_user_id_created_at"),
        "event_logs",
        ["user_id", "created_at"],
        schema=schema,
    )
    op.create_index(
        op.f("ix_event_logs_project_id_created_at"),
        "event_logs",
        ["project_id", "created_at"],
        schema=schema,
        postgresql_where=sa.text("project_id IS NOT NULL"),
    )
    op.create_index(
        op.f("ix_event_logs_agent_id_created_at"),
        "event_logs",
        ["agent_id", "created_at"],
        schema=schema,
        postgresql_where=sa.text("agent_id IS NOT NULL"),
    )


def downgrade() -> None:
    schema = _setting("schema")
    for name in (
        "ix_event_logs_agent_id_created_at",
        "ix_event_logs_project_id_created_at",
        "ix_event_logs_user_id_created_at",
        "ix_event_logs_session_id_created_at",
    ):
        op.drop_index(op.f(name), table_name="event_logs", schema=schema)
    # Dropping the table also drops its primary key and foreign-key constraints.
    op.drop_table("event_logs", schema=schema)
