"""The opt-in audit schema (revisions evlaudit_0001 to evlaudit_0005): branch and linear
mode, the feed it needs, and the partitioned layout, whichever of the two runs first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from catalog import UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import HostProject, make_host
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError
from test_feed_migrations import CONSUMERS, FEED, MAIN, PARTITIONED, with_feed
from test_feed_migrations import opt_in as opt_in_feed
from test_partitioned_migrations import add_event
from test_partitioned_migrations import opt_in as opt_in_partitioned

AUDIT = " eventlog_persist:migrations_audit"

ERASURES = {
    "columns": {
        "seq": ("bigint", True, None),
        "kind": ("character varying(16)", True, None),
        "event_id": ("uuid", True, None),
        "event_created_at": ("timestamp with time zone", True, None),
        "event_xid": ("xid8", False, None),
        "session_id": ("character varying(36)", True, None),
        "user_id": ("character varying(36)", True, None),
        "project_id": ("character varying(36)", False, None),
        "agent_id": ("character varying(36)", False, None),
        "leaf": ("bytea", True, None),
        "erased_at": ("timestamp with time zone", True, "now()"),
        "erased_xid": ("xid8", True, "pg_current_xact_id()"),
    },
    "constraints": {
        "pk_event_log_erasures": "PRIMARY KEY (seq)",
        "ck_event_log_erasures_kind": "CHECK (((kind)::text = ANY ((ARRAY['cascade'::character "
        "varying, 'set_null'::character varying, 'retention'::character varying, "
        "'erasure'::character varying])::text[])))",
        "ck_event_log_erasures_leaf": "CHECK ((octet_length(leaf) = 32))",
    },
    "indexes": {
        "pk_event_log_erasures": "CREATE UNIQUE INDEX pk_event_log_erasures ON "
        "public.event_log_erasures USING btree (seq)",
        "ix_event_log_erasures_event_id_seq": "CREATE INDEX ix_event_log_erasures_event_id_seq "
        "ON public.event_log_erasures USING btree (event_id, seq)",
        "ix_event_log_erasures_erased_xid_seq": "CREATE INDEX "
        "ix_event_log_erasures_erased_xid_seq ON public.event_log_erasures USING btree "
        "(erased_xid, seq)",
    },
}
SEAL_COLUMNS = [
    "seq",
    "xid_from",
    "xid_to",
    "chunk_size",
    "events",
    "erasures",
    "chunk_roots",
    "chunk_ends",
    "events_root",
    "erasures_root",
    "prev_hash",
    "seal_hash",
    "sealed_at",
]
TRIGGERS = {
    ("event_logs", "event_logs_audit_delete"),
    ("event_logs", "event_logs_audit_update"),
    ("event_logs", "event_logs_audit_truncate"),
    ("event_log_erasures", "erasures_append_only"),
    ("event_log_seals", "seals_append_only"),
}
FUNCTIONS = {
    "event_log_audit_append_only",
    "event_log_audit_on_delete",
    "event_log_audit_on_update",
    "event_log_audit_refuse_truncate",
    "event_log_canonical_json",
    "event_log_canonical_json_flat",
    "event_log_canonical_json_nested",
    "event_log_leaf",
}


BOUND = "ck_event_logs_created_at_range"
BOUND_SQL = (
    "CHECK (((created_at >= '0001-01-01 00:00:00+00'::timestamp with time zone) "
    "AND (created_at < '10000-01-01 00:00:00+00'::timestamp with time zone)))"
)
"""The audit's CHECK on ``event_logs.created_at`` as the catalog prints it (UTC)."""


def with_audit(expected: dict[str, Any]) -> dict[str, Any]:
    """``event_logs`` as expected, plus the audit's CHECK on ``created_at``."""
    expected["constraints"][BOUND] = BOUND_SQL
    return expected


def opt_in(host: HostProject, *, location: bool = True, feed: bool = True) -> None:
    """What a host changes to opt in to the audit (and the feed it needs)."""
    if feed:
        opt_in_feed(host, location=location)
    if location:
        host.edit("alembic.ini", MAIN + FEED, MAIN + FEED + AUDIT)
    host.edit(
        "app/models/event_log.py",
        "    __eventlog_feed__ = True\n",
        "    __eventlog_feed__ = True\n    __eventlog_audit__ = True\n",
    )


def audit_objects(engine: Engine) -> dict[str, Any]:
    """What the audit adds to the database: its tables, triggers and functions."""
    with engine.connect() as connection:
        found = snapshot(connection)
        triggers = {
            (table, trigger)
            for table, trigger in connection.execute(
                text(
                    "SELECT c.relname, t.tgname FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal"
                )
            )
        }
        functions = set(
            connection.execute(
                text(
                    "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
                    "AND proname LIKE 'event_log%'"
                )
            ).scalars()
        )
    return {
        "event_logs": of_table(found, "event_logs"),
        "erasures": of_table(found, "event_log_erasures"),
        "seals": of_table(found, "event_log_seals"),
        "triggers": triggers,
        "functions": functions,
    }


def assert_audit_schema(engine: Engine) -> None:
    found = audit_objects(engine)
    assert found["event_logs"] == with_audit(with_feed(expected_event_logs(UUID_KEYS)))
    assert found["erasures"] == ERASURES
    assert list(found["seals"]["columns"]) == SEAL_COLUMNS
    assert set(found["seals"]["constraints"]) == {
        "pk_event_log_seals",
        "uq_event_log_seals_seal_hash",
        "ck_event_log_seals_chain",
        "ck_event_log_seals_window",
        "ck_event_log_seals_hashes",
    }
    assert found["triggers"] == TRIGGERS
    assert found["functions"] == FUNCTIONS


@pytest.fixture
def host(tmp_path: Path, database_url: URL) -> HostProject:
    host = make_host(tmp_path / "host", database_url)
    opt_in(host)
    return host


def run_script(connection: Connection, script: str) -> None:
    """Run an offline script as psql does, every "%" as written: psycopg reads placeholders
    in what exec_driver_sql sends, where "%%" stands for "%"."""
    connection.exec_driver_sql(script.replace("%", "%%"))


def test_heads_show_the_audit_branch(host: HostProject) -> None:
    heads = host.run("heads").stdout.splitlines()
    assert sorted(heads) == [
        "eventlog_prereqs (app) (effective head)",
        "evl_0002 (eventlog) (effective head)",
        "evlaudit_0005 (eventlog_audit) (head)",
        "evlfeed_0001 (eventlog_feed) (effective head)",
    ]


def test_upgrade_creates_tables_triggers_and_functions_and_check_is_clean(
    host: HostProject, engine: Engine
) -> None:
    result = host.run("upgrade", "heads")
    assert result.stderr.index("-> evlfeed_0001") < result.stderr.index("-> evlaudit_0001")
    assert result.stderr.index("-> evlaudit_0001") < result.stderr.index("-> evlaudit_0002")
    assert result.stderr.index("-> evlaudit_0002") < result.stderr.index("-> evlaudit_0003")
    assert result.stderr.index("-> evlaudit_0003") < result.stderr.index("-> evlaudit_0004")
    assert result.stderr.index("-> evlaudit_0004") < result.stderr.index("-> evlaudit_0005")
    assert_audit_schema(engine)
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK (branch mode)" in host.run("eventlog-persist", "check").stdout


def test_upgrade_of_a_database_with_events_keeps_them_and_guards_them(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evlfeed_0001")
    for _ in range(3):
        add_event(engine)
    host.run("upgrade", "heads")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 3
        with pytest.raises(Exception, match="DELETE from event_logs refused"):
            connection.execute(text("DELETE FROM event_logs"))


ODD_TIMES = ["infinity", "-infinity", "10000-01-01 00:00:00+00", "0001-12-31 23:59:59+00 BC"]
"""What raw SQL can store in a timestamptz and the writers never do: no leaf holds them."""


def insert_at(engine: Engine, when: str) -> None:
    """One event stored by raw SQL at ``when`` (a timestamptz literal), beside an event."""
    add_event(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at) "
                "SELECT gen_random_uuid(), session_id, user_id, 'odd', CAST(:when AS timestamptz) "
                "FROM event_logs LIMIT 1"
            ),
            {"when": when},
        )


@pytest.mark.parametrize("when", ODD_TIMES)
def test_a_time_no_leaf_holds_is_refused_at_insert(
    host: HostProject, engine: Engine, when: str
) -> None:
    host.run("upgrade", "heads")
    with pytest.raises(IntegrityError, match=BOUND):
        insert_at(engine, when)
    for edge in ("0001-01-01 00:00:00+00", "9999-12-31 23:59:59.999999+00"):
        insert_at(engine, edge)


@pytest.mark.parametrize("when", ODD_TIMES)
def test_a_time_no_leaf_holds_refuses_the_upgrade_naming_the_row(
    host: HostProject, engine: Engine, when: str
) -> None:
    host.run("upgrade", "evlfeed_0001")
    insert_at(engine, when)
    with engine.connect() as connection:
        odd = connection.execute(text("SELECT id FROM event_logs WHERE event_type = 'odd'"))
        odd_id = odd.scalar_one()
    before = audit_objects(engine)
    refused = host.run("upgrade", "heads", check=False)
    assert refused.returncode != 0
    assert "1 row(s) of event_logs have a created_at outside the years 1 to 9999 UTC" in (
        refused.stderr
    )
    assert "evlaudit_0002 bounds created_at with a CHECK" in refused.stderr
    assert f"e.g. id {odd_id}, created_at " in refused.stderr
    assert "Delete or correct those rows" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert audit_objects(engine) == before  # nothing of the revision was left behind
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM event_logs WHERE event_type = 'odd'"))
    host.run("upgrade", "heads")
    assert_audit_schema(engine)


def functions_holding(engine: Engine, functions: tuple[str, ...], fragment: str) -> dict[str, bool]:
    """Whether each function's definition holds ``fragment``."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT proname, position(:fragment IN pg_get_functiondef(oid)) > 0 "
                "FROM pg_proc WHERE proname = ANY(:functions)"
            ),
            {"fragment": fragment, "functions": list(functions)},
        ).all()
    return {str(name): bool(holds) for name, holds in rows}


GUARDS = ("event_log_audit_on_delete", "event_log_audit_on_update")
REFUSALS = ("event_log_audit_append_only", "event_log_audit_refuse_truncate")
BY_ROW = "e.event_created_at = o.created_at"  # evlaudit_0003: a row's own tombstone
BOTH_MODES = "in linear mode, alembic downgrade to"  # evlaudit_0004: either downgrade
ANY_DEPTH = "EXCEPTION WHEN statement_too_complex"  # evlaudit_0005: past the stack's depth


def guard_lookups(engine: Engine) -> dict[str, bool]:
    """Whether each guard function finds a row's earliest tombstone by its time too."""
    return functions_holding(engine, GUARDS, BY_ROW)


def refusal_advice(engine: Engine) -> dict[str, bool]:
    """Whether each refusing function names the linear mode's downgrade (evlaudit_0004)."""
    return functions_holding(engine, REFUSALS, BOTH_MODES)


@pytest.mark.parametrize(
    ("before", "revision", "functions", "fragment"),
    [
        ("evlaudit_0002", "evlaudit_0003", GUARDS, BY_ROW),
        ("evlaudit_0003", "evlaudit_0004", REFUSALS, BOTH_MODES),
        ("evlaudit_0004", "evlaudit_0005", ("event_log_canonical_json",), ANY_DEPTH),
    ],
)
def test_a_function_rewriting_revision_applies_online_and_offline_and_its_downgrade_undoes_it(
    host: HostProject,
    engine: Engine,
    before: str,
    revision: str,
    functions: tuple[str, ...],
    fragment: str,
) -> None:
    host.run("upgrade", before)
    assert functions_holding(engine, functions, fragment) == dict.fromkeys(functions, False)
    host.run("upgrade", revision)
    assert functions_holding(engine, functions, fragment) == dict.fromkeys(functions, True)
    host.run("downgrade", "eventlog_audit@-1")
    assert functions_holding(engine, functions, fragment) == dict.fromkeys(functions, False)
    # Offline, the same DO block.
    script = host.run(
        "-x", "eventlog_persist.schema=public", "upgrade", f"{before}:{revision}", "--sql"
    ).stdout
    with engine.connect() as connection:
        run_script(connection, script)
        connection.commit()
    assert functions_holding(engine, functions, fragment) == dict.fromkeys(functions, True)


def test_evlaudit_0005s_downgrade_puts_back_evlaudit_0001s_function_exactly(
    host: HostProject, engine: Engine
) -> None:
    def definitions() -> dict[str, str]:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
                    "WHERE proname LIKE 'event_log_canonical_json%'"
                )
            ).all()
        return {str(name): str(definition) for name, definition in rows}

    host.run("upgrade", "evlaudit_0004")
    before = definitions()
    assert list(before) == ["event_log_canonical_json"]
    host.run("upgrade", "evlaudit_0005")
    after = definitions()
    assert sorted(after) == [
        "event_log_canonical_json",
        "event_log_canonical_json_flat",
        "event_log_canonical_json_nested",
    ]
    # The recursive body is kept, word for word, under its new name.
    assert after["event_log_canonical_json_nested"] == before["event_log_canonical_json"].replace(
        "event_log_canonical_json", "event_log_canonical_json_nested"
    )
    host.run("downgrade", "eventlog_audit@-1")
    assert definitions() == before


def test_evlaudit_0005s_functions_may_be_run_by_whoever_may_run_the_canonical_json(
    host: HostProject, engine: Engine
) -> None:
    """New functions get the default privileges, which a host may have narrowed: a role
    allowed to run event_log_canonical_json then could not run the body it calls."""
    host.run("upgrade", "evlaudit_0004")
    role = f"{engine.url.database}_auditor"  # roles are the cluster's: named after the db
    with engine.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{role}"'))
        connection.execute(
            text("REVOKE EXECUTE ON FUNCTION event_log_canonical_json(jsonb) FROM PUBLIC")
        )
        connection.execute(
            text(f'GRANT EXECUTE ON FUNCTION event_log_canonical_json(jsonb) TO "{role}"')
        )
        connection.execute(text("ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"))
    try:
        host.run("upgrade", "evlaudit_0005")
        with engine.begin() as connection:
            connection.execute(text(f'SET LOCAL ROLE "{role}"'))
            deep = '{"a": ' * 2000 + "1" + "}" * 2000  # past the stack: the flat body runs
            canonical = connection.execute(
                text("SELECT event_log_canonical_json(CAST(:p AS jsonb))"), {"p": deep}
            ).scalar_one()
        assert canonical == '{"a":' * 2000 + "1" + "}" * 2000
    finally:
        with engine.begin() as connection:
            connection.execute(
                text("ALTER DEFAULT PRIVILEGES GRANT EXECUTE ON FUNCTIONS TO PUBLIC")
            )
            connection.execute(text(f'DROP OWNED BY "{role}"'))
            connection.execute(text(f'DROP ROLE "{role}"'))


def test_evlaudit_0004_refuses_a_refusing_function_changed_by_hand(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evlaudit_0003")
    with engine.begin() as connection:
        definition = connection.execute(
            text("SELECT pg_get_functiondef('event_log_audit_append_only()'::regprocedure)")
        ).scalar_one()
        connection.exec_driver_sql(
            definition.replace("run alembic downgrade eventlog_audit@base", "ask").replace(
                "%", "%%"
            )
        )
    refused = host.run("upgrade", "heads", check=False)
    assert refused.returncode != 0
    assert "the guard function event_log_audit_append_only() does not hold the sentence" in (
        refused.stderr
    )
    assert refusal_advice(engine) == dict.fromkeys(REFUSALS, False)


def test_evlaudit_0003_refuses_a_guard_function_changed_by_hand(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evlaudit_0002")
    with engine.begin() as connection:
        definition = connection.execute(
            text("SELECT pg_get_functiondef('event_log_audit_on_update()'::regprocedure)")
        ).scalar_one()
        connection.exec_driver_sql(definition.replace("ORDER BY e.seq", "ORDER BY e.seq DESC"))
    refused = host.run("upgrade", "heads", check=False)
    assert refused.returncode != 0
    assert (
        "eventlog_persist: the guard function event_log_audit_on_update() does not hold the "
        "condition evlaudit_0003 changes" in refused.stderr
    )
    assert "Traceback" not in refused.stderr
    assert guard_lookups(engine) == {
        "event_log_audit_on_delete": False,
        "event_log_audit_on_update": False,
    }


def test_evlaudit_0003_names_a_missing_table_and_a_role_that_does_not_own_the_guard(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evlaudit_0002")

    def script(schema: str) -> str:
        return host.run(
            "-x", f"eventlog_persist.schema={schema}", "upgrade", "evlaudit_0002:evlaudit_0003",
            "--sql",
        ).stdout  # fmt: skip

    with engine.connect() as connection, pytest.raises(DBAPIError) as missing:
        run_script(connection, script("nowhere"))
    assert 'eventlog_persist: there is no table "nowhere"."event_logs"' in str(missing.value)
    role = f"other_{engine.url.database}"
    with engine.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{role}"'))
    other = create_engine(engine.url, connect_args={"options": f"-c role={role}"})
    try:
        with other.connect() as connection, pytest.raises(DBAPIError) as refused:
            run_script(connection, script("public"))
    finally:
        other.dispose()
    assert "eventlog_persist: the guard function event_log_audit_on_delete() belongs to " in str(
        refused.value
    )
    assert guard_lookups(engine) == {
        "event_log_audit_on_delete": False,
        "event_log_audit_on_update": False,
    }


def test_downgrade_removes_everything_it_added(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "evlfeed_0001")
    with engine.connect() as connection:
        before = snapshot(connection)
    host.run("upgrade", "heads")
    add_event(engine)
    with engine.begin() as connection:  # a cascade: one tombstone
        connection.execute(text("DELETE FROM chat_sessions"))
    result = host.run("downgrade", "eventlog_audit@-4")
    assert "Running downgrade evlaudit_0005" in result.stderr
    assert "Running downgrade evlaudit_0004" in result.stderr
    assert "Running downgrade evlaudit_0003" in result.stderr
    assert "Running downgrade evlaudit_0002" in result.stderr
    assert bounded_tables(engine) == {}
    assert guarded_tables(engine) == {"event_logs": set(GUARD)}
    result = host.run("downgrade", "eventlog_audit@base")
    assert "Running downgrade evlaudit_0001" in result.stderr
    with engine.connect() as connection:
        assert snapshot(connection) == before
        assert not connection.execute(
            text(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'event_log%' UNION ALL "
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal"
            )
        ).all()
    host.run("upgrade", "heads")
    assert_audit_schema(engine)
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_check_without_the_audit_in_the_model_reports_the_tables(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "heads")
    host.edit("app/models/event_log.py", "    __eventlog_audit__ = True\n", "")
    result = host.run("check", check=False)
    assert "event_log_erasures" in result.stdout + result.stderr
    assert result.returncode != 0


def test_the_audit_without_the_feed_location_is_reported(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit("alembic.ini", MAIN, MAIN + AUDIT)
    result = host.run("eventlog-persist", "check", "--offline", check=False)
    assert result.returncode == 1
    assert "'eventlog_persist:migrations_audit' is in version_locations without" in (result.stderr)
    assert "'eventlog_persist:migrations_feed'" in result.stderr


def test_offline_sql_needs_the_schema(
    host: HostProject,
) -> None:
    result = host.run(
        "-x", "eventlog_persist.pk_type=uuid", "upgrade", "heads", "--sql", check=False
    )
    assert result.returncode != 0
    assert "pass -x eventlog_persist.schema=public" in result.stderr
    sql = host.run(
        "-x",
        "eventlog_persist.pk_type=uuid",
        "-x",
        "eventlog_persist.schema=public",
        "upgrade",
        "heads",
        "--sql",
    ).stdout
    audit = sql[sql.index("evlaudit_0001") :]
    assert "does not support the partitioned" not in audit
    assert 'CREATE TABLE "public"."event_log_erasures"' in audit
    assert "CREATE TRIGGER event_logs_audit_delete AFTER DELETE ON" in audit
    assert "VALIDATE CONSTRAINT ck_event_logs_created_at_range" in audit


def test_the_offline_script_builds_what_the_upgrade_does_and_names_rows_beyond(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evlfeed_0001")
    script = host.run(
        "-x", "eventlog_persist.schema=public", "upgrade", "evlfeed_0001:heads", "--sql"
    ).stdout
    insert_at(engine, "infinity")
    with engine.connect() as connection, pytest.raises(IntegrityError) as refused:
        run_script(connection, script)
    assert "1 row(s) of event_logs have a created_at outside" in str(refused.value)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM event_logs WHERE event_type = 'odd'"))
    with engine.connect() as connection:
        run_script(connection, script)
        connection.commit()
    assert_audit_schema(engine)


def test_the_offline_script_runs_as_psql_runs_it(host: HostProject, engine: Engine) -> None:
    """Sent as written, with no placeholder processing (as psql sends it): a ``%`` in a
    revision's SQL must not come out doubled (``dialect_opts={"paramstyle": "named"}`` in
    env.py, as ``alembic init`` writes it; docs/adoption.md)."""
    host.run("upgrade", "evlfeed_0001")
    script = host.run(
        "-x", "eventlog_persist.schema=public", "upgrade", "evlfeed_0001:heads", "--sql"
    ).stdout
    assert "%%" not in script
    with engine.connect() as connection:
        dbapi: Any = connection.connection.dbapi_connection
        dbapi.autocommit = True  # the script says BEGIN and COMMIT itself, as psql reads it
        dbapi.execute(script.encode())  # bytes, no parameters: psycopg sends it as it is
    assert_audit_schema(engine)


def test_a_row_stored_past_the_guard_refuses_the_upgrade_until_the_documented_fix(
    host: HostProject, engine: Engine
) -> None:
    """At evlaudit_0001 the guard refuses the UPDATE or DELETE of such a row (an infinity one
    gets no tombstone): the refusal points at the documented fix, which works."""
    host.run("upgrade", "evlaudit_0001")
    insert_at(engine, "infinity")
    refused = host.run("upgrade", "heads", check=False)
    assert refused.returncode != 0
    assert 'see "The bound on created_at" in docs/audit.md' in refused.stderr
    with engine.begin() as connection, pytest.raises(IntegrityError, match="leaf"):
        connection.execute(  # declared, but no tombstone fits it
            text(
                "SET LOCAL eventlog.erasure = 'erasure'; "
                "DELETE FROM event_logs WHERE event_type = 'odd'"
            )
        )
    with engine.begin() as connection:  # the fix docs/audit.md gives, as a superuser
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        connection.execute(
            text(
                "DELETE FROM event_logs WHERE NOT (created_at >= '0001-01-01 00:00:00+00' "
                "AND created_at < '10000-01-01 00:00:00+00')"
            )
        )
    host.run("upgrade", "heads")
    assert_audit_schema(engine)


def test_a_check_the_host_added_beforehand_is_validated_not_added_again(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evlfeed_0001")
    add_event(engine)
    with engine.begin() as connection:  # the online way for a large table, before upgrading
        connection.execute(
            text(
                f"ALTER TABLE event_logs ADD CONSTRAINT {BOUND} CHECK (created_at >= "
                "'0001-01-01 00:00:00+00' AND created_at < '10000-01-01 00:00:00+00') NOT VALID"
            )
        )
    host.run("upgrade", "heads")
    assert_audit_schema(engine)
    with engine.connect() as connection:
        validated = connection.execute(
            text("SELECT convalidated FROM pg_constraint WHERE conname = :name"), {"name": BOUND}
        )
        assert validated.scalar_one() is True


def test_linear_mode_copies_the_audit_revision_on_request(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    host.run("eventlog-persist", "linear-revision")
    host.run("upgrade", "head")
    add_event(engine)
    refused = host.run("eventlog-persist", "linear-revision", "--audit", check=False)
    assert refused.returncode != 0
    assert "linear-revision --feed --audit" in refused.stderr
    opt_in(host, location=False)
    written = host.run("eventlog-persist", "linear-revision", "--feed", "--audit").stdout
    assert "eventlog_feed_0001_add_transaction_ids_and_consumers.py" in written
    assert "eventlog_audit_0001_guard_event_logs_and_record_erasures.py" in written
    assert "eventlog_audit_0002_bound_created_at.py" in written
    assert "eventlog_audit_0003_tombstone_leaf_by_row.py" in written
    assert "eventlog_audit_0004_refusals_name_either_downgrade.py" in written
    assert "eventlog_audit_0005_canonical_json_at_any_depth.py" in written
    copy = (
        tmp_path
        / "h"
        / "migrations"
        / "versions"
        / "eventlog_audit_0001_guard_event_logs_and_record_erasures.py"
    ).read_text()
    assert "down_revision = 'eventlog_feed_0001'" in copy
    assert "eventlog_persist_revision = 'evlaudit_0001'" in copy
    assert host.run("heads").stdout.split() == ["eventlog_audit_0005", "(app)", "(head)"]
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check", "--offline").stdout
    host.run("upgrade", "head")
    assert_audit_schema(engine)
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check").stdout
    # The guard's refusals name the downgrade of this mode too, and it works as they say.
    with engine.begin() as connection:
        refused = connection.execute(
            text(
                "SELECT pg_get_functiondef('event_log_audit_refuse_truncate()'::regprocedure) "
                "LIKE '%in linear mode, alembic downgrade to the revision of your history%'"
            )
        ).scalar()
    assert refused is True
    host.run("downgrade", "-5")
    found = audit_objects(engine)
    assert found["erasures"]["columns"] == {}
    assert found["triggers"] == set()
    assert found["event_logs"] == with_feed(expected_event_logs(UUID_KEYS))
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 1


def test_consumers_table_is_untouched(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "heads")
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_log_consumers") == CONSUMERS


# -- with the partitioned layout -----------------------------------------------------------

GUARD = ("event_logs_audit_delete", "event_logs_audit_update", "event_logs_audit_truncate")


def guarded_tables(engine: Engine) -> dict[str, set[str]]:
    """The guard's triggers by table."""
    found: dict[str, set[str]] = {}
    for table, trigger in audit_objects(engine)["triggers"]:
        if trigger in GUARD:
            found.setdefault(table, set()).add(trigger)
    return found


def partitions_of(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(
            connection.execute(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits "
                    "WHERE inhparent = 'event_logs'::regclass"
                )
            ).scalars()
        )


def bounded_tables(engine: Engine) -> dict[str, str]:
    """The tables that have the audit's CHECK on ``created_at``, with its definition."""
    with engine.connect() as connection:
        found = snapshot(connection)["constraints"]
    return {table: definition for (table, name), definition in found.items() if name == BOUND}


def assert_guarded_partitioned(engine: Engine) -> None:
    partitions = partitions_of(engine)
    assert len(partitions) == 5
    assert guarded_tables(engine) == {table: set(GUARD) for table in partitions | {"event_logs"}}
    assert bounded_tables(engine) == dict.fromkeys(partitions | {"event_logs"}, BOUND_SQL)


def partitioned_host(host: HostProject) -> None:
    opt_in_partitioned(host, location=False)


def partitioned_model(host: HostProject) -> None:
    host.edit(
        "app/models/event_log.py",
        "    __eventlog_feed__ = True\n",
        "    __eventlog_feed__ = True\n    __eventlog_partitioned__ = True\n",
    )


@pytest.mark.parametrize("first", ["partitioned", "audit"])
def test_audit_and_partitioned_layout_in_either_order(
    host: HostProject, engine: Engine, first: str
) -> None:
    partitioned_host(host)
    if first == "partitioned":
        host.edit("alembic.ini", MAIN + FEED + AUDIT, MAIN + FEED + PARTITIONED)
    else:
        host.edit("alembic.ini", MAIN + FEED + AUDIT, MAIN + FEED + AUDIT)
        host.edit("app/models/event_log.py", "    __eventlog_partitioned__ = True\n", "")
    host.run("upgrade", "heads")
    if first == "audit":
        assert guarded_tables(engine) == {"event_logs": set(GUARD)}
        partitioned_model(host)
    host.edit(
        "alembic.ini",
        MAIN + FEED + (PARTITIONED if first == "partitioned" else AUDIT),
        MAIN + FEED + AUDIT + PARTITIONED,
    )
    host.run("upgrade", "heads")
    assert_guarded_partitioned(engine)
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK (branch mode)" in host.run("eventlog-persist", "check").stdout
    # Down and up again: the audit off the partitioned table, then back on.
    host.run("downgrade", "eventlog_audit@base")
    assert guarded_tables(engine) == {}
    assert bounded_tables(engine) == {}
    assert audit_objects(engine)["functions"] == set()
    host.run("upgrade", "heads")
    assert_guarded_partitioned(engine)
    # The partitioned layout off, under the audit: the plain table keeps the guard.
    host.edit("app/models/event_log.py", "    __eventlog_partitioned__ = True\n", "")
    host.run("downgrade", "eventlog_partitioned@base")
    assert partitions_of(engine) == set()
    assert guarded_tables(engine) == {"event_logs": set(GUARD)}
    assert bounded_tables(engine) == {"event_logs": BOUND_SQL}
    partitioned_model(host)
    host.run("upgrade", "heads")
    assert_guarded_partitioned(engine)
    # A partition detached and kept keeps the guard and the CHECK: the downgrade finds them.
    last = max(partitions_of(engine))
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE event_logs DETACH PARTITION {last}"))
    assert last in guarded_tables(engine)
    assert last in bounded_tables(engine)
    host.run("downgrade", "eventlog_audit@base")
    assert guarded_tables(engine) == {}
    assert bounded_tables(engine) == {}


def test_linear_mode_copies_partitioned_feed_and_audit(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    opt_in(host, location=False)
    partitioned_host(host)
    host.run("eventlog-persist", "linear-revision", "--partitioned", "--feed", "--audit")
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check", "--offline").stdout
    host.run("upgrade", "head")
    assert_guarded_partitioned(engine)
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check").stdout
    host.run("downgrade", "-5")
    assert guarded_tables(engine) == {}
    host.run("upgrade", "head")
    assert_guarded_partitioned(engine)
