"""The eventlog Alembic branch, driven through the alembic CLI on example host projects.

``host.run`` runs the CLI's code in this process (see tests/hostkit.py); the tests commented
"real CLI" start ``python -m alembic`` / ``python -m eventlog_persist`` as subprocesses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from catalog import INTEGER_KEYS, UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import HostProject, make_host
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import URL

from eventlog_persist._alembic_setup import package_revisions


@pytest.fixture
def host(tmp_path: Path, database_url: URL) -> HostProject:
    return make_host(tmp_path / "host", database_url)


def event_logs_schema(engine: Engine) -> dict[str, dict[str, object]]:
    with engine.connect() as connection:
        return of_table(snapshot(connection), "event_logs")


def test_each_branch_has_one_head(host: HostProject) -> None:
    heads = host.run("heads").stdout.splitlines()
    assert sorted(heads) == [
        "eventlog_prereqs (app) (effective head)",
        "evl_0002 (eventlog) (head)",
    ]


def test_fresh_upgrade_creates_the_spec_table(host: HostProject, engine: Engine) -> None:
    # Real CLI: `alembic upgrade heads` in a subprocess, logging to stderr via env.py.
    result = host.run_cli("upgrade", "heads")
    # The anchor orders event_logs after the host's tables, whatever the location order.
    assert result.stderr.index("-> h001_core") < result.stderr.index("-> evl_0001")
    assert result.stderr.index("-> evl_0001") < result.stderr.index("-> evl_0002")
    assert event_logs_schema(engine) == expected_event_logs(UUID_KEYS)


def test_fresh_upgrade_of_eventlog_branch_alone_pulls_in_host_tables(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "eventlog@head")
    assert event_logs_schema(engine) == expected_event_logs(UUID_KEYS)


def test_package_location_listed_first_still_orders_after_host(
    host: HostProject, engine: Engine
) -> None:
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions eventlog_persist:migrations",
        "eventlog_persist:migrations %(here)s/migrations/versions",
    )
    host.run("upgrade", "heads")
    assert event_logs_schema(engine) == expected_event_logs(UUID_KEYS)


def test_integer_keyed_host_with_naming_convention(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, keys="integer", naming_convention=True)
    host.run("upgrade", "heads")
    assert event_logs_schema(engine) == expected_event_logs(INTEGER_KEYS)
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_alembic_check_is_clean_after_upgrade(host: HostProject) -> None:
    host.run("upgrade", "heads")
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_existing_database_adoption_runs_only_the_package_revisions(
    host: HostProject, engine: Engine
) -> None:
    # The host database predates the adoption: only its own history, no anchor, no location.
    anchor = host.root / "migrations" / "versions" / "eventlog_prereqs.py"
    anchor_text = anchor.read_text()
    anchor.unlink()
    host.edit("alembic.ini", " eventlog_persist:migrations", "")
    host.run("upgrade", "head")
    with engine.connect() as connection:
        before = snapshot(connection)
    # Adoption: the anchor on the current head, then the location.
    anchor.write_text(anchor_text)
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions",
        "%(here)s/migrations/versions eventlog_persist:migrations",
    )
    result = host.run("upgrade", "heads")
    ran = [line for line in result.stderr.splitlines() if "Running upgrade" in line]
    assert len(ran) == 3
    assert "h001_core -> eventlog_prereqs" in ran[0]
    assert "-> evl_0001" in ran[1]
    assert "evl_0001 -> evl_0002" in ran[2]
    with engine.connect() as connection:
        after = snapshot(connection)
    assert {k: v for k, v in after["columns"].items() if k[0] != "event_logs"} == before["columns"]


def test_downgrade_branch_removes_everything_it_created(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "app@head")
    with engine.connect() as connection:
        host_only = snapshot(connection)
    host.run("upgrade", "heads")
    result = host.run("downgrade", "eventlog@base")
    assert "Running downgrade evl_0002 -> evl_0001" in result.stderr
    assert "Running downgrade evl_0001" in result.stderr
    with engine.connect() as connection:
        after = snapshot(connection)
    assert after == host_only
    assert host.run("current").stdout.split()[0] == "eventlog_prereqs"


def test_downgrade_to_branch_base_then_upgrade_again(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "heads")
    host.run("downgrade", "eventlog@base")
    assert not inspect(engine).has_table("event_logs")
    host.run("upgrade", "heads")
    assert event_logs_schema(engine) == expected_event_logs(UUID_KEYS)


def test_full_downgrade_drops_event_logs_before_host_tables(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "heads")
    host.run("downgrade", "base")
    assert inspect(engine).get_table_names() == ["alembic_version"]


def test_offline_sql_requires_key_type_and_says_how(host: HostProject) -> None:
    result = host.run("upgrade", "heads", "--sql", check=False)
    assert result.returncode != 0
    assert "-x eventlog_persist.pk_type=uuid" in result.stderr


@pytest.mark.parametrize(
    ("pk_type", "session_type", "user_type"),
    [
        ("uuid", "UUID", "UUID"),
        ("bigint", "BIGINT", "BIGINT"),
        (
            "chat_sessions=bigint,users=integer,user_projects=integer,user_agents=integer",
            "BIGINT",
            "INTEGER",
        ),
    ],
)
def test_offline_sql_with_key_type(
    host: HostProject, pk_type: str, session_type: str, user_type: str
) -> None:
    sql = host.run("-x", f"eventlog_persist.pk_type={pk_type}", "upgrade", "heads", "--sql").stdout
    assert "CREATE TABLE event_logs (" in sql
    assert f"session_id {session_type} NOT NULL" in sql
    assert f"user_id {user_type} NOT NULL" in sql
    assert "CREATE INDEX ix_event_logs_session_id_created_at" in sql
    assert "WHERE project_id IS NOT NULL" in sql


def test_offline_sql_rejects_incomplete_key_type_map(host: HostProject) -> None:
    result = host.run(
        "-x", "eventlog_persist.pk_type=users=integer", "upgrade", "heads", "--sql", check=False
    )
    assert "names no key type for chat_sessions, user_agents, user_projects" in result.stderr


def test_online_key_type_mismatch_is_refused(host: HostProject, engine: Engine) -> None:
    result = host.run("-x", "eventlog_persist.pk_type=bigint", "upgrade", "heads", check=False)
    assert "pk_type says chat_sessions keys are bigint, but the database has uuid" in result.stderr
    assert not inspect(engine).has_table("event_logs")


def test_missing_target_table_fails_clearly_and_writes_nothing(
    host: HostProject, engine: Engine
) -> None:
    host.edit("alembic.ini", "# users = users", "users = accounts")
    result = host.run("upgrade", "heads", check=False)
    assert result.returncode != 0
    assert "FK target table 'accounts' (users) does not exist" in result.stderr
    # The whole run is one transaction: nothing is half-written.
    assert inspect(engine).get_table_names() == []


def test_missing_anchor_breaks_alembic_and_check_explains(host: HostProject) -> None:
    (host.root / "migrations" / "versions" / "eventlog_prereqs.py").unlink()
    assert "KeyError" in host.run("heads", check=False).stderr
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 1
    assert "no host revision is named 'eventlog_prereqs'" in result.stderr
    assert "--rev-id eventlog_prereqs" in result.stderr


def test_os_path_separator_is_reported(host: HostProject) -> None:
    host.edit("alembic.ini", "path_separator = space", "path_separator = os")
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions eventlog_persist:migrations",
        "%(here)s/migrations/versions:eventlog_persist:migrations",
    )
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 1
    assert "path_separator = os cuts 'eventlog_persist:migrations'" in result.stderr


@pytest.mark.timeout(60)  # the subprocess's own limit below fires first; never hang the run
@pytest.mark.parametrize(
    "locations",
    [
        # What `alembic init` writes (path_separator = os) with the documented list appended.
        "%(here)s/migrations/versions eventlog_persist:migrations",
        # The same list written with the os separator itself.
        "%(here)s/migrations/versions:eventlog_persist:migrations",
    ],
)
def test_upgrade_with_os_path_separator_fails_fast_with_the_fix(
    host: HostProject, engine: Engine, locations: str
) -> None:
    """Real CLI: `alembic upgrade heads` fails in seconds instead of hanging.

    Cut at the colon, the list names the relative folder ``migrations``: the host's own
    script directory, so Alembic loads its env.py as a revision, whose second run waits
    forever on the lock of the first run's uncommitted ``alembic_version`` table. The
    package, imported by env.py through the host's models, refuses the list first.
    """
    host.edit("alembic.ini", "path_separator = space", "path_separator = os")
    host.edit("alembic.ini", "%(here)s/migrations/versions eventlog_persist:migrations", locations)
    result = host.run_cli("upgrade", "heads", check=False, timeout=30)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    # Alembic prints a CommandError as one "FAILED:" line, on stdout.
    [failed] = [line for line in result.stdout.splitlines() if line.startswith("FAILED:")]
    assert "path_separator = os cuts 'eventlog_persist:migrations' at its colon" in failed
    assert "Set 'path_separator = space'" in failed
    # It failed before connecting: nothing was written.
    assert inspect(engine).get_table_names() == []


def test_check_passes_and_verifies_targets_online(host: HostProject, engine: Engine) -> None:
    # Real CLI: `python -m eventlog_persist check` in a subprocess, DATABASE_URL set.
    offline = host.run_cli("eventlog-persist", "check", "--offline")
    assert "setup OK (branch mode)" in offline.stdout
    online = host.run_cli("eventlog-persist", "check", check=False)  # --url from DATABASE_URL
    assert online.returncode == 1
    assert "FK target tables 'users', 'chat_sessions'" in online.stderr
    url = host.url.render_as_string(hide_password=False)
    result = host.run("eventlog-persist", "check", "--url", url, check=False)
    assert result.returncode == 1
    assert "FK target tables 'users', 'chat_sessions', 'user_projects', 'user_agents' do not" in (
        result.stderr
    )
    host.run("upgrade", "app@head")
    assert "setup OK" in host.run("eventlog-persist", "check", "--url", url).stdout
    assert "setup OK" in host.run("eventlog-persist", "check").stdout
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE user_agents"))
    result = host.run("eventlog-persist", "check", "--url", url, check=False)
    assert "FK target table 'user_agents' does not exist in the search_path" in result.stderr


def test_host_without_model_needs_include_name(host: HostProject) -> None:
    host.edit("app/models/__init__.py", "from app.models.event_log import EventLog\n", "")
    host.edit("app/models/__init__.py", '"EventLog", ', "")
    host.run("upgrade", "heads")
    result = host.run("check", check=False)
    assert "Detected removed table 'event_logs'" in result.stderr + result.stdout
    host.edit(
        "migrations/env.py",
        "context.configure(connection=connection, target_metadata=target_metadata)",
        "context.configure(connection=connection, target_metadata=target_metadata, "
        "include_name=eventlog_persist.include_name)",
    )
    host.edit(
        "migrations/env.py", "import app.models", "import eventlog_persist\nimport app.models"
    )
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_linear_mode_single_head_upgrade_head_and_downgrade_minus_one(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    assert "not adopted" in host.run("eventlog-persist", "check", check=False).stderr
    written = host.run("eventlog-persist", "linear-revision").stdout
    assert "eventlog_0001_create_event_logs.py" in written
    assert "eventlog_0002_add_request_and_trace_ids.py" in written
    assert host.run("heads").stdout.split() == ["eventlog_0002", "(app)", "(head)"]
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check", "--offline").stdout
    host.run("upgrade", "head")
    assert event_logs_schema(engine) == expected_event_logs(UUID_KEYS)
    assert "No new upgrade operations detected." in host.run("check").stdout
    result = host.run("downgrade", "-2")
    assert "Running downgrade eventlog_0002 -> eventlog_0001" in result.stderr
    assert "Running downgrade eventlog_0001 -> h001_core" in result.stderr
    assert not inspect(engine).has_table("event_logs")
    assert (
        "already has every package revision"
        in host.run("eventlog-persist", "linear-revision").stdout
    )


def test_linear_mode_without_version_locations_writes_into_the_script_directory(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    host.edit("alembic.ini", "version_locations = %(here)s/migrations/versions\n", "")
    written = host.run("eventlog-persist", "linear-revision").stdout
    assert (
        tmp_path / "h" / "migrations" / "versions" / "eventlog_0001_create_event_logs.py"
    ).is_file()
    assert "eventlog_0001_create_event_logs.py" in written
    host.run("upgrade", "head")
    assert inspect(engine).has_table("event_logs")


def _next_revision(tmp_path: Path, *, drop: str | None = None) -> list[tuple[str, Path]]:
    """The package's revisions plus a made-up next one that follows the house layout."""
    revisions = package_revisions()
    last_rev, last_file = revisions[-1]
    number = int(last_rev.removeprefix("evl_")) + 1
    new_rev = f"evl_{number:04d}"
    text = last_file.read_text()
    for pattern, new in [
        (r"^Revision ID: .*$", f"Revision ID: {new_rev}"),
        (r"^Revises:.*$", f"Revises: {last_rev}"),
        (r"^revision = .*$", f'revision = "{new_rev}"'),
        (r"^down_revision = .*$", f'down_revision = "{last_rev}"'),
    ]:
        text, count = re.subn(pattern, new, text, count=1, flags=re.MULTILINE)
        assert count == 1, pattern
    if drop is not None:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(drop))
    later = tmp_path / f"{new_rev}_later_change.py"
    later.write_text(text)
    return [*revisions, (new_rev, later)]


def test_linear_mode_chains_each_package_revision_on_the_one_before(
    tmp_path: Path, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eventlog_persist._alembic_setup as setup

    monkeypatch.setattr(setup, "package_revisions", lambda: _next_revision(tmp_path))
    host = make_host(tmp_path / "h", database_url, mode="linear")
    host.run("eventlog-persist", "linear-revision")
    versions = tmp_path / "h" / "migrations" / "versions"
    later = (versions / "eventlog_0003_later_change.py").read_text()
    assert "down_revision = 'eventlog_0002'" in later
    assert "eventlog_persist_revision = 'evl_0003'" in later
    second = (versions / "eventlog_0002_add_request_and_trace_ids.py").read_text()
    assert "down_revision = 'eventlog_0001'" in second
    first = (versions / "eventlog_0001_create_event_logs.py").read_text()
    assert "down_revision = 'h001_core'" in first
    assert host.run("heads").stdout.split() == ["eventlog_0003", "(app)", "(head)"]


def test_linear_mode_adds_only_the_package_revisions_a_host_lacks(
    tmp_path: Path, database_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eventlog_persist._alembic_setup as setup

    every = package_revisions()
    host = make_host(tmp_path / "h", database_url, mode="linear")
    with monkeypatch.context() as earlier:  # the host adopted 0.2, which had evl_0001 only
        earlier.setattr(setup, "package_revisions", lambda: every[:1])
        host.run("eventlog-persist", "linear-revision")
    host.run("upgrade", "head")
    written = host.run("eventlog-persist", "linear-revision").stdout
    assert "eventlog_0002_add_request_and_trace_ids.py" in written
    assert "eventlog_0001" not in written
    second = (
        tmp_path / "h" / "migrations" / "versions" / "eventlog_0002_add_request_and_trace_ids.py"
    )
    assert "down_revision = 'eventlog_0001'" in second.read_text()
    host.run("upgrade", "head")
    assert event_logs_schema(engine) == expected_event_logs(UUID_KEYS)
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_linear_mode_refuses_a_revision_file_it_cannot_rewrite(
    tmp_path: Path, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    import eventlog_persist._alembic_setup as setup

    monkeypatch.setattr(
        setup, "package_revisions", lambda: _next_revision(tmp_path, drop="branch_labels")
    )
    host = make_host(tmp_path / "h", database_url, mode="linear")
    result = host.run("eventlog-persist", "linear-revision", check=False)
    assert result.returncode != 0
    assert "cannot rewrite '^branch_labels = .*$' in revision evl_0003" in result.stderr


def test_linear_mode_refuses_branch_mode_host(host: HostProject) -> None:
    result = host.run("eventlog-persist", "linear-revision", check=False)
    assert result.returncode == 2
    assert "is in version_locations (branch mode)" in result.stderr


def test_every_package_revision_goes_up_down_and_up_again(
    host: HostProject, engine: Engine
) -> None:
    # The pytest-alembic "up/down consistency" check, per revision of the eventlog branch.
    host.run("upgrade", "app@head")
    with engine.connect() as connection:
        states = [snapshot(connection)]
    revisions = [rev for rev, _ in package_revisions()]
    for revision in revisions:
        host.run("upgrade", revision)
        with engine.connect() as connection:
            states.append(snapshot(connection))
    for index in range(len(revisions), 0, -1):
        host.run("downgrade", "eventlog@-1")
        with engine.connect() as connection:
            assert snapshot(connection) == states[index - 1]
    host.run("upgrade", "heads")
    with engine.connect() as connection:
        assert snapshot(connection) == states[-1]


def test_target_key_must_be_named_id(host: HostProject, engine: Engine) -> None:
    revision = "migrations/versions/h001_core.py"
    users_key = 'sa.Column("{}", sa.Uuid(), primary_key=True),\n        sa.Column("name"'
    host.edit(revision, users_key.format("id"), users_key.format("uid"))
    host.edit(revision, 'sa.ForeignKey("users.id"', 'sa.ForeignKey("users.uid"', count=2)
    result = host.run("upgrade", "heads", check=False)
    assert "'users' must have a single-column primary key named 'id'" in result.stderr
    assert not inspect(engine).has_table("event_logs")
