"""Verification: every tampering by the table's owner with the triggers off is found and
localized to its seal and chunk, and seals that are odd but honest verify OK."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from auditkit import (
    CHUNK,
    add_session,
    audited_engine,
    audited_template,
    leaves,
    problems,
    seal_all,
    settle,
    tamper,
)
from hostmodels import build_host_models
from pgserver import ServerInfo
from sqlalchemy import Connection, Engine, String, create_engine, literal, select, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.exc import DataError, ProgrammingError

from eventlog_persist import SealAnchor, seal_events, verify_audit
from eventlog_persist.exceptions import AuditError, ConfigurationError, MigrationSetupError

EventLog = build_host_models(feed=True).EventLog


@pytest.fixture(scope="module")
def template(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("audit")) as name:
        yield name


@pytest.fixture
def db(pg_server: ServerInfo, template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, template) as engine:
        yield engine


def ordered_ids(connection: Connection) -> list[uuid.UUID]:
    """Every event's id by (xid, id): the order the seals chunk them in."""
    return list(connection.execute(text("SELECT id FROM event_logs ORDER BY xid, id")).scalars())


@pytest.fixture
def sealed(db: Engine) -> dict[str, Any]:
    """Three sessions of 5 events, sealed in chunks of 4; their ids, in sealed order."""
    with db.begin() as connection:
        first = add_session(connection, events=5)
    with db.begin() as connection:
        second = add_session(connection, events=5, user=first["user"])
        third = add_session(connection, events=5)
    # The tests below name seal 1 and its chunks: seal once, after the horizon passed both
    # transactions (another test's open transaction on the server may hold it back).
    settle(db)
    assert len(seal_all(EventLog, db)) == 1
    with db.connect() as connection:
        order = ordered_ids(connection)
    assert verify_audit(EventLog, db).ok
    return {"sessions": [first, second, third], "order": order}


def chunk_of(sealed: dict[str, Any], event: uuid.UUID) -> int:
    return sealed["order"].index(event) // CHUNK


def test_an_edited_payload_is_found_in_its_chunk(db: Engine, sealed: dict[str, Any]) -> None:
    victim = sealed["order"][6]
    tamper(db, "UPDATE event_logs SET payload = '{\"n\": 99}' WHERE id = :e", e=victim)
    report = verify_audit(EventLog, db)
    assert not report.ok
    assert problems(report) == [("chunk", 1, chunk_of(sealed, victim))]
    assert "differs from when it was sealed" in report.problems[0].detail


def test_a_changed_number_scale_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    victim = sealed["order"][0]
    tamper(
        db,
        "UPDATE event_logs SET payload = jsonb_set(payload, '{x}', '1.5') WHERE id = :e",
        e=victim,
    )
    assert problems(verify_audit(EventLog, db)) == [("chunk", 1, 0)]


def test_a_row_deleted_without_tombstone_is_found_in_its_chunk(
    db: Engine, sealed: dict[str, Any]
) -> None:
    victim, last = sealed["order"][9], sealed["order"][11]  # chunk 2 ends at the 12th
    xid = xid_of(db, last)
    tamper(db, "DELETE FROM event_logs WHERE id = :e", e=victim)
    report = verify_audit(EventLog, db)
    assert problems(report) == [("chunk", 1, chunk_of(sealed, victim))]
    assert report.problems[0].detail == (
        f"1 fewer events than sealed (3 of 4, events up to (xid {xid}, id {last})): an event "
        "deleted without a tombstone, or moved out (its xid changed)"
    )


def test_reordered_times_are_found(db: Engine, sealed: dict[str, Any]) -> None:
    a, b = sealed["order"][1], sealed["order"][13]
    tamper(
        db,
        "UPDATE event_logs e SET created_at = o.created_at FROM event_logs o "
        "WHERE (e.id, o.id) IN ((:a, :b), (:b, :a))",
        a=a,
        b=b,
    )
    assert problems(verify_audit(EventLog, db)) == [
        ("chunk", 1, chunk_of(sealed, a)),
        ("chunk", 1, chunk_of(sealed, b)),
    ]


def test_a_moved_transaction_id_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    victim = sealed["order"][2]
    tamper(
        db,
        "UPDATE event_logs SET xid = ((xid::text)::numeric + 1)::text::xid8 WHERE id = :e",
        e=victim,
    )
    found = problems(verify_audit(EventLog, db))
    assert found
    assert all(kind == "chunk" for kind, _, _ in found)
    assert ("chunk", 1, chunk_of(sealed, victim)) in found


def xid_of(db: Engine, event: uuid.UUID) -> int:
    with db.connect() as connection:
        return int(
            connection.execute(
                text("SELECT xid::text FROM event_logs WHERE id = :e"), {"e": event}
            ).scalar_one()
        )


@pytest.mark.parametrize("where", ["first", "after the last chunk"])
def test_an_inserted_event_is_found(db: Engine, sealed: dict[str, Any], where: str) -> None:
    """In the window, it lands in the chunk its (xid, id) falls in, or after the last one."""
    order = sealed["order"]
    first = where == "first"
    neighbour = order[0] if first else order[-1]
    forged = uuid.UUID(int=0 if first else 2**128 - 1)
    tamper(
        db,
        "INSERT INTO event_logs (id, session_id, user_id, event_type, payload, xid) "
        "SELECT :f, session_id, user_id, 'tool_call', '{}', xid FROM event_logs WHERE id = :e",
        f=forged,
        e=neighbour,
    )
    report = verify_audit(EventLog, db)
    if first:
        assert problems(report) == [("chunk", 1, 0)]
        assert report.problems[0].detail == (
            f"1 more events than sealed (5 of 4, events up to (xid {xid_of(db, order[3])}, "
            f"id {order[3]})): an event inserted, or moved in (its xid changed)"
        )
    else:
        assert problems(report) == [("chunk", 1, 4)]
        assert report.problems[0].detail == (
            "1 events in the seal's window come after its last chunk: inserted, or moved in "
            "(their xid changed)"
        )


def test_a_forged_cascade_tombstone_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    victim = sealed["order"][5]
    with db.connect() as connection:
        leaf = leaves(connection, "id = :e", e=victim)[victim]
    tamper(
        db,
        "INSERT INTO event_log_erasures (kind, event_id, event_created_at, event_xid, "
        "session_id, user_id, project_id, agent_id, leaf) SELECT 'cascade', id, created_at, "
        "xid, session_id::text, user_id::text, project_id::text, agent_id::text, :leaf "
        "FROM event_logs WHERE id = :e",
        "DELETE FROM event_logs WHERE id = :e",
        e=victim,
        leaf=leaf,
    )
    seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["forged_tombstone"]
    assert f"of event {victim}: its chat session and user both still exist" in str(
        report.problems[0]
    )


def test_a_forged_set_null_tombstone_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    victim = sealed["order"][3]
    tamper(
        db,
        "INSERT INTO event_log_erasures (kind, event_id, event_created_at, event_xid, "
        "session_id, user_id, project_id, agent_id, leaf) SELECT 'set_null', id, created_at, "
        "xid, session_id::text, user_id::text, project_id::text, agent_id::text, "
        "sha256('x') FROM event_logs WHERE id = :e",
        "UPDATE event_logs SET project_id = NULL WHERE id = :e",
        e=victim,
    )
    seal_all(EventLog, db)
    kinds = {p.kind for p in verify_audit(EventLog, db).problems}
    assert "forged_tombstone" in kinds


@pytest.mark.parametrize(
    ("tampering", "found"),
    [
        (
            "UPDATE event_logs SET tool_name = 'other'",
            "differs from the row its earliest tombstone",
        ),
        # A set_null tombstone records a change, never a removal: it does not cover a row
        # deleted afterwards without a tombstone of its own.
        ("DELETE FROM event_logs", "is missing, but its tombstone"),
    ],
)
def test_an_edit_or_a_deletion_after_set_null_is_found(
    db: Engine, sealed: dict[str, Any], tampering: str, found: str
) -> None:
    project = sealed["sessions"][2]["project"]
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_projects WHERE id = :p"), {"p": project})
    victim = sealed["sessions"][2]["events"][0]
    tamper(db, f"{tampering} WHERE id = :e", e=victim)
    seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["tombstone"]
    assert report.problems[0].detail.startswith(f"event {victim} ")
    assert found in report.problems[0].detail


def test_a_created_at_edited_after_set_null_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    # The tombstone then belongs to no row (they are matched by xid, id and created_at): the
    # row reads as deleted without a tombstone and the edited one as another event; on the
    # partitioned layout the two may be another copy of the same id (docs/audit.md).
    project = sealed["sessions"][2]["project"]
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_projects WHERE id = :p"), {"p": project})
    victim = sealed["sessions"][2]["events"][0]
    tamper(
        db,
        "UPDATE event_logs SET created_at = created_at + interval '1 second' WHERE id = :e",
        e=victim,
    )
    seal_all(EventLog, db)
    problems = verify_audit(EventLog, db).problems
    details = [str(p) for p in problems]
    assert any(f"event {victim} is missing, but its tombstone" in d for d in details), details
    # The edited row, an event the seal does not hold: in a chunk, or after the last one.
    assert any(
        p.kind == "chunk" and ("1 more events" in p.detail or "after its last chunk" in p.detail)
        for p in problems
    ), details


def test_a_key_set_null_then_given_another_value_is_found(
    db: Engine, sealed: dict[str, Any]
) -> None:
    """Only NULL may replace a key its tombstone records."""
    session = sealed["sessions"][2]
    with db.begin() as connection:
        connection.execute(
            text("DELETE FROM user_projects WHERE id = :p"), {"p": session["project"]}
        )
    victim = session["events"][0]
    other = sealed["sessions"][0]["project"]
    tamper(db, "UPDATE event_logs SET project_id = :p WHERE id = :e", p=other, e=victim)
    seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["tombstone"]
    assert report.problems[0].detail.startswith(
        f"event {victim}: project_id is {other}, but its earliest tombstone "
    )
    assert report.problems[0].detail.endswith(
        f"records {session['project']} (only NULL may replace it)"
    )


@pytest.mark.parametrize(("deleted", "nulled"), [("agent", "project"), ("project", "agent")])
def test_a_key_set_null_by_hand_after_another_set_null_is_found(
    db: Engine, sealed: dict[str, Any], deleted: str, nulled: str
) -> None:
    """After one parent's ON DELETE SET NULL, the row has a tombstone; its other key set to
    NULL by hand (the guard off) while that parent still exists is no SET NULL either."""
    tables = {"agent": "user_agents", "project": "user_projects"}
    session = sealed["sessions"][2]
    with db.begin() as connection:
        connection.execute(
            text(f"DELETE FROM {tables[deleted]} WHERE id = :k"), {"k": session[deleted]}
        )
    seal_all(EventLog, db)
    assert verify_audit(EventLog, db).ok
    victim = session["events"][0]
    tamper(db, f"UPDATE event_logs SET {nulled}_id = NULL WHERE id = :e", e=victim)
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["tombstone"]
    assert report.problems[0].detail.startswith(
        f"event {victim}: {nulled}_id is NULL, but its earliest tombstone "
    )
    assert report.problems[0].detail.endswith(
        f"records {session[nulled]}, which still exists: set to NULL by hand, not by an "
        "ON DELETE SET NULL"
    )
    with db.begin() as connection:  # that parent deleted after all: now a NULL it could make
        connection.execute(
            text(f"DELETE FROM {tables[nulled]} WHERE id = :k"), {"k": session[nulled]}
        )
    assert verify_audit(EventLog, db).ok


def test_a_row_with_a_hand_set_xid_holds_sealing_back_and_is_named(db: Engine) -> None:
    """A role that may only INSERT can set xid (it is a default): the sealer names the row
    and its fix, not the restore's pg_resetwal."""
    role = f"insert_only_{db.url.database}"  # roles are the cluster's: one per database
    with db.begin() as connection:
        session = add_session(connection, events=2)
        connection.execute(text(f'CREATE ROLE "{role}"'))
        connection.execute(text(f'GRANT SELECT, INSERT ON event_logs TO "{role}"'))
        connection.execute(text(f'SET LOCAL ROLE "{role}"'))
        forged = connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload, xid) "
                "VALUES (gen_random_uuid(), :s, :u, 't', '{}', '4294967296000') RETURNING id"
            ),
            {"s": session["session"], "u": session["user"]},
        ).scalar_one()
    with pytest.raises(AuditError) as held:
        seal_events(EventLog, db)
    message = str(held.value)
    assert "1 events hold transaction ids at or past the server's next one" in message
    assert f"e.g. event {forged}, and the seals and tombstones do not" in message
    assert "inserted with a hand-set xid" in message
    assert "never with pg_resetwal" in message
    with db.begin() as connection:  # the fix named
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(text("DELETE FROM event_logs WHERE xid >= '4294967296000'"))
    settle(db)
    assert seal_events(EventLog, db) is not None
    assert verify_audit(EventLog, db).ok


def test_an_erased_event_of_year_1_seals_and_verifies_in_a_session_west_of_utc(
    db: Engine,
) -> None:
    """Its tombstone's time, read by the driver in that zone, falls before year 1 (BC)."""
    with db.begin() as connection:
        session = add_session(connection, events=1)
        first = connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload, "
                "created_at) VALUES (gen_random_uuid(), :s, :u, 't', '{}', "
                "'0001-01-01 00:00:00+00') RETURNING id"
            ),
            {"s": session["session"], "u": session["user"]},
        ).scalar_one()
    with db.begin() as connection:
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(text("DELETE FROM event_logs WHERE id = :e"), {"e": first})
    settle(db)
    west = create_engine(db.url, connect_args={"options": "-c TimeZone=America/New_York"})
    try:
        assert seal_events(EventLog, west) is not None
        report = verify_audit(EventLog, west)
    finally:
        west.dispose()
    assert report.ok, report.problems
    assert report.erasures["erasure"] == 1


def test_an_erased_event_put_back_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    victim = sealed["order"][4]
    tamper(db, "CREATE TABLE kept AS SELECT * FROM event_logs WHERE id = :e", e=victim)
    with db.begin() as connection:
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(text("DELETE FROM event_logs WHERE id = :e"), {"e": victim})
    seal_all(EventLog, db)
    assert verify_audit(EventLog, db).ok
    tamper(db, "INSERT INTO event_logs SELECT * FROM kept")
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["tombstone"]
    assert report.problems[0].detail.startswith(f"event {victim} is present although tombstone ")
    assert report.problems[0].detail.endswith("(erasure) records its deletion")


def seal_a_cascade(db: Engine, session: dict[str, Any]) -> None:
    """Delete a chat session (its events' cascade tombstones), seal them, verify OK."""
    with db.begin() as connection:
        connection.execute(
            text("DELETE FROM chat_sessions WHERE id = :s"), {"s": session["session"]}
        )
    seal_all(EventLog, db)
    assert verify_audit(EventLog, db).ok


def test_a_deleted_tombstone_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    seal_a_cascade(db, sealed["sessions"][1])
    tamper(
        db, "DELETE FROM event_log_erasures WHERE seq = (SELECT min(seq) FROM event_log_erasures)"
    )
    found = problems(verify_audit(EventLog, db))
    assert ("erasures", 2, None) in found
    assert any(kind == "chunk" and seal == 1 for kind, seal, _ in found)


def test_an_edited_seal_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    tamper(db, "UPDATE event_log_seals SET events = events + 1")
    found = {kind for kind, _, _ in problems(verify_audit(EventLog, db))}
    assert "seal" in found


@pytest.mark.parametrize(
    ("edit", "detail"),
    [
        (
            "chunk_roots = substring(chunk_roots from 1 for 40)",
            "its chunk_roots and chunk_ends do not hold whole chunks",
        ),
        (
            "chunk_ends = substring(chunk_ends from 25)",
            "its chunk_roots and chunk_ends do not hold whole chunks",
        ),
        ("chunk_size = 0", "4 chunks cannot hold 15 events of chunk_size 0"),
        ("events = 17", "4 chunks cannot hold 17 events of chunk_size 4"),
        ("events = 12", "4 chunks cannot hold 12 events of chunk_size 4"),
    ],
)
def test_a_seal_whose_chunks_do_not_add_up_is_found_and_its_chunks_not_read(
    db: Engine, sealed: dict[str, Any], edit: str, detail: str
) -> None:
    # The table's check refuses the first two: a tamperer who owns it drops the check first.
    tamper(
        db,
        "ALTER TABLE event_log_seals DROP CONSTRAINT ck_event_log_seals_hashes",
        f"UPDATE event_log_seals SET {edit}",
    )
    report = verify_audit(EventLog, db)
    assert problems(report) == [("seal", 1, None), ("seal", 1, None)]
    assert report.problems[0].detail.startswith("its seal_hash does not match its fields")
    assert report.problems[1].detail == detail
    assert report.events == 0  # its chunks were not compared


def test_seals_have_chunks_of_1024_events_by_default(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)
    settle(db)
    seal = seal_events(EventLog, db)
    assert seal is not None
    assert (seal.chunk_size, seal.chunks) == (1024, 1)
    with db.connect() as connection:
        stored = connection.execute(text("SELECT chunk_size FROM event_log_seals")).scalar_one()
    assert stored == 1024


def test_a_seal_of_one_event_per_chunk_verifies(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection, events=3)
    settle(db)
    seal = seal_events(EventLog, db, chunk_size=1)
    assert seal is not None
    assert (seal.events, seal.chunks, seal.chunk_size) == (3, 3, 1)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 3


def test_a_seal_whose_events_root_was_replaced_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    tamper(db, "UPDATE event_log_seals SET events_root = sha256('x')")
    report = verify_audit(EventLog, db)
    assert problems(report) == [("seal", 1, None), ("seal", 1, None)]
    assert report.problems[1].detail == "its events_root is not the root over its chunk roots"


def test_rewritten_seals_are_found_against_an_anchor(db: Engine, sealed: dict[str, Any]) -> None:
    with db.connect() as connection:
        head = SealAnchor(
            *connection.execute(
                text("SELECT seq, seal_hash FROM event_log_seals ORDER BY seq DESC LIMIT 1")
            ).one()
        )
    victim = sealed["order"][0]
    # Edit an event, then rewrite every seal so that the chain agrees with itself.
    tamper(
        db,
        "UPDATE event_logs SET payload = '{}' WHERE id = :e",
        "DELETE FROM event_log_seals",
        e=victim,
    )
    seal_all(EventLog, db)
    assert verify_audit(EventLog, db).ok  # without an anchor, a whole rewrite is consistent
    report = verify_audit(EventLog, db, anchors=[str(head)])
    assert problems(report) == [("anchor", head.seq, None)]
    assert "the seals were rewritten" in report.problems[0].detail


def test_an_anchor_beyond_the_chain_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    report = verify_audit(EventLog, db, anchors=[SealAnchor(99, b"\x01" * 32)])
    assert problems(report) == [("anchor", 99, None)]


def test_an_edited_tombstone_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    """Edited, not removed: the count still matches, the root does not."""
    seal_a_cascade(db, sealed["sessions"][2])
    tamper(
        db,
        "UPDATE event_log_erasures SET erased_at = erased_at + interval '1 second' "
        "WHERE seq = (SELECT min(seq) FROM event_log_erasures)",
    )
    report = verify_audit(EventLog, db)
    assert [kind for kind, _, _ in problems(report)] == ["erasures"]
    assert "(5 now, 5 sealed): a tombstone added, removed or edited" in report.problems[0].detail


@pytest.mark.parametrize("column", ["session_id", "user_id", "project_id"])
def test_a_tombstone_whose_key_is_not_a_key_is_reported_not_raised(
    db: Engine, sealed: dict[str, Any], column: str
) -> None:
    """A key that is not the text the guard writes for a key would fail the cast that
    checks forged tombstones: it is reported, and the report has the rest."""
    seal_a_cascade(db, sealed["sessions"][2])
    tamper(
        db,
        f"UPDATE event_log_erasures SET {column} = 'not-a-key' "
        "WHERE seq = (SELECT min(seq) FROM event_log_erasures)",
    )
    report = verify_audit(EventLog, db)
    assert [kind for kind, _, _ in problems(report)] == ["erasures", "forged_tombstone"]
    assert report.problems[1].detail.endswith(
        f"{column} 'not-a-key' is not a key of event_logs.{column}"
    )


def test_an_event_of_the_transaction_at_the_horizon_is_unsealed(
    db: Engine, sealed: dict[str, Any]
) -> None:
    """A seal's window ends before its ``xid_to``: an event of that very transaction id is
    counted as unsealed."""
    with db.begin() as connection:
        late = add_session(connection, events=1)["events"][0]
    tamper(
        db,
        "UPDATE event_logs SET xid = (SELECT xid_to FROM event_log_seals ORDER BY seq DESC "
        "LIMIT 1) WHERE id = :e",
        e=late,
    )
    report = verify_audit(EventLog, db)
    assert report.ok
    assert (report.events, report.unsealed) == (15, 1)


def newest_end(db: Engine) -> int:
    """The newest seal's ``xid_to``."""
    with db.connect() as connection:
        return int(
            connection.execute(
                text("SELECT xid_to::text FROM event_log_seals ORDER BY seq DESC LIMIT 1")
            ).scalar_one()
        )


def test_erasures_by_the_transaction_at_the_horizon_go_to_the_next_seal(
    db: Engine, sealed: dict[str, Any]
) -> None:
    """A transaction still running when a seal is made, whose id is that seal's ``xid_to``,
    erases a sealed event and an event of its own: neither tombstone belongs to that seal
    (by ``erased_xid`` nor by ``event_xid``), and the next seal holds both."""
    with db.begin() as connection:
        add_session(connection, events=1)  # something for the seal made meanwhile
    with db.connect() as running, running.begin():
        own = add_session(running, events=2)
        for session in (own, sealed["sessions"][0]):
            running.execute(
                text("DELETE FROM chat_sessions WHERE id = :s"), {"s": session["session"]}
            )
        xid = int(running.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())
        deadline = time.monotonic() + 30
        while (end := newest_end(db)) < xid:
            seal_events(EventLog, db, chunk_size=CHUNK)
            assert time.monotonic() < deadline, "the horizon did not reach the running transaction"
            time.sleep(0.05)
        assert end == xid  # the running transaction holds the horizon
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 16
    seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert dict(report.erasures)["cascade"] == 7


def test_a_database_error_other_than_a_missing_schema_is_raised_as_it_is(db: Engine) -> None:
    """A role without the grants: the permission error, not `MigrationSetupError`."""
    name = f"nobody_{db.url.database}"
    with db.begin() as connection:
        add_session(connection, events=1)
        connection.execute(text(f'CREATE ROLE "{name}"'))
    as_role = create_engine(db.url)

    @sqlalchemy_event.listens_for(as_role, "connect")
    def become(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET ROLE "{name}"')
        dbapi_connection.commit()

    try:
        for run in (verify_audit, seal_events):
            with pytest.raises(ProgrammingError, match="permission denied") as refused:
                run(EventLog, as_role)
            assert refused.value.orig.sqlstate == "42501"  # type: ignore[union-attr]
    finally:
        as_role.dispose()
        with db.begin() as connection:
            connection.execute(text(f'DROP ROLE "{name}"'))


def test_verifying_on_a_connection_reads_one_read_only_snapshot(
    db: Engine, sealed: dict[str, Any]
) -> None:
    seen: list[tuple[str, str]] = []
    with db.connect() as connection:

        @sqlalchemy_event.listens_for(connection, "after_cursor_execute")
        def settings(*args: Any) -> None:
            seen.append(
                connection.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                    "SELECT current_setting('transaction_isolation'), "
                    "current_setting('transaction_read_only')"
                ).fetchone()
            )

        report = verify_audit(EventLog, connection)
        sqlalchemy_event.remove(connection, "after_cursor_execute", settings)
        assert not connection.in_transaction()
    assert report.ok
    assert (report.seals, report.events) == (1, 15)
    assert len(seen) > 3
    assert set(seen) == {("repeatable read", "on")}


def test_an_autocommit_engine_still_reads_one_snapshot_and_a_connection_is_refused(
    db: Engine, sealed: dict[str, Any]
) -> None:
    """In autocommit mode each statement would read its own snapshot (a tombstone and the
    row it records could disagree): the audit's own connection leaves that mode; a
    connection handed in that is in it is refused."""
    autocommit = db.execution_options(isolation_level="AUTOCOMMIT")
    seen: list[tuple[str, str]] = []

    @sqlalchemy_event.listens_for(autocommit, "after_cursor_execute")
    def settings(connection: Any, *args: Any) -> None:
        seen.append(
            connection.connection.dbapi_connection.execute(
                "SELECT current_setting('transaction_isolation'), "
                "current_setting('transaction_read_only')"
            ).fetchone()
        )

    report = verify_audit(EventLog, autocommit)
    assert report.ok
    assert set(seen) == {("repeatable read", "on")}
    with db.begin() as connection:
        add_session(connection, events=2)
    settle(db)
    assert seal_events(EventLog, autocommit, chunk_size=CHUNK) is not None
    assert verify_audit(EventLog, db).ok
    with autocommit.connect() as connection:
        for call in (verify_audit, seal_events):
            with pytest.raises(ConfigurationError, match="in autocommit mode"):
                call(EventLog, connection)


@pytest.mark.parametrize("action", ["verify", "seal"])
@pytest.mark.parametrize(
    "missing", ["DROP TABLE event_log_seals", "ALTER TABLE event_logs DROP COLUMN xid CASCADE"]
)
def test_a_database_without_the_audits_schema_names_the_migration(
    db: Engine, sealed: dict[str, Any], missing: str, action: str
) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)  # something to seal
        connection.execute(text(missing))
    run = verify_audit if action == "verify" else seal_events
    with pytest.raises(MigrationSetupError, match="the audit's schema is missing") as refused:
        run(EventLog, db)
    assert "'eventlog_persist:migrations_audit' to version_locations" in str(refused.value)


def test_a_missing_xid_column_is_named_while_the_horizon_stands_still(
    db: Engine, sealed: dict[str, Any]
) -> None:
    # A transaction open across the last seal holds the horizon at that seal's end, so
    # nothing is settled past it: the missing column must still be named, not "nothing to
    # seal" (another test's open transaction on the server did this at random).
    with db.begin() as connection:
        add_session(connection, events=1)
    with db.connect() as holder:
        holder.execute(text("SELECT pg_current_xact_id()"))
        assert len(seal_all(EventLog, db)) == 1
        with db.begin() as connection:
            connection.execute(text("ALTER TABLE event_logs DROP COLUMN xid CASCADE"))
        with pytest.raises(MigrationSetupError, match="the audit's schema is missing"):
            seal_events(EventLog, db)
        holder.rollback()


def test_anchors_given_as_one_string_are_refused(db: Engine) -> None:
    with pytest.raises(ConfigurationError, match="not one string; e") as refused:
        verify_audit(EventLog, db, anchors="12:" + "ab" * 32)
    assert "anchors must be a list of SealAnchor or 'SEQ:HASH' strings" in str(refused.value)
    with pytest.raises(ConfigurationError, match="got None; pass"):
        verify_audit(EventLog, db, anchors=None)  # type: ignore[arg-type]


def test_a_broken_link_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)
    seal_all(EventLog, db)
    tamper(db, "UPDATE event_log_seals SET prev_hash = sha256('x') WHERE seq = 2")
    found = {kind for kind, _, _ in problems(verify_audit(EventLog, db))}
    assert found == {"chain", "seal"}


@pytest.mark.parametrize("change", ["seq = 0", "seq = -5", "seal_hash = '\\x0102'::bytea"])
def test_a_newest_seal_altered_past_being_an_anchor_is_reported_not_raised(
    db: Engine, sealed: dict[str, Any], change: str
) -> None:
    # The table's CHECKs refuse such a row: the tamperer, as its owner, drops them first.
    tamper(
        db,
        "ALTER TABLE event_log_seals DROP CONSTRAINT ck_event_log_seals_chain",
        "ALTER TABLE event_log_seals DROP CONSTRAINT ck_event_log_seals_hashes",
        f"UPDATE event_log_seals SET {change} WHERE seq = 1",
    )
    report = verify_audit(EventLog, db)
    assert not report.ok
    assert report.problems
    assert report.last_seal is None


@pytest.fixture
def second_seal(db: Engine, sealed: dict[str, Any]) -> int:
    """Seal again after the fixture's seal; the newest seal's number."""
    with db.begin() as connection:
        add_session(connection, events=2)
    seal_all(EventLog, db)
    with db.connect() as connection:
        return int(connection.execute(text("SELECT max(seq) FROM event_log_seals")).scalar_one())


def seal_field(db: Engine, seq: int, column: str) -> Any:
    """One stored field of seal ``seq`` (an SQL expression over its columns)."""
    with db.connect() as connection:
        return connection.execute(
            text(f"SELECT {column} FROM event_log_seals WHERE seq = :n"), {"n": seq}
        ).scalar_one()


def test_a_renumbered_seal_is_found(db: Engine, second_seal: int) -> None:
    newest = second_seal
    tamper(db, "UPDATE event_log_seals SET seq = seq + 1 WHERE seq = :n", n=newest)
    report = verify_audit(EventLog, db)
    assert problems(report) == [("chain", newest + 1, None), ("seal", newest + 1, None)]
    assert report.problems[0].detail == (
        f"follows seal {newest - 1}, so it should be seal {newest}"
    )


def test_a_seal_whose_window_was_moved_is_found(db: Engine, second_seal: int) -> None:
    newest = second_seal
    start = int(seal_field(db, newest, "xid_from::text"))
    tamper(
        db,
        "UPDATE event_log_seals SET xid_from = CAST(:x AS xid8) WHERE seq = :n",
        x=str(start + 1),
        n=newest,
    )
    report = verify_audit(EventLog, db)
    # (Its events may now fall outside its window too: chunk problems, not checked here.)
    assert problems(report)[:2] == [("chain", newest, None), ("seal", newest, None)]
    assert report.problems[0].detail == (
        f"its window starts at xid {start + 1}, not where the seal before ended ({start})"
    )


def test_a_seal_whose_link_was_removed_is_found(db: Engine, second_seal: int) -> None:
    newest = second_seal
    before = bytes(seal_field(db, newest - 1, "seal_hash"))
    tamper(
        db,
        "ALTER TABLE event_log_seals DROP CONSTRAINT ck_event_log_seals_chain",
        "UPDATE event_log_seals SET prev_hash = NULL WHERE seq = :n",
        n=newest,
    )
    report = verify_audit(EventLog, db)
    assert problems(report) == [("chain", newest, None), ("seal", newest, None)]
    assert report.problems[0].detail == (
        f"its prev_hash none is not the hash of the seal before ({before.hex()})"
    )


def test_a_first_seal_given_a_link_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    tamper(
        db,
        "ALTER TABLE event_log_seals DROP CONSTRAINT ck_event_log_seals_chain",
        "UPDATE event_log_seals SET prev_hash = sha256('x') WHERE seq = 1",
    )
    report = verify_audit(EventLog, db)
    assert problems(report) == [("chain", 1, None), ("seal", 1, None)]
    forged = hashlib.sha256(b"x").hexdigest()
    assert report.problems[0].detail == (
        f"its prev_hash {forged} is not the hash of the seal before (none)"
    )


@pytest.mark.parametrize(
    ("sql_type", "texts"),
    [
        (
            "uuid",
            [
                "6f1c2e0a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
                "6F1C2E0A-3B4D-4E5F-8A9B-0C1D2E3F4A5B",
                "{6f1c2e0a-3b4d-4e5f-8a9b-0c1d2e3f4a5b}",
                "6f1c2e0a3b4d4e5f8a9b0c1d2e3f4a5b",
                "not-a-key",
                "",
            ],
        ),
        *(
            (
                kind,
                ["0", "-0", "7", "-7", "007", "+7", "1e3", " 7", "x", "", str(bound - 1),
                 str(bound), str(-bound), str(-bound - 1), "9" * 30],
            )
            for kind, bound in (("int2", 2**15), ("int4", 2**31), ("int8", 2**63))
        ),
    ],
)  # fmt: skip
def test_a_key_text_is_a_key_exactly_when_it_is_the_text_postgresql_writes(
    db: Engine, sql_type: str, texts: list[str]
) -> None:
    """The check that keeps an unreadable tombstone key out of the casts, against what
    PostgreSQL itself reads and writes back (the guard stores ``key::text``)."""
    from eventlog_persist._audit_verify import _not_a_key

    with db.connect() as connection:
        for value in texts:
            try:
                with connection.begin_nested():
                    canonical = connection.execute(
                        text(
                            f"SELECT CAST(CAST(CAST(:t AS text) AS {sql_type}) AS text) "
                            "= CAST(:t AS text)"
                        ),
                        {"t": value},
                    ).scalar_one()
            except DataError:
                canonical = False
            flagged = connection.execute(
                select(_not_a_key(literal(value, String()), sql_type))
            ).scalar_one()
            assert flagged is (not canonical), value
