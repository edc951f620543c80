"""partition event_logs by created_at

Revision ID: evlpart_0001
Revises:
Create Date: 2026-12-01

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Opt-in (branch ``eventlog_partitioned``, depends on ``evl_0002``): turns an EMPTY
``event_logs`` into a table range-partitioned on ``created_at``. The primary key becomes
``(id, created_at)`` (PostgreSQL requires the partition key in it); the foreign keys, their
ON DELETE actions and the four indexes keep their names. There is no DEFAULT partition: the
partition holding the current week (or month) and ``partitions_ahead`` more after it are
created, named ``event_logs_pYYYYMMDD`` after their first day (UTC). A table that holds rows
is refused: ``eventlog-persist convert`` (``convert_to_partitioned``) converts a filled table
online, and this revision then finds ``event_logs`` partitioned and changes nothing.

The downgrade turns the partitioned table back into the plain one and keeps every row (they
are copied in one transaction, under an ACCESS EXCLUSIVE lock for the whole copy); it stops
while a partition's detach is pending (an interrupted ``DETACH ... CONCURRENTLY``), whose rows
it could not copy.

Both directions keep what a host gave ``event_logs``: its owner, its grants (table and
columns), its comments and its own indexes, recreated under their names (not its own
constraints, triggers or policies).

Both directions keep the opt-in feed's column ``xid`` (revision ``evlfeed_0001``, of another
branch, which may run before or after this one) with its default, and build its index
``ix_event_logs_xid_id`` on the new table when the column is there.

Likewise for the opt-in audit (revision ``evlaudit_0001``): when its functions are there,
both directions put its three guard triggers on the new ``event_logs`` and, partitioned, on
each of its partitions; and its CHECK on ``created_at`` (``evlaudit_0002``), when the old
table has it, on the new one (whose partitions inherit it).

Settings (first found wins): ``config.attributes["eventlog_persist"]`` (a dict), then
``-x eventlog_persist.<key>=<value>``, then an ``[eventlog_persist]`` section in alembic.ini:

- ``schema``, ``users``, ``chat_sessions``, ``user_projects``, ``user_agents``: as for
  evl_0001 (the schema and the host tables the foreign keys reference);
- ``partition_interval``: ``week`` (default; weeks start on Monday, UTC) or ``month``;
- ``partitions_ahead``: partitions created after the current one, 1 to 52 (default 4).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

revision = "evlpart_0001"
down_revision = None
branch_labels = ("eventlog_partitioned",)
depends_on = "evl_0002"

_SECTION = "eventlog_persist"
_TARGETS = {
    "session_id": ("chat_sessions", "CASCADE"),
    "user_id": ("users", "CASCADE"),
    "project_id": ("user_projects", "SET NULL"),
    "agent_id": ("user_agents", "SET NULL"),
}
_INDEXES = (
    ("ix_event_logs_session_id_created_at", "session_id", None),
    ("ix_event_logs_user_id_created_at", "user_id", None),
    ("ix_event_logs_project_id_created_at", "project_id", "project_id IS NOT NULL"),
    ("ix_event_logs_agent_id_created_at", "agent_id", "agent_id IS NOT NULL"),
)
_INTERVALS = ("week", "month")
_MAX_AHEAD = 52
_FEED_INDEX = "ix_event_logs_xid_id"  # of the opt-in feed (evlfeed_0001), when present
_PLAIN = "event_logs_evlpart_plain"
_PARTITIONED = "event_logs_evlpart_partitioned"


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


def _interval() -> str:
    raw = (_setting("partition_interval") or "week").strip().lower()
    if raw not in _INTERVALS:
        raise CommandError(
            f"eventlog_persist: partition_interval={raw!r} is not supported; use 'week' "
            "(default) or 'month'. Shorter intervals create hundreds of partitions, and the "
            "ON DELETE CASCADE of a session or user and the planning of every query that "
            "does not bound created_at cost more with each partition"
        )
    return raw


def _ahead() -> int:
    raw = (_setting("partitions_ahead") or "4").strip()
    if not raw.isdigit() or not 1 <= int(raw) <= _MAX_AHEAD:
        raise CommandError(
            f"eventlog_persist: partitions_ahead={raw!r} is not valid; use a whole number "
            f"from 1 to {_MAX_AHEAD} (default 4): every partition adds to the cost of "
            "cascading deletes and of planning unbounded queries"
        )
    return int(raw)


def _start_of(moment: datetime, interval: str) -> datetime:
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def _next(start: datetime, interval: str) -> datetime:
    if interval == "week":
        return start + timedelta(days=7)
    return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)


def _partitions(now: datetime, interval: str, ahead: int) -> list[tuple[str, datetime, datetime]]:
    """``(name, from, to)`` of the partition holding ``now`` and ``ahead`` partitions after it."""
    start = _start_of(now, interval)
    found = []
    for _ in range(ahead + 1):
        end = _next(start, interval)
        found.append((f"event_logs_p{start:%Y%m%d}", start, end))
        start = end
    return found


def _refuse_rows(schema: str | None, table: str, message: str) -> None:
    """Fail unless the table is empty: with a clear error online, from the script offline."""
    name = _qualified(schema, table)
    if context.is_offline_mode():
        literal = message.replace("'", "''")
        op.execute(
            f"DO $$ BEGIN IF EXISTS (SELECT 1 FROM {name}) THEN "
            f"RAISE EXCEPTION '{literal}'; END IF; END $$"
        )
        return
    if op.get_bind().execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {name})")).scalar():
        raise CommandError(message)


def _rebuild(schema: str | None, *, partitioned: bool) -> None:
    """Replace ``event_logs`` by a table of the same columns in the other layout, rows kept."""
    old = _PLAIN if partitioned else _PARTITIONED
    op.execute(f"ALTER TABLE {_qualified(schema, 'event_logs')} RENAME TO {_quote(old)}")
    layout = " PARTITION BY RANGE (created_at)" if partitioned else ""
    # LIKE copies the columns in order with their types, NOT NULLs and defaults; the keys and
    # indexes are declared below under their own names.
    op.execute(
        f"CREATE TABLE {_qualified(schema, 'event_logs')} "
        f"(LIKE {_qualified(schema, old)} INCLUDING DEFAULTS){layout}"
    )
    _audit_bound(schema, old)
    _carry_over(schema, old)
    if not partitioned:
        op.execute(
            f"INSERT INTO {_qualified(schema, 'event_logs')} "
            f"SELECT * FROM {_qualified(schema, old)}"
        )
    # Its constraints, indexes and (for the partitioned table) partitions go with it.
    op.execute(f"DROP TABLE {_qualified(schema, old)}")
    key = "id, created_at" if partitioned else "id"
    op.execute(
        f"ALTER TABLE {_qualified(schema, 'event_logs')} "
        f"ADD CONSTRAINT pk_event_logs PRIMARY KEY ({key})"
    )
    for column, (target, ondelete) in _TARGETS.items():
        table = _setting(target) or target
        op.execute(
            f"ALTER TABLE {_qualified(schema, 'event_logs')} "
            f"ADD CONSTRAINT {_quote('fk_event_logs_' + column)} FOREIGN KEY ({column}) "
            f"REFERENCES {_qualified(schema, table)} (id) ON DELETE {ondelete}"
        )
    for name, column, where in _INDEXES:
        condition = f" WHERE {where}" if where else ""
        op.execute(
            f"CREATE INDEX {_quote(name)} ON {_qualified(schema, 'event_logs')} "
            f"({column}, created_at){condition}"
        )
    _feed_index(schema)


def _carry_over(schema: str | None, old: str) -> None:
    """What the host gave the old table, on the new one: its owner, its grants (on the table
    and on columns), its comments, and its own indexes (their names kept: each old one is
    renamed away first). One DO block, online and offline."""
    table = _qualified(schema, "event_logs").replace("'", "''")
    source = _qualified(schema, old).replace("'", "''")
    ours = ", ".join(
        f"'{name}'" for name in ("pk_event_logs", _FEED_INDEX, *(i[0] for i in _INDEXES))
    )
    grantee = (
        "CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END"
    )
    option = "CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END"
    op.execute(
        "DO $$ DECLARE "
        f"src regclass := '{source}'::regclass; dst regclass := '{table}'::regclass; "
        "src_name text; item record; BEGIN "
        "SELECT format('%I.%I', n.nspname, c.relname) INTO src_name FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = src; "
        "EXECUTE format('ALTER TABLE %s OWNER TO %I', dst, "
        "(SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = src)); "
        # The new table's privileges become the old one's exactly: none first (not those
        # the migrating role's default privileges gave it, nor the owner's own), then the
        # old ones, the owner's included (NULL: the defaults, the owner's all).
        "FOR item IN SELECT DISTINCT "
        f"{grantee} AS grantee FROM pg_class c, "
        "aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a WHERE c.oid = dst LOOP "
        "EXECUTE format('REVOKE ALL ON %s FROM %s', dst, item.grantee); END LOOP; "
        "FOR item IN SELECT a.privilege_type AS privilege, "
        f"{grantee} AS grantee, {option} AS option FROM pg_class c, "
        "aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a WHERE c.oid = src LOOP "
        "EXECUTE format('GRANT %s ON %s TO %s%s', item.privilege, dst, item.grantee, "
        "item.option); END LOOP; "
        "FOR item IN SELECT t.attname, a.privilege_type AS privilege, "
        f"{grantee} AS grantee, {option} AS option FROM pg_attribute t, aclexplode(t.attacl) a "
        "WHERE t.attrelid = src AND t.attnum > 0 AND NOT t.attisdropped LOOP "
        "EXECUTE format('GRANT %s (%I) ON %s TO %s%s', item.privilege, item.attname, dst, "
        "item.grantee, item.option); END LOOP; "
        "EXECUTE format('COMMENT ON TABLE %s IS %L', dst, obj_description(src, 'pg_class')); "
        "FOR item IN SELECT t.attname, d.description FROM pg_attribute t JOIN pg_description d "
        "ON d.objoid = src AND d.classoid = 'pg_class'::regclass AND d.objsubid = t.attnum "
        "WHERE t.attrelid = src AND t.attnum > 0 LOOP "
        "EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', dst, item.attname, item.description); "
        "END LOOP; "
        "FOR item IN SELECT i.indexrelid AS old_index, pg_get_indexdef(i.indexrelid) AS "
        "definition FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        f"WHERE i.indrelid = src AND c.relname NOT IN ({ours}) LOOP "
        "EXECUTE format('ALTER INDEX %s RENAME TO %I', item.old_index::regclass, "
        "'evlpart_' || item.old_index::text); "
        "EXECUTE replace(replace(item.definition, ' ON ONLY ' || src_name || ' ', "
        "' ON ' || dst::text || ' '), ' ON ' || src_name || ' ', ' ON ' || dst::text || ' '); "
        "END LOOP; END $$"
    )


def _audit_bound(schema: str | None, old: str) -> None:
    """The audit's CHECK on ``created_at`` (evlaudit_0002), when the old table has it, on the
    new one (partitions inherit it): one DO block, online and offline."""
    name = "ck_event_logs_created_at_range"
    table = _qualified(schema, "event_logs").replace("'", "''")
    source = _qualified(schema, old).replace("'", "''")
    op.execute(
        "DO $$ DECLARE definition text; BEGIN SELECT pg_get_constraintdef(oid) INTO definition "
        f"FROM pg_constraint WHERE conrelid = '{source}'::regclass AND conname = '{name}'; "
        f"IF definition IS NOT NULL THEN EXECUTE format('ALTER TABLE %s ADD CONSTRAINT {name} "
        f"%s', '{table}', definition); END IF; END $$"
    )


def _feed_index(schema: str | None) -> None:
    """The feed's index, when its column came along (LIKE copied it): the new table is built
    under an ACCESS EXCLUSIVE lock anyway, so a plain CREATE INDEX."""
    table = _qualified(schema, "event_logs")
    create = f"CREATE INDEX {_quote(_FEED_INDEX)} ON {table} (xid, id)"
    if context.is_offline_mode():
        literal = create.replace("'", "''")
        op.execute(
            "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
            f"'{table}'::regclass AND attname = 'xid' AND NOT attisdropped) THEN "
            f"EXECUTE '{literal}'; END IF; END $$"
        )
        return
    found = op.get_bind().execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:name) "
            "AND attname = 'xid' AND NOT attisdropped)"
        ),
        {"name": table},
    )
    if found.scalar():
        op.execute(create)


def _audit_guard(schema: str | None) -> None:
    """The audit's guard triggers (evlaudit_0001, when it ran first) on the new table and its
    partitions: a statement trigger fires only on the table the statement names."""

    def function(suffix: str) -> str:
        return _qualified(schema, f"event_log_audit_{suffix}") + "()"

    guard = (
        "CREATE TRIGGER event_logs_audit_delete AFTER DELETE ON %s "
        "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {function('on_delete')}",
        "CREATE TRIGGER event_logs_audit_update AFTER UPDATE ON %s "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {function('on_update')}",
        "CREATE TRIGGER event_logs_audit_truncate BEFORE TRUNCATE ON %s "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function('refuse_truncate')}",
    )

    def each(variable: str) -> str:
        return " ".join(
            f"EXECUTE format('{statement.replace(chr(39), chr(39) * 2)}', {variable});"
            for statement in guard
        )

    table = _qualified(schema, "event_logs").replace("'", "''")
    probe = function("on_delete").replace("'", "''")
    op.execute(
        f"DO $$ DECLARE parent regclass := '{table}'::regclass; part regclass; BEGIN "
        f"IF to_regprocedure('{probe}') IS NULL THEN RETURN; END IF; {each('parent')} "
        "FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = parent "
        f"LOOP {each('part')} END LOOP; END $$"
    )


def _converted(schema: str | None) -> bool:
    """Whether ``event_logs`` is partitioned already (converted online): online mode only."""
    if context.is_offline_mode():
        return False
    kind = op.get_bind().execute(
        sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"),
        {"name": _qualified(schema, "event_logs")},
    )
    return kind.scalar() == "p"


def upgrade() -> None:
    schema = _setting("schema")
    interval = _interval()
    ahead = _ahead()
    if _converted(schema):
        # 'eventlog-persist convert' did this revision's work online: only the stamp is left.
        return
    _refuse_rows(
        schema,
        "event_logs",
        "eventlog_persist: event_logs holds rows; evlpart_0001 partitions only an empty "
        "event_logs (a fresh adoption). Convert a filled table online first with "
        "'eventlog-persist convert --url ...' (see 'Partitioned layout' in "
        "docs/adoption.md), then run this upgrade again: it finds the table partitioned "
        "and only records the revision (offline: 'alembic stamp' it)",
    )
    _rebuild(schema, partitioned=True)
    for name, start, end in _partitions(datetime.now(UTC), interval, ahead):
        op.execute(
            f"CREATE TABLE {_qualified(schema, name)} PARTITION OF "
            f"{_qualified(schema, 'event_logs')} FOR VALUES FROM ('{start.isoformat()}') "
            f"TO ('{end.isoformat()}')"
        )
    _audit_guard(schema)


_PENDING_MESSAGE = (
    "eventlog_persist: partition %s of event_logs is still being detached (an interrupted "
    "DETACH ... CONCURRENTLY): the plain table would not get its rows, and the downgrade "
    "would drop it with them. Finish the detach first: run 'eventlog-persist partitions "
    "drop' again (it completes what the interrupted run was doing, in event_logs' schema), "
    "or ALTER TABLE event_logs DETACH PARTITION %s FINALIZE and keep or drop that table "
    "yourself"
)


def _refuse_pending_detach(schema: str | None) -> None:
    """Stop when a partition's detach is pending: ``SELECT * FROM event_logs`` leaves it
    out, while ``DROP TABLE`` of the renamed table drops it (PostgreSQL 14+)."""
    parent = _qualified(schema, "event_logs").replace("'", "''")
    if context.is_offline_mode():
        message = _PENDING_MESSAGE.replace("'", "''")
        op.execute(
            "DO $$ DECLARE pending text; BEGIN IF current_setting('server_version_num')::int "
            ">= 140000 THEN EXECUTE 'SELECT i.inhrelid::regclass::text FROM pg_inherits i "
            f"WHERE i.inhparent = ''{parent.replace(chr(39), chr(39) * 2)}''::regclass AND "
            "i.inhdetachpending LIMIT 1' INTO pending; END IF; IF pending IS NOT NULL THEN "
            "RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state', MESSAGE = "
            f"format('{message}', pending, pending); END IF; END $$"
        )
        return
    bind = op.get_bind()
    if int(bind.execute(sa.text("SHOW server_version_num")).scalar_one()) < 140000:
        return
    pending = bind.execute(
        sa.text(
            "SELECT i.inhrelid::regclass::text FROM pg_inherits i WHERE i.inhparent = "
            f"'{parent}'::regclass AND i.inhdetachpending LIMIT 1"
        )
    ).scalar()
    if pending is not None:
        raise CommandError(_PENDING_MESSAGE % (pending, pending))


def downgrade() -> None:
    schema = _setting("schema")
    _refuse_pending_detach(schema)
    if not context.is_offline_mode():
        twice = op.get_bind().execute(
            sa.text(
                f"SELECT id FROM {_qualified(schema, 'event_logs')} "
                "GROUP BY id HAVING count(*) > 1 LIMIT 1"
            )
        )
        duplicate = twice.scalar()
        if duplicate is not None:
            raise CommandError(
                f"eventlog_persist: event id {duplicate} is stored more than once (with "
                "different created_at values), so the plain layout's primary key (id) cannot "
                "hold the rows; delete the extra copies first"
            )
    _rebuild(schema, partitioned=False)
    _audit_guard(schema)
