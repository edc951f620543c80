"""Retention on real PostgreSQL: purge_events, its batches and locks, and the purge command."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hostmodels import HostModels
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from eventlog_persist import PurgeResult, count_purgeable, purge_events
from eventlog_persist import _cli as cli
from eventlog_persist import _retention as retention
from eventlog_persist._cli import parse_cutoff
from eventlog_persist.exceptions import ConfigurationError, ValidationError

CUTOFF = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def owners(host_engine: Engine, host_models: HostModels) -> list[dict[str, Any]]:
    """Two users with a session and a project each; 10 old and 3 recent events per user."""
    found = []
    with Session(host_engine) as session:
        for _ in range(2):
            user = host_models.User(id=host_models.new_key())
            session.add(user)
            session.flush()
            chat = host_models.ChatSession(id=host_models.new_key(), user_id=user.id)
            project = host_models.UserProject(id=host_models.new_key(), user_id=user.id)
            session.add_all([chat, project])
            session.flush()
            ages = [timedelta(days=n + 1) for n in range(10)]
            ages += [timedelta(0), -timedelta(microseconds=1), -timedelta(days=1)]
            session.add_all(
                host_models.EventLog(
                    session_id=chat.id,
                    user_id=user.id,
                    project_id=project.id if n % 2 else None,
                    event_type="old" if age > timedelta(0) else "kept",
                    created_at=CUTOFF - age,
                )
                for n, age in enumerate(ages)
            )
            found.append({"user": user.id, "session": chat.id, "project": project.id})
        session.commit()
    return found


def kinds(engine: Engine, models: HostModels) -> list[str]:
    with engine.connect() as connection:
        table = models.EventLog.__table__  # type: ignore[attr-defined]
        return list(connection.scalars(select(table.c.event_type).order_by(table.c.event_type)))


def test_purge_deletes_only_what_is_older_than_the_cutoff(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]]
) -> None:
    model = host_models.EventLog
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 20
    result = purge_events(model, host_engine, older_than=CUTOFF)
    assert result == PurgeResult(deleted=20, batches=1)
    # The event at exactly the cutoff and the newer ones stay.
    assert kinds(host_engine, host_models) == ["kept"] * 6
    assert purge_events(model, host_engine, older_than=CUTOFF) == PurgeResult(0, 0)


def test_purge_runs_in_batches_each_committed(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]]
) -> None:
    commits: list[object] = []
    event.listen(host_engine, "commit", commits.append)
    result = purge_events(host_models.EventLog, host_engine, older_than=CUTOFF, batch_size=6)
    assert result == PurgeResult(deleted=20, batches=4)
    # 6 + 6 + 6 + 2: the short fourth batch shows nothing is left, so no fifth one runs.
    assert len(commits) == 4


def test_max_batches_and_sleep(
    host_engine: Engine,
    host_models: HostModels,
    owners: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    naps: list[float] = []
    monkeypatch.setattr(retention.time, "sleep", naps.append)
    model = host_models.EventLog
    result = purge_events(
        model, host_engine, older_than=CUTOFF, batch_size=3, max_batches=2, sleep=0.25
    )
    assert result == PurgeResult(6, 2)
    assert naps == [0.25]
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 14


@pytest.mark.parametrize("scope", ["user", "project"])
def test_scoped_purge(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]], scope: str
) -> None:
    model = host_models.EventLog
    key = {f"{scope}_id": owners[0][scope]}
    expected = 10 if scope == "user" else 5
    assert count_purgeable(model, host_engine, older_than=CUTOFF, **key) == expected
    result = purge_events(model, host_engine, older_than=CUTOFF, batch_size=4, **key)
    assert result.deleted == expected
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 20 - expected
    assert count_purgeable(model, host_engine, older_than=CUTOFF, **key) == 0


def test_rows_locked_elsewhere_are_skipped_not_waited_for(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]]
) -> None:
    table = host_models.EventLog.__table__  # type: ignore[attr-defined]
    with host_engine.connect() as other:
        other.execute(text("SET lock_timeout = '5s'"))
        locked = other.execute(
            select(table.c.id).where(table.c.created_at < CUTOFF).limit(1).with_for_update()
        ).scalar_one()
        with host_engine.connect() as connection:
            connection.execute(text("SET lock_timeout = '1s'"))
            connection.commit()
            result = purge_events(host_models.EventLog, connection, older_than=CUTOFF)
        assert result.deleted == 19
        other.rollback()
    with host_engine.connect() as connection:
        assert connection.scalar(select(func.count()).where(table.c.id == locked)) == 1


def test_purge_rejects_what_it_cannot_use(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]]
) -> None:
    model = host_models.EventLog
    with pytest.raises(ValidationError, match="aware"):
        purge_events(model, host_engine, older_than=datetime(2025, 1, 1))
    with pytest.raises(ValidationError, match="user_id must be"):
        purge_events(model, host_engine, older_than=CUTOFF, user_id="alice")
    for options in ({"batch_size": 0}, {"max_batches": 0}, {"sleep": -1}):
        with pytest.raises(ConfigurationError, match=next(iter(options))):
            purge_events(model, host_engine, older_than=CUTOFF, **options)  # type: ignore[arg-type]
    with host_engine.connect() as connection:
        connection.execute(text("SELECT 1"))
        with pytest.raises(ConfigurationError, match="already in a transaction"):
            purge_events(model, connection, older_than=CUTOFF)
    with Session(host_engine) as session, pytest.raises(ConfigurationError, match="Session"):
        purge_events(model, session, older_than=CUTOFF)  # type: ignore[arg-type]
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 20


NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30d", NOW - timedelta(days=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("2w", NOW - timedelta(weeks=2)),
        ("90m", NOW - timedelta(minutes=90)),
        ("3600s", NOW - timedelta(hours=1)),
        ("2025-01-31T00:00:00+02:00", datetime(2025, 1, 30, 22, tzinfo=UTC)),
        ("2025-01-31T00:00:00Z", datetime(2025, 1, 31, tzinfo=UTC)),
    ],
)
def test_parse_cutoff(value: str, expected: datetime) -> None:
    assert parse_cutoff(value, now=NOW) == expected


@pytest.mark.parametrize(("value", "message"), [("30 days", "neither"), ("2025-01-31", "offset")])
def test_parse_cutoff_errors(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_cutoff(value)


def run_cli(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning,ignore::UserWarning"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "eventlog_persist._cli",
            "purge",
            "--url",
            url.render_as_string(hide_password=False),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def test_purge_command(
    host_engine: Engine,
    host_models: HostModels,
    owners: list[dict[str, Any]],
    database_url: URL,
) -> None:
    model = host_models.EventLog
    iso = CUTOFF.isoformat()
    dry = run_cli(database_url, "--older-than", iso, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would purge 20 events" in dry.stdout
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 20
    user = str(owners[1]["user"])
    scoped = run_cli(database_url, "--older-than", iso, "--user-id", user, "--batch-size", "4")
    assert scoped.returncode == 0, scoped.stderr
    assert "purged 10 events" in scoped.stdout
    assert "in 3 batches" in scoped.stdout
    assert kinds(host_engine, host_models) == ["kept"] * 6 + ["old"] * 10
    # An age counts back from now: 30 days ago is after every test event.
    rest = run_cli(database_url, "--older-than", "30d")
    assert rest.returncode == 0, rest.stderr
    assert "purged 16 events" in rest.stdout
    assert kinds(host_engine, host_models) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--older-than", "soon"], "neither an age"),
        (["--older-than", "30d", "--project-id", "nope"], "--project-id 'nope' is not a valid"),
        (["--older-than", "30d", "--batch-size", "0"], "batch_size must be"),
        (["--older-than", "30d", "--schema", "elsewhere"], "no event_logs table in schema"),
    ],
)
def test_purge_command_errors(
    host_engine: Engine, database_url: URL, args: list[str], message: str
) -> None:
    result = run_cli(database_url, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("eventlog-persist: error:")
    assert message in result.stderr


def test_purge_command_database_error_is_one_line_exit_2(tmp_path: Path) -> None:
    """Cron gets exit status 2 and one line naming what failed and what to check."""
    nowhere = URL.create(
        "postgresql+psycopg", username="nobody", database="nodb", query={"host": str(tmp_path)}
    )
    result = run_cli(nowhere, "--older-than", "30d")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "eventlog-persist: error: purge failed while connecting to the database: OperationalError: "
    )
    assert "check --url" in lines[0]
    assert "Traceback" not in result.stderr


def test_purge_command_lock_timeout_is_reported(
    host_engine: Engine,
    owners: list[dict[str, Any]],
    database_url: URL,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database error mid-purge goes through the same boundary (here a lock timeout)."""
    url = database_url.update_query_dict({"options": "-c lock_timeout=100ms"})
    with host_engine.connect() as other:
        other.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
        status = cli.main(
            ["purge", "--url", url.render_as_string(hide_password=False), "--older-than", "1d"]
        )
        other.rollback()
    assert status == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1
    assert "purge failed while deleting events: LockNotAvailable: " in message
    assert "batches committed before the error stay deleted" in message
