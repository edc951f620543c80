"""Seals and verification: every tampering is found and localized, every legitimate erasure
verifies OK (sealed before or after it), the sealers seal and export their heads."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from auditkit import add_session, audited_engine, audited_template, leaves
from hostmodels import build_host_models
from pgserver import ServerInfo
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.ext.asyncio import create_async_engine

from eventlog_persist import (
    AsyncAuditSealer,
    AuditReport,
    AuditSealer,
    FileAnchor,
    LogAnchor,
    Seal,
    SealAnchor,
    seal_events,
    verify_audit,
)
from eventlog_persist._cli import main
from eventlog_persist.exceptions import AnchorError, ConfigurationError, MigrationSetupError

EventLog = build_host_models(feed=True).EventLog
CHUNK = 4


@pytest.fixture(scope="module")
def template(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("audit")) as name:
        yield name


@pytest.fixture
def db(pg_server: ServerInfo, template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, template) as engine:
        yield engine


def unsealed(db: Engine) -> int:
    return verify_audit(EventLog, db).unsealed


def seal_all(db: Engine, **options: Any) -> list[Seal]:
    """Seal until every committed event is sealed (another test's transaction on the server
    may hold the horizon back for a moment)."""
    seals = []
    deadline = time.monotonic() + 30
    while True:
        seal = seal_events(EventLog, db, chunk_size=CHUNK, **options)
        if seal is not None:
            seals.append(seal)
        if unsealed(db) == 0 and _unsealed_tombstones(db) == 0:
            return seals
        assert time.monotonic() < deadline, "the horizon did not pass the test's writes"
        time.sleep(0.05)


def settle(db: Engine) -> None:
    """Wait until the horizon passes every event written so far."""
    deadline = time.monotonic() + 30
    with db.connect() as connection:
        while not connection.execute(
            text(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) > (SELECT max(xid) FROM event_logs)"
            )
        ).scalar_one():
            connection.rollback()
            assert time.monotonic() < deadline, "the horizon did not pass the test's writes"
            time.sleep(0.05)


def _unsealed_tombstones(db: Engine) -> int:
    with db.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM event_log_erasures WHERE erased_xid >= "
                    "coalesce((SELECT max(xid_to) FROM event_log_seals), '0')"
                )
            ).scalar_one()
        )


def ordered_ids(connection: Connection) -> list[uuid.UUID]:
    """Every event's id by (xid, id): the order the seals chunk them in."""
    return list(connection.execute(text("SELECT id FROM event_logs ORDER BY xid, id")).scalars())


def tamper(db: Engine, *statements: str, **params: Any) -> None:
    """Run statements as the table owner with the triggers off."""
    with db.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            connection.execute(text(statement), params)


def problems(report: AuditReport) -> list[tuple[str, int | None, int | None]]:
    return [(p.kind, p.seal, p.chunk) for p in report.problems]


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
    assert len(seal_all(db)) == 1
    with db.connect() as connection:
        order = ordered_ids(connection)
    assert verify_audit(EventLog, db).ok
    return {"sessions": [first, second, third], "order": order}


# -- sealing ------------------------------------------------------------------------------


def test_a_seal_covers_the_settled_events_in_chunks(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection, events=10)
    seals = seal_all(db)
    assert sum(seal.events for seal in seals) == 10
    assert seals[0].seq == 1
    assert seals[0].prev_hash is None
    assert seals[0].xid_from is None
    last = seals[-1]
    assert last.chunks == -(-last.events // CHUNK)
    assert seal_events(EventLog, db, chunk_size=CHUNK) is None  # nothing settled since
    report = verify_audit(EventLog, db, anchors=[seal.anchor for seal in seals])
    assert report.ok, report.problems
    assert (report.seals, report.events, report.unsealed) == (len(seals), 10, 0)
    assert report.last_seal == last.anchor
    assert dict(report.erasures) == {"cascade": 0, "set_null": 0, "retention": 0, "erasure": 0}
    with db.begin() as connection:
        add_session(connection, events=3)
    later = seal_all(db)
    assert later[0].seq == last.seq + 1
    assert later[0].prev_hash == last.seal_hash
    assert later[0].xid_from == last.xid_to
    assert verify_audit(EventLog, db, anchors=[last.anchor, later[-1].anchor]).ok


def test_the_first_seal_covers_events_written_before_the_feed(db: Engine) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=6)
    # Five of them: the first chunk (4 events) ends at an event without an xid.
    tamper(db, "UPDATE event_logs SET xid = NULL WHERE id <> :e", e=ids["events"][1])
    seals = seal_all(db)
    # Seal 1 holds the five (another test's transaction may leave the sixth to seal 2).
    assert (seals[0].seq, seals[0].chunks) == (1, 2)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 6


def test_windows_are_chunked_by_numeric_transaction_ids(db: Engine) -> None:
    """xid 9 comes before 10 and 100 (read as text, 100 would come before 9)."""
    with db.begin() as connection:
        ids = add_session(connection, events=5)
    for event, xid in zip(ids["events"], (100, 10, 9, 11, 10), strict=True):
        tamper(
            db, "UPDATE event_logs SET xid = CAST(:x AS xid8) WHERE id = :e", x=f"{xid}", e=event
        )
    seal_all(db)
    with db.connect() as connection:
        ends = connection.execute(text("SELECT chunk_ends FROM event_log_seals")).scalar_one()
    assert [int.from_bytes(ends[i : i + 8], "big") for i in range(0, len(ends), 24)] == [11, 100]
    report = verify_audit(EventLog, db)
    assert report.ok, report.problems
    assert report.events == 5


def test_concurrent_sealers_do_not_fork_the_chain(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection, events=20)
    results: list[Seal | None] = []

    def run() -> None:
        for _ in range(5):
            results.append(seal_events(EventLog, db, chunk_size=CHUNK))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seal_all(db)
    made = sorted(seal.seq for seal in results if seal is not None)
    assert made == list(range(1, len(made) + 1))
    assert verify_audit(EventLog, db).ok


# -- tampering, as the owner with the triggers off: each is found, with its chunk ----------


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
    seal_all(db)
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
    seal_all(db)
    kinds = {p.kind for p in verify_audit(EventLog, db).problems}
    assert "forged_tombstone" in kinds


def test_an_edit_after_set_null_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    project = sealed["sessions"][2]["project"]
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_projects WHERE id = :p"), {"p": project})
    victim = sealed["sessions"][2]["events"][0]
    tamper(db, "UPDATE event_logs SET tool_name = 'other' WHERE id = :e", e=victim)
    seal_all(db)
    report = verify_audit(EventLog, db)
    assert [p.kind for p in report.problems] == ["tombstone"]
    assert f"event {victim} differs from the row its earliest tombstone" in str(report.problems[0])


def seal_a_cascade(db: Engine, session: dict[str, Any]) -> None:
    """Delete a chat session (its events' cascade tombstones), seal them, verify OK."""
    with db.begin() as connection:
        connection.execute(
            text("DELETE FROM chat_sessions WHERE id = :s"), {"s": session["session"]}
        )
    seal_all(db)
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
    seal_all(db)
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


def test_anchors_given_as_one_string_are_refused(db: Engine) -> None:
    with pytest.raises(ConfigurationError, match="not one string; e") as refused:
        verify_audit(EventLog, db, anchors="12:" + "ab" * 32)
    assert "anchors must be a list of SealAnchor or 'SEQ:HASH' strings" in str(refused.value)


def test_a_broken_link_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)
    seal_all(db)
    tamper(db, "UPDATE event_log_seals SET prev_hash = sha256('x') WHERE seq = 2")
    found = {kind for kind, _, _ in problems(verify_audit(EventLog, db))}
    assert found == {"chain", "seal"}


def last_two_seals(db: Engine, sealed: dict[str, Any]) -> tuple[int, bytes]:
    """Seal once more after the fixture's seal; the newest seal's number and the hash of the
    one before it."""
    with db.begin() as connection:
        add_session(connection, events=2)
    seal_all(db)
    with db.connect() as connection:
        newest, before = connection.execute(
            text(
                "SELECT seq, (SELECT seal_hash FROM event_log_seals b WHERE b.seq = s.seq - 1) "
                "FROM event_log_seals s ORDER BY seq DESC LIMIT 1"
            )
        ).one()
    return newest, bytes(before)


def test_a_renumbered_seal_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    newest, _ = last_two_seals(db, sealed)
    tamper(db, "UPDATE event_log_seals SET seq = seq + 1 WHERE seq = :n", n=newest)
    report = verify_audit(EventLog, db)
    assert problems(report) == [("chain", newest + 1, None), ("seal", newest + 1, None)]
    assert report.problems[0].detail == (
        f"follows seal {newest - 1}, so it should be seal {newest}"
    )


def test_a_seal_whose_window_was_moved_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    newest, _ = last_two_seals(db, sealed)
    with db.connect() as connection:
        start = int(
            connection.execute(
                text("SELECT xid_from::text FROM event_log_seals WHERE seq = :n"), {"n": newest}
            ).scalar_one()
        )
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


def test_a_seal_whose_link_was_removed_is_found(db: Engine, sealed: dict[str, Any]) -> None:
    newest, before = last_two_seals(db, sealed)
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


# -- legitimate erasures verify OK, sealed before or after them ---------------------------

SET_NULL_THEN_CASCADE = [
    ["DELETE FROM user_agents WHERE id = :agent"],
    ["DELETE FROM users WHERE id = :user"],
]
ERASURES: dict[str, tuple[list[list[str]], dict[str, int]]] = {
    "cascade from a chat session": (
        [["DELETE FROM chat_sessions WHERE id = :session"]],
        {"cascade": 5},
    ),
    "cascade from a user": ([["DELETE FROM users WHERE id = :user"]], {"cascade": 10}),
    "set null from a project": (
        [["DELETE FROM user_projects WHERE id = :project"]],
        {"set_null": 10},
    ),
    "set null from an agent, then the user": (
        SET_NULL_THEN_CASCADE,
        {"set_null": 10, "cascade": 10},
    ),
    "declared erasure": (
        [
            [
                "SET LOCAL eventlog.erasure = 'erasure'",
                "DELETE FROM event_logs WHERE session_id = :session",
            ]
        ],
        {"erasure": 5},
    ),
    "declared retention": (
        [
            [
                "SET LOCAL eventlog.erasure = 'retention'",
                "DELETE FROM event_logs WHERE session_id = :session",
            ]
        ],
        {"retention": 5},
    ),
}
WHEN = ["before sealing", "after sealing", "between its steps"]


@pytest.mark.parametrize(
    ("name", "when"),
    [
        (name, when)
        for name, (steps, _) in ERASURES.items()
        for when in WHEN
        if when != "between its steps" or len(steps) > 1
    ],
)
def test_legitimate_erasures_verify_ok(db: Engine, name: str, when: str) -> None:
    steps, counts = ERASURES[name]
    with db.begin() as connection:
        first = add_session(connection, events=5)
        add_session(
            connection, events=5, user=first["user"], project=first["project"], agent=first["agent"]
        )
        add_session(connection, events=3)
    params = {k: first[k] for k in ("session", "user", "project", "agent")}
    if when != "before sealing":
        seal_all(db)
    for step in steps:
        with db.begin() as connection:
            for statement in step:
                connection.execute(text(statement), params)
        if when == "between its steps":
            seal_all(db)
    seal_all(db)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 13
    expected = {"cascade": 0, "set_null": 0, "retention": 0, "erasure": 0} | counts
    assert dict(report.erasures) == expected


def test_sealing_before_or_after_an_erasure_gives_the_same_chunks(
    pg_server: ServerInfo, template: str
) -> None:
    """Two copies of one database: one sealed before the erasure, one after."""
    with audited_engine(pg_server, template) as db:
        with db.begin() as connection:
            ids = add_session(connection, events=6)
        name = f"evl_audit_copy_{uuid.uuid4().hex[:8]}"
        db.dispose()
        with db.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{db.url.database}"'))
        copy = create_engine(db.url.set(database=name))
        try:
            before = seal_all(db)
            for engine in (db, copy):
                with engine.begin() as connection:
                    connection.execute(
                        text("DELETE FROM user_projects WHERE id = :p"), {"p": ids["project"]}
                    )
            after = seal_all(copy)
            roots = []
            for engine in (db, copy):
                with engine.connect() as connection:
                    roots.append(
                        connection.execute(
                            text("SELECT chunk_roots FROM event_log_seals WHERE seq = 1")
                        ).scalar_one()
                    )
            assert before[0].events == after[0].events == 6
            assert roots[0] == roots[1]
        finally:
            copy.dispose()
            with db.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text(f'DROP DATABASE "{name}"'))


# -- the documented format: a verifier written from docs/audit.md alone ------------------


def rfc6962_root(nodes: list[bytes]) -> bytes:
    """RFC 6962's Merkle tree hash by its recursive definition (the package pairs levels)."""
    if not nodes:
        return hashlib.sha256(b"").digest()
    if len(nodes) == 1:
        return nodes[0]
    split = 1 << ((len(nodes) - 1).bit_length() - 1)  # the largest power of two below n
    left, right = rfc6962_root(nodes[:split]), rfc6962_root(nodes[split:])
    return hashlib.sha256(b"\x01" + left + right).digest()


def documented_json(document: dict[str, Any]) -> bytes:
    """One JSON object, UTF-8, no whitespace, keys in code point order."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def utc_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def in_window(xid: int | None, start: int | None, end: int) -> bool:
    """Seal 1 (no start) also holds the events without an xid."""
    if start is None:
        return xid is None or xid < end
    return xid is not None and start <= xid < end


def documented_seals(connection: Connection) -> list[tuple[Any, ...]]:
    """Every seal recomputed from the events and tombstones as docs/audit.md describes."""
    present = leaves(connection)
    xids = {
        row.id: None if row.xid is None else int(row.xid)
        for row in connection.execute(text("SELECT id, xid::text AS xid FROM event_logs"))
    }
    stones = (
        connection.execute(
            text(
                "SELECT seq, kind, event_id, event_created_at, event_xid::text AS event_xid, "
                "session_id, user_id, project_id, agent_id, leaf, erased_at, "
                "erased_xid::text AS erased_xid FROM event_log_erasures ORDER BY seq"
            )
        )
        .mappings()
        .all()
    )
    first_written: dict[uuid.UUID, tuple[int | None, bytes]] = {}
    for stone in stones:  # the earliest tombstone of an event holds its first-written leaf
        event_xid = None if stone["event_xid"] is None else int(stone["event_xid"])
        first_written.setdefault(stone["event_id"], (event_xid, bytes(stone["leaf"])))
    events = {event_id: (xids[event_id], leaf) for event_id, leaf in present.items()}
    events.update(first_written)
    seals = connection.execute(
        text(
            "SELECT seq, xid_from::text AS xid_from, xid_to::text AS xid_to, chunk_size "
            "FROM event_log_seals ORDER BY seq"
        )
    ).all()
    recomputed = []
    previous: bytes | None = None
    for seq, xid_from, xid_to, chunk_size in seals:
        start, end = None if xid_from is None else int(xid_from), int(xid_to)
        window = sorted(
            (
                (xid is not None, xid or 0, event_id, leaf)
                for event_id, (xid, leaf) in events.items()
                if in_window(xid, start, end)
            ),
        )
        chunks = [window[i : i + chunk_size] for i in range(0, len(window), chunk_size)]
        chunk_roots = [rfc6962_root([leaf for *_, leaf in chunk]) for chunk in chunks]
        chunk_ends = b"".join(
            xid.to_bytes(8, "big") + event_id.bytes
            for _, xid, event_id, _ in (c[-1] for c in chunks)
        )
        tombstones = sorted(
            (
                (int(stone["erased_xid"]), stone["seq"], stone)
                for stone in stones
                if in_window(int(stone["erased_xid"]), start, end)
            ),
            key=lambda item: item[:2],
        )
        erasures_root = rfc6962_root(
            [
                hashlib.sha256(
                    b"\x00"
                    + documented_json(
                        {
                            "agent_id": stone["agent_id"],
                            "project_id": stone["project_id"],
                            "session_id": stone["session_id"],
                            "user_id": stone["user_id"],
                            "erased_at": utc_text(stone["erased_at"]),
                            "erased_xid": stone["erased_xid"],
                            "event_created_at": utc_text(stone["event_created_at"]),
                            "event_id": str(stone["event_id"]),
                            "event_xid": stone["event_xid"],
                            "kind": stone["kind"],
                            "leaf": bytes(stone["leaf"]).hex(),
                            "seq": str(stone["seq"]),
                            "v": 1,
                        }
                    )
                ).digest()
                for *_, stone in tombstones
            ]
        )
        events_root = rfc6962_root(chunk_roots)
        seal = {
            "chunk_ends": chunk_ends.hex(),
            "chunk_roots": b"".join(chunk_roots).hex(),
            "chunk_size": chunk_size,
            "erasures": len(tombstones),
            "erasures_root": erasures_root.hex(),
            "events": len(window),
            "events_root": events_root.hex(),
            "prev_hash": None if previous is None else previous.hex(),
            "seq": seq,
            "v": 1,
            "xid_from": xid_from,
            "xid_to": xid_to,
        }
        seal_hash = hashlib.sha256(documented_json(seal)).digest()
        recomputed.append(
            (
                seq,
                len(window),
                len(tombstones),
                b"".join(chunk_roots),
                chunk_ends,
                events_root,
                erasures_root,
                previous,
                seal_hash,
            )
        )
        previous = seal_hash
    return recomputed


def test_a_verifier_written_from_the_docs_agrees_with_every_seal(db: Engine) -> None:
    """An auditor's own code, from the documented formats alone (Merkle roots, chunk ends,
    tombstone and seal documents), recomputes every stored seal byte for byte: events
    sealed before and after erasures of each kind, one erased before it was sealed."""
    with db.begin() as connection:
        first = add_session(connection, events=5)
    seal_all(db)
    with db.begin() as connection:
        second = add_session(
            connection, events=6, user=first["user"], project=first["project"], agent=first["agent"]
        )
    with db.begin() as connection:
        gone = add_session(connection, events=2)
    with db.begin() as connection:  # erased before any seal holds its events
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": gone["session"]})
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_agents WHERE id = :a"), {"a": first["agent"]})
    seal_all(db)
    with db.begin() as connection:  # events set to NULL before, now deleted
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": first["session"]})
    with db.begin() as connection:
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(text("DELETE FROM event_logs WHERE id = :e"), {"e": second["events"][0]})
    seal_all(db)

    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 13
    assert dict(report.erasures) == {"cascade": 7, "set_null": 11, "retention": 0, "erasure": 1}
    with db.connect() as connection:
        stored = connection.execute(
            text(
                "SELECT seq, events, erasures, chunk_roots, chunk_ends, events_root, "
                "erasures_root, prev_hash, seal_hash FROM event_log_seals ORDER BY seq"
            )
        ).all()
        recomputed = documented_seals(connection)
    assert len(stored) >= 3
    assert [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in stored] == (
        recomputed
    )
    assert any(len(row[3]) > 32 for row in stored)  # a seal of more than one chunk


# -- anchors and sealers ------------------------------------------------------------------


def test_seal_anchor_text() -> None:
    anchor = SealAnchor.parse(" 12:" + "AB" * 32 + "\n")
    assert anchor == SealAnchor(12, bytes.fromhex("ab" * 32))
    assert str(anchor) == "12:" + "ab" * 32
    for wrong in ("12", "0:" + "ab" * 32, "x:" + "ab" * 32, "3:abc"):
        with pytest.raises(ConfigurationError, match="is not a seal anchor; write SEQ:HASH"):
            SealAnchor.parse(wrong)


def test_log_and_file_anchors(db: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)
    path = tmp_path / "heads.txt"
    file_anchor = FileAnchor(path)
    log_anchor = LogAnchor("test.seals")

    def both(seal: Seal) -> None:
        log_anchor(seal)
        file_anchor(seal)

    with caplog.at_level(logging.INFO, logger="test.seals"):
        seals = seal_all(db, anchor=both)
    lines = path.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [str(seal.anchor) for seal in seals]
    records = [r for r in caplog.records if r.name == "test.seals"]
    assert [r.getMessage().split()[2] for r in records] == [str(s.anchor) for s in seals]
    assert records[0].getMessage().startswith(f"audit seal {seals[0].anchor} (")


def test_a_failed_anchor_keeps_the_seal(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)

    def broken(seal: Seal) -> None:
        raise OSError("bucket unreachable")

    with pytest.raises(AnchorError) as caught:
        seal_all(db, anchor=broken)
    assert caught.value.seal.seq == 1
    assert "seal 1 is committed, but exporting its head failed: OSError" in str(caught.value)
    seal_all(db)
    assert verify_audit(EventLog, db).seals == 1


def test_the_sealer_seals_and_retries_a_failed_export(
    db: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    exported: list[str] = []
    failures = [OSError("down")]

    def flaky(seal: Seal) -> None:
        if failures:
            raise failures.pop()
        exported.append(str(seal.anchor))

    with db.begin() as connection:
        add_session(connection, events=3)
    with (
        caplog.at_level(logging.INFO, logger="eventlog_persist"),
        AuditSealer(EventLog, db, interval=0.05, chunk_size=CHUNK, anchor=flaky),
    ):
        deadline = time.monotonic() + 30
        while not exported or unsealed(db):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    report = verify_audit(EventLog, db, anchors=exported)
    assert report.ok
    assert report.events == 3
    assert str(report.last_seal) == exported[-1]
    assert any(
        "exporting its head" in r.getMessage() and "failed" in r.getMessage()
        for r in caplog.records
    )


def test_the_async_sealer_seals(pg_server: ServerInfo, db: Engine) -> None:
    # More events than a page of the async reader (5,000): the pages must join seamlessly.
    with db.begin() as connection:
        add_session(connection, events=11_000)
    exported: list[Seal] = []

    async def main() -> None:
        engine = create_async_engine(db.url)
        try:
            async with AsyncAuditSealer(
                EventLog, engine, interval=0.05, chunk_size=CHUNK, anchor=exported.append
            ):
                deadline = time.monotonic() + 30
                while not exported or await asyncio.to_thread(unsealed, db):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        finally:
            await engine.dispose()

    asyncio.run(main())
    report = verify_audit(EventLog, db, anchors=[s.anchor for s in exported])
    assert report.ok, [str(problem) for problem in report.problems[:3]]
    assert report.events == 11_000


def test_an_async_sealer_closed_mid_seal_leaves_no_cursor_open_and_no_seal(db: Engine) -> None:
    """Closing cancels a seal in progress: its transaction rolls back and its server-side
    cursor is closed (an open one fails the test as an unraisable ResourceWarning)."""
    with db.begin() as connection:
        add_session(connection, events=3000)

    async def close_after(delay: float) -> None:
        engine = create_async_engine(db.url)
        try:
            sealer = await AsyncAuditSealer(
                EventLog, engine, interval=0.01, chunk_size=CHUNK
            ).start()
            await asyncio.sleep(delay)
            await sealer.close()
        finally:
            await engine.dispose()

    for delay in (0.0, 0.02, 0.05, 0.1):
        asyncio.run(close_after(delay))
        gc.collect()
        if unsealed(db) == 0:
            break  # a seal finished before the close: the later delays add nothing
    seal_all(db)
    assert verify_audit(EventLog, db).ok


def test_the_sync_and_async_apis_refuse_the_other_flavour(db: Engine) -> None:
    engine = create_async_engine(db.url)
    with pytest.raises(ConfigurationError, match="use AsyncAuditSealer from async code"):
        AuditSealer(EventLog, engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="use AuditSealer in sync code"):
        AsyncAuditSealer(EventLog, db)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="seal_events needs a sync sqlalchemy Engine"):
        seal_events(EventLog, engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="verify_audit needs a sync sqlalchemy Engine"):
        verify_audit(EventLog, engine)  # type: ignore[arg-type]
    for wrong in ({"chunk_size": 0}, {"anchor": "log"}):
        with pytest.raises(ConfigurationError):
            seal_events(EventLog, db, **wrong)
    with pytest.raises(ConfigurationError, match="interval must be a number of seconds"):
        AuditSealer(EventLog, db, interval=0)
    plain = build_host_models().EventLog
    with pytest.raises(ConfigurationError, match="needs the feed's xid column"):
        seal_events(plain, db)


# -- the command line -----------------------------------------------------------------------


def cli(db: Engine, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    url = db.url.render_as_string(hide_password=False)
    status = main(["audit", *args, "--url", url])
    out, err = capsys.readouterr()
    return status, out, err


def test_the_commands_seal_verify_and_show_the_status(
    db: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = cli(db, "status", "--max-age", "60", capsys=capsys)
    assert status == 1
    assert out == "eventlog-persist: no seal yet; 0 events unsealed\n"
    with db.begin() as connection:
        ids = add_session(connection, events=5)
    heads = tmp_path / "heads.txt"
    deadline = time.monotonic() + 30
    while unsealed(db):
        status, out, err = cli(
            db, "seal", "--chunk-size", "2", "--anchor-file", str(heads), capsys=capsys
        )
        assert status == 0
        assert time.monotonic() < deadline
    head = SealAnchor.parse(heads.read_text().splitlines()[-1].split()[0])
    assert out == f"{head}\n"
    assert err.startswith(f"eventlog-persist: sealed seal {head.seq}: ")
    status, out, err = cli(db, "seal", capsys=capsys)
    assert (status, out) == (0, "")
    assert err.startswith("eventlog-persist: nothing to seal")
    status, out, _ = cli(db, "status", "--max-age", "3600", capsys=capsys)
    assert status == 0
    assert out.startswith(f"eventlog-persist: newest seal {head} sealed ")
    assert out.endswith("ago); 0 events unsealed\n")
    status, out, _ = cli(db, "verify", "--anchor", str(head), capsys=capsys)
    assert status == 0
    assert out == (
        f"eventlog-persist: audit OK: {head.seq} seals, 5 events verified, 1 anchors; erasures: "
        f"cascade 0, set_null 0, retention 0, erasure 0; 0 events unsealed; newest seal {head}\n"
    )
    tamper(db, "UPDATE event_logs SET payload = '{}' WHERE id = :e", e=ids["events"][0])
    status, out, _ = cli(db, "verify", "--anchors-from", str(heads), capsys=capsys)
    assert status == 1
    lines = out.splitlines()
    assert lines[0].startswith("eventlog-persist: problem: chunk: seal 1 chunk ")
    assert lines[-1].startswith("eventlog-persist: audit found 1 problems: ")


def test_the_commands_refuse_bad_anchors(
    db: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = cli(db, "verify", "--anchor", "12:abc", capsys=capsys)
    assert status == 2
    assert "'12:abc' is not a seal anchor; write SEQ:HASH" in err
    bad = tmp_path / "heads.txt"
    bad.write_text("1:" + "ab" * 32 + "\nnonsense\n")
    status, _, err = cli(db, "verify", "--anchors-from", str(bad), capsys=capsys)
    assert status == 2
    assert f"{bad}, line 2: 'nonsense' is not a seal anchor" in err
    status, _, err = cli(db, "verify", "--anchors-from", str(tmp_path / "missing"), capsys=capsys)
    assert status == 2
    assert "No such file" in err


def test_verifying_a_table_that_lost_a_foreign_key_names_the_fix(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command reads the table from the database: without the key to chat_sessions a
    cascade tombstone cannot be checked against its parents."""
    with db.begin() as connection:
        name = connection.execute(
            text(
                "SELECT conname FROM pg_constraint WHERE conrelid = 'event_logs'::regclass "
                "AND contype = 'f' AND confrelid = 'chat_sessions'::regclass"
            )
        ).scalar_one()
        connection.execute(text(f'ALTER TABLE event_logs DROP CONSTRAINT "{name}"'))
    status, out, err = cli(db, "verify", capsys=capsys)
    assert (status, out) == (2, "")
    assert (
        "event_logs.session_id has no foreign key, so the tombstones cannot be checked against "
        "their parents; verify with the host's EventLog model"
    ) in err


def test_sealing_and_verifying_need_only_the_documented_privileges(db: Engine) -> None:
    """docs/audit.md, "What the host must do": the sealer's and the verifier's grants."""
    name = f"sealer_{db.url.database}"
    with db.begin() as connection:
        add_session(connection, events=3)
        connection.execute(text(f'CREATE ROLE "{name}"'))
        connection.execute(
            text(
                "GRANT SELECT ON event_logs, event_log_erasures, event_log_seals, chat_sessions, "
                f'users, user_projects, user_agents TO "{name}"'
            )
        )
        connection.execute(text(f'GRANT INSERT ON event_log_seals TO "{name}"'))
    # SET ROLE on each connection, not a login as the role: a server with peer
    # authentication (Debian's) lets no such role in over its socket.
    as_role = create_engine(db.url)

    @sqlalchemy_event.listens_for(as_role, "connect")
    def become(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f'SET ROLE "{name}"')
        dbapi_connection.commit()

    try:
        deadline = time.monotonic() + 30
        while unsealed(as_role):
            seal_events(EventLog, as_role, chunk_size=CHUNK)
            assert time.monotonic() < deadline
        assert verify_audit(EventLog, as_role).ok
    finally:
        as_role.dispose()
        with db.begin() as connection:
            connection.execute(text(f'DROP OWNED BY "{name}"'))
            connection.execute(text(f'DROP ROLE "{name}"'))
