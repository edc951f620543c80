"""The audit on the partitioned layout: the guard on each partition, and the retention
tombstones of the partitions that `drop_partitions` detaches."""

from __future__ import annotations

from typing import Final

from sqlalchemy import Connection, text

from eventlog_persist._audit_leaf import LEAF_COLUMNS
from eventlog_persist._audit_schema import ERASURES_TABLE
from eventlog_persist._schema import quote_identifier

__all__ = [
    "GUARD_TRIGGERS",
    "audited",
    "guard_partition",
    "guard_statements",
    "record_retention",
    "unguard",
]

GUARD_TRIGGERS: Final = (
    "event_logs_audit_delete",
    "event_logs_audit_update",
    "event_logs_audit_truncate",
)
"""The guard's statement triggers (revision evlaudit_0001), on ``event_logs`` and on each of
its partitions under the same names."""


def audited(connection: Connection, schema: str) -> bool:
    """Whether the audit (evlaudit_0001) is installed in ``schema``: its erasures table and
    its guard function are there."""
    found = connection.execute(
        text(
            "SELECT to_regclass(:erasures) IS NOT NULL AND to_regprocedure(:function) IS NOT NULL"
        ),
        {
            "erasures": f"{quote_identifier(schema)}.{quote_identifier(ERASURES_TABLE)}",
            "function": f"{quote_identifier(schema)}.event_log_audit_on_delete()",
        },
    ).scalar()
    return bool(found)


def guard_partition(
    connection: Connection, schema: str, name: str, *, in_schema: str | None = None
) -> bool:
    """Put the guard's three statement triggers on partition ``name`` (of schema
    ``in_schema``, default ``schema``, the audit's) if it lacks them (a statement that names
    a partition fires only that partition's statement triggers, and PostgreSQL copies only
    row-level triggers to new partitions). Returns whether it did."""
    table = f"{quote_identifier(in_schema or schema)}.{quote_identifier(name)}"
    present = set(
        connection.execute(
            text(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:table) "
                "AND NOT tgisinternal"
            ),
            {"table": table},
        ).scalars()
    )
    if set(GUARD_TRIGGERS) <= present:
        return False
    for trigger, statement in zip(GUARD_TRIGGERS, guard_statements(schema, table), strict=True):
        if trigger not in present:
            connection.execute(text(statement))
    return True


def guard_statements(schema: str, table: str) -> list[str]:
    """The CREATE TRIGGER statements of the guard on ``table`` (a quoted, qualified name),
    in the order of `GUARD_TRIGGERS`, calling the functions of the audit in ``schema``."""
    function = f"{quote_identifier(schema)}.event_log_audit"
    return [
        f"CREATE TRIGGER event_logs_audit_delete AFTER DELETE ON {table} REFERENCING OLD "
        f"TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {function}_on_delete()",
        f"CREATE TRIGGER event_logs_audit_update AFTER UPDATE ON {table} REFERENCING OLD "
        "TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "
        f"{function}_on_update()",
        f"CREATE TRIGGER event_logs_audit_truncate BEFORE TRUNCATE ON {table} FOR EACH "
        f"STATEMENT EXECUTE FUNCTION {function}_refuse_truncate()",
    ]


def unguard(connection: Connection, schema: str, name: str) -> None:
    """Drop the guard's triggers from a table detached from ``event_logs`` (kept as an
    archive: its events are recorded as erased, and it may be truncated or dropped)."""
    table = f"{quote_identifier(schema)}.{quote_identifier(name)}"
    for trigger in GUARD_TRIGGERS:
        connection.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON {table}"))


def record_retention(connection: Connection, schema: str, name: str) -> int:
    """Write one ``retention`` tombstone per row of the table ``name`` (a partition just
    detached from ``event_logs``), each with the event's first-written leaf: its earliest
    tombstone's (of that id and time) when it has one (a SET NULL recorded before), else
    the leaf of the row, by the revision's own ``event_log_leaf``, as the guard triggers
    write them. Returns the
    tombstones written. Run it in the transaction that drops the table (or keeps it), so
    that each event is recorded exactly once."""
    s = quote_identifier(schema)
    erasures = f"{s}.{quote_identifier(ERASURES_TABLE)}"
    row = ", ".join(
        f"o.{column}::text" if column.endswith("_id") and column != "id" else f"o.{column}"
        for column in LEAF_COLUMNS
    )
    result = connection.execute(
        text(
            f"INSERT INTO {erasures} (kind, event_id, event_created_at, event_xid, "
            "session_id, user_id, project_id, agent_id, leaf) "
            "SELECT 'retention', o.id, o.created_at, o.xid, o.session_id::text, "
            "o.user_id::text, o.project_id::text, o.agent_id::text, "
            # The row's own: raw SQL can store an id twice on the partitioned layout.
            f"coalesce((SELECT e.leaf FROM {erasures} e WHERE e.event_id = o.id "
            "AND e.event_created_at = o.created_at "
            f"ORDER BY e.seq LIMIT 1), {s}.event_log_leaf({row})) "
            f"FROM {s}.{quote_identifier(name)} o ORDER BY o.xid, o.id"
        )
    )
    return int(result.rowcount)
