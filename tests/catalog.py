"""Read a database's schema back from the PostgreSQL catalog, for exact comparisons."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, text

_COLUMNS = text(
    """
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
           pg_get_expr(d.adbin, d.adrelid)
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY c.relname, a.attnum
    """
)
_CONSTRAINTS = text(
    """
    SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
    FROM pg_constraint k
    JOIN pg_class c ON c.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    -- PostgreSQL 18 also catalogs NOT NULL as constraints; nullability is compared per column.
    WHERE n.nspname = :schema AND k.contype <> 'n'
    ORDER BY c.relname, k.conname
    """
)
_INDEXES = text(
    """
    SELECT tablename, indexname, indexdef FROM pg_indexes
    WHERE schemaname = :schema ORDER BY tablename, indexname
    """
)


def snapshot(connection: Connection, schema: str = "public") -> dict[str, Any]:
    """Every table's columns, constraints and indexes in ``schema`` (times in a CHECK as UTC
    prints them)."""
    params = {"schema": schema}
    connection.execute(text("SET LOCAL TimeZone = 'UTC'"))
    columns = {
        (table, name): (type_, not_null, default)
        for table, name, type_, not_null, default in connection.execute(_COLUMNS, params)
    }
    constraints = {
        (table, name): definition
        for table, name, definition in connection.execute(_CONSTRAINTS, params)
    }
    indexes = {
        (table, name): definition
        for table, name, definition in connection.execute(_INDEXES, params)
    }
    return {"columns": columns, "constraints": constraints, "indexes": indexes}


def of_table(snap: dict[str, Any], table: str) -> dict[str, dict[str, Any]]:
    """The part of a snapshot that belongs to ``table``, keyed by column/constraint/index name."""
    return {
        kind: {name: value for (owner, name), value in items.items() if owner == table}
        for kind, items in snap.items()
    }


def expected_event_logs(key_types: dict[str, str], schema_prefix: str = "") -> dict[str, Any]:
    """What ``event_logs`` must look like for hosts whose keys have ``key_types``."""
    p = schema_prefix
    on = f"ON {p or 'public.'}event_logs USING btree"
    return {
        "columns": {
            "id": ("uuid", True, None),
            "session_id": (key_types["chat_sessions"], True, None),
            "user_id": (key_types["users"], True, None),
            "project_id": (key_types["user_projects"], False, None),
            "agent_id": (key_types["user_agents"], False, None),
            "event_type": ("character varying(64)", True, None),
            "payload": ("jsonb", True, "'{}'::jsonb"),
            "created_at": ("timestamp with time zone", True, "now()"),
            "error_code": ("character varying(128)", False, None),
            "tool_name": ("character varying(128)", False, None),
            "approval_status": ("character varying(32)", False, None),
            "request_id": ("character varying(128)", False, None),
            "trace_id": ("character varying(32)", False, None),
            "span_id": ("character varying(16)", False, None),
        },
        "constraints": {
            "pk_event_logs": "PRIMARY KEY (id)",
            "fk_event_logs_session_id": f"FOREIGN KEY (session_id) REFERENCES {p}chat_sessions(id) "
            "ON DELETE CASCADE",
            "fk_event_logs_user_id": f"FOREIGN KEY (user_id) REFERENCES {p}users(id) "
            "ON DELETE CASCADE",
            "fk_event_logs_project_id": f"FOREIGN KEY (project_id) REFERENCES {p}user_projects(id) "
            "ON DELETE SET NULL",
            "fk_event_logs_agent_id": f"FOREIGN KEY (agent_id) REFERENCES {p}user_agents(id) "
            "ON DELETE SET NULL",
        },
        "indexes": {
            "pk_event_logs": f"CREATE UNIQUE INDEX pk_event_logs {on} (id)",
            "ix_event_logs_session_id_created_at": "CREATE INDEX"
            " ix_event_logs_session_id_created_at"
            f" {on} (session_id, created_at)",
            "ix_event_logs_user_id_created_at": "CREATE INDEX ix_event_logs_user_id_created_at"
            f" {on} (user_id, created_at)",
            "ix_event_logs_project_id_created_at": "CREATE INDEX"
            " ix_event_logs_project_id_created_at"
            f" {on} (project_id, created_at) "
            "WHERE (project_id IS NOT NULL)",
            "ix_event_logs_agent_id_created_at": "CREATE INDEX ix_event_logs_agent_id_created_at"
            f" {on} (agent_id, created_at) "
            "WHERE (agent_id IS NOT NULL)",
        },
    }


UUID_KEYS = dict.fromkeys(("chat_sessions", "users", "user_projects", "user_agents"), "uuid")
INTEGER_KEYS = {
    "chat_sessions": "bigint",
    "users": "integer",
    "user_projects": "integer",
    "user_agents": "integer",
}


def lock_waiters(connection: Connection, statement: str, *, within: float = 10) -> list[int]:
    """The pids of the other backends of this database whose query contains ``statement``
    and that wait for a lock, polled until there is one; ``[]`` if none waits ``within``
    seconds. (The tests share a server: another database's statements are not ours.)"""
    deadline = time.monotonic() + within
    while True:
        pids = (
            connection.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND position(:statement in query) > 0 AND pid <> pg_backend_pid() "
                    "AND datname = current_database()"
                ),
                {"statement": statement},
            )
            .scalars()
            .all()
        )
        connection.rollback()  # the next poll reads a fresh pg_stat_activity
        if pids or time.monotonic() > deadline:
            return list(pids)
        time.sleep(0.02)
