"""Operations: `feed_status` (pending exactly what a fetch delivers, lease, what holds the feed
back) and ``eventlog-persist feed list|status|register|reset``."""

from __future__ import annotations

import asyncio
import shlex
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    ConsumerStatus,
    EventFeed,
    afeed_status,
    feed_status,
    new_event,
    write_events,
)
from eventlog_persist._cli import main
from eventlog_persist.exceptions import (
    ConfigurationError,
    ConsumerNotFoundError,
    LeaseLostError,
    ValidationError,
)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


@pytest.fixture
def url(database_url: URL) -> str:
    return database_url.render_as_string(hide_password=False)


def write(
    engine: Engine, models: HostModels, keys: tuple[Any, Any], n: int, *, per_tx: int = 10
) -> list[uuid.UUID]:
    user_id, session_id = keys
    batch = [
        new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
        for i in range(n)
    ]
    write_events(models.EventLog, engine, batch, batch_size=per_tx)
    return [event.id for event in batch]


def insert_pre_feed(engine: Engine, keys: tuple[Any, Any], n: int, *, age: timedelta) -> None:
    """Rows as stored before the feed: no transaction id."""
    user_id, session_id = keys
    with engine.begin() as connection:
        for _ in range(n):
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at, "
                    "xid) VALUES (:id, :s, :u, 'old', :t, NULL)"
                ),
                {"id": uuid.uuid4(), "s": session_id, "u": user_id, "t": datetime.now(UTC) - age},
            )


def drain(feed: EventFeed[Any], *, limit: int = 500) -> list[uuid.UUID]:
    """Fetch and commit until a batch is empty; the ids delivered."""
    found: list[uuid.UUID] = []
    while True:
        batch = feed.fetch(limit=limit)
        feed.commit(batch)
        if not batch.events:
            return found
        found += [event.id for event in batch.events]


def one(models: HostModels, engine: Engine, name: str) -> ConsumerStatus:
    (status,) = feed_status(models.EventLog, engine, consumer=name)
    return status


@pytest.fixture
def long_transaction(host_engine: Engine) -> Iterator[Any]:
    """A connection in an open transaction that holds a transaction id, named 'long-writer'."""
    connection = host_engine.connect()
    try:
        connection.execute(text("SET application_name = 'long-writer'"))
        connection.commit()
        yield connection
    finally:
        connection.rollback()
        connection.close()


# -- pending == what a fetch delivers ----------------------------------------------------------


def test_pending_is_what_fetching_delivers(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    """Pre-feed rows, a batch left half read, a long transaction: at each step, pending is
    exactly the count a fetch-all delivers next."""
    insert_pre_feed(host_engine, keys, 3, age=timedelta(hours=2))
    write(host_engine, host_models, keys, 25)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="warehouse", owner="w1")
    feed.register(start="earliest")
    status = one(host_models, host_engine, "warehouse")
    assert (status.pending, status.delivered, status.lag, status.committed_at) == (
        28,
        0,
        None,
        None,
    )
    assert status.oldest_pending_age is not None
    assert timedelta(hours=2) <= status.oldest_pending_age < timedelta(hours=2, minutes=5)
    assert (status.consumer, status.part, status.parts) == ("warehouse", 0, 1)

    # Part of the pre-feed rows, then a batch left in progress (its target kept).
    feed.commit(feed.fetch(limit=2))
    assert one(host_models, host_engine, "warehouse").pending == 26
    feed.commit(feed.fetch(limit=7))
    with host_engine.connect() as connection:
        in_progress = connection.execute(
            text("SELECT snapshot_target IS NOT NULL FROM event_log_consumers")
        ).scalar_one()
    assert in_progress
    status = one(host_models, host_engine, "warehouse")
    assert status.pending == 19
    assert status.delivered == 9
    assert status.lag is not None
    assert status.lag < timedelta(minutes=1)
    assert status.oldest_pending_age is not None
    assert status.oldest_pending_age < timedelta(minutes=5)  # the pre-feed rows are done
    assert len(drain(feed, limit=4)) == 19
    status = one(host_models, host_engine, "warehouse")
    assert (status.pending, status.held, status.oldest_pending_age) == (0, 0, None)
    assert status.delivered == 28

    # A long transaction's events are not pending until it commits, then they are.
    long = host_engine.connect()
    try:
        user_id, session_id = keys
        long.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type) "
                "SELECT gen_random_uuid(), :s, :u, 'slow' FROM generate_series(1, 5)"
            ),
            {"s": session_id, "u": user_id},
        )
        write(host_engine, host_models, keys, 12, per_tx=4)
        status = one(host_models, host_engine, "warehouse")
        assert status.pending == 12
        assert status.held == 12  # committed after the long transaction began
        feed.commit(feed.fetch(limit=5))  # a batch that stops inside a transaction
        assert one(host_models, host_engine, "warehouse").pending == 7
        long.commit()
        # (held: other tests' transactions on the server may hold the horizon too)
        assert one(host_models, host_engine, "warehouse").pending == 12
        assert len(drain(feed, limit=3)) == 12

        # A transaction the last finished batch saw in flight: pending once it commits.
        long.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type) "
                "SELECT gen_random_uuid(), :s, :u, 'slow' FROM generate_series(1, 4)"
            ),
            {"s": session_id, "u": user_id},
        )
        write(host_engine, host_models, keys, 2)
        assert one(host_models, host_engine, "warehouse").pending == 2
        assert len(drain(feed)) == 2
        assert one(host_models, host_engine, "warehouse").pending == 0
        long.commit()
        assert one(host_models, host_engine, "warehouse").pending == 4
        assert len(drain(feed, limit=3)) == 4
    finally:
        long.close()
    status = one(host_models, host_engine, "warehouse")
    assert (status.pending, status.delivered) == (0, 28 + 5 + 12 + 2 + 4)


def test_pending_from_latest_and_from_a_time(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    insert_pre_feed(host_engine, keys, 4, age=timedelta(days=3))
    write(host_engine, host_models, keys, 6)
    latest = EventFeed(host_models.EventLog, host_engine, consumer="latest")
    latest.register(start="latest")
    since = EventFeed(host_models.EventLog, host_engine, consumer="since")
    since.register(start=datetime.now(UTC) - timedelta(days=4))
    write(host_engine, host_models, keys, 3)
    statuses = {s.consumer: s for s in feed_status(host_models.EventLog, host_engine)}
    assert list(statuses) == ["latest", "since"]
    assert statuses["latest"].pending == 3 == len(drain(latest))
    assert statuses["since"].pending == 13 == len(drain(since))


# -- lease and what holds the feed back ------------------------------------------------------


def test_status_names_the_backend_that_holds_the_feed_back(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    long_transaction: Any,
    url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    feed = EventFeed(
        host_models.EventLog, host_engine, consumer="ui", owner="worker-1", mode="horizon"
    )
    feed.register(start="latest")
    pid = long_transaction.execute(text("SELECT pg_backend_pid()")).scalar_one()
    long_transaction.execute(text("SELECT pg_current_xact_id()"))  # the transaction takes an id
    database = long_transaction.execute(text("SELECT current_database()")).scalar_one()
    write(host_engine, host_models, keys, 4)

    # The horizon is the server's: on a server shared with other tests, another short
    # transaction may be the oldest for a moment; ours is once those end.
    deadline = time.monotonic() + 10
    while True:
        status = one(host_models, host_engine, "ui")
        blockers = [b for b in status.holding_back if b.pid == pid]
        if blockers or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (status.pending, status.held) == (4, 4)
    assert len(blockers) == 1, status.holding_back
    (blocker,) = blockers
    assert blocker.database == database
    assert blocker.application_name == "long-writer"
    assert blocker.state == "idle in transaction"
    assert blocker.transaction_age is not None
    assert blocker.transaction_age >= timedelta(0)
    assert blocker.gid is None
    assert not hasattr(blocker, "query")
    assert feed.fetch().events == ()  # indeed: the horizon feed waits for it
    held_line = (
        f"held back by pid {pid}: database {database}, application long-writer, state idle "
        "in transaction, transaction open "
    )
    deadline = time.monotonic() + 10
    while True:  # as above: another test's transaction may be the oldest for a moment
        assert main(["feed", "status", "--consumer", "ui", "--url", url]) == 0
        lines = capsys.readouterr().out.splitlines()
        if held_line in "\n".join(lines[2:]) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines[1].split()[:4] == ["ui", "0/1", "4", "4"]
    assert held_line in "\n".join(lines[2:])
    status = one(host_models, host_engine, "ui")
    assert (status.owner, status.lease_live, status.generation) == ("worker-1", True, 1)
    assert status.lease_until is not None

    long_transaction.rollback()
    status = one(host_models, host_engine, "ui")
    assert status.pending == 4
    assert pid not in [b.pid for b in status.holding_back]
    feed.release()
    status = one(host_models, host_engine, "ui")
    assert (status.owner, status.lease_live, status.lease_until) == (None, False, None)


def test_async_twin_and_refusals(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], database_url: URL
) -> None:
    EventFeed(host_models.EventLog, host_engine, consumer="a").register()
    write(host_engine, host_models, keys, 5)
    engine = create_async_engine(database_url.set(drivername="postgresql+psycopg"))

    async def read() -> list[ConsumerStatus]:
        try:
            return await afeed_status(host_models.EventLog, engine)
        finally:
            await engine.dispose()

    (status,) = asyncio.run(read())
    assert (status.consumer, status.pending) == ("a", 5)
    with pytest.raises(ConsumerNotFoundError, match="'nobody' is not registered"):
        feed_status(host_models.EventLog, host_engine, consumer="nobody")
    with pytest.raises(ValidationError, match="consumer must be a non-empty name"):
        feed_status(host_models.EventLog, host_engine, consumer="")
    with pytest.raises(ConfigurationError, match="opted in"):
        feed_status(build_host_models().EventLog, host_engine)
    with pytest.raises(ConfigurationError, match="afeed_status"):
        feed_status(host_models.EventLog, engine)  # type: ignore[arg-type]


# -- the command line ------------------------------------------------------------------------


def test_feed_commands(
    url: str,
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    write(host_engine, host_models, keys, 6)
    assert main(["feed", "register", "--consumer", "warehouse", "--start", "earliest"]) == 0
    assert capsys.readouterr().out == (
        "eventlog-persist: registered consumer 'warehouse' from earliest\n"
    )
    assert main(["feed", "register", "--consumer", "warehouse", "--url", url]) == 0
    assert "is registered already; its checkpoint is kept" in capsys.readouterr().out
    assert main(["feed", "register", "--consumer", "ui", "--start", "latest"]) == 0
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert main(["feed", "register", "--consumer", "audit", "--start", since]) == 0
    capsys.readouterr()

    assert main(["feed", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed[:-1]] == ["audit", "ui", "warehouse"]
    assert "part 0/1" in listed[0]
    assert "lease released" in listed[0]
    assert listed[-1] == "eventlog-persist: 3 consumers"

    assert main(["feed", "status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "CONSUMER", "PART", "PENDING", "HELD", "OLDEST", "LAG", "DELIVERED", "LEASE"
    ]  # fmt: skip
    cells = {line.split()[0]: line.split() for line in table[1:]}
    assert cells["warehouse"][1:4] == ["0/1", "6", "0"]
    assert cells["ui"][2] == "0"
    assert cells["audit"][2] == "6"

    # reset: refused while a worker holds the lease, unless --force; the worker is fenced.
    feed = EventFeed(host_models.EventLog, host_engine, consumer="warehouse", owner="w1")
    batch = feed.fetch()
    assert len(batch.events) == 6
    assert main(["feed", "reset", "--consumer", "warehouse", "--to", "latest"]) == 2
    error = capsys.readouterr().err
    assert "consumer 'warehouse' is leased to 'w1' until" in error
    assert "or pass --force" in error
    assert main(["feed", "reset", "--consumer", "warehouse", "--to", "latest", "--force"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("eventlog-persist: reset consumer 'warehouse' (1 parts) to latest")
    assert "the lease of 'w1' was broken" in out
    with pytest.raises(LeaseLostError):
        feed.commit(batch)
    assert drain(feed) == []
    assert main(["feed", "reset", "--consumer", "warehouse", "--to", "earliest"]) == 2
    assert "leased to 'w1'" in capsys.readouterr().err
    feed.release()
    assert main(["feed", "reset", "--consumer", "warehouse", "--to", "earliest"]) == 0
    capsys.readouterr()
    assert main(["feed", "status", "--consumer", "warehouse"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "6"
    assert len(drain(feed)) == 6

    # To a time: the events created from then on, pending exactly as a fetch delivers them.
    feed.commit(feed.fetch(limit=2))  # a batch left in progress, then reset under it
    feed.release()
    cutoff = datetime.now(UTC)
    write(host_engine, host_models, keys, 5)
    assert main(["feed", "reset", "--consumer", "warehouse", "--to", cutoff.isoformat()]) == 0
    assert capsys.readouterr().out.endswith(f"to {cutoff.isoformat()}\n")
    assert one(host_models, host_engine, "warehouse").pending == 5
    assert len(drain(feed, limit=2)) == 5

    # In parts; a registered consumer keeps its parts, and says which.
    assert main(["feed", "register", "--consumer", "split", "--parts", "4"]) == 0
    assert capsys.readouterr().out == (
        "eventlog-persist: registered consumer 'split' in 4 parts from earliest\n"
    )
    first = EventFeed(host_models.EventLog, host_engine, consumer="split", parts=4, owner="w1")
    assert first.fetch().part == 0
    assert main(["feed", "register", "--consumer", "split", "--parts", "4"]) == 0
    assert "is registered already" in capsys.readouterr().out
    assert main(["feed", "register", "--consumer", "split"]) == 2
    error = capsys.readouterr().err
    assert "is registered with parts=4, this feed has parts=1" in error
    assert "or eventlog-persist feed unregister --consumer split) and register it" in error
    assert "start it at or before its oldest pending event" in error

    # unregister: refused while a worker holds a lease, unless --force; then register anew.
    worker = EventFeed(host_models.EventLog, host_engine, consumer="split", parts=4, owner="w2")
    held = worker.fetch()
    assert main(["feed", "unregister", "--consumer", "split"]) == 2
    error = capsys.readouterr().err
    assert "consumer 'split' is leased to 'w1' until" in error
    assert "and unregister again, or pass --force: its next commit then raises " in error
    assert "raises ConsumerNotFoundError and moves nothing" in error
    assert main(["feed", "list"]) == 0
    assert capsys.readouterr().out.count("split  part") == 4
    assert main(["feed", "unregister", "--consumer", "split", "--force"]) == 0
    assert capsys.readouterr().out == (
        "eventlog-persist: unregistered consumer 'split' (4 parts); the leases of 'w1', 'w2' "
        "were broken (their next commits raise ConsumerNotFoundError); register it again to "
        "start "
        "over: "
        "eventlog-persist feed register --consumer split --start earliest|latest|TIME "
        "[--parts N]\n"
    )
    with pytest.raises(ConsumerNotFoundError):
        worker.commit(held)
    with pytest.raises(ConsumerNotFoundError):
        worker.fetch()
    assert main(["feed", "unregister", "--consumer", "split"]) == 2
    assert "consumer 'split' is not registered" in capsys.readouterr().err
    assert main(["feed", "register", "--consumer", "split", "--parts", "2"]) == 0
    assert "registered consumer 'split' in 2 parts" in capsys.readouterr().out
    assert main(["feed", "unregister", "--consumer", "split"]) == 0  # no lease: no --force
    assert capsys.readouterr().out.startswith(
        "eventlog-persist: unregistered consumer 'split' (2 parts); register it again"
    )
    assert main(["feed", "register", "--consumer", "it's", "--start", "latest"]) == 0
    capsys.readouterr()
    assert main(["feed", "unregister", "--consumer", "it's"]) == 0
    assert "--consumer 'it'\"'\"'s' --start" in capsys.readouterr().out
    # A name that begins with '-': the command given must still parse (argparse would read
    # "--consumer -nightly" as an option).
    assert main(["feed", "register", "--consumer=-nightly", "--parts", "2"]) == 0
    assert main(["feed", "register", "--consumer=-nightly"]) == 2
    given = capsys.readouterr().err.split("or eventlog-persist ")[1].split(")")[0]
    assert given == "feed unregister --consumer=-nightly"
    assert main([*shlex.split(given)]) == 0
    assert "unregistered consumer '-nightly' (2 parts)" in capsys.readouterr().out
    for bad in ("0", "1025", "two"):
        assert main(["feed", "register", "--consumer", "x", "--parts", bad]) == 2
        assert f"{bad!r} is not a number of parts from 1 to 1024" in capsys.readouterr().err

    # Refusals name the bad value and the fix.
    assert main(["feed", "register", "--consumer", "x", "--start", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert "'yesterday' is not 'earliest', 'latest' or an ISO datetime" in err
    assert main(["feed", "reset", "--consumer", "x", "--to", "2026-01-01T00:00:00"]) == 2
    assert "has no UTC offset; add one, e.g. 2026-01-01T00:00:00+00:00" in capsys.readouterr().err
    assert main(["feed", "reset", "--consumer", "x", "--to", "2026-01-01"]) == 2
    assert "has no UTC offset; add one, e.g. 2026-01-01T00:00:00+00:00" in capsys.readouterr().err
    assert main(["feed", "reset", "--consumer", "nobody", "--to", "latest"]) == 2
    error = capsys.readouterr().err
    assert "consumer 'nobody' is not registered" in error
    assert "leave the name out" not in error  # reset needs one
    assert "'eventlog-persist feed list' lists the registered ones" in error
    assert main(["feed", "status", "--consumer", "nobody"]) == 2
    error = capsys.readouterr().err
    assert "consumer 'nobody' is not registered" in error
    assert "or leave the name out to see every consumer" in error


def test_feed_commands_need_the_feed_schema(
    url: str, database_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    build_host_models().Base.metadata.create_all(engine)
    assert main(["feed", "list", "--url", url]) == 2
    assert "event_logs has no xid column: the feed's migration (evlfeed_0001)" in (
        capsys.readouterr().err
    )
    assert main(["feed", "status", "--url", url, "--schema", "nope"]) == 2
    assert "there is no event_logs table in schema 'nope'" in capsys.readouterr().err
    bad = database_url.set(database="no_such_database").render_as_string(hide_password=False)
    assert main(["feed", "list", "--url", bad]) == 2
    error = capsys.readouterr().err
    assert error.startswith("eventlog-persist: error: feed list failed: OperationalError: ")
    assert 'database "no_such_database" does not exist' in error
    assert error.rstrip().endswith(
        "check --url, and that the role may SELECT from event_log_consumers"
    )


def test_each_part_counts_the_events_of_its_own_sessions(
    host_engine: Engine, host_models: HostModels
) -> None:
    """A consumer in parts: each part's pending is what that part's worker fetches."""
    model = host_models.EventLog
    with Session(host_engine) as session:
        user = host_models.User(id=host_models.new_key())
        session.add(user)
        session.flush()
        chats = [
            host_models.ChatSession(id=host_models.new_key(), user_id=user.id) for _ in range(8)
        ]
        session.add_all(chats)
        session.commit()
        sessions = [chat.id for chat in chats]
        user_id = user.id
    feeds = [
        EventFeed(model, host_engine, consumer="parted", parts=3, part=part, owner=f"w{part}")
        for part in range(3)
    ]
    feeds[0].register(start="earliest")
    events = [
        new_event(session_id=sessions[i % 8], user_id=user_id, event_type="chat")
        for i in range(120)
    ]
    write_events(model, host_engine, events)
    statuses = feed_status(model, host_engine, consumer="parted")
    assert [(status.part, status.parts) for status in statuses] == [(0, 3), (1, 3), (2, 3)]
    assert sum(status.pending for status in statuses) == 120
    for feed, status in zip(feeds, statuses, strict=True):
        assert len(drain(feed)) == status.pending
    assert [status.pending for status in feed_status(model, host_engine, consumer="parted")] == [
        0,
        0,
        0,
    ]
