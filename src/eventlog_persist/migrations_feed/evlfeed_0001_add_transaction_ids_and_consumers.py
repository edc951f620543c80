"""add transaction ids and feed consumers

Revision ID: evlfeed_0001
Revises:
Create Date: 2026-12-02

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Opt-in (branch ``eventlog_feed``, depends on ``evl_0002``); the one owner of the column
``event_logs.xid``, which later revisions that need a row's transaction depend on.

1. ``event_logs.xid xid8``: the id of the transaction that wrote the row. It is added
   without a default, then given the default ``pg_current_xact_id()``: both are catalog-only
   changes (no table rewrite, a brief ACCESS EXCLUSIVE lock), rows already stored keep
   ``xid`` NULL, and every row written afterwards gets its transaction's id, whatever
   statement writes it (INSERT, COPY) as long as it does not name the column.
2. ``event_log_consumers``: one row per named feed consumer (and part): its checkpoint, its
   lease, the generation that fences a worker that lost its lease, and the events retention
   removed before they were delivered (``lost_*``).
3. The index ``ix_event_logs_xid_id`` on ``(xid, id)``, built CONCURRENTLY (writers go on)
   in an autocommit block: the steps above are committed first. On the partitioned layout
   the index is created ON ONLY the parent, then built CONCURRENTLY on each partition and
   attached; partitions created later get theirs when they are created or attached. An
   interrupted build (an INVALID index) is dropped and built again by the next upgrade,
   which finds the column and the table there already.

Offline (``--sql``) the partitions cannot be listed: the script builds the index for the
plain layout and stops with an error on a partitioned ``event_logs`` (upgrade online).

The downgrade drops the consumers table and the column, its index with it (on every
partition), in one transaction.

Setting (first found wins): ``config.attributes["eventlog_persist"]["schema"]``, then
``-x eventlog_persist.schema=<name>``, then ``schema`` in the ``[eventlog_persist]``
section of alembic.ini: the schema of ``event_logs`` (default: search_path).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

revision = "evlfeed_0001"
down_revision = None
branch_labels = ("eventlog_feed",)
depends_on = "evl_0002"

_SECTION = "eventlog_persist"
_INDEX = "ix_event_logs_xid_id"
_CONSUMERS = "event_log_consumers"
_MAX_NAME = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes


def _schema() -> str | None:
    config = context.config
    attributes = config.attributes.get(_SECTION) or {}
    if attributes.get("schema") is not None:
        return str(attributes["schema"])
    x_arguments = context.get_x_argument(as_dictionary=True)
    if f"{_SECTION}.schema" in x_arguments:
        return str(x_arguments[f"{_SECTION}.schema"])
    if config.file_config.has_option(_SECTION, "schema"):
        return config.file_config.get(_SECTION, "schema")
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str | None, name: str) -> str:
    return f"{_quote(schema)}.{_quote(name)}" if schema else _quote(name)


def _partition_index(partition: str) -> str:
    """``<partition>_xid_id_idx``, cut to PostgreSQL's name length as it would cut it."""
    suffix = "_xid_id_idx"
    head = partition.encode()[: _MAX_NAME - len(suffix)].decode(errors="ignore")
    return head + suffix


def _columns_and_table(schema: str | None) -> None:
    table = _qualified(schema, "event_logs")
    # No default in ADD COLUMN: a volatile default would rewrite the table. SET DEFAULT only
    # changes the catalog, and applies to rows written from then on (on every partition).
    op.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS xid xid8")
    op.execute(f"ALTER TABLE {table} ALTER COLUMN xid SET DEFAULT pg_current_xact_id()")
    op.execute(
        f"CREATE TABLE IF NOT EXISTS {_qualified(schema, _CONSUMERS)} ("
        "consumer varchar(128) NOT NULL, "
        "part smallint NOT NULL DEFAULT 0, "
        "parts smallint NOT NULL DEFAULT 1, "
        "snapshot_done pg_snapshot NOT NULL, "
        "snapshot_target pg_snapshot, "
        "after_xid xid8, "
        "after_id uuid, "
        "backfill_since timestamp with time zone, "
        "backfill_after uuid, "
        "owner varchar(200), "
        "lease_until timestamp with time zone, "
        "generation bigint NOT NULL DEFAULT 0, "
        "delivered bigint NOT NULL DEFAULT 0, "
        "created_at timestamp with time zone NOT NULL DEFAULT now(), "
        "committed_at timestamp with time zone, "
        "lost_events bigint, "
        "lost_before timestamp with time zone, "
        "lost_at timestamp with time zone, "
        "lost_by varchar(64), "
        f"CONSTRAINT {_quote('pk_' + _CONSUMERS)} PRIMARY KEY (consumer, part), "
        f"CONSTRAINT {_quote('ck_' + _CONSUMERS + '_part')} "
        "CHECK (part >= 0 AND part < parts))"
    )


def _offline_index(schema: str | None) -> None:
    table = _qualified(schema, "event_logs")
    literal = (
        "eventlog_persist: event_logs is partitioned; evlfeed_0001 builds its index on each "
        "partition, which an offline script cannot list. Run this upgrade online"
    )
    op.execute(
        f"DO $$ BEGIN IF (SELECT relkind FROM pg_class WHERE oid = '{table}'::regclass) = 'p' "
        f"THEN RAISE EXCEPTION '{literal}'; END IF; END $$"
    )
    with context.get_context().autocommit_block():
        op.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_quote(_INDEX)} ON {table} (xid, id)")


def _drop_if_invalid(schema: str | None, name: str) -> None:
    """Drop an index an interrupted CONCURRENTLY build left INVALID (autocommit only)."""
    invalid = op.get_bind().execute(
        sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
        {"name": _qualified(schema, name)},
    )
    if invalid.scalar():
        op.execute(f"DROP INDEX CONCURRENTLY {_qualified(schema, name)}")


def _online_index(schema: str | None) -> None:
    table = _qualified(schema, "event_logs")
    bind = op.get_bind()
    kind = bind.execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"), {"name": table}
    ).scalar()
    with context.get_context().autocommit_block():
        if kind != "p":
            _drop_if_invalid(schema, _INDEX)
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_quote(_INDEX)} ON {table} (xid, id)"
            )
            return
        # First the parent's index (invalid until every partition's is attached): from now
        # on each partition created or attached gets an index of its own.
        op.execute(f"CREATE INDEX IF NOT EXISTS {_quote(_INDEX)} ON ONLY {table} (xid, id)")
        partitions = bind.execute(
            sa.text(
                "SELECT n.nspname, c.relname, c.relkind, EXISTS ("
                "  SELECT 1 FROM pg_inherits x JOIN pg_index i ON i.indexrelid = x.inhrelid"
                "  WHERE x.inhparent = to_regclass(:index) AND i.indrelid = c.oid)"
                " FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE h.inhparent = to_regclass(:table) ORDER BY c.relname"
            ),
            {"table": table, "index": _qualified(schema, _INDEX)},
        ).all()
        for part_schema, name, part_kind, attached in partitions:
            if attached:
                continue
            if part_kind != "r":
                raise CommandError(
                    f"eventlog_persist: partition {part_schema}.{name} of event_logs is "
                    "partitioned itself; evlfeed_0001 supports one level of partitions. "
                    f"Create an index on (xid, id) under it and attach it to {_INDEX}, "
                    "then run the upgrade again"
                )
            index = _partition_index(name)
            _drop_if_invalid(part_schema, index)
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {_quote(index)} "
                f"ON {_qualified(part_schema, name)} (xid, id)"
            )
            op.execute(
                f"ALTER INDEX {_qualified(schema, _INDEX)} "
                f"ATTACH PARTITION {_qualified(part_schema, index)}"
            )
        valid = bind.execute(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)"),
            {"name": _qualified(schema, _INDEX)},
        ).scalar()
        if not valid:
            raise CommandError(
                f"eventlog_persist: the index {_INDEX} of the partitioned event_logs is not "
                "valid after its partitions' indexes were attached (a partition was added "
                "meanwhile?); run 'alembic upgrade' again"
            )


def upgrade() -> None:
    schema = _schema()
    _columns_and_table(schema)
    if context.is_offline_mode():
        _offline_index(schema)
    else:
        _online_index(schema)


def downgrade() -> None:
    schema = _schema()
    op.execute(f"DROP TABLE IF EXISTS {_qualified(schema, _CONSUMERS)}")
    # Drops the index with it, and the column of every partition.
    op.execute(f"ALTER TABLE {_qualified(schema, 'event_logs')} DROP COLUMN IF EXISTS xid")
