"""bound event_logs.created_at to the years 1 to 9999

Revision ID: evlaudit_0002
Revises: evlaudit_0001
Create Date: 2026-12-05

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Opt-in (branch ``eventlog_audit``, after ``evlaudit_0001``): the CHECK
``ck_event_logs_created_at_range`` on ``event_logs`` (and so on each of its partitions):
``created_at`` in the years 1 to 9999, UTC, as the writers store it. A row beyond (raw SQL at
``infinity``, in year 10000, BC) has no leaf the sealer and the guard agree on: it stops the
sealing, a BC one the verification, and an ``infinity`` one makes its cascade fail (its
tombstone's leaf is NULL). On INSERT the CHECK costs two comparisons per row.

The CHECK is added ``NOT VALID`` unless the host added it already, then validated: one scan
of the table, under the ACCESS EXCLUSIVE lock the ``ADD`` took, held until the upgrade
commits. A host who added it (``NOT VALID``, then ``VALIDATE CONSTRAINT``, which block
neither reads nor writes for the scan) gets no scan. Rows beyond refuse the upgrade, named.
One DO block does it, online and offline.

The downgrade drops the CHECK from ``event_logs``, its partitions and the tables detached from
it that kept theirs (in the schema of ``event_logs``).

Settings (first found wins): ``config.attributes["eventlog_persist"]`` (a dict), then
``-x eventlog_persist.<key>=<value>``, then an ``[eventlog_persist]`` section in alembic.ini:
``schema`` (of ``event_logs``; default: the search path), as for evlaudit_0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

revision = "evlaudit_0002"
down_revision = "evlaudit_0001"
branch_labels = None
depends_on = None

_SECTION = "eventlog_persist"
_BOUND = "ck_event_logs_created_at_range"
_EARLIEST = "0001-01-01 00:00:00+00"
_PAST_LATEST = "10000-01-01 00:00:00+00"


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


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _qualified(schema: str | None, name: str) -> str:
    return f"{_quote(schema)}.{_quote(name)}" if schema else _quote(name)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    table = _qualified(_setting("schema"), "event_logs")
    bound = (
        f"created_at >= {_literal(_EARLIEST)}::timestamptz "
        f"AND created_at < {_literal(_PAST_LATEST)}::timestamptz"
    )
    refusal = (
        "eventlog_persist: % row(s) of % have a created_at outside the years 1 to 9999 UTC "
        "(e.g. id %, created_at % UTC), which the writers never store and the audit cannot "
        "seal; evlaudit_0002 bounds created_at with a CHECK. Delete or correct those rows "
        '(raw SQL wrote them; past evlaudit_0001 the guard refuses that: see "The bound on '
        'created_at" in docs/audit.md), then run this upgrade again'
    )
    try:
        op.execute(
            "DO $$ DECLARE beyond bigint; example record; BEGIN "
            "IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = "
            f"{_literal(table)}::regclass AND conname = {_literal(_BOUND)}) THEN "
            f"ALTER TABLE {table} ADD CONSTRAINT {_BOUND} CHECK ({bound}) NOT VALID; END IF; "
            f"BEGIN ALTER TABLE {table} VALIDATE CONSTRAINT {_BOUND}; "
            "EXCEPTION WHEN check_violation THEN "
            f"SELECT count(*) INTO beyond FROM {table} WHERE NOT ({bound}); "
            # Gone meanwhile (the failed VALIDATE's lock went with it): PostgreSQL's error.
            "IF beyond = 0 THEN RAISE; END IF; "
            "SELECT id, (created_at AT TIME ZONE 'UTC')::text AS at INTO example "
            f"FROM {table} WHERE NOT ({bound}) ORDER BY created_at LIMIT 1; "
            f"RAISE EXCEPTION {_literal(refusal)}, beyond, "
            f"{_literal(table)}::regclass::text, example.id, example.at "
            "USING ERRCODE = 'check_violation'; END; END $$"
        )
    except sa.exc.DBAPIError as error:  # the refusal above: its message alone, no traceback
        message = str(error.orig).split("\n", 1)[0]
        if not message.startswith("eventlog_persist:"):
            raise
        raise CommandError(message) from None


def downgrade() -> None:
    table = _qualified(_setting("schema"), "event_logs")
    # Off event_logs and its partitions, then off the tables detached from it that kept theirs.
    op.execute(f"ALTER TABLE IF EXISTS {table} DROP CONSTRAINT IF EXISTS {_BOUND}")
    op.execute(
        "DO $$ DECLARE found regclass; BEGIN FOR found IN SELECT k.conrelid::regclass FROM "
        "pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        f"WHERE k.conname = {_literal(_BOUND)} AND k.contype = 'c' AND c.relnamespace = "
        f"(SELECT relnamespace FROM pg_class WHERE oid = to_regclass({_literal(table)})) LOOP "
        f"EXECUTE format('ALTER TABLE %s DROP CONSTRAINT {_BOUND}', found); END LOOP; END $$"
    )
