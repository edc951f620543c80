"""add request and trace ids to event_logs

Revision ID: evl_0002
Revises: evl_0001
Create Date: 2026-11-30

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Adds three nullable columns, ``request_id`` (varchar 128), ``trace_id`` (varchar 32) and
``span_id`` (varchar 16), filled from the event context. Adding a nullable column without
a default only changes the catalog, so the upgrade takes a moment on a table of any size;
it holds an ACCESS EXCLUSIVE lock for that moment. The downgrade drops the columns and the
values in them.

Setting (first found wins): ``config.attributes["eventlog_persist"]["schema"]``, then
``-x eventlog_persist.schema=<name>``, then ``schema`` in the ``[eventlog_persist]``
section of alembic.ini: the schema of ``event_logs`` (default: search_path).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "evl_0002"
down_revision = "evl_0001"
branch_labels = None
depends_on = None

_SECTION = "eventlog_persist"
_COLUMNS = (("request_id", 128), ("trace_id", 32), ("span_id", 16))


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


def upgrade() -> None:
    schema = _schema()
    for name, length in _COLUMNS:
        op.add_column(
            "event_logs", sa.Column(name, sa.String(length), nullable=True), schema=schema
        )


def downgrade() -> None:
    schema = _schema()
    for name, _ in reversed(_COLUMNS):
        op.drop_column("event_logs", name, schema=schema)
