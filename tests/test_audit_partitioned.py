"""The audit on the partitioned layout: the guard on the parent and on each partition, the
retention tombstones of `drop_partitions` and `purge_events`, and sealing and verifying
through the parent."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from auditkit import (
    CHUNK,
    add_session,
    audited_engine,
    audited_template,
    leaves,
    seal_all,
    seal_async,
    settle,
    tombstones,
)
from hostmodels import build_host_models
from pgserver import ServerInfo
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase
from test_audit_guard import refusal
from test_audit_migrations import BOUND, BOUND_SQL, bounded_tables, insert_at
from test_partitions import comment_and_rows, drop_losing_its_connection, read_from

from eventlog_persist import _audit_chain as audit_chain
from eventlog_persist import (
    convert_to_partitioned,
    drop_partitions,
    ensure_partitions,
    event_log_model,
    list_partitions,
    purge_events,
    seal_events,
    verify_audit,
)
from eventlog_persist._audit_leaf import LEAF_COLUMNS
from eventlog_persist._cli import main

EventLog = build_host_models(feed=True, partitioned=True).EventLog
OLD = datetime.now(UTC) - timedelta(weeks=10)
GUARD = {"event_logs_audit_delete", "event_logs_audit_update", "event_logs_audit_truncate"}
DELETE_REFUSED = "eventlog_persist: DELETE from event_logs refused (2 of 2 events still have"
TRUNCATE_REFUSED = "eventlog_persist: TRUNCATE of event_logs refused: it would erase events"


@pytest.fixture(scope="module")
def template(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("audit"), partitioned=True) as name:
        yield name


@pytest.fixture
def db(pg_server: ServerInfo, template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, template) as engine:
        yield engine


def make_app_role(db: Engine) -> str:
    """A role with every privilege on the host's tables and partitions."""
    name = f"app_{db.url.database}"
    with db.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{name}"'))
        connection.execute(
            text(
                f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA "
                f'public TO "{name}"'
            )
        )
    return name


@pytest.fixture
def app_role(db: Engine) -> str:
    return make_app_role(db)


def guard_of(db: Engine, table: str) -> set[str]:
    with db.connect() as connection:
        return set(
            connection.execute(
                text(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(:t) "
                    "AND NOT tgisinternal"
                ),
                {"t": table},
            ).scalars()
        )


def old_events(db: Engine, count: int, *, at: datetime = OLD) -> dict[str, Any]:
    """A session with ``count`` events created at ``at`` (its partition made first)."""
    ensure_partitions(EventLog, db, ahead=0, now=at)
    with db.begin() as connection:
        ids = add_session(connection, events=0)
        ids["events"] = [
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, project_id, event_type, "
                    "payload, created_at) VALUES (:id, :s, :u, :p, 'tool_call', "
                    "CAST(:payload AS jsonb), :at) RETURNING id"
                ),
                {
                    "id": uuid.uuid4(),
                    "s": ids["session"],
                    "u": ids["user"],
                    "p": ids["project"],
                    "payload": f'{{"n": {n}}}',
                    "at": at + timedelta(seconds=n),
                },
            ).scalar_one()
            for n in range(count)
        ]
    return ids


def partition_of(db: Engine, moment: datetime) -> str:
    for partition in list_partitions(EventLog, db):
        after_lower = partition.lower is not None and partition.lower <= moment
        if after_lower and (partition.upper is None or moment < partition.upper):
            return partition.name
    raise AssertionError(f"no partition holds {moment}")


def assert_ok(db: Engine, **erasures: int) -> None:
    seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert report.problems == (), [str(p) for p in report.problems]
    expected = {"cascade": 0, "set_null": 0, "retention": 0, "erasure": 0, **erasures}
    assert dict(report.erasures) == expected


def test_the_model_takes_the_audit_with_the_partitioned_layout() -> None:
    class Base(DeclarativeBase):
        pass

    model = event_log_model(Base, partitioned=True, feed=True, audit=True)
    assert [c.name for c in model.__table__.primary_key.columns] == ["id", "created_at"]
    assert {"event_log_erasures", "event_log_seals"} <= set(Base.metadata.tables)


# -- the guard -------------------------------------------------------------------------------


def test_every_partition_has_the_guard_and_new_ones_get_it(db: Engine) -> None:
    partitions = [p.name for p in list_partitions(EventLog, db)]
    assert len(partitions) == 5
    for name in [*partitions, "event_logs"]:
        assert guard_of(db, name) == GUARD
    created = ensure_partitions(EventLog, db, ahead=6)
    # Two weeks more than the template's four ahead (more if a week began since it was made).
    assert len(created) >= 2
    assert set(created).isdisjoint(partitions)
    # One made by another tool (pg_partman, say): ensure_partitions guards it too.
    with db.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE event_logs_other PARTITION OF event_logs FOR VALUES FROM "
                "('2001-01-01') TO ('2001-02-01')"
            )
        )
        connection.execute(text("CREATE SCHEMA archive"))  # and one in another schema
        connection.execute(
            text(
                "CREATE TABLE archive.event_logs_old PARTITION OF event_logs FOR VALUES FROM "
                "('2000-01-01') TO ('2000-02-01')"
            )
        )
    assert guard_of(db, "event_logs_other") == set()
    assert ensure_partitions(EventLog, db, ahead=6) == ()
    for name in [*created, "event_logs_other", "archive.event_logs_old"]:
        assert guard_of(db, name) == GUARD
    every = [*partitions, *created, "event_logs_other", "event_logs"]
    assert bounded_tables(db) == dict.fromkeys(every, BOUND_SQL)


@pytest.mark.parametrize("target", ["parent", "partition"])
def test_delete_update_and_truncate_are_refused_for_the_application_role(
    db: Engine, app_role: str, target: str
) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=2)
    with db.connect() as connection:
        holder = connection.execute(
            text("SELECT DISTINCT tableoid::regclass::text FROM event_logs WHERE session_id = :s"),
            {"s": ids["session"]},
        ).scalar_one()
    table = "event_logs" if target == "parent" else holder
    message = refusal(db, f"DELETE FROM {table}", role=app_role)
    assert message.startswith(DELETE_REFUSED)
    message = refusal(db, f"UPDATE {table} SET tool_name = 'x'", role=app_role)
    assert "UPDATE of event_logs refused (2 of 2 rows" in message
    message = refusal(db, f"TRUNCATE {table}", role=app_role)
    assert message.startswith(TRUNCATE_REFUSED)
    with db.connect() as connection:
        assert len(leaves(connection, "session_id = :s", s=ids["session"])) == 2


def test_cascade_set_null_and_declared_erasure_verify_ok(db: Engine, app_role: str) -> None:
    with db.begin() as connection:
        cascaded = add_session(connection, events=3)
        nulled = add_session(connection, events=2)
        erased = add_session(connection, events=2)
    old = old_events(db, 2)
    seal_all(EventLog, db)
    with db.begin() as connection:
        connection.execute(text(f'SET LOCAL ROLE "{app_role}"'))
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :session"), cascaded)
        connection.execute(text("DELETE FROM user_projects WHERE id = :project"), nulled)
        connection.execute(text("DELETE FROM user_agents WHERE id = :agent"), nulled)
    with db.begin() as connection:
        connection.execute(text(f'SET LOCAL ROLE "{app_role}"'))
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(text("DELETE FROM event_logs WHERE session_id = :session"), erased)
    with db.begin() as connection:  # a statement naming a partition is recorded too
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(
            text(f"DELETE FROM {partition_of(db, OLD)} WHERE session_id = :session"), old
        )
    # SET NULL of the project, then of the agent: a tombstone each for each of 2 events.
    assert_ok(db, cascade=3, set_null=4, erasure=4)


def test_a_row_deleted_behind_the_guard_of_a_partition_is_reported(db: Engine) -> None:
    old_events(db, 3)
    seal_all(EventLog, db)
    name = partition_of(db, OLD)
    with db.begin() as connection:  # the owner, switching the partition's guard off
        connection.execute(text(f"ALTER TABLE {name} DISABLE TRIGGER event_logs_audit_delete"))
        connection.execute(text(f"DELETE FROM {name} WHERE payload->>'n' = '1'"))
        connection.execute(text(f"ALTER TABLE {name} ENABLE TRIGGER event_logs_audit_delete"))
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["chunk"]
    assert "1 fewer events than sealed" in report.problems[0].detail


# -- an id stored twice ----------------------------------------------------------------------
#
# The partitioned table's key is (id, created_at): raw SQL can store one id twice, at two
# times, and in one transaction both copies share (xid, id), the order seals are cut in.


def twins(db: Engine, *, apart: bool = True) -> dict[str, Any]:
    """One transaction: ids ...01 to ...05 in one session, ...04 stored twice (now and 10
    weeks ago, or a millisecond before now when not ``apart``: then in one partition, whose
    (xid, id) index keeps the copies in the order stored), the later copy first, so that with
    chunks of 4 the copies straddle a chunk end whichever copy comes first. The earlier copy
    has an agent of its own (``old_agent``)."""
    ensure_partitions(EventLog, db, ahead=0, now=OLD)
    with db.begin() as connection:
        ids = add_session(connection, events=0)
        ids["old_agent"] = connection.execute(
            text(
                "INSERT INTO user_agents (id, user_id, name) VALUES (gen_random_uuid(), :u, 'o') "
                "RETURNING id"
            ),
            {"u": ids["user"]},
        ).scalar_one()
        now = datetime.now(UTC)
        earlier = OLD if apart else now - timedelta(milliseconds=1)
        rows = [(n, now) for n in (1, 2, 3)] + [(4, now), (4, earlier), (5, now)]
        for n, at in rows:
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, agent_id, event_type, "
                    "payload, created_at) VALUES (:id, :s, :u, :a, 'chat', "
                    "CAST(:payload AS jsonb), :at)"
                ),
                {
                    "id": uuid.UUID(int=n),
                    "s": ids["session"],
                    "u": ids["user"],
                    "a": ids["old_agent"] if at == earlier else ids["agent"],
                    "payload": f'{{"at": "{at.isoformat()}"}}',
                    "at": at,
                },
            )
    return ids


@pytest.mark.parametrize(
    ("erase", "chunk_size"), [(None, CHUNK), (None, 5), ("session", CHUNK), ("agent", CHUNK)]
)
def test_an_id_stored_twice_in_one_transaction_seals_and_verifies(
    db: Engine, erase: str | None, chunk_size: int
) -> None:
    # Chunks of 4: the copies straddle a chunk end; of 5: a chunk ends at the second copy.
    ids = twins(db)
    seal_all(EventLog, db, chunk_size=chunk_size)
    if erase == "session":  # both copies deleted: a tombstone each, under one id
        with db.begin() as connection:
            connection.execute(text("DELETE FROM chat_sessions WHERE id = :session"), ids)
    elif erase == "agent":  # both copies kept, with a set_null tombstone each
        with db.begin() as connection:
            connection.execute(
                text("DELETE FROM user_agents WHERE id IN (:agent, :old_agent)"), ids
            )
    erasures = {None: {}, "session": {"cascade": 6}, "agent": {"set_null": 6}}[erase]
    assert_ok(db, **erasures)
    assert verify_audit(EventLog, db).events == 6


@pytest.mark.parametrize("order", ["retention-then-cascade", "set-null-then-retention"])
def test_copies_of_an_id_erased_apart_each_keep_their_own_leaf(db: Engine, order: str) -> None:
    ids = twins(db)
    seal_all(EventLog, db)
    with db.connect() as connection:
        sealed = {
            (row.id, row.created_at): row.leaf
            for row in connection.execute(
                text(
                    "SELECT id, created_at, event_log_leaf(id, session_id::text, user_id::text, "
                    "project_id::text, agent_id::text, event_type, payload, created_at, "
                    "error_code, tool_name, approval_status, request_id, trace_id, span_id, "
                    "xid) AS leaf FROM event_logs WHERE id = :id"
                ),
                {"id": uuid.UUID(int=4)},
            )
        }

    def drop_old() -> None:
        result = drop_partitions(EventLog, db, older_than=OLD + timedelta(weeks=1))
        assert result.erasures == 1

    if order == "retention-then-cascade":
        drop_old()
        with db.begin() as connection:
            connection.execute(text("DELETE FROM chat_sessions WHERE id = :session"), ids)
        erasures = {"retention": 1, "cascade": 5}
    else:  # the later copy's set_null tombstone comes first: the older copy's is not it
        with db.begin() as connection:
            connection.execute(text("DELETE FROM user_agents WHERE id = :agent"), ids)
        drop_old()
        erasures = {"set_null": 5, "retention": 1}
    with db.connect() as connection:
        stones = [s for s in tombstones(connection) if s["event_id"] == uuid.UUID(int=4)]
    assert stones
    for stone in stones:  # each copy's tombstones hold that copy's first-written leaf
        assert bytes(stone["leaf"]) == bytes(sealed[(stone["event_id"], stone["event_created_at"])])
    assert_ok(db, **erasures)


def test_a_copy_of_an_id_stored_twice_deleted_behind_the_guard_is_reported_in_its_chunk(
    db: Engine,
) -> None:
    twins(db)
    seal_all(EventLog, db)
    with db.begin() as connection:  # the owner, switching the guard off
        connection.execute(text("ALTER TABLE event_logs DISABLE TRIGGER event_logs_audit_delete"))
        connection.execute(
            text("DELETE FROM event_logs WHERE id = :id AND created_at > :old"),
            {"id": uuid.UUID(int=4), "old": OLD},
        )
        connection.execute(text("ALTER TABLE event_logs ENABLE TRIGGER event_logs_audit_delete"))
    report = verify_audit(EventLog, db)
    # The earlier copy ended chunk 0, the later one began chunk 1.
    assert [(p.kind, p.chunk) for p in report.problems] == [("chunk", 1)]
    assert "1 fewer events than sealed" in report.problems[0].detail


def test_rows_of_one_xid_and_id_are_put_in_time_order() -> None:
    def row(n: int, at: str, xid: str | None = "7") -> tuple[Any, ...]:
        values: list[Any] = [None] * len(LEAF_COLUMNS)
        values[0], values[LEAF_COLUMNS.index("created_at")], values[-1] = str(n), at, xid
        return tuple(values)

    late, early = "2026-12-05 10:00:00.000001", "2026-12-05 10:00:00.000000"
    rows = [row(1, late), row(2, late), row(2, early), row(2, "0001-01-01 00:00:00.000000"),
            row(3, early, None), row(3, late, None), row(4, late)]  # fmt: skip
    ordered = list(audit_chain._ties_by_time(iter(rows)))
    assert ordered == [rows[0], rows[3], rows[2], rows[1], rows[4], rows[5], rows[6]]
    assert list(audit_chain._ties_by_time(iter([row(9, late), row(9, early)]))) == [
        row(9, early),
        row(9, late),
    ]
    assert list(audit_chain._ties_by_time(iter([]))) == []


@pytest.mark.parametrize("apart", [True, False], ids=["two-partitions", "one-partition"])
def test_an_id_stored_twice_is_sealed_whole_by_the_async_sealer_page_by_page(
    db: Engine, monkeypatch: pytest.MonkeyPatch, apart: bool
) -> None:
    # A page of one row: the async reader's next page starts right after each copy.
    monkeypatch.setattr(audit_chain, "_YIELD_PER", 1)
    twins(db, apart=apart)
    exported = seal_async(EventLog, db)
    assert sum(seal.events for seal in exported) == 6
    report = verify_audit(EventLog, db)
    assert report.problems == (), [str(p) for p in report.problems]


# -- retention -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keep", "concurrently"), [(False, True), (True, True), (False, False), (True, False)]
)
def test_seal_drop_seal_verify_ok_with_one_retention_tombstone_per_event(
    db: Engine, keep: bool, concurrently: bool
) -> None:
    old = old_events(db, 5)
    with db.connect() as connection:
        before = leaves(connection)
    with db.begin() as connection:  # a SET NULL before: the first-written leaf is kept
        connection.execute(text("DELETE FROM user_projects WHERE id = :project"), old)
    with db.begin() as connection:
        add_session(connection, events=2)
    seal_all(EventLog, db)
    name = partition_of(db, OLD)
    result = drop_partitions(
        EventLog,
        db,
        older_than=OLD + timedelta(weeks=1),
        keep_detached=keep,
        concurrently=concurrently,
    )
    assert (result.detached if keep else result.dropped) == (name,)
    assert result.erasures == 5
    with db.connect() as connection:
        stones = [s for s in tombstones(connection) if s["kind"] == "retention"]
    assert sorted(str(s["event_id"]) for s in stones) == sorted(str(e) for e in old["events"])
    assert all(s["leaf"] == before[s["event_id"]] for s in stones)
    assert name not in [p.name for p in list_partitions(EventLog, db)]
    with db.connect() as connection:  # no comment of ours is left on a kept table
        comments = connection.execute(
            text("SELECT count(*) FROM pg_class WHERE obj_description(oid, 'pg_class') LIKE :c"),
            {"c": "eventlog-persist:%"},
        ).scalar_one()
    assert comments == 0
    if keep:
        assert guard_of(db, name) == set()  # an archive now: its owner may drop it
        with db.begin() as connection:
            connection.execute(text(f"TRUNCATE {name}"))
    assert_ok(db, set_null=5, retention=5)


def test_an_interrupted_detach_gets_its_tombstones_once(db: Engine, pg_server: ServerInfo) -> None:
    old = old_events(db, 4)
    seal_all(EventLog, db)
    name = partition_of(db, OLD)
    cutoff = OLD + timedelta(weeks=1)
    holder = create_engine(db.url)
    held = holder.connect()
    held.execute(text("SELECT count(*) FROM event_logs"))
    impatient = create_engine(db.url, connect_args={"options": "-c lock_timeout=300"})
    try:
        with pytest.raises(OperationalError, match="lock timeout"):
            drop_partitions(EventLog, impatient, older_than=cutoff)
    finally:
        impatient.dispose()
        held.close()
        holder.dispose()
    assert [p.name for p in list_partitions(EventLog, db) if p.detach_pending] == [name]
    with db.connect() as connection:
        assert tombstones(connection) == []
    result = drop_partitions(EventLog, db, older_than=cutoff)
    assert result.finalized == (name,)
    assert result.dropped == (name,)
    assert result.erasures == 4
    assert drop_partitions(EventLog, db, older_than=cutoff).erasures == 0
    with db.connect() as connection:
        assert sorted(str(s["event_id"]) for s in tombstones(connection)) == sorted(
            str(e) for e in old["events"]
        )
    assert_ok(db, retention=4)


def drop_stopped_after_the_detach(db: Engine, cutoff: datetime) -> None:
    """A `drop_partitions` run that detaches and then fails: DROP TABLE locks the tables the
    foreign keys reference, a reader of users holds it up past lock_timeout, and the
    tombstones roll back with it."""
    holder = create_engine(db.url)
    held = holder.connect()
    held.execute(text("SELECT count(*) FROM users"))
    try:
        with pytest.raises(DBAPIError, match="lock timeout"):
            drop_partitions(EventLog, db, older_than=cutoff, lock_timeout=0.2)
    finally:
        held.close()
        holder.dispose()


def test_a_partition_detached_but_not_dropped_is_recorded_by_the_next_run(db: Engine) -> None:
    old_events(db, 3)
    seal_all(EventLog, db)
    cutoff = OLD + timedelta(weeks=1)
    drop_stopped_after_the_detach(db, cutoff)
    with db.connect() as connection:
        assert tombstones(connection) == []
    result = drop_partitions(EventLog, db, older_than=cutoff)
    assert len(result.dropped) == 1
    assert result.erasures == 3
    assert_ok(db, retention=3)


def test_no_seal_is_taken_while_a_partitions_removal_is_unfinished(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """Its events (written late, never sealed) left event_logs without tombstones yet: a seal
    then would lack them, and their tombstones would put them back in its window."""
    old_events(db, 2)  # not sealed
    name = partition_of(db, OLD)
    cutoff = OLD + timedelta(weeks=1)
    drop_stopped_after_the_detach(db, cutoff)
    with db.begin() as connection:
        add_session(connection, events=1)
    settle(db)
    with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
        assert seal_events(EventLog, db) is None
    assert f"the removal of partition {name} is unfinished" in caplog.text
    assert "run 'eventlog-persist partitions drop' again to finish it" in caplog.text
    caplog.clear()
    with db.connect() as maintenance:  # a run holding the table now: told as such
        maintenance.execute(
            text(
                "SELECT pg_advisory_lock((x'45564C50'::bigint << 32) | "
                "'event_logs'::regclass::oid::bigint)"
            )
        )
        with caplog.at_level(logging.INFO, logger="eventlog_persist"):
            assert seal_events(EventLog, db) is None
        maintenance.execute(text("SELECT pg_advisory_unlock_all()"))
        maintenance.commit()
    assert f"partition maintenance is running (removing {name}); nothing sealed" in caplog.text
    assert "is unfinished" not in caplog.text
    assert drop_partitions(EventLog, db, older_than=cutoff).erasures == 2
    seal_all(EventLog, db)
    assert_ok(db, retention=2)


def test_a_pending_detach_in_another_schema_does_not_hold_sealing_back(db: Engine) -> None:
    """Maintenance leaves such a partition alone (it would never finish the detach), so the
    sealer does not wait for it either."""
    with db.begin() as connection:
        connection.execute(text("CREATE SCHEMA archive"))
        connection.execute(
            text(
                "CREATE TABLE archive.event_logs_old PARTITION OF event_logs FOR VALUES FROM "
                "('2000-01-01') TO ('2000-02-01')"
            )
        )
    holder = create_engine(db.url)
    held = holder.connect()
    held.execute(text("SELECT count(*) FROM event_logs"))  # the detach waits for it
    impatient = create_engine(
        db.url, isolation_level="AUTOCOMMIT", connect_args={"options": "-c lock_timeout=300"}
    )
    try:
        with impatient.connect() as connection, pytest.raises(OperationalError, match="lock"):
            connection.execute(
                text("ALTER TABLE event_logs DETACH PARTITION archive.event_logs_old CONCURRENTLY")
            )
    finally:
        impatient.dispose()
        held.close()
        holder.dispose()
    assert [p.name for p in list_partitions(EventLog, db) if p.detach_pending] == ["event_logs_old"]
    with db.begin() as connection:
        add_session(connection, events=1)
    settle(db)
    assert seal_events(EventLog, db) is not None


def test_a_partition_detached_to_keep_but_not_recorded_is_recorded_by_the_next_run(
    db: Engine,
) -> None:
    old_events(db, 3)
    seal_all(EventLog, db)
    name = partition_of(db, OLD)
    cutoff = OLD + timedelta(weeks=1)
    # After the detach, a reader of the detached table holds up the DROP TRIGGER of its
    # guard: the transaction that records its events and unguards it rolls back.
    with (
        read_from(db, name, when="'retention'") as reads,
        pytest.raises(DBAPIError, match="lock timeout"),
    ):
        drop_partitions(EventLog, db, older_than=cutoff, keep_detached=True, lock_timeout=0.2)
    assert len(reads) == 1
    assert name not in [p.name for p in list_partitions(EventLog, db)]
    assert guard_of(db, name) == GUARD
    with db.connect() as connection:
        assert tombstones(connection) == []
    # The next run records it and unguards it, whatever it is asked to do itself.
    result = drop_partitions(EventLog, db, older_than=OLD - timedelta(weeks=100))
    assert result == type(result)(detached=(name,), erasures=3)
    assert guard_of(db, name) == set()
    assert comment_and_rows(db, name) == (None, 3)
    assert drop_partitions(EventLog, db, older_than=cutoff) == type(result)()
    assert_ok(db, retention=3)


@pytest.mark.parametrize("fails_once", [False, True])
def test_a_detach_left_pending_by_another_session_gets_its_tombstones_once(
    db: Engine, fails_once: bool
) -> None:
    old_events(db, 3)
    seal_all(EventLog, db)
    name = partition_of(db, OLD)
    # Not by drop_partitions: a DETACH ... CONCURRENTLY of someone else's, cut by its
    # lock_timeout while a reader of event_logs holds it up, leaves no comment of ours.
    impatient = create_engine(db.url, connect_args={"options": "-c lock_timeout=300"})
    try:
        with db.connect() as reader, impatient.connect() as other:
            reader.execute(text("SELECT count(*) FROM event_logs"))
            other.execution_options(isolation_level="AUTOCOMMIT")
            with pytest.raises(OperationalError, match="lock timeout"):
                other.execute(text(f"ALTER TABLE event_logs DETACH PARTITION {name} CONCURRENTLY"))
    finally:
        impatient.dispose()
    assert [p.name for p in list_partitions(EventLog, db) if p.detach_pending] == [name]
    long_ago = OLD - timedelta(weeks=100)
    if fails_once:
        # The FINALIZE goes through; a reader of the detached table then holds up the DROP
        # TRIGGER of its guard, and the transaction with its tombstones rolls back.
        with (
            read_from(db, name, when="'retention'") as reads,
            pytest.raises(DBAPIError, match="lock timeout"),
        ):
            drop_partitions(EventLog, db, older_than=long_ago, lock_timeout=0.2)
        assert len(reads) == 1
        assert not any(p.detach_pending for p in list_partitions(EventLog, db))
        with db.connect() as connection:
            assert tombstones(connection) == []
    result = drop_partitions(EventLog, db, older_than=long_ago)
    finalized = () if fails_once else (name,)
    assert result == type(result)(detached=(name,), finalized=finalized, erasures=3)
    assert guard_of(db, name) == set()
    assert comment_and_rows(db, name) == (None, 3)
    assert drop_partitions(EventLog, db, older_than=long_ago) == type(result)()
    assert_ok(db, retention=3)


def test_a_plain_detach_whose_connection_is_lost_records_nothing_until_the_next_run(
    db: Engine,
) -> None:
    # With the audit a plain DETACH runs in the transaction that writes the tombstones.
    old_events(db, 3)
    seal_all(EventLog, db)
    name = partition_of(db, OLD)
    cutoff = OLD + timedelta(weeks=1)
    error = drop_losing_its_connection(
        db, EventLog, older_than=cutoff, concurrently=False, lock_timeout=30
    )
    assert isinstance(error, OperationalError), repr(error)
    assert name in [p.name for p in list_partitions(EventLog, db)]
    with db.connect() as connection:
        assert tombstones(connection) == []
    result = drop_partitions(EventLog, db, older_than=cutoff, concurrently=False)
    assert result == type(result)(dropped=(name,), erasures=3)
    assert_ok(db, retention=3)


def test_purge_on_the_partitioned_table_verifies_ok(db: Engine) -> None:
    old_events(db, 3)
    with db.begin() as connection:
        add_session(connection, events=2)
    seal_all(EventLog, db)
    result = purge_events(EventLog, db, older_than=OLD + timedelta(days=1), batch_size=2)
    assert result.deleted == 3
    assert_ok(db, retention=3)


# -- conversion ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_template(
    pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("plain")) as name:
        yield name


@pytest.fixture
def plain_db(pg_server: ServerInfo, plain_template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, plain_template) as engine:
        yield engine


def test_an_audited_table_converts_and_stays_guarded_sealed_and_verified(
    plain_db: Engine,
) -> None:
    db = plain_db
    with db.begin() as connection:
        cascaded = add_session(connection, events=3)
        kept = add_session(connection, events=2)
    seal_all(EventLog, db)
    result = convert_to_partitioned(db)
    assert result.state == "converted"
    partitions = [p.name for p in list_partitions(EventLog, db)]
    assert partitions[0] == "event_logs_legacy"
    for name in [*partitions, "event_logs"]:
        assert guard_of(db, name) == GUARD
    assert bounded_tables(db) == dict.fromkeys([*partitions, "event_logs"], BOUND_SQL)
    role = make_app_role(db)
    message = refusal(db, "DELETE FROM event_logs_legacy", role=role)
    assert message.startswith("eventlog_persist: DELETE from event_logs refused (5 of 5 events")
    with db.begin() as connection:
        add_session(connection, events=2)
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :session"), cascaded)
        connection.execute(text("DELETE FROM user_agents WHERE id = :agent"), kept)
    assert_ok(db, cascade=3, set_null=2)
    # The legacy partition starts at MINVALUE: it would take -infinity and BC times.
    for when in ("-infinity", "0001-12-31 23:59:59+00 BC"):
        with pytest.raises(IntegrityError, match=BOUND):
            insert_at(db, when)


def test_the_drop_command_reports_the_tombstones(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    old_events(db, 2)
    url = db.url.render_as_string(hide_password=False)
    assert main(["partitions", "drop", "--older-than", "8w", "--url", url]) == 0
    assert "eventlog-persist: audit: 2 retention tombstones written" in capsys.readouterr().out
    assert_ok(db, retention=2)
