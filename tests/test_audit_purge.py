"""`purge_events` on a table with the audit: each batch declares retention, so every purged
event gets a ``retention`` tombstone, and nothing stays declared after it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from auditkit import add_session, audited_engine, audited_template, leaves, seal_all, tombstones
from hostmodels import HostModels, build_host_models, seed
from pgserver import ServerInfo
from sqlalchemy import Connection, Engine, MetaData, Table, event, text
from sqlalchemy.exc import DBAPIError

from eventlog_persist import PurgeResult, count_purgeable, purge_events, verify_audit

EventLog = build_host_models(feed=True).EventLog


@pytest.fixture(scope="module")
def template(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("audit")) as name:
        yield name


@pytest.fixture
def db(pg_server: ServerInfo, template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, template) as engine:
        yield engine


@pytest.fixture
def table(db: Engine) -> Table:
    """``event_logs`` reflected: purge finds the audit in the database, not in a model."""
    return Table("event_logs", MetaData(), autoload_with=db)


def estate(db: Engine) -> tuple[list[dict[str, Any]], datetime, dict[str, Any]]:
    """Two old sessions (one user and project with 3 events, another with 2), a cutoff after
    them, and a newer session of the first user and project (2 events) written after it."""
    with db.begin() as connection:
        first = add_session(connection, events=3)
        second = add_session(connection, events=2)
    with db.connect() as connection:
        cutoff = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
    with db.begin() as connection:
        newer = add_session(
            connection, user=first["user"], project=first["project"], agent=first["agent"], events=2
        )
    return [first, second], cutoff, newer


def declared(connection: Connection) -> str | None:
    """The connection's ``eventlog.erasure`` ('' once a SET LOCAL made the placeholder)."""
    value = connection.execute(text("SELECT current_setting('eventlog.erasure', true)")).scalar()
    return None if value is None else str(value)


def assert_retention_tombstones(
    db: Engine, before: dict[Any, bytes], purged: list[Any], kept: list[Any]
) -> None:
    with db.connect() as connection:
        stones = tombstones(connection)
        remaining = set(leaves(connection))
    assert remaining == set(kept)
    assert [stone["kind"] for stone in stones] == ["retention"] * len(purged)
    assert sorted(str(stone["event_id"]) for stone in stones) == sorted(str(e) for e in purged)
    for stone in stones:
        assert stone["leaf"] == before[stone["event_id"]]  # the first-written leaf


def test_purge_on_an_engine_records_one_retention_tombstone_per_purged_event(
    db: Engine, table: Table
) -> None:
    (first, second), cutoff, newer = estate(db)
    with db.connect() as connection:
        before = leaves(connection)
    commits: list[object] = []
    event.listen(db, "commit", commits.append)
    result = purge_events(table, db, older_than=cutoff, batch_size=2)
    assert result == PurgeResult(deleted=5, batches=3)
    assert len(commits) == 3
    assert_retention_tombstones(
        db, before, first["events"] + second["events"], kept=newer["events"]
    )
    with db.connect() as connection:
        stone = next(s for s in tombstones(connection) if s["event_id"] == first["events"][0])
    assert (stone["session_id"], stone["user_id"], stone["project_id"], stone["agent_id"]) == (
        str(first["session"]),
        str(first["user"]),
        str(first["project"]),
        str(first["agent"]),
    )
    assert stone["event_xid"] is not None


def test_purge_keeps_the_first_written_leaf_of_an_event_whose_project_was_deleted(
    db: Engine, table: Table
) -> None:
    (first, _), cutoff, _ = estate(db)
    with db.connect() as connection:
        before = leaves(connection)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_agents WHERE id = :a"), {"a": first["agent"]})
    purge_events(table, db, older_than=cutoff)
    with db.connect() as connection:
        stones = [s for s in tombstones(connection) if s["kind"] == "retention"]
    mine = [s for s in stones if s["event_id"] in first["events"]]
    assert len(mine) == 3
    for stone in mine:
        assert stone["agent_id"] is None  # the keys as they were when deleted
        assert stone["leaf"] == before[stone["event_id"]]


def test_purge_on_a_connection_leaves_nothing_declared_on_it(db: Engine, table: Table) -> None:
    (first, second), cutoff, newer = estate(db)
    with db.connect() as connection:
        before = leaves(connection)
    with db.connect() as connection:
        assert declared(connection) is None
        connection.commit()
        result = purge_events(table, connection, older_than=cutoff, batch_size=4)
        assert result == PurgeResult(deleted=5, batches=2)
        assert not connection.in_transaction()
        assert declared(connection) in (None, "")
        # The host's own DELETE on the same connection is refused as before.
        with pytest.raises(DBAPIError, match="DELETE from event_logs refused"):
            connection.execute(text("DELETE FROM event_logs"))
        connection.rollback()
    assert_retention_tombstones(
        db, before, first["events"] + second["events"], kept=newer["events"]
    )


def test_a_session_wide_declaration_of_the_host_is_overridden_in_purge_and_kept_after(
    db: Engine, table: Table
) -> None:
    (first, second), cutoff, newer = estate(db)
    with db.connect() as connection:
        before = leaves(connection)
    with db.connect() as connection:
        connection.execute(text("SET eventlog.erasure = 'erasure'"))
        connection.commit()
        assert purge_events(table, connection, older_than=cutoff).deleted == 5
        assert declared(connection) == "erasure"
        connection.execute(text("RESET eventlog.erasure"))
        connection.commit()
    # Recorded as what purge does, whatever the session said.
    assert_retention_tombstones(
        db, before, first["events"] + second["events"], kept=newer["events"]
    )


@pytest.mark.parametrize("scope", ["user", "project"])
def test_a_scoped_purge_records_only_the_events_of_its_scope(
    db: Engine, table: Table, scope: str
) -> None:
    (first, second), cutoff, newer = estate(db)
    with db.connect() as connection:
        before = leaves(connection)
    key = {f"{scope}_id": first[scope]}
    assert count_purgeable(table, db, older_than=cutoff, **key) == 3
    assert purge_events(table, db, older_than=cutoff, batch_size=2, **key).deleted == 3
    assert_retention_tombstones(
        db, before, first["events"], kept=second["events"] + newer["events"]
    )


def test_a_failed_batch_records_nothing_and_the_next_run_finishes(db: Engine, table: Table) -> None:
    (first, second), cutoff, newer = estate(db)
    with db.connect() as connection:
        before = leaves(connection)

    def stop(done: PurgeResult) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        purge_events(table, db, older_than=cutoff, batch_size=2, on_batch=stop)
    with db.connect() as connection:
        assert len(tombstones(connection)) == 2  # the committed batch, recorded
    assert purge_events(table, db, older_than=cutoff).deleted == 3
    assert_retention_tombstones(
        db, before, first["events"] + second["events"], kept=newer["events"]
    )


def test_purge_without_the_audit_is_unchanged_and_declares_nothing_after(
    host_engine: Engine, host_models: HostModels
) -> None:
    user, chat = seed(host_engine, host_models)
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload, "
                "created_at) SELECT gen_random_uuid(), :s, :u, 'old', '{}', "
                "now() - n * interval '1 day' FROM generate_series(1, 5) AS n"
            ),
            {"s": chat, "u": user},
        )
        cutoff = connection.execute(text("SELECT now() - interval '36 hours'")).scalar_one()
    with host_engine.connect() as connection:
        assert declared(connection) is None
        connection.commit()
        result = purge_events(host_models.EventLog, connection, older_than=cutoff, batch_size=2)
        assert result == PurgeResult(deleted=4, batches=2)
        assert declared(connection) in (None, "")
        remaining = connection.execute(text("SELECT count(*) FROM event_logs")).scalar_one()
    assert remaining == 1


@pytest.mark.parametrize("sealed", ["before the purge", "after the purge", "both"])
def test_a_purge_verifies_as_retention_whenever_its_events_were_sealed(
    db: Engine, sealed: str
) -> None:
    (first, second), cutoff, _ = estate(db)
    if sealed != "after the purge":
        seal_all(EventLog, db)
    result = purge_events(EventLog, db, older_than=cutoff, batch_size=2)
    assert result.deleted == len(first["events"]) + len(second["events"])
    if sealed != "before the purge":
        seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(problem) for problem in report.problems]
    assert report.events == 7  # the sealed events, purged or kept
    assert dict(report.erasures) == {"cascade": 0, "set_null": 0, "retention": 5, "erasure": 0}
