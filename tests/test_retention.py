"""Retention on real PostgreSQL: purge_events, its batches and locks, and the purge command."""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import pytest
from hostmodels import HostModels, build_host_models
from sqlalchemy import Engine, create_engine, event, func, select, text
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


def test_a_connection_closed_during_a_pause_is_replaced_by_the_pool(
    host_engine: Engine,
    host_models: HostModels,
    owners: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An Engine's connection is checked out per batch: one the server closes while the
    purge pauses (idle_session_timeout, a pooler, a load balancer) is the pool's to replace
    (here by pool_pre_ping), and the purge goes on."""
    engine = create_engine(
        host_engine.url, pool_pre_ping=True, connect_args={"application_name": "purger"}
    )

    def server_closes_the_idle_connection(seconds: float) -> None:
        with host_engine.connect() as admin:
            closed = admin.execute(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                    "FROM pg_stat_activity WHERE application_name = 'purger'"
                )
            ).scalar_one()
        assert closed == 1

    monkeypatch.setattr(retention.time, "sleep", server_closes_the_idle_connection)
    try:
        result = purge_events(
            host_models.EventLog, engine, older_than=CUTOFF, batch_size=6, sleep=0.5
        )
    finally:
        engine.dispose()
    assert result == PurgeResult(deleted=20, batches=4)
    assert kinds(host_engine, host_models) == ["kept"] * 6


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


def test_a_cutoff_in_the_future_is_refused_and_nothing_is_deleted(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    model = host_models.EventLog
    future = datetime.now(UTC) + timedelta(days=30)  # a sign slip for 30 days ago
    for call in (purge_events, count_purgeable):
        with pytest.raises(ValidationError) as caught:
            call(model, host_engine, older_than=future)
        assert str(caught.value) == (
            f"older_than={future.isoformat()} is in the future, so every event would be "
            "deleted, those being written too; pass a past cutoff such as datetime.now(UTC) "
            "- timedelta(days=90) (a sign slip?), or datetime.now(UTC) itself if that is "
            "what you mean"
        )
    assert stored_ids(host_engine, host_models) == estate.all_ids()
    assert purge_events(model, host_engine, older_than=datetime.now(UTC)).deleted == 29


def test_count_purgeable_refuses_what_is_not_an_engine_connection_or_session(
    host_engine: Engine, host_models: HostModels
) -> None:
    for wrong in (None, "postgresql://app@db/app"):
        with pytest.raises(ConfigurationError) as caught:
            count_purgeable(host_models.EventLog, wrong, older_than=CUTOFF)  # type: ignore[arg-type]
        assert str(caught.value) == (
            f"count_purgeable needs a sqlalchemy Engine, Connection or Session, got {wrong}; "
            "pass create_engine(url) for a URL"
        )
    with Session(host_engine) as session:  # a dry run in the host's own session
        assert count_purgeable(host_models.EventLog, session, older_than=CUTOFF) == 0


def test_purge_rejects_what_it_cannot_use(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]]
) -> None:
    model = host_models.EventLog
    with pytest.raises(ValidationError, match="aware"):
        purge_events(model, host_engine, older_than=datetime(2025, 1, 1))
    with pytest.raises(ValidationError, match="user_id must be"):
        purge_events(model, host_engine, older_than=CUTOFF, user_id="alice")
    with pytest.raises(ValidationError, match=r"project_id=5 \(int\) does not fit the uuid"):
        purge_events(model, host_engine, older_than=CUTOFF, project_id=5)
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


def test_the_largest_batch_size_deletes_everything_in_one_batch(
    host_engine: Engine, host_models: HostModels, owners: list[dict[str, Any]]
) -> None:
    # A batch's LIMIT is a bigint: its largest value is taken; one more is refused above.
    result = purge_events(
        host_models.EventLog, host_engine, older_than=CUTOFF, batch_size=2**63 - 1
    )
    assert result == PurgeResult(deleted=20, batches=1)


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
        ("2025-01-31T00:00:00+00:00", datetime(2025, 1, 31, tzinfo=UTC)),
    ],
)
def test_parse_cutoff(value: str, expected: datetime) -> None:
    assert parse_cutoff(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30 days", "is neither an age"),
        # The fix it names is a value it takes (test_parse_cutoff's last case).
        ("2025-01-31", "has no UTC offset; add one, e.g. 2025-01-31T00:00:00+00:00"),
        ("2025-13-01T00:00:00+00:00", "is neither an age"),
        ("-5d", "'-5d' is a negative age; an age counts back from now, so write 5d"),
        # Past datetime's range, and past timedelta's (999999999 days) too.
        ("739999d", "reaches back before the year 1"),
        ("1000000000d", "reaches back before the year 1"),
        ("9" * 5000 + "s", "reaches back before the year 1"),
    ],
)
def test_parse_cutoff_errors(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        parse_cutoff(value, now=NOW)


def test_parse_cutoff_oldest_age_is_the_one_the_error_names() -> None:
    with pytest.raises(ValidationError, match=r"at most (\d+)d") as raised:
        parse_cutoff("1000000000d", now=NOW)
    oldest = re.search(r"at most (\d+)d", str(raised.value))
    assert oldest is not None
    assert parse_cutoff(f"{oldest[1]}d", now=NOW).year == 1
    with pytest.raises(ValidationError):
        parse_cutoff(f"{int(oldest[1]) + 2}d", now=NOW)


def run_cli(url: URL, *args: str, real: bool = False) -> subprocess.CompletedProcess[str]:
    """``eventlog-persist purge --url URL *args``: in-process, or as a real process."""
    return run_main(["purge", "--url", url.render_as_string(hide_password=False), *args], real)


def run_main(argv: list[str], real: bool = False) -> subprocess.CompletedProcess[str]:
    """``eventlog-persist *argv``: in-process, or as a real process."""
    if real:
        env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning,ignore::UserWarning"}
        command = [sys.executable, "-m", "eventlog_persist", *argv]
        return subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse refuses bad arguments this way
            code = exit_.code if isinstance(exit_.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def test_purge_command(
    host_engine: Engine,
    host_models: HostModels,
    owners: list[dict[str, Any]],
    database_url: URL,
) -> None:
    model = host_models.EventLog
    iso = CUTOFF.isoformat()
    dry = run_cli(database_url, "--older-than", iso, "--dry-run", real=True)
    assert dry.returncode == 0, dry.stderr
    assert "would purge 20 events" in dry.stdout
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 20
    # What the real run with --max-batches would do: stop after 2 batches of 4.
    capped = run_cli(
        database_url, "--older-than", iso, "--dry-run", "--batch-size", "4", "--max-batches", "2"
    )
    assert "would purge 8 events older than" in capped.stdout
    assert "(of 20: --max-batches 2 stops the run there)" in capped.stdout
    enough = run_cli(database_url, "--older-than", iso, "--dry-run", "--max-batches", "5")
    assert "would purge 20 events older than" in enough.stdout
    assert "(of" not in enough.stdout
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


def test_purge_command_without_the_table_says_where_it_looked(
    host_engine: Engine, database_url: URL
) -> None:
    result = run_cli(database_url, "--older-than", "30d", "--schema", "elsewhere")
    assert result.returncode == 2
    assert result.stderr.startswith("eventlog-persist: error: there is no event_logs table in ")
    assert "schema 'elsewhere'" in result.stderr


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


# Uneven data for scoped purges: per owner, a different number of old and recent events, so a
# purge (or count) that picked the wrong owners could not give the right totals by chance.
# (user, project as (owning user, n) or None, old events, recent events). User 1 also works in
# user 0's first project; user 3 has recent events only.
SEGMENTS: Final = [
    (0, (0, 0), 5, 2),
    (0, (0, 1), 2, 0),
    (0, None, 2, 1),
    (1, (1, 0), 3, 1),
    (1, (0, 0), 1, 1),
    (1, None, 2, 0),
    (2, (2, 0), 0, 3),
    (2, (2, 1), 2, 0),
    (2, None, 0, 2),
    (3, None, 0, 2),
]
PROJECTS: Final = [(0, 0), (0, 1), (1, 0), (2, 0), (2, 1)]


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    user: int
    project: tuple[int, int] | None
    old: bool


@dataclass
class Estate:
    """Four users, five projects, 29 events of which 17 are older than CUTOFF."""

    users: list[Any]
    projects: dict[tuple[int, int], Any]
    rows: list[Row]

    def all_ids(self) -> set[uuid.UUID]:
        return {row.id for row in self.rows}

    def old(
        self, *, user: int | None = None, project: tuple[int, int] | None = None
    ) -> set[uuid.UUID]:
        """Ids of the events a purge with this scope must delete."""
        return {
            row.id
            for row in self.rows
            if row.old
            and (user is None or row.user == user)
            and (project is None or row.project == project)
        }


@pytest.fixture
def estate(host_engine: Engine, host_models: HostModels) -> Estate:
    models = host_models
    with Session(host_engine) as session:
        users = [models.User(id=models.new_key()) for _ in range(4)]
        session.add_all(users)
        session.flush()
        chats = [models.ChatSession(id=models.new_key(), user_id=user.id) for user in users]
        projects = {
            key: models.UserProject(id=models.new_key(), user_id=users[key[0]].id)
            for key in PROJECTS
        }
        session.add_all([*chats, *projects.values()])
        session.flush()
        rows, events = [], []
        for who, project, old, recent in SEGMENTS:
            ages = [timedelta(days=n + 1, microseconds=who) for n in range(old)]
            # The first recent event is stamped exactly at the cutoff, which is kept.
            ages += [-timedelta(hours=n) for n in range(recent)]
            for age in ages:
                event_log = models.EventLog(
                    session_id=chats[who].id,
                    user_id=users[who].id,
                    project_id=projects[project].id if project else None,
                    event_type="old" if age > timedelta(0) else "kept",
                    created_at=CUTOFF - age,
                )
                events.append(event_log)
                rows.append(Row(event_log.id, who, project, age > timedelta(0)))
        session.add_all(events)
        session.commit()
        return Estate([user.id for user in users], {k: p.id for k, p in projects.items()}, rows)


def stored_ids(engine: Engine, models: HostModels) -> set[Any]:
    table = models.EventLog.__table__  # type: ignore[attr-defined]
    with engine.connect() as connection:
        return set(connection.scalars(select(table.c.id)))


def test_estate_is_uneven(estate: Estate) -> None:
    """Guard of the data below: no scope holds half the old events (`!=` would tie)."""
    assert len(estate.rows) == 29
    assert len(estate.old()) == 17
    assert [len(estate.old(user=who)) for who in range(4)] == [9, 6, 2, 0]
    assert [len(estate.old(project=key)) for key in PROJECTS] == [6, 2, 3, 0, 2]


@pytest.mark.parametrize("who", range(4))
def test_purge_for_one_user_deletes_exactly_their_old_events_and_no_one_elses(
    host_engine: Engine, host_models: HostModels, estate: Estate, who: int
) -> None:
    model = host_models.EventLog
    gone = estate.old(user=who)
    scope = {"user_id": estate.users[who]}
    assert count_purgeable(model, host_engine, older_than=CUTOFF, **scope) == len(gone)
    result = purge_events(model, host_engine, older_than=CUTOFF, batch_size=2, **scope)
    assert result == PurgeResult(deleted=len(gone), batches=(len(gone) + 1) // 2)
    assert stored_ids(host_engine, host_models) == estate.all_ids() - gone
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 17 - len(gone)


@pytest.mark.parametrize("project", PROJECTS)
def test_purge_for_one_project_deletes_exactly_its_old_events_and_nothing_outside_it(
    host_engine: Engine, host_models: HostModels, estate: Estate, project: tuple[int, int]
) -> None:
    """Other projects' events and events in no project stay, whoever owns them."""
    model = host_models.EventLog
    gone = estate.old(project=project)
    scope = {"project_id": estate.projects[project]}
    assert count_purgeable(model, host_engine, older_than=CUTOFF, **scope) == len(gone)
    result = purge_events(model, host_engine, older_than=CUTOFF, batch_size=4, **scope)
    assert result.deleted == len(gone)
    assert stored_ids(host_engine, host_models) == estate.all_ids() - gone


@pytest.mark.parametrize(("who", "project"), [(1, (0, 0)), (0, (0, 0)), (0, (0, 1)), (2, (0, 0))])
def test_purge_for_a_user_within_a_project_deletes_only_events_matching_both(
    host_engine: Engine,
    host_models: HostModels,
    estate: Estate,
    who: int,
    project: tuple[int, int],
) -> None:
    model = host_models.EventLog
    gone = estate.old(user=who, project=project)
    scope = {"user_id": estate.users[who], "project_id": estate.projects[project]}
    assert count_purgeable(model, host_engine, older_than=CUTOFF, **scope) == len(gone)
    assert purge_events(model, host_engine, older_than=CUTOFF, **scope).deleted == len(gone)
    assert stored_ids(host_engine, host_models) == estate.all_ids() - gone


def test_count_purgeable_counts_every_scope_exactly_and_deletes_nothing(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    model = host_models.EventLog

    def count(**scope: Any) -> int:
        return count_purgeable(model, host_engine, older_than=CUTOFF, **scope)

    assert count() == 17
    for who, user in enumerate(estate.users):
        assert count(user_id=user) == len(estate.old(user=who)), who
        for key, project in estate.projects.items():
            expected = len(estate.old(user=who, project=key))
            assert count(user_id=user, project_id=project) == expected, (who, key)
    for key, project in estate.projects.items():
        assert count(project_id=project) == len(estate.old(project=key)), key
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_purge_through_a_connection_commits_what_it_deletes(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    """Deletes made through the caller's Connection are committed, batch by batch.

    Checked from a fresh engine while that connection is still open (uncommitted deletes
    would be invisible there) and again after it is closed (they would be rolled back).
    """
    model = host_models.EventLog
    fresh = create_engine(database_url)
    try:
        with host_engine.connect() as connection:
            result = purge_events(
                model, connection, older_than=CUTOFF, user_id=estate.users[0], batch_size=4
            )
            assert result == PurgeResult(deleted=9, batches=3)
            assert stored_ids(fresh, host_models) == estate.all_ids() - estate.old(user=0)
            assert not connection.in_transaction()
            # The connection takes another purge at once: no transaction was left open.
            result = purge_events(model, connection, older_than=CUTOFF, user_id=estate.users[1])
            assert result == PurgeResult(deleted=6, batches=1)
        expected = estate.all_ids() - estate.old(user=0) - estate.old(user=1)
        assert stored_ids(fresh, host_models) == expected
    finally:
        fresh.dispose()


def test_count_purgeable_through_a_connection_returns_the_count(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    model = host_models.EventLog
    with host_engine.connect() as connection:
        counted = count_purgeable(model, connection, older_than=CUTOFF, user_id=estate.users[1])
        assert type(counted) is int
        assert counted == 6
        project = estate.projects[(0, 0)]
        assert count_purgeable(model, connection, older_than=CUTOFF, project_id=project) == 6
        assert count_purgeable(model, connection, older_than=CUTOFF) == 17
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_batch_size_one_with_max_batches_three_deletes_exactly_three_events(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    commits: list[object] = []
    event.listen(host_engine, "commit", commits.append)
    result = purge_events(
        host_models.EventLog,
        host_engine,
        older_than=CUTOFF,
        user_id=estate.users[1],
        batch_size=1,
        max_batches=3,
    )
    assert result == PurgeResult(deleted=3, batches=3)
    assert len(commits) == 3
    removed = estate.all_ids() - stored_ids(host_engine, host_models)
    assert len(removed) == 3
    assert removed <= estate.old(user=1)


def test_batch_size_one_deletes_one_event_per_batch_until_none_is_left(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    model = host_models.EventLog
    result = purge_events(
        model, host_engine, older_than=CUTOFF, user_id=estate.users[1], batch_size=1
    )
    assert result == PurgeResult(deleted=6, batches=6)
    assert stored_ids(host_engine, host_models) == estate.all_ids() - estate.old(user=1)


def test_max_batches_one_runs_a_single_batch(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    model = host_models.EventLog
    result = purge_events(model, host_engine, older_than=CUTOFF, batch_size=4, max_batches=1)
    assert result == PurgeResult(deleted=4, batches=1)
    removed = estate.all_ids() - stored_ids(host_engine, host_models)
    assert len(removed) == 4
    assert removed <= estate.old()
    assert count_purgeable(model, host_engine, older_than=CUTOFF) == 13


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"batch_size": 0},
            "batch_size must be an int from 1 to 2**63 - 1 (its LIMIT is a bigint), got 0",
            id="batch-0",
        ),
        pytest.param(
            {"batch_size": -1}, "to 2**63 - 1 (its LIMIT is a bigint), got -1", id="batch-negative"
        ),
        pytest.param({"batch_size": -5000}, "got -5000", id="batch-very-negative"),
        pytest.param({"batch_size": 2**63}, f"got {2**63}", id="batch-past-bigint"),
        pytest.param({"batch_size": 10**19}, f"got {10**19}", id="batch-huge"),
        pytest.param({"batch_size": True}, "batch_size must be an int from 1", id="batch-bool"),
        pytest.param({"batch_size": 2.0}, "batch_size must be an int from 1", id="batch-float"),
        pytest.param(
            {"max_batches": 0},
            "max_batches must be a positive int or None (no limit), got 0",
            id="max-batches-0",
        ),
        pytest.param({"max_batches": -1}, "or None (no limit), got -1", id="max-batches-negative"),
        pytest.param({"max_batches": False}, "max_batches must be", id="max-batches-bool"),
        pytest.param(
            {"sleep": -1},
            "sleep must be a number of seconds from 0 to 86400, got -1",
            id="sleep-neg",
        ),
        pytest.param({"sleep": float("nan")}, "from 0 to 86400, got nan", id="sleep-nan"),
        pytest.param({"sleep": float("inf")}, "from 0 to 86400, got inf", id="sleep-inf"),
        pytest.param({"sleep": 86400.5}, "from 0 to 86400, got 86400.5", id="sleep-over-a-day"),
        pytest.param({"sleep": 10**400}, "sleep must be a number", id="sleep-huge-int"),
        pytest.param({"sleep": "1"}, "sleep must be a number", id="sleep-str"),
        pytest.param({"sleep": True}, "from 0 to 86400, got True", id="sleep-bool"),
        pytest.param({"on_batch": "print"}, "on_batch must be a callable", id="on-batch-str"),
    ],
)
def test_out_of_range_batching_is_refused_before_anything_is_deleted(
    host_engine: Engine,
    host_models: HostModels,
    estate: Estate,
    options: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as raised:
        purge_events(host_models.EventLog, host_engine, older_than=CUTOFF, **options)
    assert isinstance(raised.value, ValueError)
    assert stored_ids(host_engine, host_models) == estate.all_ids()


@pytest.mark.parametrize("sleep", [0, 0.0, 86400, 86400.0])
def test_the_limits_of_sleep_are_accepted(
    host_engine: Engine, host_models: HostModels, sleep: float
) -> None:
    # No batch deletes anything here, so no pause is taken: only the check runs.
    result = purge_events(host_models.EventLog, host_engine, older_than=CUTOFF, sleep=sleep)
    assert result.deleted == 0


def test_purge_command_with_user_id_deletes_only_that_users_old_events(
    host_engine: Engine,
    host_models: HostModels,
    estate: Estate,
    database_url: URL,
    capsys: pytest.CaptureFixture[str],
) -> None:
    iso, user = CUTOFF.isoformat(), str(estate.users[1])
    url = database_url.render_as_string(hide_password=False)
    # The dry run in process (the same main() the console script runs), the purge as cron runs it.
    status = cli.main(["purge", "--url", url, "--older-than", iso, "--user-id", user, "--dry-run"])
    assert status == 0
    assert "would purge 6 events" in capsys.readouterr().out
    assert stored_ids(host_engine, host_models) == estate.all_ids()
    done = run_cli(database_url, "--older-than", iso, "--user-id", user, "--batch-size", "4")
    assert done.returncode == 0, done.stderr
    assert "purged 6 events" in done.stdout
    assert "in 2 batches" in done.stdout
    assert stored_ids(host_engine, host_models) == estate.all_ids() - estate.old(user=1)


def test_purge_command_with_project_id_deletes_only_that_projects_old_events(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    project = str(estate.projects[(0, 0)])
    done = run_cli(database_url, "--older-than", CUTOFF.isoformat(), "--project-id", project)
    assert done.returncode == 0, done.stderr
    assert "purged 6 events" in done.stdout
    assert stored_ids(host_engine, host_models) == estate.all_ids() - estate.old(project=(0, 0))


def test_documented_defaults() -> None:
    # docs/reading.md and the CLI promise batches of 5000 and no pause between them.
    parameters = inspect.signature(purge_events).parameters
    assert parameters["batch_size"].default == 5000
    assert parameters["sleep"].default == 0


def test_on_batch_gets_the_totals_after_each_committed_batch(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    seen: list[tuple[PurgeResult, set[Any]]] = []

    def on_batch(done: PurgeResult) -> None:
        # Each call comes after the commit: a fresh connection already misses those events.
        seen.append((done, estate.all_ids() - stored_ids(host_engine, host_models)))

    model = host_models.EventLog
    result = purge_events(model, host_engine, older_than=CUTOFF, batch_size=6, on_batch=on_batch)
    assert result == PurgeResult(deleted=17, batches=3)
    assert [done for done, _ in seen] == [PurgeResult(6, 1), PurgeResult(12, 2), PurgeResult(17, 3)]
    assert [len(gone) for _, gone in seen] == [6, 12, 17]


def test_an_error_in_on_batch_ends_the_purge_after_that_batch(
    host_engine: Engine, host_models: HostModels, estate: Estate
) -> None:
    def on_batch(done: PurgeResult) -> None:
        raise RuntimeError(f"stop after {done.batches}")

    with pytest.raises(RuntimeError, match="stop after 1"):
        purge_events(
            host_models.EventLog, host_engine, older_than=CUTOFF, batch_size=4, on_batch=on_batch
        )
    # The batch before the error is committed; nothing after it ran.
    assert len(estate.all_ids() - stored_ids(host_engine, host_models)) == 4


# -- the purge command refuses bad arguments before anything is deleted ----------------------


@pytest.mark.parametrize(
    ("args", "option", "message"),
    [
        # Ages past what a datetime can hold: OverflowError tracebacks before.
        (["--older-than", "1000000000d"], "--older-than", "'1000000000d' reaches back before"),
        (["--older-than", "999999999d"], "--older-than", "give an age of at most "),
        (["--older-than", "soon"], "--older-than", "'soon' is neither an age"),
        # argparse takes -5d for an option and said only "expected one argument".
        (["--older-than", "-5d"], "--older-than", "one that starts with '-' is written "),
        (["--older-than=-5d"], "--older-than", "'-5d' is a negative age"),
        (["--older-than", "2025-01-31"], "--older-than", "add one, e.g. 2025-01-31T00:00:00+00:00"),
        # A pause that time.sleep() cannot take: a traceback after the first batch before.
        (["--sleep", "nan"], "--sleep", "'nan' is not a number of seconds from 0 to 86400"),
        (["--sleep", "inf"], "--sleep", "'inf' is not a number of seconds"),
        (["--sleep", "1e300"], "--sleep", "'1e300' is not a number of seconds"),
        (["--sleep", "-1"], "--sleep", "'-1' is not a number of seconds"),
        (["--sleep", "soon"], "--sleep", "'soon' is not a number of seconds"),
        (["--batch-size", "0"], "--batch-size", "'0' is not a whole number from 1 to "),
        (["--batch-size", "-5"], "--batch-size", "'-5' is not a whole number"),
        (["--batch-size", "1.5"], "--batch-size", "'1.5' is not a whole number"),
        (["--batch-size", "many"], "--batch-size", "'many' is not a whole number"),
        (["--batch-size", str(2**63)], "--batch-size", "is not a whole number from 1 to 9223"),
        (["--max-batches", "0"], "--max-batches", "'0' is not a whole number"),
        (["--max-batches", "two"], "--max-batches", "'two' is not a whole number"),
        (["--user-id", "alice"], "--user-id", "'alice' is neither a UUID nor an integer"),
        (["--project-id", "nope"], "--project-id", "'nope' is neither a UUID nor an integer"),
    ],
)
def test_purge_command_refuses_a_bad_argument_in_one_line(
    host_engine: Engine,
    host_models: HostModels,
    estate: Estate,
    database_url: URL,
    args: list[str],
    option: str,
    message: str,
) -> None:
    older = (
        []
        if any(a.startswith("--older-than") for a in args)
        else ["--older-than", CUTOFF.isoformat()]
    )
    result = run_cli(database_url, *older, *args)
    assert_refused(result, option, message)
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def assert_refused(result: subprocess.CompletedProcess[str], option: str, message: str) -> None:
    """Exit status 2, nothing on stdout, one argparse-style line naming the value and the fix."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"eventlog-persist purge: error: argument {option}: "), line
    assert message in line
    assert "; " in line  # what is wrong; how to fix it


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite:///events.db", "'sqlite:///events.db' is not a PostgreSQL database"),
        ("mysql+pymysql://app:secret@db/app", "'mysql+pymysql://app:***@db/app' is not a"),
        ("events", "'events' is not a usable PostgreSQL conninfo or URL"),
        ("postgresql+psycopg://app:secret@db:port/app", "not a valid database URL"),
        ("host=db password=secret dbname", "'host=db password=***' is not a usable"),
        ("postgresql+asyncpg://app:secret@db/app?ssl=maybe", "ssl='maybe', which is not an"),
        ("postgresql+asyncpg://app:secret@db/app?server_settings=x", "server_settings, which"),
    ],
)
def test_purge_command_refuses_a_url_it_cannot_use(
    host_engine: Engine, host_models: HostModels, estate: Estate, url: str, message: str
) -> None:
    result = run_main(["purge", "--url", url, "--older-than", "30d"])
    assert_refused(result, "--url", message)
    assert "secret" not in result.stderr
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_the_reported_tracebacks_are_one_line_in_a_real_process(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    """The three arguments reported with a traceback, as cron runs the command."""
    big = run_cli(database_url, "--older-than", "1000000000d", real=True)
    assert_refused(big, "--older-than", "reaches back before the year 1")
    nan = run_cli(database_url, "--older-than", CUTOFF.isoformat(), "--sleep", "nan", real=True)
    assert_refused(nan, "--sleep", "'nan' is not a number of seconds")
    sqlite = run_main(["purge", "--url", "sqlite://", "--older-than", "30d"], real=True)
    assert_refused(sqlite, "--url", "is not a PostgreSQL database")
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_a_key_of_the_wrong_type_for_the_table_is_refused_in_one_line(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    # The test host's keys are UUIDs; 42 is a valid key only for an integer-keyed host.
    result = run_cli(database_url, "--older-than", CUTOFF.isoformat(), "--user-id", "42")
    assert_refused(result, "--user-id", "event_logs.user_id holds UUID keys and '42' is not one")
    assert "pass a UUID" in result.stderr
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_a_key_out_of_the_columns_range_is_refused_in_one_line(
    engine: Engine, database_url: URL
) -> None:
    build_host_models(keys="integer").Base.metadata.create_all(engine)
    result = run_cli(database_url, "--older-than", CUTOFF.isoformat(), "--user-id", str(2**40))
    assert_refused(
        result,
        "--user-id",
        "user_id=1099511627776 is out of range for the int4 column user_id; pass an int from "
        "-2147483648 to 2147483647",
    )


def test_a_url_without_a_driver_uses_psycopg(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    bare = database_url.set(drivername="postgresql")
    result = run_cli(bare, "--older-than", CUTOFF.isoformat(), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would purge 17 events" in result.stdout


# -- a cutoff at or after now needs --all -----------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--older-than", "0d"],
        ["--older-than", "0s", "--dry-run"],
    ],
)
def test_a_cutoff_not_before_now_is_refused_without_all(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL, args: list[str]
) -> None:
    result = run_cli(database_url, *args)
    assert_refused(result, "--older-than", "is not before now, so every event would be deleted")
    assert "add --all if that is what you mean" in result.stderr
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_all_deletes_every_event_up_to_now(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    dry = run_cli(database_url, "--older-than", "0d", "--all", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would purge 29 events" in dry.stdout
    done = run_cli(database_url, "--older-than", "0d", "--all", "--batch-size", "10")
    assert done.returncode == 0, done.stderr
    assert "purged 29 events" in done.stdout
    assert "in 3 batches" in done.stdout
    assert stored_ids(host_engine, host_models) == set()


@pytest.mark.parametrize("options", [[], ["--all"], ["--all", "--dry-run"]])
def test_a_cutoff_in_the_future_is_refused_even_with_all(
    host_engine: Engine,
    host_models: HostModels,
    estate: Estate,
    database_url: URL,
    options: list[str],
) -> None:
    result = run_cli(database_url, "--older-than", "2999-01-01T00:00:00+00:00", *options)
    assert_refused(result, "--older-than", "the cutoff 2999-01-01T00:00:00+00:00 is in the future")
    assert "give an age such as 90d (0d with --all deletes every event)" in result.stderr
    assert stored_ids(host_engine, host_models) == estate.all_ids()


def test_all_with_a_past_cutoff_changes_nothing(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    done = run_cli(database_url, "--older-than", CUTOFF.isoformat(), "--all")
    assert done.returncode == 0, done.stderr
    assert "purged 17 events" in done.stdout
    assert stored_ids(host_engine, host_models) == estate.all_ids() - estate.old()


# -- progress ---------------------------------------------------------------------------------

PROGRESS = re.compile(
    r"eventlog-persist: batch (\d+) done, (\d+) events deleted so far, \d+\.\d s elapsed"
)


def test_purge_command_reports_each_batch_on_stderr(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    user = str(estate.users[0])
    args = ["--older-than", CUTOFF.isoformat(), "--user-id", user, "--batch-size", "4"]
    result = run_cli(database_url, *args, real=True)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    matches = [PROGRESS.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [(int(m[1]), int(m[2])) for m in matches if m] == [(1, 4), (2, 8), (3, 9)]
    # The summary stays alone on stdout.
    assert result.stdout.splitlines() == [
        f"eventlog-persist: purged 9 events older than {CUTOFF.isoformat()} in 3 batches"
    ]


@pytest.mark.parametrize("flag", ["--quiet", "-q"])
def test_quiet_silences_the_progress_but_not_the_summary(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL, flag: str
) -> None:
    result = run_cli(database_url, "--older-than", CUTOFF.isoformat(), "--batch-size", "4", flag)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "purged 17 events" in result.stdout
    assert "in 5 batches" in result.stdout


def test_nothing_to_purge_prints_no_progress(
    host_engine: Engine, host_models: HostModels, estate: Estate, database_url: URL
) -> None:
    result = run_cli(database_url, "--older-than", "2000-01-01T00:00:00+00:00")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "purged 0 events" in result.stdout
