"""The opt-in partitioned layout (revision evlpart_0001) in branch and linear mode."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from catalog import UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import HostProject, make_host
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

PARTITIONED = "%(here)s/migrations/versions eventlog_persist:migrations "
PARTITIONED += "eventlog_persist:migrations_partitioned"


def opt_in(host: HostProject, *, location: bool = True) -> None:
    """What a host changes to opt in: the location (branch mode), the model and env.py."""
    if location:
        host.edit(
            "alembic.ini", "%(here)s/migrations/versions eventlog_persist:migrations", PARTITIONED
        )
    host.edit(
        "app/models/event_log.py",
        '    """Every user-agent interaction event (table ``event_logs``)."""\n',
        '    """Every user-agent interaction event (table ``event_logs``)."""\n\n'
        "    __eventlog_partitioned__ = True\n",
    )
    host.edit(
        "migrations/env.py",
        "context.configure(connection=connection, target_metadata=target_metadata)",
        "context.configure(connection=connection, target_metadata=target_metadata, "
        "include_name=eventlog_persist.skip_partitions)",
    )
    host.edit(
        "migrations/env.py", "import app.models", "import eventlog_persist\nimport app.models"
    )


@pytest.fixture
def host(tmp_path: Path, database_url: URL) -> HostProject:
    host = make_host(tmp_path / "host", database_url)
    opt_in(host)
    return host


def expected_partitioned(key_types: dict[str, str]) -> dict[str, Any]:
    """``event_logs`` in the partitioned layout: as the plain one, keyed on (id, created_at)."""
    expected = expected_event_logs(key_types)
    expected["constraints"]["pk_event_logs"] = "PRIMARY KEY (id, created_at)"
    expected["indexes"] = {
        name: definition.replace("ON public.event_logs", "ON ONLY public.event_logs").replace(
            "(id)", "(id, created_at)"
        )
        for name, definition in expected["indexes"].items()
    }
    return expected


def partitions(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        return [
            (name, bound)
            for name, bound in connection.execute(
                text(
                    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                    "JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'event_logs'::regclass ORDER BY 2"
                )
            )
        ]


def add_event(engine: Engine) -> None:
    """Store one event (with its user and chat session) in ``event_logs``, whatever its layout."""
    with engine.begin() as connection:
        user = connection.execute(
            text("INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'a') RETURNING id")
        ).scalar()
        chat = connection.execute(
            text(
                "INSERT INTO chat_sessions (id, user_id, title) "
                "VALUES (gen_random_uuid(), :u, 't') RETURNING id"
            ),
            {"u": user},
        ).scalar()
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type) "
                "VALUES (gen_random_uuid(), :c, :u, 'user_message')"
            ),
            {"c": chat, "u": user},
        )


def monday(moment: datetime) -> datetime:
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def test_heads_show_the_opt_in_branch(host: HostProject) -> None:
    heads = host.run("heads").stdout.splitlines()
    assert sorted(heads) == [
        "eventlog_prereqs (app) (effective head)",
        "evl_0002 (eventlog) (effective head)",
        "evlpart_0001 (eventlog_partitioned) (head)",
    ]


def test_upgrade_creates_the_partitioned_table_and_weekly_partitions_ahead(
    host: HostProject, engine: Engine
) -> None:
    result = host.run("upgrade", "heads")
    assert result.stderr.index("-> evl_0002") < result.stderr.index("-> evlpart_0001")
    with engine.connect() as connection:
        schema = of_table(snapshot(connection), "event_logs")
        kind = connection.execute(
            text("SELECT relkind FROM pg_class WHERE oid = 'event_logs'::regclass")
        ).scalar()
    assert kind == "p"
    assert schema == expected_partitioned(UUID_KEYS)
    found = partitions(engine)
    start = monday(datetime.now(UTC))
    assert len(found) == 5  # the current week and 4 ahead; no DEFAULT partition
    for week, (name, bound) in enumerate(found):
        low, high = start + timedelta(weeks=week), start + timedelta(weeks=week + 1)
        assert name == f"event_logs_p{low:%Y%m%d}"
        assert bound == (
            f"FOR VALUES FROM ('{low:%Y-%m-%d %H:%M:%S}+00') TO ('{high:%Y-%m-%d %H:%M:%S}+00')"
        )
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_monthly_partitions_and_how_many_ahead_are_settings(
    host: HostProject, engine: Engine
) -> None:
    host.run(
        "-x",
        "eventlog_persist.partition_interval=month",
        "-x",
        "eventlog_persist.partitions_ahead=2",
        "upgrade",
        "heads",
    )
    first = datetime.now(UTC).replace(day=1)
    names = [name for name, _ in partitions(engine)]
    assert len(names) == 3
    assert names[0] == f"event_logs_p{first:%Y%m01}"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("partition_interval=day", "partition_interval='day' is not supported"),
        ("partitions_ahead=500", "partitions_ahead='500' is not valid"),
    ],
)
def test_settings_that_make_hundreds_of_partitions_are_refused(
    host: HostProject, engine: Engine, setting: str, message: str
) -> None:
    result = host.run("-x", f"eventlog_persist.{setting}", "upgrade", "heads", check=False)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not inspect(engine).has_table("event_logs")


def test_a_table_with_rows_is_refused_and_left_as_it_was(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "evl_0002")
    add_event(engine)
    result = host.run("upgrade", "heads", check=False)
    assert result.returncode != 0
    assert "event_logs holds rows; evlpart_0001 partitions only an empty event_logs" in (
        result.stdout + result.stderr
    )
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_event_logs(UUID_KEYS)


def test_downgrade_returns_to_the_plain_table_with_its_rows(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "app@head")
    with engine.connect() as connection:
        host_only = snapshot(connection)
    host.run("upgrade", "evl_0002")
    with engine.connect() as connection:
        plain = snapshot(connection)
    host.run("upgrade", "heads")
    add_event(engine)
    result = host.run("downgrade", "eventlog_partitioned@base")
    assert "Running downgrade evlpart_0001" in result.stderr
    with engine.begin() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 1
        after = snapshot(connection)
        assert after == plain | {"columns": after["columns"]}
        assert after["columns"] == plain["columns"]
        connection.execute(text("DELETE FROM event_logs"))
    host.run("upgrade", "heads")
    assert len(partitions(engine)) == 5
    host.run("downgrade", "eventlog@base")
    with engine.connect() as connection:
        assert snapshot(connection) == host_only


def test_downgrade_stops_while_a_partitions_detach_is_pending(
    host: HostProject, engine: Engine, database_url: URL
) -> None:
    """SELECT * FROM event_logs leaves such a partition out, and DROP TABLE of the renamed
    table would drop it: its rows would be lost without a word."""
    host.run("upgrade", "heads")
    add_event(engine)  # in the current week's partition
    (current,) = [name for name, bound in partitions(engine) if _holds_now(bound)]
    reader = engine.connect()
    reader.execute(text("SELECT count(*) FROM event_logs"))  # a transaction the detach waits for
    impatient = create_engine(
        database_url,
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c lock_timeout=300"},
    )
    detach = text(f"ALTER TABLE event_logs DETACH PARTITION {current} CONCURRENTLY")
    try:
        with impatient.connect() as connection, pytest.raises(OperationalError, match="lock"):
            connection.execute(detach)
    finally:
        impatient.dispose()
        reader.close()
    # Offline, as psql runs the script: the same refusal, from a DO block.
    offline = host.run("downgrade", "evlpart_0001:eventlog_partitioned@base", "--sql").stdout
    (guard,) = [line for line in offline.splitlines() if "inhdetachpending" in line]
    with engine.connect() as connection, pytest.raises(DBAPIError, match="still being detached"):
        connection.exec_driver_sql(guard.rstrip(";").replace("%", "%%"))
    result = host.run("downgrade", "eventlog_partitioned@base", check=False)
    assert result.returncode != 0
    assert f"partition {current} of event_logs is still being detached" in result.stderr
    assert f"DETACH PARTITION {current} FINALIZE" in result.stderr
    with engine.begin() as connection:  # nothing changed: finish it, and the downgrade runs
        assert connection.execute(text(f"SELECT count(*) FROM {current}")).scalar() == 1
        connection.execute(text(f"ALTER TABLE event_logs DETACH PARTITION {current} FINALIZE"))
        week = monday(datetime.now(UTC))
        connection.execute(
            text(
                f"ALTER TABLE event_logs ATTACH PARTITION {current} FOR VALUES FROM "
                f"('{week.isoformat()}') TO ('{(week + timedelta(days=7)).isoformat()}')"
            )
        )
    host.run("downgrade", "eventlog_partitioned@base")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 1


def _holds_now(bound: str) -> bool:
    start, end = (datetime.fromisoformat(part.split("'")[1]) for part in bound.split(" TO "))
    return start <= datetime.now(UTC) < end


def test_offline_sql_partitions_and_guards_against_rows(host: HostProject) -> None:
    sql = host.run("-x", "eventlog_persist.pk_type=uuid", "upgrade", "heads", "--sql").stdout
    assert "format('" in sql
    assert "%%" not in sql  # as psql will read it (env.py's paramstyle, docs/adoption.md)
    assert 'IF EXISTS (SELECT 1 FROM "event_logs") THEN RAISE EXCEPTION' in sql
    assert "PARTITION BY RANGE (created_at)" in sql
    assert "PRIMARY KEY (id, created_at)" in sql
    assert sql.count("PARTITION OF") == 5


def test_the_opt_in_location_alone_is_reported(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions eventlog_persist:migrations",
        "%(here)s/migrations/versions eventlog_persist:migrations_partitioned",
    )
    result = host.run("eventlog-persist", "check", "--offline", check=False)
    assert result.returncode == 1
    assert "without 'eventlog_persist:migrations', whose evl_0002 it depends on" in result.stderr


def test_check_setup_online_sees_no_drift_in_the_partitioned_table(host: HostProject) -> None:
    host.run("upgrade", "heads")
    assert "setup OK (branch mode)" in host.run("eventlog-persist", "check").stdout


def test_linear_mode_copies_the_partitioned_revision_on_request(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    opt_in(host, location=False)
    written = host.run("eventlog-persist", "linear-revision", "--partitioned").stdout
    assert "eventlog_0002_add_request_and_trace_ids.py" in written
    assert "eventlog_part_0001_partition_event_logs.py" in written
    copy = (
        tmp_path / "h" / "migrations" / "versions" / "eventlog_part_0001_partition_event_logs.py"
    ).read_text()
    assert "down_revision = 'eventlog_0002'" in copy
    assert "eventlog_persist_revision = 'evlpart_0001'" in copy
    assert host.run("heads").stdout.split() == ["eventlog_part_0001", "(app)", "(head)"]
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check", "--offline").stdout
    host.run("upgrade", "head")
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_partitioned(UUID_KEYS)
    assert "No new upgrade operations detected." in host.run("check").stdout
    host.run("downgrade", "-1")
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_event_logs(UUID_KEYS)


def test_linear_mode_opts_in_later(tmp_path: Path, database_url: URL, engine: Engine) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    host.run("eventlog-persist", "linear-revision")
    host.run("upgrade", "head")
    opt_in(host, location=False)
    written = host.run("eventlog-persist", "linear-revision", "--partitioned").stdout
    assert "eventlog_part_0001_partition_event_logs.py" in written
    assert "eventlog_0001" not in written
    host.run("upgrade", "head")
    assert len(partitions(engine)) == 5


def what_the_host_gave(engine: Engine) -> dict[str, Any]:
    """event_logs' owner, grants (table and columns), comments and the host's own index."""
    with engine.connect() as connection:

        def rows(sql: str) -> list[Any]:
            return sorted(tuple(row) for row in connection.execute(text(sql)))

        return {
            "owner": rows(
                "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'event_logs'::regclass"
            ),
            "grants": rows(  # the owner's own too
                "SELECT pg_get_userbyid(a.grantee), a.privilege_type, a.is_grantable "
                "FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a "
                "WHERE c.oid = 'event_logs'::regclass"
            ),
            "column grants": rows(
                "SELECT t.attname, pg_get_userbyid(a.grantee), a.privilege_type FROM "
                "pg_attribute t, aclexplode(t.attacl) a WHERE t.attrelid = 'event_logs'::regclass"
            ),
            "comments": rows(
                "SELECT objsubid, description FROM pg_description WHERE objoid = "
                "'event_logs'::regclass"
            ),
            "host index": rows(
                # A partitioned table's index is shown ON ONLY the parent.
                "SELECT indexrelid::regclass::text, replace(pg_get_indexdef(indexrelid), "
                "' ON ONLY ', ' ON ') FROM pg_index "
                "WHERE indrelid = 'event_logs'::regclass AND indexrelid::regclass::text "
                "LIKE 'ix_host_%'"
            ),
        }


def test_both_directions_keep_what_the_host_gave_the_table(
    host: HostProject, engine: Engine
) -> None:
    """Owner, grants, comments and the host's own indexes: the rebuild used to drop them all
    (the application's role could no longer read or write)."""
    host.run("upgrade", "evl_0002")
    database = engine.url.database
    owner, writer, reporting = (f"{database}_{role}" for role in ("owner", "writer", "reports"))
    with engine.begin() as connection:
        for role in (owner, writer, reporting):  # roles are the cluster's: named after the db
            connection.execute(text(f'CREATE ROLE "{role}"'))
        for statement in (
            f'GRANT CREATE ON SCHEMA public TO "{owner}"',
            f'ALTER TABLE event_logs OWNER TO "{owner}"',
            f'GRANT SELECT, INSERT ON event_logs TO "{writer}" WITH GRANT OPTION',
            f'GRANT UPDATE (tool_name) ON event_logs TO "{writer}"',
            "GRANT SELECT ON event_logs TO PUBLIC",
            f'REVOKE TRUNCATE ON event_logs FROM "{owner}"',  # the owner's own, taken back
            # What the migrating role's new tables get: not event_logs, which the host chose.
            f'ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO "{reporting}"',
            "COMMENT ON TABLE event_logs IS 'the host''s note'",
            "COMMENT ON COLUMN event_logs.tool_name IS 'which tool'",
            "CREATE INDEX ix_host_trace ON event_logs (trace_id) WHERE trace_id IS NOT NULL",
        ):
            connection.execute(text(statement))
    given = what_the_host_gave(engine)
    assert given["owner"] == [(owner,)]
    assert (owner, "TRUNCATE", False) not in given["grants"]
    assert (owner, "DELETE", False) in given["grants"]
    assert not [grant for grant in given["grants"] if grant[0] == reporting]
    assert len(given["host index"]) == 1
    host.run("upgrade", "heads")
    assert what_the_host_gave(engine) == given
    add_event(engine)
    host.run("downgrade", "eventlog_partitioned@base")
    assert what_the_host_gave(engine) == given
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 1
    host.run("downgrade", "eventlog@base")
    with engine.begin() as connection:
        connection.execute(
            text(
                "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES "
                f'FROM "{reporting}"'
            )
        )
        for role in (owner, writer, reporting):
            connection.execute(text(f'DROP OWNED BY "{role}"'))
            connection.execute(text(f'DROP ROLE "{role}"'))


def test_check_names_a_recorded_revision_the_configuration_cannot_find(
    host: HostProject, engine: Engine
) -> None:
    """A configuration that lost an opt-in's location (another environment's alembic.ini):
    'setup OK' while every alembic command failed with "Can't locate revision"."""
    host.run("upgrade", "heads")
    host.edit(
        "alembic.ini", PARTITIONED, "%(here)s/migrations/versions eventlog_persist:migrations"
    )
    refused = host.run("upgrade", "heads", check=False)
    assert "Can't locate revision identified by 'evlpart_0001'" in refused.stdout + refused.stderr
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 1
    assert (
        "the database records revision 'evlpart_0001', which this configuration cannot find, "
        'so every alembic command fails ("Can\'t locate revision"): add '
        "'eventlog_persist:migrations_partitioned' to version_locations (linear mode: "
        "'eventlog-persist linear-revision --partitioned')"
    ) in result.stderr


def test_check_names_a_converted_table_without_the_opt_in(
    tmp_path: Path, engine: Engine, database_url: URL
) -> None:
    """'convert' partitions the table and says to run 'alembic upgrade heads', which records
    evlpart_0001 only with the opt-in's location: without it, it recorded nothing."""
    host = make_host(tmp_path / "plain", database_url)
    host.run("upgrade", "heads")
    add_event(engine)
    converted = host.run("eventlog-persist", "convert", check=False)
    assert converted.returncode == 0, converted.stderr
    assert "'eventlog_persist:migrations_partitioned' to version_locations" in converted.stdout
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 1
    assert (
        "event_logs is partitioned (by 'eventlog-persist convert'), but this configuration does "
        "not opt in to the partitioned layout: add 'eventlog_persist:migrations_partitioned'"
    ) in result.stderr
    opt_in(host)
    host.run("upgrade", "heads")
    assert "evlpart_0001" in host.run("current").stdout
    assert "setup OK" in host.run("eventlog-persist", "check").stdout


def test_check_passes_while_a_prepared_conversion_waits_for_its_swap(
    tmp_path: Path, engine: Engine, database_url: URL
) -> None:
    """adoption.md: 'convert --prepare', deploy, 'convert'. A CI step running 'check' during
    the deploy failed on the swap's key and advised to undo it by hand."""
    host = make_host(tmp_path / "plain", database_url)
    host.run("upgrade", "heads")
    add_event(engine)
    prepared = host.run("eventlog-persist", "convert", "--prepare", check=False)
    assert prepared.returncode == 0, prepared.stderr
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT to_regclass('event_logs_legacy_pkey')"))
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 0, result.stderr
    assert "setup OK" in result.stdout
