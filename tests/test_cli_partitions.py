"""``eventlog-persist partitions ensure|list|drop``: output, exit codes, one-line refusals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hostmodels import HostModels, build_host_models
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL

from eventlog_persist import ensure_partitions, list_partitions
from eventlog_persist._cli import main


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(partitioned=True)


@pytest.fixture
def url(database_url: URL) -> str:
    return database_url.render_as_string(hide_password=False)


def test_ensure_list_drop_for_cron(
    url: str,
    host_engine: Engine,
    host_models: HostModels,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    ensure_partitions(
        host_models.EventLog, host_engine, ahead=3, now=datetime.now(UTC) - timedelta(weeks=6)
    )
    assert main(["partitions", "ensure", "--ahead", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4  # three created (current and two ahead; a gap before), a summary
    assert out[-1].startswith("eventlog-persist: 3 partitions created; partitions exist through")
    assert main(["partitions", "ensure", "--ahead", "2", "--url", url]) == 0
    assert capsys.readouterr().out.startswith("eventlog-persist: 0 partitions created")

    assert main(["partitions", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    names = [p.name for p in list_partitions(host_models.EventLog, host_engine)]
    assert [line.split()[0] for line in listed] == names
    assert " .. " in listed[0]
    assert "bytes" in listed[0]

    assert main(["partitions", "drop", "--older-than", "3w", "--dry-run"]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert dry[-1].startswith(
        "eventlog-persist: would drop 3 partitions and detach and keep 0, older than"
    )
    assert names == [p.name for p in list_partitions(host_models.EventLog, host_engine)]
    assert main(["partitions", "drop", "--older-than", "3w", "--keep-detached"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("eventlog-persist: 0 partitions dropped, 3 detached and kept")
    with host_engine.connect() as connection:
        assert connection.execute(text(f"SELECT count(*) FROM {names[0]}")).scalar_one() == 0
    assert main(["partitions", "drop", "--older-than", "3w"]) == 0
    assert capsys.readouterr().out.startswith("eventlog-persist: 0 partitions dropped, 0")


def test_refusals_are_one_line_with_exit_status_2(
    url: str,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert main(["partitions", "list"]) == 2
    assert capsys.readouterr().err == (
        "eventlog-persist partitions: error: argument --url: required unless DATABASE_URL is "
        "set; pass --url postgresql://user:password@host:5432/dbname\n"
    )
    assert main(["partitions", "ensure", "--ahead", "99", "--url", url]) == 2
    assert "from 0 to 52" in capsys.readouterr().err
    assert main(["partitions", "drop", "--older-than", "0d", "--url", url]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "is not before now" in line
    assert main(["partitions", "drop", "--url", url]) == 2
    assert "--older-than" in capsys.readouterr().err
    # No table, then a plain one: the fix is named.
    assert main(["partitions", "list", "--url", url]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("eventlog-persist: error: there is no event_logs table")
    build_host_models().Base.metadata.create_all(engine)
    assert main(["partitions", "ensure", "--url", url]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "is not partitioned" in line
    assert "purge" in line


def test_a_database_error_is_one_line_naming_the_next_run(
    url: str, host_engine: Engine, host_models: HostModels, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_partitions(
        host_models.EventLog, host_engine, ahead=1, now=datetime.now(UTC) - timedelta(weeks=8)
    )
    with host_engine.connect() as reader:  # DROP TABLE waits for the readers of users
        reader.execute(text("SELECT count(*) FROM users"))
        status = main(
            ["partitions", "drop", "--older-than", "4w", "--lock-timeout", "0.2", "--url", url]
        )
    assert status == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("eventlog-persist: error: partitions drop failed: LockNotAvailable")
    assert "finished by the next run" in line
    assert main(["partitions", "drop", "--older-than", "4w", "--url", url]) == 0
    assert "2 partitions dropped" in capsys.readouterr().out


def named(lines: list[str], prefix: str) -> set[str]:
    """The partition named right after ``prefix`` in each line that starts with it."""
    words = [line.removeprefix(prefix).split()[0] for line in lines if line.startswith(prefix)]
    return {word for word in words if word.startswith("event_logs_")}


def test_the_dry_run_names_what_the_run_then_does(
    url: str, host_engine: Engine, host_models: HostModels, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_partitions(
        host_models.EventLog, host_engine, ahead=1, now=datetime.now(UTC) - timedelta(weeks=8)
    )
    # An earlier run detached a partition, then could not drop it: the next run drops it.
    with host_engine.connect() as reader:
        reader.execute(text("SELECT count(*) FROM users"))
        drop = ["partitions", "drop", "--older-than", "7w", "--lock-timeout", "0.2", "--url", url]
        assert main(drop) == 2
    capsys.readouterr()
    assert main(["partitions", "drop", "--older-than", "5w", "--dry-run", "--url", url]) == 0
    dry = capsys.readouterr().out.splitlines()
    assert any(line.endswith("(already detached)") for line in dry)
    assert main(["partitions", "drop", "--older-than", "5w", "--url", url]) == 0
    done = capsys.readouterr().out.splitlines()
    would = named(dry, "eventlog-persist: would drop ")
    assert would == named(done, "eventlog-persist: dropped ")
    assert len(would) == 2  # the one left behind, and the other


def test_the_dry_run_refuses_what_the_run_would_refuse(
    url: str, host_engine: Engine, host_models: HostModels, capsys: pytest.CaptureFixture[str]
) -> None:
    ensure_partitions(
        host_models.EventLog, host_engine, ahead=1, now=datetime.now(UTC) - timedelta(weeks=4)
    )
    [left, _] = [p.name for p in list_partitions(host_models.EventLog, host_engine)]
    with host_engine.connect() as reader:  # detached, then not dropped: left for the next run
        reader.execute(text("SELECT count(*) FROM users"))
        drop = ["partitions", "drop", "--older-than", "3w", "--lock-timeout", "0.2", "--url", url]
        assert main(drop) == 2
    with host_engine.begin() as connection:
        connection.execute(text("CREATE TABLE event_logs_default PARTITION OF event_logs DEFAULT"))
    capsys.readouterr()
    refusals = []
    for dry_run in (["--dry-run"], []):
        assert main(["partitions", "drop", "--older-than", "2w", "--url", url, *dry_run]) == 2
        refusals.append(capsys.readouterr().err)
    assert refusals[0] == refusals[1]
    assert "--no-concurrently" in refusals[0]
    with host_engine.connect() as connection:  # refused before any change
        assert connection.execute(text("SELECT to_regclass(:t)"), {"t": left}).scalar()


def test_the_dry_run_refuses_a_role_that_does_not_own_the_tables(
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DETACH and DROP are for the owner: the dry run said it would drop what the run then
    failed to ("must be owner of table")."""
    ensure_partitions(
        host_models.EventLog, host_engine, ahead=1, now=datetime.now(UTC) - timedelta(weeks=4)
    )
    before = list_partitions(host_models.EventLog, host_engine)
    role = f"{database_url.database}_reader"  # roles are the cluster's: named after the db
    with host_engine.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{role}"'))
        connection.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"'))
    try:
        # The role set at connection start, not a login: a server with peer authentication
        # (Debian's PostgreSQL 15 in CI) lets the test's own user in only.
        url = database_url.update_query_dict({"options": f"-crole={role}"}).render_as_string(
            hide_password=False
        )
        outcomes = []
        for dry_run in (["--dry-run"], []):
            status = main(["partitions", "drop", "--older-than", "2w", "--url", url, *dry_run])
            outcomes.append((status, capsys.readouterr()))
        (dry, dry_output), (real, real_output) = outcomes
        assert (dry, real) == (2, 2)
        assert dry_output.out == ""
        assert f"the role '{role}' does not own event_logs, event_logs_p" in dry_output.err
        assert "must be owner of table" in real_output.err
        assert list_partitions(host_models.EventLog, host_engine) == before  # nothing dropped
    finally:
        with host_engine.begin() as connection:
            connection.execute(text(f'DROP OWNED BY "{role}"'))
            connection.execute(text(f'DROP ROLE "{role}"'))
