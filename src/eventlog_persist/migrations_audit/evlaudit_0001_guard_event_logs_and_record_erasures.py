"""guard event_logs and record erasures

Revision ID: evlaudit_0001
Revises:
Create Date: 2026-12-03

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Opt-in (branch ``eventlog_audit``, depends on the feed's ``evlfeed_0001``, whose column
``event_logs.xid`` the seal windows use). Nothing here runs on INSERT: the insert path is
unchanged.

1. ``event_log_canonical_json(jsonb)`` and ``event_log_leaf(...)``: the canonical leaf of an
   event (docs/audit.md, "The leaf"), as SHA-256 over ``0x00`` and the canonical document.
   Nothing in them depends on a session setting (TimeZone, DateStyle, extra_float_digits).
2. ``event_log_erasures``: one tombstone per erased event (ids and the event's first-written
   leaf hash, never content), kind ``cascade``, ``set_null``, ``retention`` or ``erasure``.
3. ``event_log_seals``: the hash-chained seals, written by the sealer (``seal_events``):
   each seal's chunk roots and the last (xid, id) of each chunk (``chunk_ends``).
4. Guard triggers on ``event_logs``, statement-level, AFTER with transition tables (one
   INSERT of tombstones per statement):

   - DELETE: rows whose chat session or user no longer exists (ON DELETE CASCADE) are
     recorded as ``cascade``; any other row needs a declared erasure in the transaction,
     ``SET LOCAL eventlog.erasure = 'retention'`` (or ``'erasure'``), and is recorded with
     that kind; otherwise the whole statement is refused.
   - UPDATE: only ON DELETE SET NULL: ``project_id`` / ``agent_id`` set to NULL because their
     project / agent no longer exists, nothing else changed; recorded as ``set_null``.
   - TRUNCATE (also ``TRUNCATE chat_sessions CASCADE``): refused.

   Tombstones are written by SECURITY DEFINER functions (owned by the role running this
   migration), so the roles that delete need no privilege on ``event_log_erasures``.
5. ``event_log_erasures`` and ``event_log_seals`` are append-only: UPDATE, DELETE and
   TRUNCATE are refused.

On the partitioned layout (``evlpart_0001``, before or after this revision) the same three
triggers are created on the partitioned ``event_logs`` (statements that name it, FK actions
included) and on each of its partitions (statements that name a partition fire only that
partition's statement triggers). Partitions created later get them from
``ensure_partitions``; ``evlpart_0001``, when it runs after this revision, puts them on the
table it builds and its partitions (docs/audit.md, "Partitioned tables").

The downgrade drops the triggers (on every table that has them), functions and both tables.

Settings (first found wins): ``config.attributes["eventlog_persist"]`` (a dict), then
``-x eventlog_persist.<key>=<value>``, then an ``[eventlog_persist]`` section in alembic.ini:
``schema`` (of ``event_logs`` and the host tables; required offline), ``users``,
``chat_sessions``, ``user_projects``, ``user_agents`` (host table names), as for evl_0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

revision = "evlaudit_0001"
down_revision = None
branch_labels = ("eventlog_audit",)
depends_on = "evlfeed_0001"

_SECTION = "eventlog_persist"
_HOST_TABLES = ("chat_sessions", "users", "user_projects", "user_agents")
_ERASURES = "event_log_erasures"
_SEALS = "event_log_seals"
_FUNCTIONS = (
    "event_log_audit_on_delete()",
    "event_log_audit_on_update()",
    "event_log_audit_refuse_truncate()",
    "event_log_audit_append_only()",
    "event_log_leaf(uuid, text, text, text, text, text, jsonb, timestamp with time zone, "
    "text, text, text, text, text, text, xid8)",
    "event_log_canonical_json(jsonb)",
)


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


def _names() -> dict[str, str]:
    """Schema-qualified names of event_logs, the host tables and this revision's objects.

    The trigger functions run with ``search_path = pg_catalog``, so every name they use is
    qualified; online the schema is the one where the tables are, offline it is a setting.
    """
    schema = _setting("schema")
    tables = {"event_logs": "event_logs"}
    tables.update({table: _setting(table) or table for table in _HOST_TABLES})
    if context.is_offline_mode():
        if schema is None:
            raise CommandError(
                "eventlog_persist: evlaudit_0001 names the schema of event_logs in its "
                "trigger functions; offline (--sql) pass -x eventlog_persist.schema=public "
                "(or the schema of event_logs)"
            )
        names = {key: _qualified(schema, table) for key, table in tables.items()}
        names["schema"] = _quote(schema)
    else:
        bind = op.get_bind()
        names = {}
        for key, table in tables.items():
            found = bind.execute(
                sa.text(
                    "SELECT quote_ident(n.nspname), quote_ident(c.relname), c.relkind "
                    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.oid = to_regclass(:name)"
                ),
                {"name": _qualified(schema, table)},
            ).first()
            if found is None:
                raise CommandError(
                    f"eventlog_persist: table {_qualified(schema, table)} does not exist; "
                    "evlaudit_0001 guards event_logs and looks up its chat sessions, users, "
                    f"projects and agents. Name the host tables in the [{_SECTION}] section "
                    "of alembic.ini"
                )
            names[key] = f"{found[0]}.{found[1]}"
            if key == "event_logs":
                names["schema"] = found[0]
    names["erasures"] = f"{names['schema']}.{_quote(_ERASURES)}"
    names["seals"] = f"{names['schema']}.{_quote(_SEALS)}"
    return names


def _tables(n: dict[str, str]) -> None:
    op.execute(
        f"CREATE TABLE {n['erasures']} ("
        "seq bigint GENERATED ALWAYS AS IDENTITY, "
        "kind varchar(16) NOT NULL, "
        "event_id uuid NOT NULL, "
        "event_created_at timestamp with time zone NOT NULL, "
        "event_xid xid8, "
        "session_id varchar(36) NOT NULL, "
        "user_id varchar(36) NOT NULL, "
        "project_id varchar(36), "
        "agent_id varchar(36), "
        "leaf bytea NOT NULL, "
        "erased_at timestamp with time zone NOT NULL DEFAULT now(), "
        "erased_xid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
        "CONSTRAINT pk_event_log_erasures PRIMARY KEY (seq), "
        "CONSTRAINT ck_event_log_erasures_kind "
        "CHECK (kind IN ('cascade', 'set_null', 'retention', 'erasure')), "
        "CONSTRAINT ck_event_log_erasures_leaf CHECK (octet_length(leaf) = 32))"
    )
    # (event_id, seq): an event's earliest tombstone in one index probe, whatever the
    # statistics say (the table grows inside the very transaction that reads it).
    op.execute(
        f"CREATE INDEX ix_event_log_erasures_event_id_seq ON {n['erasures']} (event_id, seq)"
    )
    op.execute(
        f"CREATE INDEX ix_event_log_erasures_erased_xid_seq ON {n['erasures']} (erased_xid, seq)"
    )
    op.execute(
        f"CREATE TABLE {n['seals']} ("
        "seq bigint NOT NULL, "
        "xid_from xid8, "
        "xid_to xid8 NOT NULL, "
        "chunk_size integer NOT NULL, "
        "events bigint NOT NULL, "
        "erasures bigint NOT NULL, "
        "chunk_roots bytea NOT NULL, "
        "chunk_ends bytea NOT NULL, "
        "events_root bytea NOT NULL, "
        "erasures_root bytea NOT NULL, "
        "prev_hash bytea, "
        "seal_hash bytea NOT NULL, "
        "sealed_at timestamp with time zone NOT NULL DEFAULT now(), "
        "CONSTRAINT pk_event_log_seals PRIMARY KEY (seq), "
        "CONSTRAINT uq_event_log_seals_seal_hash UNIQUE (seal_hash), "
        "CONSTRAINT ck_event_log_seals_chain CHECK ((seq = 1) = (prev_hash IS NULL)), "
        "CONSTRAINT ck_event_log_seals_window CHECK (xid_from IS NULL OR xid_from <= xid_to), "
        "CONSTRAINT ck_event_log_seals_hashes CHECK ("
        "octet_length(events_root) = 32 AND octet_length(erasures_root) = 32 "
        "AND octet_length(seal_hash) = 32 AND coalesce(octet_length(prev_hash), 32) = 32 "
        "AND octet_length(chunk_roots) % 32 = 0 "
        "AND octet_length(chunk_ends) * 4 = octet_length(chunk_roots) * 3))"
    )


def _leaf_functions(n: dict[str, str]) -> None:
    # Canonical JSON: keys sorted by code point (COLLATE "C" on a UTF8 database), no
    # whitespace; strings and numbers exactly as jsonb prints them (numeric's text: no
    # exponent, no float formatting), so no session setting changes a byte. Only objects
    # and arrays recurse: a scalar is its jsonb text.
    op.execute(
        f"CREATE FUNCTION {n['schema']}.event_log_canonical_json(value jsonb) RETURNS text "
        "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $canonical$\n"
        "BEGIN\n"
        "  CASE jsonb_typeof(value)\n"
        "  WHEN 'object' THEN\n"
        "    RETURN '{' || coalesce((SELECT string_agg(to_jsonb(e.key)::text || ':' || "
        "CASE WHEN jsonb_typeof(e.value) IN ('object', 'array') THEN "
        f"{n['schema']}.event_log_canonical_json(e.value) ELSE e.value::text END, ',' "
        "ORDER BY e.key COLLATE \"C\") FROM jsonb_each(value) AS e), '') || '}';\n"
        "  WHEN 'array' THEN\n"
        "    RETURN '[' || coalesce((SELECT string_agg("
        "CASE WHEN jsonb_typeof(a.value) IN ('object', 'array') THEN "
        f"{n['schema']}.event_log_canonical_json(a.value) ELSE a.value::text END, ',' "
        "ORDER BY a.n) FROM jsonb_array_elements(value) WITH ORDINALITY AS a(value, n)), '') "
        "|| ']';\n"
        "  ELSE\n"
        "    RETURN value::text;\n"
        "  END CASE;\n"
        "END\n$canonical$"
    )
    # The leaf: SHA-256 of 0x00 and the canonical document of the row (keys in code point
    # order, ids as text, created_at in UTC with microseconds, xid as a decimal string).
    op.execute(
        f"CREATE FUNCTION {n['schema']}.event_log_leaf("
        "id uuid, session_id text, user_id text, project_id text, agent_id text, "
        "event_type text, payload jsonb, created_at timestamp with time zone, "
        "error_code text, tool_name text, approval_status text, request_id text, "
        "trace_id text, span_id text, xid xid8) RETURNS bytea "
        "LANGUAGE sql STABLE PARALLEL SAFE AS $leaf$\n"
        "SELECT sha256(decode('00', 'hex') || convert_to("
        "'{\"agent_id\":' || coalesce(to_jsonb(agent_id)::text, 'null')"
        " || ',\"approval_status\":' || coalesce(to_jsonb(approval_status)::text, 'null')"
        " || ',\"created_at\":\"' || to_char(created_at AT TIME ZONE 'UTC', "
        '\'YYYY-MM-DD"T"HH24:MI:SS.US"Z"\') || \'"\''
        " || ',\"error_code\":' || coalesce(to_jsonb(error_code)::text, 'null')"
        " || ',\"event_type\":' || to_jsonb(event_type)::text"
        " || ',\"id\":\"' || id::text || '\"'"
        f" || ',\"payload\":' || {n['schema']}.event_log_canonical_json(payload)"
        " || ',\"project_id\":' || coalesce(to_jsonb(project_id)::text, 'null')"
        " || ',\"request_id\":' || coalesce(to_jsonb(request_id)::text, 'null')"
        " || ',\"session_id\":' || to_jsonb(session_id)::text"
        " || ',\"span_id\":' || coalesce(to_jsonb(span_id)::text, 'null')"
        " || ',\"tool_name\":' || coalesce(to_jsonb(tool_name)::text, 'null')"
        " || ',\"trace_id\":' || coalesce(to_jsonb(trace_id)::text, 'null')"
        " || ',\"user_id\":' || to_jsonb(user_id)::text"
        # '"v":' and '1' apart: a colon before a digit would be read as a bind parameter.
        " || ',\"v\":' || '1,\"xid\":' || coalesce('\"' || xid::text || '\"', 'null')"
        " || '}', 'UTF8'))\n$leaf$"
    )


def _leaf_of(row: str, n: dict[str, str]) -> str:
    """SQL for the leaf of transition-table row ``row``."""
    return (
        f"{n['schema']}.event_log_leaf({row}.id, {row}.session_id::text, {row}.user_id::text, "
        f"{row}.project_id::text, {row}.agent_id::text, {row}.event_type, {row}.payload, "
        f"{row}.created_at, {row}.error_code, {row}.tool_name, {row}.approval_status, "
        f"{row}.request_id, {row}.trace_id, {row}.span_id, {row}.xid)"
    )


def _tombstones(kind: str, n: dict[str, str]) -> str:
    """INSERT of one tombstone per row of ``old_rows``, with the event's first-written leaf."""
    return (
        f"INSERT INTO {n['erasures']} (kind, event_id, event_created_at, event_xid, "
        "session_id, user_id, project_id, agent_id, leaf)\n"
        f"  SELECT {kind}, o.id, o.created_at, o.xid, o.session_id::text, o.user_id::text, "
        "o.project_id::text, o.agent_id::text,\n"
        # An event recorded before (SET NULL) was first written with its old keys: its
        # earliest tombstone holds that leaf, which the seals hold.
        f"    coalesce((SELECT e.leaf FROM {n['erasures']} e WHERE e.event_id = o.id "
        f"ORDER BY e.seq LIMIT 1), {_leaf_of('o', n)})\n"
        "  FROM old_rows o;\n"
    )


_HOW_TO_DELETE = (
    "events are deleted only by ON DELETE CASCADE from chat_sessions or users, or after a "
    "declared erasure: run SET LOCAL eventlog.erasure = ''retention'' (or ''erasure'') in "
    "the same transaction first; each deleted event is then recorded in event_log_erasures"
)


def _guard_functions(n: dict[str, str]) -> None:
    header = "LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS "
    parent_gone = (
        f"(NOT EXISTS (SELECT 1 FROM {n['chat_sessions']} p WHERE p.id = o.session_id) "
        f"OR NOT EXISTS (SELECT 1 FROM {n['users']} p WHERE p.id = o.user_id))"
    )
    op.execute(
        f"CREATE FUNCTION {n['schema']}.event_log_audit_on_delete() RETURNS trigger "
        f"{header}$guard$\n"
        "DECLARE\n"
        "  declared text := nullif(current_setting('eventlog.erasure', true), '');\n"
        "  kept bigint;\n"
        "BEGIN\n"
        "  IF declared NOT IN ('retention', 'erasure') THEN\n"
        "    RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = format("
        "'eventlog_persist: DELETE from event_logs refused: eventlog.erasure = %L is not a "
        "kind of erasure; use SET LOCAL eventlog.erasure = ''retention'' or ''erasure''', "
        "declared);\n"
        "  END IF;\n"
        "  IF declared IS NULL THEN\n"
        f"    SELECT count(*) INTO kept FROM old_rows o WHERE NOT {parent_gone};\n"
        "    IF kept > 0 THEN\n"
        "      RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = format("
        "'eventlog_persist: DELETE from event_logs refused (%s of %s events still have their "
        f"chat session and user): {_HOW_TO_DELETE}', kept, "
        "(SELECT count(*) FROM old_rows));\n"
        "    END IF;\n"
        "  END IF;\n"
        + _tombstones(f"CASE WHEN {parent_gone} THEN 'cascade' ELSE declared END", n)
        + "  RETURN NULL;\nEND\n$guard$"
    )
    # ON DELETE SET NULL: each row changed only project_id / agent_id, to NULL, and only
    # where the project / agent is gone. Counted (a join of the two transition tables
    # counted once), never EXISTS over them: that plans a nested loop over both. The payload
    # is compared as jsonb (a number's scale is not compared: verification recomputes the
    # leaf); a revision that adds a column to event_logs replaces this function.
    op.execute(
        f"CREATE FUNCTION {n['schema']}.event_log_audit_on_update() RETURNS trigger "
        f"{header}$guard$\n"
        "DECLARE\n"
        "  total bigint;\n"
        "  allowed bigint;\n"
        "BEGIN\n"
        "  SELECT count(*) INTO total FROM old_rows;\n"
        "  SELECT count(*) INTO allowed FROM old_rows o JOIN new_rows w ON w.id = o.id\n"
        "  WHERE (w.session_id, w.user_id, w.event_type, w.payload, w.created_at, w.error_code, "
        "w.tool_name, w.approval_status, w.request_id, w.trace_id, w.span_id, w.xid)\n"
        "    IS NOT DISTINCT FROM (o.session_id, o.user_id, o.event_type, o.payload, "
        "o.created_at, o.error_code, o.tool_name, o.approval_status, o.request_id, "
        "o.trace_id, o.span_id, o.xid)\n"
        "    AND (w.project_id IS NOT DISTINCT FROM o.project_id OR (w.project_id IS NULL AND "
        f"NOT EXISTS (SELECT 1 FROM {n['user_projects']} p WHERE p.id = o.project_id)))\n"
        "    AND (w.agent_id IS NOT DISTINCT FROM o.agent_id OR (w.agent_id IS NULL AND "
        f"NOT EXISTS (SELECT 1 FROM {n['user_agents']} p WHERE p.id = o.agent_id)))\n"
        "    AND (w.project_id IS DISTINCT FROM o.project_id "
        "OR w.agent_id IS DISTINCT FROM o.agent_id);\n"
        "  IF allowed < total THEN\n"
        "    RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = format("
        "'eventlog_persist: UPDATE of event_logs refused (%s of %s rows are not ON DELETE SET "
        "NULL of their project or agent): events are append-only; the one change allowed is "
        "project_id or agent_id set to NULL when that project or agent is deleted. To remove "
        "an event, delete it after SET LOCAL eventlog.erasure = ''erasure'' (recorded in "
        "event_log_erasures)', total - allowed, total);\n"
        "  END IF;\n" + _tombstones("'set_null'", n) + "  RETURN NULL;\nEND\n$guard$"
    )
    op.execute(
        f"CREATE FUNCTION {n['schema']}.event_log_audit_refuse_truncate() RETURNS trigger "
        f"{header}$guard$\n"
        "BEGIN\n"
        "  RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = "
        "'eventlog_persist: TRUNCATE of event_logs refused: it would erase events without "
        "recording them. Delete them instead after SET LOCAL eventlog.erasure = ''retention'' "
        "(or ''erasure''), which records each in event_log_erasures; to remove the audit "
        "schema, run alembic downgrade eventlog_audit@base';\n"
        "END\n$guard$"
    )
    op.execute(
        f"CREATE FUNCTION {n['schema']}.event_log_audit_append_only() RETURNS trigger "
        f"{header}$guard$\n"
        "BEGIN\n"
        "  RAISE EXCEPTION USING ERRCODE = 'restrict_violation', MESSAGE = format("
        "'eventlog_persist: %s of %s refused: the audit records are append-only; to remove "
        "them all, run alembic downgrade eventlog_audit@base', TG_OP, TG_TABLE_NAME);\n"
        "END\n$guard$"
    )


def _guard_triggers(table: str, function: str) -> list[str]:
    """The three guard triggers on ``table`` (SQL text: a name or ``%s`` in a format())."""
    return [
        f"CREATE TRIGGER event_logs_audit_delete AFTER DELETE ON {table} "
        "REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {function}_on_delete()",
        f"CREATE TRIGGER event_logs_audit_update AFTER UPDATE ON {table} "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT "
        f"EXECUTE FUNCTION {function}_on_update()",
        f"CREATE TRIGGER event_logs_audit_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {function}_refuse_truncate()",
    ]


def _triggers(n: dict[str, str]) -> None:
    function = f"{n['schema']}.event_log_audit"
    for statement in _guard_triggers(n["event_logs"], function):
        op.execute(statement)
    # Partitioned: PostgreSQL fires a statement trigger only on the table the statement
    # names, and clones only row-level triggers to partitions, so each partition gets the
    # same three (one DO block: it runs offline too, and on the plain layout loops over
    # nothing).
    each = "; ".join(
        "EXECUTE format(" + _literal(statement) + ", part)"
        for statement in _guard_triggers("%s", function)
    )
    op.execute(
        "DO $$ DECLARE part regclass; BEGIN FOR part IN SELECT inhrelid::regclass FROM "
        f"pg_inherits WHERE inhparent = {_literal(n['event_logs'])}::regclass LOOP {each}; "
        "END LOOP; END $$"
    )
    for table in ("erasures", "seals"):
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            f"ON {n[table]} FOR EACH STATEMENT EXECUTE FUNCTION {function}_append_only()"
        )


def upgrade() -> None:
    names = _names()
    _tables(names)
    _leaf_functions(names)
    _guard_functions(names)
    _triggers(names)


def downgrade() -> None:
    schema = _setting("schema")
    # Every trigger of the guard functions, wherever it is: event_logs, its partitions, and
    # tables detached from it that kept theirs.
    functions = ", ".join(
        _literal(f"{_qualified(schema, name)}()")
        for name in (
            "event_log_audit_on_delete",
            "event_log_audit_on_update",
            "event_log_audit_refuse_truncate",
        )
    )
    op.execute(
        "DO $$ DECLARE found record; BEGIN FOR found IN SELECT t.tgrelid::regclass AS tab, "
        "t.tgname FROM pg_trigger t WHERE t.tgfoid IN (SELECT to_regprocedure(f) FROM "
        f"unnest(ARRAY[{functions}]) AS f) LOOP "
        "EXECUTE format('DROP TRIGGER %I ON %s', found.tgname, found.tab); "
        "END LOOP; END $$"
    )
    # The tables' own triggers go with them.
    op.execute(f"DROP TABLE IF EXISTS {_qualified(schema, _SEALS)}")
    op.execute(f"DROP TABLE IF EXISTS {_qualified(schema, _ERASURES)}")
    for function in _FUNCTIONS:
        name, _, arguments = function.partition("(")
        op.execute(f"DROP FUNCTION IF EXISTS {_qualified(schema, name)}({arguments}")
