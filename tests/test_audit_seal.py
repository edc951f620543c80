"""Sealing: seals cover the settled events in chunks, every legitimate erasure verifies OK
(sealed before or after it), an auditor's code from the docs agrees with every seal, and the
sealers seal and export their heads. Tampering: tests/test_audit_tamper.py."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auditkit import (
    CHUNK,
    add_session,
    audited_engine,
    audited_template,
    seal_all,
    seal_async,
    tamper,
)
from auditor import documented_seals
from hostmodels import build_host_models
from pgserver import ServerInfo
from sqlalchemy import Engine, create_engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.ext.asyncio import create_async_engine

from eventlog_persist import (
    AsyncAuditSealer,
    AuditSealer,
    FileAnchor,
    LogAnchor,
    Seal,
    SealAnchor,
    seal_events,
    verify_audit,
)
from eventlog_persist._cli import main
from eventlog_persist.exceptions import AnchorError, ConfigurationError

EventLog = build_host_models(feed=True).EventLog


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


# -- sealing ------------------------------------------------------------------------------


def test_a_seal_covers_the_settled_events_in_chunks(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection, events=10)
    seals = seal_all(EventLog, db)
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
    later = seal_all(EventLog, db)
    assert later[0].seq == last.seq + 1
    assert later[0].prev_hash == last.seal_hash
    assert later[0].xid_from == last.xid_to
    assert verify_audit(EventLog, db, anchors=[last.anchor, later[-1].anchor]).ok


def test_the_first_seal_covers_events_written_before_the_feed(db: Engine) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=6)
    # Five of them: the first chunk (4 events) ends at an event without an xid.
    tamper(db, "UPDATE event_logs SET xid = NULL WHERE id <> :e", e=ids["events"][1])
    seals = seal_all(EventLog, db)
    # Seal 1 holds the five (another test's transaction may leave the sixth to seal 2).
    assert (seals[0].seq, seals[0].chunks) == (1, 2)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 6


@pytest.mark.parametrize("when", ["before sealing", "after sealing"])
def test_events_written_before_the_feed_verify_after_their_erasure(db: Engine, when: str) -> None:
    """Their tombstones have no ``event_xid``: the first seal's window holds them too."""
    with db.begin() as connection:
        ids = add_session(connection, events=5)
    tamper(db, "UPDATE event_logs SET xid = NULL")
    if when == "after sealing":
        seal_all(EventLog, db)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": ids["session"]})
    seal_all(EventLog, db)
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.events, dict(report.erasures)["cascade"]) == (5, 5)


def test_a_payload_nested_past_pythons_recursion_limit_is_sealed_and_verified(
    db: Engine,
) -> None:
    """The writers refuse such a payload; another tool may store one. Sealing used to stop
    at it for good (no canonical JSON); now it is sealed like any other event."""
    with db.begin() as connection:
        ids = add_session(connection, events=1)
        deep = '{"b": 1.50, "a": ' * 5000 + "[0.1, 2]" + "}" * 5000
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload) "
                "VALUES (gen_random_uuid(), :s, :u, 'imported', CAST(:deep AS jsonb))"
            ),
            {"deep": deep, "s": ids["session"], "u": ids["user"]},
        )
    seals = seal_all(EventLog, db)
    assert sum(seal.events for seal in seals) == 2
    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert (report.events, report.unsealed) == (2, 0)


def test_windows_are_chunked_by_numeric_transaction_ids(db: Engine) -> None:
    """xid 9 comes before 10 and 100 (read as text, 100 would come before 9)."""
    with db.begin() as connection:
        ids = add_session(connection, events=5)
    for event, xid in zip(ids["events"], (100, 10, 9, 11, 10), strict=True):
        tamper(
            db, "UPDATE event_logs SET xid = CAST(:x AS xid8) WHERE id = :e", x=f"{xid}", e=event
        )
    seal_all(EventLog, db)
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
    seal_all(EventLog, db)
    made = sorted(seal.seq for seal in results if seal is not None)
    assert made == list(range(1, len(made) + 1))
    assert verify_audit(EventLog, db).ok


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
        seal_all(EventLog, db)
    for step in steps:
        with db.begin() as connection:
            for statement in step:
                connection.execute(text(statement), params)
        if when == "between its steps":
            seal_all(EventLog, db)
    seal_all(EventLog, db)
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
            before = seal_all(EventLog, db)
            for engine in (db, copy):
                with engine.begin() as connection:
                    connection.execute(
                        text("DELETE FROM user_projects WHERE id = :p"), {"p": ids["project"]}
                    )
            after = seal_all(EventLog, copy)
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


def test_a_verifier_written_from_the_docs_agrees_with_every_seal(db: Engine) -> None:
    """An auditor's own code, from the documented formats alone (Merkle roots, chunk ends,
    tombstone and seal documents), recomputes every stored seal byte for byte: events
    sealed before and after erasures of each kind, one erased before it was sealed, and
    events written before the feed (no xid), erased and present ones side by side."""
    with db.begin() as connection:
        first = add_session(connection, events=5)
        before_feed = add_session(connection, events=6)
    tamper(db, "UPDATE event_logs SET xid = NULL WHERE session_id = :s", s=before_feed["session"])
    with db.begin() as connection:
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(
            text("DELETE FROM event_logs WHERE id = ANY(:e)"),
            {"e": sorted(before_feed["events"])[::2]},
        )
    seal_all(EventLog, db)
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
    seal_all(EventLog, db)
    with db.begin() as connection:  # events set to NULL before, now deleted
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": first["session"]})
    with db.begin() as connection:
        connection.execute(text("SET LOCAL eventlog.erasure = 'erasure'"))
        connection.execute(text("DELETE FROM event_logs WHERE id = :e"), {"e": second["events"][0]})
    seal_all(EventLog, db)

    report = verify_audit(EventLog, db)
    assert report.ok, [str(p) for p in report.problems]
    assert report.events == 19
    assert dict(report.erasures) == {"cascade": 7, "set_null": 11, "retention": 0, "erasure": 4}
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
    # Built directly, the same rules hold: a number from 1 and a 32-byte hash.
    for seq in (0, -1, True, "12"):
        with pytest.raises(ConfigurationError, match=r"SealAnchor\(seq=.*\) is not valid; the"):
            SealAnchor(seq, b"\x01" * 32)  # type: ignore[arg-type]
    for digest in (b"\x01" * 31, "ab" * 32, None):
        with pytest.raises(ConfigurationError, match=r"pass the seal's 32-byte hash, or read"):
            SealAnchor(1, digest)  # type: ignore[arg-type]


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
        seals = seal_all(EventLog, db, anchor=both)
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
        seal_all(EventLog, db, anchor=broken)
    assert caught.value.seal.seq == 1
    assert "seal 1 is committed, but exporting its head failed: OSError" in str(caught.value)
    seal_all(EventLog, db)
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
    # More events than a page of the async reader (5,000) in both parts of the first window,
    # without an xid (by id) and with one (by xid, id): the pages must join seamlessly.
    with db.begin() as connection:
        add_session(connection, events=12_000)
    tamper(
        db,
        "UPDATE event_logs SET xid = NULL WHERE id IN (SELECT id FROM event_logs ORDER BY id "
        "LIMIT 6000)",
    )
    exported = seal_async(EventLog, db)
    report = verify_audit(EventLog, db, anchors=[s.anchor for s in exported])
    assert report.ok, [str(problem) for problem in report.problems[:3]]
    assert report.events == 12_000


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
    seal_all(EventLog, db)
    assert verify_audit(EventLog, db).ok


class Interrupted(Exception):
    pass


def test_a_verification_interrupted_mid_window_stops_reading_at_once(db: Engine) -> None:
    """Ctrl-C in a long verification: the window's reader stops where it is, rather than
    reading the rest of the window before the interruption gets through."""
    with db.begin() as connection:
        ids = add_session(connection, events=1)
    seal_all(EventLog, db)  # seal 1: one event; seal 2: 100,000, read in one long part
    with db.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload) "
                "SELECT gen_random_uuid(), :s, :u, 'tool_call', jsonb_build_object('n', n) "
                "FROM generate_series(1, 100000) AS n"
            ),
            {"s": ids["session"], "u": ids["user"]},
        )
    seal_all(EventLog, db)
    started = time.perf_counter()
    assert verify_audit(EventLog, db).ok
    whole = time.perf_counter() - started
    interrupted_at: list[float] = []
    done = threading.Event()

    def watch() -> None:
        """Interrupt the main thread (as Ctrl-C would) once a reader has run for 50 ms."""
        seen: dict[int | None, int] = {}
        while not done.wait(0.005):
            for thread in threading.enumerate():
                if thread.name == "eventlog-audit-rows":
                    seen[thread.ident] = seen.get(thread.ident, 0) + 1
                    if seen[thread.ident] >= 10:  # a long read
                        interrupted_at.append(time.perf_counter())
                        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
                        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted

    one = create_engine(db.url, pool_size=1, max_overflow=0)
    previous = signal.signal(signal.SIGUSR1, interrupt)
    watcher = threading.Thread(target=watch)
    try:
        watcher.start()
        with pytest.raises(Interrupted):
            verify_audit(EventLog, one)
        stopped = time.perf_counter() - interrupted_at[0]
        # The pool's only connection, at once in another transaction: nothing of the
        # interrupted read may still run on it (a late CLOSE of its cursor would abort it).
        with one.begin() as connection:
            for _ in range(20):
                connection.execute(text("SELECT pg_sleep(0.002)"))
        assert not any(t.name == "eventlog-audit-rows" for t in threading.enumerate())
        assert stopped < whole / 10, (stopped, whole)
        assert verify_audit(EventLog, one).ok
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)
        one.dispose()


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


def test_a_file_anchor_refuses_what_cannot_be_its_file(tmp_path: Path) -> None:
    for wrong in (None, "", "seals\x00.txt", tmp_path, str(tmp_path)):
        with pytest.raises(ConfigurationError) as caught:
            FileAnchor(wrong)  # type: ignore[arg-type]
        assert str(caught.value) == (
            f"FileAnchor({wrong!r}) is not valid; pass the path of a file (created if "
            "missing) in a directory this process may write"
        )
    FileAnchor(tmp_path / "seals.txt")  # created at the first seal


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
    assert f"--anchors-from {tmp_path / 'missing'}: No such file or directory; give the file" in err
    accented = tmp_path / "têtes.txt"
    accented.write_text("# têtes\n1:" + "ab" * 32 + "\n")
    status, _, err = cli(db, "verify", "--anchors-from", str(accented), capsys=capsys)
    assert status == 2  # 1 would mean a problem was found
    assert f"{accented} is not an anchor file: it is not ASCII" in err


@pytest.mark.parametrize("command", [["seal"], ["verify"], ["status", "--max-age", "60"]])
def test_the_commands_on_a_database_without_the_audits_tables_name_the_migration(
    db: Engine, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """PostgreSQL's message has LINE and caret lines: the one-line refusal lost its fix
    (status printed the raw error and asked for SELECT privileges)."""
    with db.begin() as connection:
        connection.execute(text("DROP TABLE event_log_seals"))
    status, out, err = cli(db, *command, capsys=capsys)
    assert status == 2
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith("eventlog-persist: error: the audit's schema is missing from this ")
    assert 'relation "event_log_seals" does not exist); run its migration' in line
    assert line.endswith("(linear mode: 'eventlog-persist linear-revision --feed --audit')")


def test_a_max_age_past_ten_years_is_refused_naming_the_bound(
    db: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = cli(db, "status", "--max-age", "400000000", capsys=capsys)
    assert status == 2
    assert "'400000000' is not a number of seconds above 0 and at most 315360000 (10" in err


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
