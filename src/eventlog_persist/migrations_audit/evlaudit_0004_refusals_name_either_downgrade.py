"""the guard's refusals name the downgrade of either adoption mode

Revision ID: evlaudit_0004
Revises: evlaudit_0003
Create Date: 2026-12-06

Frozen history: this file declares its DDL inline and imports nothing from eventlog_persist,
so it keeps doing exactly what it did when it was released.

Opt-in (branch ``eventlog_audit``, after ``evlaudit_0003``). The refusals of ``TRUNCATE
event_logs`` and of any change to the audit's own tables (functions
``event_log_audit_refuse_truncate`` and ``event_log_audit_append_only`` of
``evlaudit_0001``) told to run ``alembic downgrade eventlog_audit@base``: in linear mode,
where the host's history holds copies of the audit's revisions, that branch label does not
exist. This revision words the advice for both modes; nothing else changes.

As ``evlaudit_0003`` does: one DO block rewrites each function from its own definition
(``pg_get_functiondef``), replacing that one sentence, online and offline; ``CREATE OR
REPLACE`` keeps its owner and grants, and only its owner (the role that ran
``evlaudit_0001``) or a superuser may run it. A function whose definition does not hold the
sentence (changed by hand), or owned by another role, refuses the upgrade, named. The
downgrade puts the sentence back.

Settings (first found wins): ``config.attributes["eventlog_persist"]`` (a dict), then
``-x eventlog_persist.<key>=<value>``, then an ``[eventlog_persist]`` section in alembic.ini:
``schema`` (of ``event_logs``; default: the search path), as for evlaudit_0001.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from alembic.util import CommandError

revision = "evlaudit_0004"
down_revision = "evlaudit_0003"
branch_labels = None
depends_on = None

_SECTION = "eventlog_persist"
_FUNCTIONS = ("event_log_audit_append_only", "event_log_audit_refuse_truncate")
_BRANCH_ONLY = "run alembic downgrade eventlog_audit@base"
_BOTH_MODES = (
    "downgrade the audit revisions (alembic downgrade eventlog_audit@base; in linear mode, "
    "alembic downgrade to the revision of your history before the one that added them)"
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


def _rewrite(old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in each refusing function of the schema of event_logs."""
    table = _qualified(_setting("schema"), "event_logs")
    names = ", ".join(_literal(name) for name in _FUNCTIONS)
    changed = (
        "eventlog_persist: the guard function % does not hold the sentence evlaudit_0004 "
        "changes (%); it was changed since evlaudit_0001 created it. Put evlaudit_0001's "
        "definition back, then run this migration again"
    )
    not_owner = (
        "eventlog_persist: the guard function % belongs to %; run this migration as that role "
        "(the one that ran evlaudit_0001) or a superuser"
    )
    missing = (
        "eventlog_persist: % of the audit''s 2 refusing functions found next to %; run "
        "evlaudit_0001 first"
    )
    try:
        op.execute(
            "DO $$ DECLARE events regclass; fn regprocedure; owner name; definition text; "
            "found int := 0; BEGIN "
            f"events := to_regclass({_literal(table)}); "
            "IF events IS NULL THEN RAISE EXCEPTION 'eventlog_persist: there is no table %; "
            "pass -x eventlog_persist.schema=<the schema of event_logs>', "
            f"{_literal(table)} USING ERRCODE = 'undefined_table'; END IF; "
            "FOR fn, owner IN SELECT p.oid::regprocedure, pg_get_userbyid(p.proowner) "
            "FROM pg_proc p WHERE p.pronamespace = "
            "(SELECT relnamespace FROM pg_class WHERE oid = events) "
            f"AND p.proname IN ({names}) AND p.pronargs = 0 ORDER BY p.proname LOOP "
            "IF NOT pg_has_role(owner, 'MEMBER') THEN "
            f"RAISE EXCEPTION {_literal(not_owner)}, fn, owner "
            "USING ERRCODE = 'insufficient_privilege'; END IF; "
            "definition := pg_get_functiondef(fn); "
            f"IF position({_literal(old)} IN definition) = 0 THEN "
            f"RAISE EXCEPTION {_literal(changed)}, fn, {_literal(old)} "
            "USING ERRCODE = 'object_not_in_prerequisite_state'; END IF; "
            f"EXECUTE replace(definition, {_literal(old)}, {_literal(new)}); "
            "found := found + 1; END LOOP; "
            f"IF found <> {len(_FUNCTIONS)} THEN RAISE EXCEPTION '{missing}', found, "
            "events::text USING ERRCODE = 'undefined_function'; END IF; END $$"
        )
    except sa.exc.DBAPIError as error:  # the refusals above: their message alone
        message = str(error.orig).split("\n", 1)[0]
        if not message.startswith("eventlog_persist:"):
            raise
        raise CommandError(message) from None


def upgrade() -> None:
    _rewrite(_BRANCH_ONLY, _BOTH_MODES)


def downgrade() -> None:
    _rewrite(_BOTH_MODES, _BRANCH_ONLY)
