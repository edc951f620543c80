"""eventlog_persist.testing: the opt-in pytest plugin, run by pytester on copies of the
example host, and the example host's own test suite (with pytest-alembic's built-in tests)
in a subprocess."""

from __future__ import annotations

import contextlib
import importlib.metadata
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hostkit import EXAMPLE_HOST, make_host
from pgserver import ServerInfo
from sqlalchemy.engine import URL

from eventlog_persist.testing import DSN_ENVIRONMENT_VARIABLE

pytest_plugins = ["pytester"]

_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
filterwarnings =
    error
    # This process imported the plugin before the inner run: it cannot rewrite its asserts.
    ignore:Module already imported:pytest.PytestAssertRewriteWarning
"""


@pytest.fixture
def host(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A copy of the example host (its own tests removed) as pytester's project."""
    shutil.copytree(
        EXAMPLE_HOST,
        pytester.path,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__", "tests", "pytest.ini"),
    )
    pytester.makeini(_INI)
    pytester.syspathinsert()
    monkeypatch.delenv(DSN_ENVIRONMENT_VARIABLE, raising=False)
    return pytester


def _run(host: pytest.Pytester, pg_server: ServerInfo, *args: str) -> pytest.RunResult:
    return host.runpytest_inprocess(
        "-p", "eventlog_persist.testing", "--eventlog-dsn", pg_server.libpq_dsn("postgres"), *args
    )


_ISOLATION = """
import pathlib
import uuid

import pytest
from sqlalchemy import func, select, text

from app.models import EventLog, User


def test_writes_a_user(eventlog_session):
    eventlog_session.add(User(id=uuid.uuid4(), name="Ada"))
    eventlog_session.commit()
    assert eventlog_session.scalar(select(func.count()).select_from(User)) == 1


def test_the_next_test_sees_none(eventlog_session, eventlog_database_url):
    assert eventlog_session.scalar(select(func.count()).select_from(User)) == 0
    assert eventlog_database_url.database.startswith("evl_test_")
    pathlib.Path("database-name.txt").write_text(eventlog_database_url.database)


def test_migrated_to_heads(eventlog_engine):
    with eventlog_engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(EventLog)) == 0
        versions = {row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))}
    assert "evl_0002" in versions


@pytest.mark.asyncio
async def test_async_fixtures(eventlog_async_engine, eventlog_async_session):
    user = User(id=uuid.uuid4(), name="Grace")
    eventlog_async_session.add(user)
    await eventlog_async_session.commit()
    assert user.name == "Grace"  # expire_on_commit=False: no implicit load
    async with eventlog_async_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(User)) == 1
"""


def test_fresh_migrated_database_per_test_migrated_once(
    host: pytest.Pytester, pg_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic import command

    upgrades: list[str] = []
    upgrade = command.upgrade
    monkeypatch.setattr(
        command,
        "upgrade",
        lambda config, revision: (upgrades.append(revision), upgrade(config, revision)),
    )
    host.makepyfile(test_isolation=_ISOLATION)
    result = _run(host, pg_server)
    result.assert_outcomes(passed=4)
    assert upgrades == ["heads"]
    result.stdout.fnmatch_lines(["eventlog test databases: the server of --eventlog-dsn, *"])
    # Other tests share the server: look only at this run's template and clones.
    prefix = (host.path / "database-name.txt").read_text().rsplit("_", 1)[0] + "_"
    with pg_server_connect(pg_server) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
        ).fetchall()
    assert left == [], "every test database and the template are dropped"


def pg_server_connect(pg_server: ServerInfo):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(**pg_server.connect_kwargs("postgres"), autocommit=True)


def test_embedded_server_by_default(host: pytest.Pytester) -> None:
    host.makepyfile(
        test_one="""
        def test_one(eventlog_postgresql, eventlog_engine):
            assert eventlog_postgresql.source == "embedded"
            assert eventlog_postgresql.host.startswith("/")
            with eventlog_engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW fsync").scalar() == "off"
        """
    )
    result = host.runpytest_inprocess("-p", "eventlog_persist.testing")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["eventlog test databases: an embedded server, *"])


def test_server_from_pytest_postgresql_fixture(
    host: pytest.Pytester, pg_server: ServerInfo
) -> None:
    host.makeini(_INI + "eventlog_server_fixture = postgresql_noproc\n")
    host.makepyfile(
        test_one="""
        def test_one(eventlog_postgresql, eventlog_engine):
            assert eventlog_postgresql.source == "fixture postgresql_noproc"
            with eventlog_engine.connect() as conn:
                assert conn.exec_driver_sql("SELECT count(*) FROM event_logs").scalar() == 0
        """
    )
    result = host.runpytest_inprocess(
        "-p",
        "eventlog_persist.testing",
        f"--postgresql-host={pg_server.host}",
        f"--postgresql-port={pg_server.port}",
        f"--postgresql-user={pg_server.user}",
    )
    result.assert_outcomes(passed=1)


def test_dsn_from_the_environment(
    host: pytest.Pytester, pg_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = URL.create(
        "postgresql+psycopg",
        username=pg_server.user,
        database="postgres",
        query={"host": pg_server.host, "port": str(pg_server.port)},
    )
    monkeypatch.setenv(DSN_ENVIRONMENT_VARIABLE, url.render_as_string(hide_password=False))
    host.makepyfile(
        test_one="""
        def test_one(eventlog_postgresql):
            assert eventlog_postgresql.source == "EVENTLOG_TEST_DSN"
        """
    )
    host.runpytest_inprocess("-p", "eventlog_persist.testing").assert_outcomes(passed=1)


# -- the plugin is opt-in ------------------------------------------------------------------


def test_installing_the_package_changes_no_test_run(host: pytest.Pytester) -> None:
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert not [ep for ep in entry_points if ep.value.startswith("eventlog_persist")]
    plain = host.runpytest_inprocess("--fixtures")
    assert "eventlog_" not in plain.stdout.str()
    assert "eventlog test databases" not in plain.stdout.str()
    enabled = host.runpytest_inprocess("--fixtures", "-p", "eventlog_persist.testing")
    enabled.stdout.fnmatch_lines(["eventlog_database_url*", "*fresh migrated database*"])


# -- setup errors: one message naming the fix ----------------------------------------------

_USES_DATABASE = """
def test_one(eventlog_engine):
    pass

def test_two(eventlog_engine):
    pass
"""


def _errors(result: pytest.RunResult, count: int = 2) -> str:
    result.assert_outcomes(errors=count)
    return result.stdout.str()


def test_missing_alembic_ini(host: pytest.Pytester, pg_server: ServerInfo) -> None:
    host.makepyfile(test_db=_USES_DATABASE)
    out = _errors(_run(host, pg_server, "--eventlog-alembic-ini", "nowhere/alembic.ini"))
    assert "no Alembic configuration at" in out
    assert "nowhere/alembic.ini; point the plugin at the host's alembic.ini with" in out
    assert "Traceback" not in out


def test_unreachable_server(host: pytest.Pytester) -> None:
    host.makepyfile(test_db=_USES_DATABASE)
    result = host.runpytest_inprocess(
        "-p",
        "eventlog_persist.testing",
        "--eventlog-dsn",
        "host=127.0.0.1 port=1 user=x password=secret",
    )
    out = _errors(result)
    assert "cannot connect to the PostgreSQL server of --eventlog-dsn" in out
    assert "start the server or fix the DSN" in out
    assert "secret" not in out


def test_a_clone_that_cannot_be_connected_to_fails_its_test_and_is_dropped(
    host: pytest.Pytester, pg_server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clone made but refused on its first connection (too many clients, say): the test
    that takes it fails with the cause, the others pass, and nothing is left behind."""
    import psycopg

    connect = psycopg.connect

    def refusing(conninfo: str = "", *args: Any, **kwargs: Any) -> Any:
        if re.search(r"dbname=evl_test_\w+_2\b", conninfo):
            raise psycopg.OperationalError("FATAL:  sorry, too many clients already")
        return connect(conninfo, *args, **kwargs)

    monkeypatch.setattr(psycopg, "connect", refusing)
    host.makepyfile(test_db=_USES_DATABASE + _USES_DATABASE.replace("test_", "test_more_"))
    result = _run(host, pg_server)
    result.assert_outcomes(passed=3, errors=1)
    out = result.stdout.str()
    assert "eventlog_persist.testing: cannot connect to the new test database" in out
    assert "sorry, too many clients already; check the server's max_connections" in out
    assert "Traceback" not in out
    prefix = re.search(r"'(evl_test_\w+_)2'", out)
    assert prefix is not None
    with pg_server_connect(pg_server) as conn:
        left = conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix[1]]
        ).fetchall()
    assert left == [], "every test database and the template are dropped"


_SETTINGS_TEST = """
from sqlalchemy import text

def test_settings(eventlog_engine):
    with eventlog_engine.connect() as connection:
        shown = [connection.scalar(text(f"SHOW {name}")) for name in ("search_path", "TimeZone")]
        assert shown == ['app, "$user", "a "" b"', "Asia/Tokyo"]
        assert connection.scalar(text("SHOW work_mem")) == "5MB"
        assert connection.scalar(text("SELECT count(*) FROM settings")) == 0  # unqualified
"""


def test_each_test_database_keeps_the_settings_the_migrations_gave_the_template(
    host: pytest.Pytester, pg_server: ServerInfo
) -> None:
    """CREATE DATABASE ... TEMPLATE copies no ALTER DATABASE setting: a search_path the
    host's code relies on was lost in every test database."""
    revision = host.path / "migrations" / "versions" / "h001_core.py"
    revision.write_text(
        revision.read_text().replace(
            "def upgrade() -> None:\n",
            "def upgrade() -> None:\n"
            "    op.execute('CREATE SCHEMA app')\n"
            "    op.execute('CREATE TABLE app.settings (k text)')\n"
            "    op.execute(\"DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET search_path = "
            'app, \\"$user\\", \\"a \\"\\" b\\"\', current_database()); '
            "EXECUTE format('ALTER DATABASE %I SET TimeZone = %L', current_database(), "
            "'Asia/Tokyo'); EXECUTE format('ALTER ROLE %I IN DATABASE %I SET work_mem = %L', "
            "current_user, current_database(), '5MB'); END $$\")\n",
        )
    )
    host.makepyfile(test_settings=_SETTINGS_TEST)
    _run(host, pg_server).assert_outcomes(passed=1)


def test_a_role_that_cannot_create_databases_fails_each_test_in_one_line(
    host: pytest.Pytester, pg_server: ServerInfo, database_url: URL
) -> None:
    role = f"{database_url.database}_nocreatedb"  # roles are the cluster's: named after the db
    with pg_server_connect(pg_server) as conn:
        conn.execute(f'CREATE ROLE "{role}"')
    try:
        # The role set at connection start, not a login: a server with peer authentication
        # (Debian's PostgreSQL 15 in CI) lets the test's own user in only.
        dsn = pg_server.sqlalchemy_url("postgres").update_query_dict({"options": f"-crole={role}"})
        host.makepyfile(test_db=_USES_DATABASE)
        out = _errors(
            host.runpytest_inprocess(
                "-p",
                "eventlog_persist.testing",
                "--eventlog-dsn",
                dsn.set(drivername="postgresql").render_as_string(hide_password=False),
            )
        )
        assert f"role '{role}' cannot create the test databases" in out
        assert f"grant it CREATEDB (ALTER ROLE {role} CREATEDB)" in out
        assert "Traceback" not in out
    finally:
        with pg_server_connect(pg_server) as conn:
            conn.execute(f'DROP ROLE "{role}"')


_SLEEPS = """
import pathlib
import time

def test_sleeps(eventlog_database_url):
    pathlib.Path("started.txt").write_text(str(eventlog_database_url.database))
    time.sleep(60)
"""


@pytest.mark.parametrize("server", ["dsn", "embedded"])
def test_a_run_ended_by_sigterm_leaves_no_database_and_no_server(
    host: pytest.Pytester, pg_server: ServerInfo, server: str
) -> None:
    """SIGTERM (a cancelled CI job, docker stop) used to end the process at once: the
    embedded server kept running and the test databases stayed (as after SIGKILL)."""
    host.makepyfile(test_sleeps=_SLEEPS)
    before = set(Path(tempfile.gettempdir()).glob("eventlog-testing-*"))
    where = ["--eventlog-dsn", pg_server.libpq_dsn("postgres")] if server == "dsn" else []
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "eventlog_persist.testing", "-p", "no:randomly",
         "-p", "no:xdist", "-q", *where],
        cwd=host.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    started = host.path / "started.txt"
    deadline = time.monotonic() + 90
    while not started.exists():
        assert run.poll() is None, run.communicate()[0]
        assert time.monotonic() < deadline, "the test did not start"
        time.sleep(0.1)
    run.send_signal(signal.SIGTERM)
    output = run.communicate(timeout=60)[0]
    assert run.returncode == 2, output  # interrupted, as by Ctrl-C
    if server == "dsn":
        prefix = started.read_text().rsplit("_", 1)[0] + "_"
        with pg_server_connect(pg_server) as conn:
            left = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [prefix]
            ).fetchall()
        assert left == []
    else:
        assert set(Path(tempfile.gettempdir()).glob("eventlog-testing-*")) == before


_DRIVERS = """
import pytest
from sqlalchemy import create_engine, text

@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_driver(eventlog_postgresql, eventlog_database_url, driver):
    url = eventlog_postgresql.url(eventlog_database_url.database, driver=driver)
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT current_database()")) == url.database
    engine.dispose()
"""


def test_the_servers_url_serves_every_sync_driver_over_a_unix_socket(
    host: pytest.Pytester, pg_server: ServerInfo
) -> None:
    """pg8000 takes no socket folder as its host: it read it as a host name."""
    host.makepyfile(test_drivers=_DRIVERS)
    _run(host, pg_server).assert_outcomes(passed=3)


def test_migration_failure(host: pytest.Pytester, pg_server: ServerInfo) -> None:
    revision = host.path / "migrations" / "versions" / "h001_core.py"
    revision.write_text(
        revision.read_text().replace(
            "def upgrade() -> None:\n",
            "def upgrade() -> None:\n    op.execute('SELECT * FROM no_such_table')\n",
        )
    )
    host.makepyfile(test_db=_USES_DATABASE)
    out = _errors(_run(host, pg_server))
    assert "alembic upgrade heads failed on the test template database" in out
    assert "no_such_table" in out
    assert "run 'alembic upgrade heads' on an empty database" in out


def test_env_py_that_ignores_the_connection(
    host: pytest.Pytester, pg_server: ServerInfo, database_url: URL
) -> None:
    # An env.py that always migrates the URL it knows: a fresh database of its own (it gets
    # migrated, and the server may be shared), dropped afterwards.
    elsewhere = database_url.render_as_string(hide_password=False)
    env = host.path / "migrations" / "env.py"
    text = env.read_text().replace('given = config.attributes.get("connection")', "given = None")
    env.write_text(
        text.replace("def _url() -> str:\n", f"def _url() -> str:\n    return {elsewhere!r}\n")
    )
    host.makepyfile(test_db=_USES_DATABASE)
    out = _errors(_run(host, pg_server))
    assert "created no table in the test template database" in out
    assert "env.py migrated another database" in out
    assert "config.attributes['connection']" in out


# -- the example host's own suite, as its developers run it --------------------------------


def test_example_host_suite_with_pytest_alembic(
    tmp_path: Path, database_url: URL, pg_server: ServerInfo
) -> None:
    project = make_host(tmp_path / "host", database_url)
    result = project.run_cli(
        "python",
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--test-alembic",
        "--eventlog-dsn",
        pg_server.libpq_dsn("postgres"),
        "-v",
        timeout=240,
    )
    for name in (
        "test_model_definitions_match_ddl",
        "test_single_head_revision",
        "test_up_down_consistency",
        "test_upgrade",
    ):
        assert f"pytest-alembic::{name} PASSED" in result.stdout
    assert "8 passed" in result.stdout


def test_a_template_setting_the_clone_cannot_take_fails_the_clone_and_leaves_no_database(
    pg_server: ServerInfo, database_url: URL
) -> None:
    """A superuser-only setting on the template, the plugin's role not a superuser: the
    clone failed with a raw psycopg error and stayed on the server."""
    from eventlog_persist._testing_databases import DatabaseFactory
    from eventlog_persist._testing_server import server_from_dsn

    role = f"{database_url.database}_cloner"  # roles are the cluster's: named after the db
    template = f"{database_url.database}_cl_tpl"
    with pg_server_connect(pg_server) as conn:
        conn.execute(f'CREATE ROLE "{role}" CREATEDB')
        conn.execute(f'CREATE DATABASE "{template}" OWNER "{role}"')
        conn.execute(f'ALTER DATABASE "{template}" SET log_min_duration_statement = 0')
    try:
        dsn = pg_server.sqlalchemy_url("postgres").update_query_dict({"options": f"-crole={role}"})
        server = server_from_dsn(dsn.set(drivername="postgresql").render_as_string(False))
        factory = DatabaseFactory(server, template)
        with pytest.raises(ValueError, match="cannot set log_min_duration_statement on the test"):
            factory.take()
        with contextlib.suppress(ValueError):
            factory.close()  # the clone made ahead fails the same way
        with pg_server_connect(pg_server) as conn:
            left = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                [template.removesuffix("_tpl") + "_"],
            ).fetchall()
        assert left == [(template,)]
    finally:
        with pg_server_connect(pg_server) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{template}"')
            conn.execute(f'DROP ROLE "{role}"')
