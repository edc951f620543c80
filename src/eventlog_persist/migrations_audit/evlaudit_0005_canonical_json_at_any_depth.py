"""the canonical JSON of a payload at any depth

Revision ID: evlaudit_0005
Revises: evlaudit_0004
Create Date: 2026-12-06

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Opt-in (branch ``eventlog_audit``, after ``evlaudit_0004``). ``event_log_canonical_json``
of ``evlaudit_0001`` recurses once per level of the payload, in PL/pgSQL, and PostgreSQL's
``max_stack_depth`` (2 MB by default) stops it at several hundred levels: the leaf of an
event whose payload another tool stored deeper could not be computed, so the row could not
be erased or purged while the audit was on ("stack depth limit exceeded"). This revision
keeps that function's body as ``event_log_canonical_json_nested`` (the same text, calling
itself), adds ``event_log_canonical_json_flat`` (the same result from a stack of its own, no
recursion) and makes ``event_log_canonical_json`` run the first and, only when the stack
runs out, the second. Every leaf stays byte for byte what it was. That function and
``event_log_leaf``, which calls it, are marked ``PARALLEL UNSAFE``: the exception block it
needs opens a subtransaction, which PostgreSQL before 17 refuses in a parallel query.

One DO block finds the schema of ``event_logs``, online and offline; ``CREATE OR REPLACE``
keeps the function's owner and grants, and only its owner (the role that ran
``evlaudit_0001``) or a superuser may run it; whoever may run it may run the two new
functions. The downgrade puts ``evlaudit_0001``'s body back and drops the two functions.

Settings (first found wins): ``config.attributes["eventlog_persist"]`` (a dict), then
``-x eventlog_persist.<key>=<value>``, then an ``[eventlog_persist]`` section in alembic.ini:
``schema`` (of ``event_logs``; default: the search path), as for evlaudit_0001.
"""

from __future__ import annotations

from alembic import context, op

revision = "evlaudit_0005"
down_revision = "evlaudit_0004"
branch_labels = None
depends_on = None

_SECTION = "eventlog_persist"
_HEAD = "LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS"

# evlaudit_0001's body; "@" stands for the schema (format's %1$I), <name> for the function.
_RECURSIVE = (
    "BEGIN\n"
    "  CASE jsonb_typeof(value)\n"
    "  WHEN 'object' THEN\n"
    "    RETURN '{' || coalesce((SELECT string_agg(to_jsonb(e.key)::text || ':' || "
    "CASE WHEN jsonb_typeof(e.value) IN ('object', 'array') THEN "
    "@.<name>(e.value) ELSE e.value::text END, ',' "
    "ORDER BY e.key COLLATE \"C\") FROM jsonb_each(value) AS e), '') || '}';\n"
    "  WHEN 'array' THEN\n"
    "    RETURN '[' || coalesce((SELECT string_agg("
    "CASE WHEN jsonb_typeof(a.value) IN ('object', 'array') THEN "
    "@.<name>(a.value) ELSE a.value::text END, ',' "
    "ORDER BY a.n) FROM jsonb_array_elements(value) WITH ORDINALITY AS a(value, n)), '') "
    "|| ']';\n"
    "  ELSE\n"
    "    RETURN value::text;\n"
    "  END CASE;\n"
    "END\n"
)

# The same text without recursion: a stack of what is left to write (a value, or with NULL
# for a value, a closing bracket), pushed in reverse so that it pops in order.
_FLAT = (
    "DECLARE\n"
    "  vals jsonb[] := ARRAY[value];\n"
    "  heads text[] := ARRAY[''];\n"
    "  top int := 1;\n"
    "  pieces text[] := '{}';\n"
    "  n int := 0;\n"
    "  v jsonb; h text; keys text[]; size int; i int;\n"
    "BEGIN\n"
    "  WHILE top > 0 LOOP\n"
    "    v := vals[top]; h := heads[top]; top := top - 1; n := n + 1;\n"
    "    IF v IS NULL THEN\n"
    "      pieces[n] := h;\n"
    "    ELSIF jsonb_typeof(v) = 'object' THEN\n"
    "      pieces[n] := h || '{';\n"
    "      top := top + 1; vals[top] := NULL; heads[top] := '}';\n"
    '      SELECT array_agg(k ORDER BY k COLLATE "C" DESC) INTO keys '
    "FROM jsonb_object_keys(v) AS k;\n"
    "      size := coalesce(array_length(keys, 1), 0);\n"
    "      FOR i IN 1 .. size LOOP\n"
    "        top := top + 1; vals[top] := v -> keys[i];\n"
    "        heads[top] := CASE WHEN i < size THEN ',' ELSE '' END "
    "|| to_jsonb(keys[i])::text || ':';\n"
    "      END LOOP;\n"
    "    ELSIF jsonb_typeof(v) = 'array' THEN\n"
    "      pieces[n] := h || '[';\n"
    "      top := top + 1; vals[top] := NULL; heads[top] := ']';\n"
    "      FOR i IN REVERSE jsonb_array_length(v) - 1 .. 0 LOOP\n"
    "        top := top + 1; vals[top] := v -> i;\n"
    "        heads[top] := CASE WHEN i > 0 THEN ',' ELSE '' END;\n"
    "      END LOOP;\n"
    "    ELSE\n"
    "      pieces[n] := h || v::text;\n"
    "    END IF;\n"
    "  END LOOP;\n"
    "  RETURN array_to_string(pieces, '');\n"
    "END\n"
)

# The nested body first: as fast as before; the flat one only past the stack's depth.
_EITHER = (
    "BEGIN\n"
    "  RETURN @.event_log_canonical_json_nested(value);\n"
    "EXCEPTION WHEN statement_too_complex THEN\n"
    "  RETURN @.event_log_canonical_json_flat(value);\n"
    "END\n"
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


def _create(replace: bool, name: str, body: str, head: str = _HEAD) -> str:
    """A statement of the DO block: the function ``name`` with ``body``, in the schema of
    event_logs (``@`` in ``body``)."""
    verb = "CREATE OR REPLACE FUNCTION" if replace else "CREATE FUNCTION"
    statement = (
        f"{verb} %1$I.{name}(value jsonb) RETURNS text {head} $canonical$\n"
        + body.replace("@", "%1$I")
        + "$canonical$"
    )
    return f"EXECUTE format({_literal(statement)}, schema); "


def _grants_as_the_wrappers() -> str:
    """A statement of the DO block: who may run ``event_log_canonical_json`` may run the two
    functions it calls (new functions get the default privileges, which a host may have
    narrowed)."""
    return (
        "FOR grantee IN SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE "
        "quote_ident(pg_get_userbyid(a.grantee)) END FROM pg_proc p, "
        "aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a WHERE p.oid = "
        "to_regprocedure(format('%I.event_log_canonical_json(jsonb)', schema)) "
        "AND a.privilege_type = 'EXECUTE' LOOP "
        "EXECUTE format('GRANT EXECUTE ON FUNCTION %1$I.event_log_canonical_json_nested(jsonb), "
        "%1$I.event_log_canonical_json_flat(jsonb) TO %2$s', schema, grantee); END LOOP; "
    )


def _leaf_parallel(mode: str) -> str:
    """A statement of the DO block: ``event_log_leaf``, which calls the canonical JSON, marked
    ``PARALLEL mode``."""
    statement = (
        "ALTER FUNCTION %1$I.event_log_leaf(uuid, text, text, text, text, text, jsonb, "
        "timestamp with time zone, text, text, text, text, text, text, xid8) "
        f"PARALLEL {mode}"
    )
    return f"EXECUTE format({_literal(statement)}, schema); "


def _in_schema(statements: str) -> None:
    """Run ``statements`` (of `_create`) with ``schema`` set to that of event_logs."""
    table = _qualified(_setting("schema"), "event_logs")
    op.execute(
        "DO $$ DECLARE events regclass; schema name; grantee text; BEGIN "
        f"events := to_regclass({_literal(table)}); "
        "IF events IS NULL THEN RAISE EXCEPTION 'eventlog_persist: there is no table %; "
        "pass -x eventlog_persist.schema=<the schema of event_logs>', "
        f"{_literal(table)} USING ERRCODE = 'undefined_table'; END IF; "
        "SELECT n.nspname INTO schema FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.oid = events; "
        f"{statements}END $$"
    )


def upgrade() -> None:
    nested = "event_log_canonical_json_nested"
    _in_schema(
        _create(False, nested, _RECURSIVE.replace("<name>", nested))
        + _create(False, "event_log_canonical_json_flat", _FLAT)
        # An EXCEPTION block opens a subtransaction, which PostgreSQL before 17 refuses in a
        # parallel query ("cannot start subtransactions during a parallel operation").
        + _create(True, "event_log_canonical_json", _EITHER, _HEAD.replace("SAFE", "UNSAFE"))
        + _leaf_parallel("UNSAFE")
        + _grants_as_the_wrappers()
    )


def downgrade() -> None:
    name = "event_log_canonical_json"
    _in_schema(
        _create(True, name, _RECURSIVE.replace("<name>", name))
        + _leaf_parallel("SAFE")
        + "EXECUTE format('DROP FUNCTION %1$I.event_log_canonical_json_nested(jsonb), "
        "%1$I.event_log_canonical_json_flat(jsonb)', schema); "
    )
