"""Retention and the feed: a consumer whose checkpoint is behind events that `purge_events` or
`drop_partitions` removed fails its fetches (`FeedDataLostError`), never skipping silently;
one that was delivered them, or lost rows to the host's own deletes, does not."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, create_partitions, seed
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from test_partitions import comment_and_rows, drop_losing_its_connection, read_from
from test_retention import run_main

from eventlog_persist import (
    AsyncEventFeed,
    EventFeed,
    PurgeResult,
    afeed_status,
    drop_partitions,
    feed_status,
    new_event,
    new_event_id,
    purge_events,
    write_events,
)
from eventlog_persist._cli import main
from eventlog_persist.exceptions import FeedDataLostError, FeedError

NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=1)
OLD = NOW - timedelta(days=2)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


def write(
    engine: Engine,
    models: HostModels,
    keys: tuple[Any, Any],
    times: list[datetime],
    *,
    per_tx: int = 10,
) -> list[uuid.UUID]:
    """Store one event per time, ``per_tx`` per transaction, ids increasing; return the ids."""
    user_id, session_id = keys
    batch = [
        new_event(
            id=new_event_id(),
            session_id=session_id,
            user_id=user_id,
            event_type="chat",
            created_at=moment,
        )
        for moment in times
    ]
    write_events(models.EventLog, engine, batch, batch_size=per_tx)
    return [item.id for item in batch]


def insert_pre_feed(engine: Engine, keys: tuple[Any, Any], times: list[datetime]) -> None:
    """Rows as stored before the feed: no transaction id."""
    user_id, session_id = keys
    with engine.begin() as connection:
        for moment in times:
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at, "
                    "xid) VALUES (:id, :s, :u, 'old', :t, NULL)"
                ),
                {"id": new_event_id(), "s": session_id, "u": user_id, "t": moment},
            )


def drain(feed: EventFeed[Any], *, limit: int = 500) -> list[uuid.UUID]:
    found: list[uuid.UUID] = []
    while True:
        batch = feed.fetch(limit=limit)
        feed.commit(batch)
        if not batch.events:
            return found
        found += [item.id for item in batch.events]


def marks(engine: Engine, name: str) -> list[tuple[Any, ...]]:
    """Each part's ``(part, lost_events, lost_before, lost_by)``, and its lease owner."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT part, lost_events, lost_before, lost_by, lost_at IS NOT NULL, owner "
                "FROM event_log_consumers WHERE consumer = :c ORDER BY part"
            ),
            {"c": name},
        ).all()
    return [tuple(row) for row in rows]


# -- purge_events ------------------------------------------------------------------------------


def test_a_consumer_behind_a_purge_fails_every_fetch_naming_the_fix(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = host_models.EventLog
    behind = EventFeed(model, host_engine, consumer="behind", owner="w1")
    ahead = EventFeed(model, host_engine, consumer="ahead")
    behind.register(start="earliest")
    ahead.register(start="earliest")
    spaced = EventFeed(model, host_engine, consumer="web hooks")
    spaced.register(start="earliest")
    old = write(host_engine, host_models, keys, [OLD] * 12, per_tx=5)
    new = write(host_engine, host_models, keys, [NOW] * 3)
    assert drain(ahead) == old + new
    EventFeed(model, host_engine, consumer="later").register(start="latest")

    with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
        result = purge_events(model, host_engine, older_than=CUTOFF, batch_size=5)
    assert result == PurgeResult(deleted=12, batches=3)
    assert "feed consumers 'behind', 'web hooks' had not been delivered" in caplog.text

    (part,) = marks(host_engine, "behind")
    assert part[:5] == (0, 12, CUTOFF, "purge_events", True)
    for _ in range(2):  # every fetch, not only the first
        with pytest.raises(FeedDataLostError) as raised:
            behind.fetch()
    error = raised.value
    assert isinstance(error, FeedError)
    assert (error.consumer, error.part, error.lost_events) == ("behind", 0, 12)
    assert (error.lost_before, error.lost_by) == (CUTOFF, "purge_events")
    message = str(error)
    assert message.startswith("consumer 'behind': retention (purge_events, first at ")
    assert f"removed 12 events created before {CUTOFF.isoformat()}" in message
    assert "does not skip them silently" in message
    assert f": eventlog-persist feed reset --consumer behind --to {CUTOFF.isoformat()} (" in message
    assert "unregister() and register(start=...)" in message
    assert marks(host_engine, "behind")[0][5] is None  # the failed fetch took no lease
    with pytest.raises(FeedDataLostError) as raised:
        spaced.fetch()
    assert f"feed reset --consumer 'web hooks' --to {CUTOFF.isoformat()} (" in str(raised.value)

    # Delivered everything that went, or registered after: not marked, and goes on.
    assert marks(host_engine, "ahead")[0][1] is None
    assert marks(host_engine, "later")[0][1] is None
    later = write(host_engine, host_models, keys, [NOW] * 2)
    assert drain(ahead) == later

    # A second purge adds up; the cutoff is the latest.
    write(host_engine, host_models, keys, [OLD] * 2)
    purge_events(model, host_engine, older_than=CUTOFF + timedelta(seconds=1))
    assert marks(host_engine, "behind")[0][1:3] == (14, CUTOFF + timedelta(seconds=1))


def test_the_batch_in_progress_counts_as_delivered_up_to_its_last_event(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    """One transaction of 10 events, 5 old then 5 new (by id); a batch delivered the first
    ``limit`` of them and is still in progress (its target and last event in the checkpoint)."""
    model = host_models.EventLog
    exact = EventFeed(model, host_engine, consumer="exact")
    short = EventFeed(model, host_engine, consumer="short")
    exact.register()
    short.register()
    ids = write(host_engine, host_models, keys, [OLD] * 5 + [NOW] * 5)
    exact.commit(exact.fetch(limit=5))  # the 5 old ones
    short.commit(short.fetch(limit=4))  # 4 of them
    with host_engine.connect() as connection:
        assert (
            connection.execute(
                text("SELECT count(*) FROM event_log_consumers WHERE snapshot_target IS NOT NULL")
            ).scalar_one()
            == 2
        )
    assert purge_events(model, host_engine, older_than=CUTOFF).deleted == 5

    assert marks(host_engine, "exact")[0][1] is None
    assert drain(exact) == ids[5:]
    assert marks(host_engine, "short")[0][1] == 1
    with pytest.raises(FeedDataLostError, match="removed 1 events"):
        short.fetch()


def test_a_consumer_in_parts_marks_only_the_parts_of_the_purged_sessions(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, _ = keys
    sessions: dict[int, Any] = {}
    with Session(host_engine) as session:
        while len(sessions) < 2:
            chat = host_models.ChatSession(id=host_models.new_key(), user_id=user_id)
            session.add(chat)
            session.flush()
            part = session.execute(
                text("SELECT ((hashtextextended(CAST(:s AS text), 0) % 2) + 2) % 2"),
                {"s": str(chat.id)},
            ).scalar_one()
            sessions.setdefault(int(part), chat.id)
        session.commit()
    model = host_models.EventLog
    feed = EventFeed(model, host_engine, consumer="split", parts=2, part=1)
    feed.register()
    holder = EventFeed(model, host_engine, consumer="split", parts=2, part=0, owner="zero")
    assert holder.fetch().part == 0  # it holds part 0's lease when retention marks it
    write(host_engine, host_models, (user_id, sessions[0]), [OLD] * 3)
    kept = write(host_engine, host_models, (user_id, sessions[1]), [NOW] * 2)
    purge_events(model, host_engine, older_than=CUTOFF)

    assert [row[:4] for row in marks(host_engine, "split")] == [
        (0, 3, CUTOFF, "purge_events"),
        (1, None, None, None),
    ]
    assert drain(feed) == kept
    with pytest.raises(FeedDataLostError, match=r"^consumer 'split' part 0: .* removed 3 events"):
        holder.fetch()
    feed.release()
    # A worker of no fixed part takes a part that can go on rather than the lost one, even
    # the lost one it holds; one that finds only the lost part free is told.
    unpinned = EventFeed(model, host_engine, consumer="split", parts=2, owner="zero")
    assert unpinned.fetch().part == 1
    unpinned.release()
    feed.fetch()  # part 1 leased again: only the lost part is free
    with pytest.raises(FeedDataLostError, match="part 0"):
        EventFeed(model, host_engine, consumer="split", parts=2, owner="late").fetch()


def test_pre_feed_rows_count_while_the_backfill_is_pending(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    model = host_models.EventLog
    insert_pre_feed(host_engine, keys, [OLD - timedelta(hours=2), OLD, OLD])
    pending = EventFeed(model, host_engine, consumer="pending")
    since = EventFeed(model, host_engine, consumer="since")
    done = EventFeed(model, host_engine, consumer="done")
    pending.register(start="earliest")
    since.register(start=OLD - timedelta(hours=1))  # the two newer ones only
    done.register(start="earliest")
    pending.commit(pending.fetch(limit=1))  # the oldest, by id: the backfill goes on
    since.commit(since.fetch(limit=1))
    assert len(drain(done)) == 3
    purge_events(model, host_engine, older_than=CUTOFF)

    assert marks(host_engine, "pending")[0][1] == 2
    assert marks(host_engine, "since")[0][1] == 1
    assert marks(host_engine, "done")[0][1] is None
    with pytest.raises(FeedDataLostError, match="removed 2 events"):
        pending.fetch()


def test_the_hosts_own_deletes_are_not_marked(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    """A session deleted with its events (ON DELETE CASCADE): they are simply not there."""
    user_id, session_id = keys
    model = host_models.EventLog
    feed = EventFeed(model, host_engine, consumer="c")
    feed.register()
    write(host_engine, host_models, keys, [NOW] * 4)
    with Session(host_engine) as session:
        other = host_models.ChatSession(id=host_models.new_key(), user_id=user_id)
        session.add(other)
        session.commit()
        other_id = other.id
    kept = write(host_engine, host_models, (user_id, other_id), [NOW] * 2)
    with Session(host_engine) as session:
        session.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": session_id})
        session.commit()
    assert marks(host_engine, "c")[0][1] is None
    assert drain(feed) == kept


def waits_on(engine: Engine, event: str, *, seconds: float = 10.0) -> bool:
    """Whether a backend of this test's database comes to wait on a lock of this kind
    (``pg_stat_activity.wait_event``: ``advisory``, ``transactionid``) within ``seconds``."""
    deadline = time.monotonic() + seconds
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            found = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = :event"
                ),
                {"event": event},
            ).scalar_one()
            connection.commit()  # the activity is read once per transaction
            if found:
                return True
            time.sleep(0.02)
    return False


@contextmanager
def purge_waiting(
    engine: Engine, feed: EventFeed[Any], purge: Callable[[], PurgeResult]
) -> Iterator[tuple[Connection, list[PurgeResult]]]:
    """A worker commits its fetched batch in the host's transaction, left open (the caller
    commits or rolls it back), and ``purge`` runs in a thread until its batch waits for the
    consumer's row: its DELETE ran, it marks next. Yields the host's connection and the
    purge's result, there once the block is left."""
    batch = feed.fetch()
    results: list[PurgeResult] = []
    with engine.connect() as host:
        host.begin()
        feed.commit(batch, connection=host)  # the consumer's row stays locked
        thread = threading.Thread(target=lambda: results.append(purge()))
        thread.start()
        try:
            assert waits_on(engine, "transactionid")
            yield host, results
        finally:
            if host.in_transaction():
                host.rollback()
            thread.join(timeout=30)


def test_a_checkpoint_moved_while_the_purge_waited_is_judged_as_it_is_then(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    """A worker commits its batch in the host's transaction while a purge batch waits for
    the consumer's row: the purge judges the part by the checkpoint it finds committed."""
    model = host_models.EventLog
    feed = EventFeed(model, host_engine, consumer="c")
    feed.register()

    for outcome in ("commit", "rollback"):
        write(host_engine, host_models, keys, [OLD] * 3)
        purge = functools.partial(purge_events, model, host_engine, older_than=CUTOFF)
        with purge_waiting(host_engine, feed, purge) as (host, results):
            assert not results  # waiting for the consumer's row
            host.commit() if outcome == "commit" else host.rollback()
        assert results[0].deleted == 3
        if outcome == "commit":
            assert marks(host_engine, "c")[0][1] is None
        else:
            assert marks(host_engine, "c")[0][1] == 3


@pytest.mark.parametrize("claim", ["register", "reset"])
def test_a_claim_on_stored_events_waits_for_the_purge_batch_in_progress(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    database_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    claim: str,
) -> None:
    """A consumer registered (or reset) from the earliest event while a purge batch runs
    would claim events the batch then removes, and no one would tell it: the batch marks
    the parts it sees before its DELETE. The claim waits for the batch instead, and claims
    what is left."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    model = host_models.EventLog
    feed = EventFeed(model, host_engine, consumer="c")
    late = EventFeed(model, host_engine, consumer="late")
    feed.register()
    if claim == "reset":
        late.register(start="latest")
    write(host_engine, host_models, keys, [OLD] * 3)
    kept = write(host_engine, host_models, keys, [NOW])
    claimed: list[bool] = []

    def make_claim() -> None:
        if claim == "register":
            claimed.append(late.register(start="earliest"))
        else:
            claimed.append(main(["feed", "reset", "--consumer", "late", "--to", "earliest"]) == 0)

    purge = functools.partial(purge_events, model, host_engine, older_than=CUTOFF)
    with purge_waiting(host_engine, feed, purge) as (host, results):
        claimer = threading.Thread(target=make_claim)
        claimer.start()
        assert waits_on(host_engine, "advisory")
        assert not claimed
        assert not results
        host.rollback()
    claimer.join(timeout=30)
    capsys.readouterr()
    assert results[0].deleted == 3
    assert claimed == [True]
    assert marks(host_engine, "c")[0][1] == 3  # its checkpoint did not move
    assert marks(host_engine, "late")[0][1] is None  # it never claimed the 3
    assert drain(late) == kept


def test_a_reset_waits_two_seconds_at_most_for_rows_a_worker_holds(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    database_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A reset holds retention off while it runs; a worker committing in the host's
    transaction may hold the consumer's rows for as long as that runs, so the reset waits
    for them 2 s at most, then fails naming why, and holds nothing off any more."""
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    model = host_models.EventLog
    feed = EventFeed(model, host_engine, consumer="c")
    feed.register()
    write(host_engine, host_models, keys, [OLD] * 2)
    batch = feed.fetch()
    with host_engine.connect() as host:
        host.begin()
        feed.commit(batch, connection=host)  # c's row stays locked until the host ends
        started = time.monotonic()
        status = main(["feed", "reset", "--consumer", "c", "--to", "earliest", "--force"])
        waited = time.monotonic() - started
        # The claims lock went with the reset's transaction: another claim is not held off.
        assert EventFeed(model, host_engine, consumer="other").register()
        # A reset to "latest" claims nothing stored, holds no one off, and so waits as long
        # as the rows are held.
        latest: list[int] = []
        resetting = threading.Thread(
            target=lambda: latest.append(
                main(["feed", "reset", "--consumer", "c", "--to", "latest", "--force"])
            )
        )
        resetting.start()
        resetting.join(timeout=3)
        assert resetting.is_alive()
        host.rollback()
        resetting.join(timeout=30)
    assert latest == [0]
    assert status == 2
    assert 1.9 < waited < 30
    err = capsys.readouterr().err
    assert "consumer 'c' is being committed by a worker whose transaction did not end" in err


@pytest.mark.parametrize("bind", ["engine", "connection"])
@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE", "AUTOCOMMIT"])
def test_a_purge_runs_its_batches_at_read_committed_whatever_the_level_given(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], level: str, bind: str
) -> None:
    """Each statement of a batch sees what committed before it: a checkpoint moved while
    the batch waited is judged as it is then (a REPEATABLE READ batch would fail to update
    the row). A connection passed in gets its own level back."""
    model = host_models.EventLog
    feed = EventFeed(model, host_engine, consumer="c")
    feed.register()
    write(host_engine, host_models, keys, [OLD] * 3)
    engine = host_engine.execution_options(isolation_level=level)
    with engine.connect() as given:
        target = engine if bind == "engine" else given
        purge = functools.partial(purge_events, model, target, older_than=CUTOFF)
        with purge_waiting(host_engine, feed, purge) as (host, results):
            host.commit()
        assert results == [PurgeResult(3, 1)]
        dbapi: Any = given.connection.dbapi_connection
        assert dbapi.autocommit is (level == "AUTOCOMMIT")
        if level != "AUTOCOMMIT":
            assert given.get_isolation_level() == level
    assert marks(host_engine, "c")[0][1] is None  # delivered before the batch committed


def test_a_database_with_the_feed_marks_whatever_model_purges(
    engine: Engine, host_models: HostModels
) -> None:
    """The marking follows the database, not the model: a model that did not opt in, or a
    reflected table, on a database migrated for the feed marks the consumers all the same."""
    host_models.Base.metadata.create_all(engine)
    keys = seed(engine, host_models)
    EventFeed(host_models.EventLog, engine, consumer="c").register()
    write(engine, host_models, keys, [OLD] * 2)
    plain = build_host_models().EventLog
    assert purge_events(plain, engine, older_than=CUTOFF).deleted == 2
    assert marks(engine, "c")[0][1] == 2


def test_a_host_without_the_feed_purges_as_before(engine: Engine) -> None:
    models = build_host_models()
    models.Base.metadata.create_all(engine)
    write(engine, models, seed(engine, models), [OLD] * 3)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    assert purge_events(models.EventLog, engine, older_than=CUTOFF, batch_size=2) == (
        PurgeResult(3, 2)
    )
    # Each batch: the audit's declaration (a placeholder here), then the plain DELETE; the
    # first one looks for the feed in between, once for the run.
    assert len(statements) == 5
    assert statements[0] == statements[3] == "SET LOCAL eventlog.erasure = 'retention'"
    assert "to_regclass(%(events)s)" in statements[1]
    for delete in (statements[2], statements[4]):
        assert "event_log_consumers" not in delete
        assert delete.startswith("DELETE FROM event_logs")


# -- reset, status, async ----------------------------------------------------------------------


def test_reset_or_registering_again_clears_the_mark_and_status_shows_it(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    database_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url.render_as_string(hide_password=False))
    model = host_models.EventLog
    feeds = {name: EventFeed(model, host_engine, consumer=name) for name in ("a", "b")}
    for feed in feeds.values():
        feed.register()
    write(host_engine, host_models, keys, [OLD] * 4)
    kept = write(host_engine, host_models, keys, [NOW] * 2)
    purge_events(model, host_engine, older_than=CUTOFF)

    status = {s.consumer: s for s in feed_status(model, host_engine)}
    assert (status["a"].lost_events, status["a"].lost_before) == (4, CUTOFF)
    assert status["a"].lost_by == "purge_events"
    assert status["a"].lost_at is not None
    assert status["a"].pending == 2  # what is left to deliver
    assert main(["feed", "status"]) == 0
    # (A "held back by" line may come first: other tests' transactions on the server.)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("lost")]
    assert len(lines) == 2
    assert lines[0] == (
        f"lost by a part 0/1: 4 events created before {CUTOFF.isoformat()}, removed by "
        "purge_events before they were delivered; its fetches raise FeedDataLostError "
        f"until it is reset: eventlog-persist feed reset --consumer a --to {CUTOFF.isoformat()}"
    )

    assert main(["feed", "reset", "--consumer", "a", "--to", CUTOFF.isoformat()]) == 0
    capsys.readouterr()
    assert drain(feeds["a"]) == kept
    assert feeds["b"].unregister()
    assert feeds["b"].register(start="earliest")
    assert drain(feeds["b"]) == kept
    after = feed_status(model, host_engine)
    assert [(s.lost_events, s.lost_before, s.lost_at, s.lost_by) for s in after] == [
        (0, None, None, None)
    ] * 2


def test_the_async_feed_raises_the_same(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], database_url: URL
) -> None:
    model = host_models.EventLog
    EventFeed(model, host_engine, consumer="c").register()
    write(host_engine, host_models, keys, [OLD] * 2)
    purge_events(model, host_engine, older_than=CUTOFF)
    engine = create_async_engine(database_url.set(drivername="postgresql+psycopg"))

    async def fetch() -> None:
        try:
            await AsyncEventFeed(model, engine, consumer="c").fetch()
        finally:
            await engine.dispose()

    with pytest.raises(FeedDataLostError, match=r"^consumer 'c': retention") as raised:
        asyncio.run(fetch())
    assert raised.value.lost_events == 2


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_fetch_finding_events_lost_takes_no_lease_on_an_autocommit_engine(
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    database_url: URL,
    flavour: str,
) -> None:
    # On an engine in autocommit mode, each statement would commit as it ran: the lease
    # too, before the fetch found the loss and raised.
    model = host_models.EventLog
    EventFeed(model, host_engine, consumer="c").register()
    write(host_engine, host_models, keys, [OLD] * 2)
    purge_events(model, host_engine, older_than=CUTOFF)
    if flavour == "sync":
        autocommit = host_engine.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(FeedDataLostError):
            EventFeed(model, autocommit, consumer="c", owner="w1").fetch()
    else:
        url = database_url.set(drivername="postgresql+psycopg")
        engine = create_async_engine(url, isolation_level="AUTOCOMMIT")

        async def fetch() -> None:
            try:
                await AsyncEventFeed(model, engine, consumer="c", owner="w1").fetch()
            finally:
                await engine.dispose()

        with pytest.raises(FeedDataLostError):
            asyncio.run(fetch())
    assert marks(host_engine, "c")[0][5] is None


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_feed_status_reads_in_one_read_only_transaction_on_an_autocommit_engine(
    host_engine: Engine, host_models: HostModels, database_url: URL, flavour: str
) -> None:
    EventFeed(host_models.EventLog, host_engine, consumer="c").register()
    seen: list[tuple[Any, ...]] = []

    def state(conn: Any, *_: Any) -> None:
        # Each statement's transaction: its start and whether it may write.
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("SELECT transaction_timestamp(), current_setting('transaction_read_only')")
        seen.append(tuple(cursor.fetchone()))
        cursor.close()

    if flavour == "sync":
        engine = create_engine(database_url, isolation_level="AUTOCOMMIT")
        event.listen(engine, "after_cursor_execute", state)
        try:
            statuses = feed_status(host_models.EventLog, engine)
        finally:
            engine.dispose()
    else:
        url = database_url.set(drivername="postgresql+psycopg")
        async_engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
        event.listen(async_engine.sync_engine, "after_cursor_execute", state)

        async def read() -> list[Any]:
            try:
                return await afeed_status(host_models.EventLog, async_engine)
            finally:
                await async_engine.dispose()

        statuses = asyncio.run(read())
    assert [status.consumer for status in statuses] == ["c"]
    assert len(seen) >= 3
    assert set(seen) == {(seen[0][0], "on")}


# -- drop_partitions ---------------------------------------------------------------------------


@pytest.fixture
def layout(engine: Engine) -> tuple[HostModels, list[str]]:
    """The partitioned layout with the feed; weekly partitions around now and catch-alls."""
    models = build_host_models(partitioned=True, feed=True)
    models.Base.metadata.create_all(engine)
    return models, create_partitions(engine)


def partition_bound(engine: Engine, name: str) -> datetime:
    with engine.connect() as connection:
        bound = connection.execute(
            text(
                "SELECT (regexp_match(pg_get_expr(relpartbound, oid), "
                "' TO \\(''([^'']*)''\\)$'))[1]::timestamptz FROM pg_class WHERE relname = :n"
            ),
            {"n": name},
        ).scalar_one()
    assert isinstance(bound, datetime)
    return bound


@pytest.mark.parametrize("keep", [False, True])
def test_dropping_or_detaching_a_partition_marks_the_consumers_behind_it(
    engine: Engine, layout: tuple[HostModels, list[str]], keep: bool
) -> None:
    models, partitions = layout
    keys = seed(engine, models)
    model = models.EventLog
    behind = EventFeed(model, engine, consumer="behind")
    ahead = EventFeed(model, engine, consumer="ahead")
    behind.register()
    ahead.register()
    old_time = NOW - timedelta(weeks=5)  # in the catch-all below the weekly partitions
    write(engine, models, keys, [old_time - timedelta(days=1), *[old_time] * 4])
    insert_pre_feed(engine, keys, [old_time])
    drain(ahead)
    new = write(engine, models, keys, [NOW] * 2)
    upper = partition_bound(engine, partitions[0])
    assert purge_events(model, engine, older_than=old_time - timedelta(hours=1)).deleted == 1

    result = drop_partitions(model, engine, older_than=upper, keep_detached=keep)
    assert (result.detached if keep else result.dropped) == (partitions[0],)
    by = "drop_partitions keep_detached" if keep else "drop_partitions"
    # Both removals add up, each path named once, the cutoff the latest.
    assert marks(engine, "behind")[0][:4] == (0, 6, upper, f"purge_events, {by}")
    assert marks(engine, "ahead")[0][1] is None
    assert drain(ahead) == new
    with pytest.raises(FeedDataLostError, match=f"retention \\(purge_events, {by}, first at"):
        behind.fetch()
    with engine.connect() as connection:  # a kept table keeps no comment of ours
        comments = connection.execute(
            text("SELECT count(*) FROM pg_class WHERE obj_description(oid, 'pg_class') LIKE :c"),
            {"c": "eventlog-persist:%"},
        ).scalar_one()
    assert comments == 0


def test_a_claim_on_stored_events_waits_for_the_drop_in_progress(
    engine: Engine, layout: tuple[HostModels, list[str]]
) -> None:
    """A consumer registered after a partition's marking, before its detach commits, would
    claim events the detach then removes, unmarked: the registration waits for the run."""
    models, partitions = layout
    keys = seed(engine, models)
    model = models.EventLog
    EventFeed(model, engine, consumer="c").register()
    late = EventFeed(model, engine, consumer="late")
    write(engine, models, keys, [NOW - timedelta(weeks=5)] * 3)
    kept = write(engine, models, keys, [NOW])
    upper = partition_bound(engine, partitions[0])
    results: list[Any] = []
    claimed: list[bool] = []
    with engine.connect() as reader:
        reader.begin()
        reader.execute(text("SELECT count(*) FROM event_logs"))  # DETACH CONCURRENTLY waits
        drop = threading.Thread(
            target=lambda: results.append(drop_partitions(model, engine, older_than=upper))
        )
        drop.start()
        assert waits_on(engine, "virtualxid")  # marked, detaching
        # No claim on stored events, no wait: a consumer registered already, one from now on.
        again = EventFeed(model, engine, consumer="c")
        latest = EventFeed(model, engine, consumer="latest")
        quick = threading.Thread(
            target=lambda: claimed.extend([again.register(), latest.register(start="latest")])
        )
        quick.start()
        quick.join(timeout=10)
        assert claimed == [False, True]
        claimed.clear()
        claimer = threading.Thread(target=lambda: claimed.append(late.register()))
        claimer.start()
        assert waits_on(engine, "advisory")
        assert not claimed
        reader.rollback()
        drop.join(timeout=30)
        claimer.join(timeout=30)
    assert results[0].dropped == (partitions[0],)
    assert claimed == [True]
    assert marks(engine, "c")[0][1] == 3
    assert marks(engine, "late")[0][1] is None
    assert drain(late) == kept


def test_a_detach_that_failed_and_runs_again_counts_its_events_once(
    engine: Engine, layout: tuple[HostModels, list[str]]
) -> None:
    models, partitions = layout
    keys = seed(engine, models)
    model = models.EventLog
    feed = EventFeed(model, engine, consumer="c")
    feed.register()
    write(engine, models, keys, [NOW - timedelta(weeks=5)] * 3)
    upper = partition_bound(engine, partitions[0])
    with engine.connect() as reader:  # a reader of the partition: a plain DETACH times out
        reader.begin()
        reader.execute(text(f"SELECT count(*) FROM {partitions[0]}"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            drop_partitions(model, engine, older_than=upper, concurrently=False, lock_timeout=0.2)
        reader.rollback()
    assert marks(engine, "c")[0][1] == 3  # marked before the detach was tried
    result = drop_partitions(model, engine, older_than=upper)
    assert result.dropped == (partitions[0],)
    assert marks(engine, "c")[0][1] == 3


@pytest.mark.parametrize("claim", ["register", "reset"])
def test_a_claim_between_a_failed_detach_and_the_run_that_finishes_it_is_marked(
    engine: Engine,
    layout: tuple[HostModels, list[str]],
    database_url: URL,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    claim: str,
) -> None:
    """The run that finishes a detach marks no one again, so a claim made after the failed
    run is judged when it is made, as that run judged the others; a claim on later events
    only is not marked. The claim is made by a role with rights on event_logs and the
    consumers only (none on the partitions), as an application's role is."""
    role = f"evl_app_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role}"))
        connection.execute(text(f"GRANT SELECT, INSERT ON event_logs TO {role}"))
        connection.execute(text(f"GRANT SELECT, INSERT, UPDATE ON event_log_consumers TO {role}"))
    # The session takes the role at connection (a server may refuse logins it cannot map).
    app_url = database_url.update_query_dict({"options": f"-c role={role}"})
    app = create_engine(app_url)
    monkeypatch.setenv("DATABASE_URL", app_url.render_as_string(hide_password=False))
    try:
        claim_after_a_failed_detach(engine, app, layout, capsys, claim)
    finally:
        app.dispose()
        with engine.begin() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))


def claim_after_a_failed_detach(
    engine: Engine,
    app: Engine,
    layout: tuple[HostModels, list[str]],
    capsys: pytest.CaptureFixture[str],
    claim: str,
) -> None:
    models, partitions = layout
    keys = seed(engine, models)
    model = models.EventLog
    EventFeed(model, engine, consumer="c").register()
    late = EventFeed(model, app, consumer="late")
    recent = EventFeed(model, app, consumer="recent")
    if claim == "reset":
        late.register(start="latest")
    write(engine, models, keys, [NOW - timedelta(weeks=5)] * 3)
    upper = partition_bound(engine, partitions[0])
    # One transaction across the partition's bound: a start at the bound brings its older
    # event along, which such a consumer never asked for.
    _, after = write(engine, models, keys, [upper - timedelta(seconds=1), upper])
    kept = [after, *write(engine, models, keys, [NOW])]
    with engine.connect() as reader:  # a reader of the partition: a plain DETACH times out
        reader.begin()
        reader.execute(text(f"SELECT count(*) FROM {partitions[0]}"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            drop_partitions(model, engine, older_than=upper, concurrently=False, lock_timeout=0.2)
        reader.rollback()
    assert marks(engine, "c")[0][1:4] == (4, upper, "drop_partitions")
    if claim == "register":
        assert late.register()
    else:
        assert main(["feed", "reset", "--consumer", "late", "--to", "earliest"]) == 0
    assert recent.register(start=upper)
    # The fix c's error names (reset to the cutoff) holds: c is not marked again.
    assert main(["feed", "reset", "--consumer", "c", "--to", upper.isoformat()]) == 0
    capsys.readouterr()
    assert marks(engine, "late")[0][1:4] == (4, upper, "drop_partitions")
    assert marks(engine, "recent")[0][1] is None
    assert marks(engine, "c")[0][1] is None
    assert drop_partitions(model, engine, older_than=upper).dropped == (partitions[0],)
    assert marks(engine, "late")[0][1] == 4  # counted once
    assert marks(engine, "c")[0][1] is None
    with pytest.raises(FeedDataLostError, match="'late': retention \\(drop_partitions"):
        late.fetch()
    assert drain(recent) == kept
    assert drain(EventFeed(model, engine, consumer="c")) == kept


def test_a_claim_after_a_failed_detach_of_a_bounded_partition_counts_its_events_only(
    engine: Engine, layout: tuple[HostModels, list[str]]
) -> None:
    """The run dropped the catch-all below, then failed on the first weekly partition: a
    claim from the earliest event counts that partition's events, read from its lower bound."""
    models, partitions = layout
    keys = seed(engine, models)
    model = models.EventLog
    EventFeed(model, engine, consumer="c").register()
    write(engine, models, keys, [NOW - timedelta(weeks=5)] * 2)  # in the catch-all
    lower, upper = (partition_bound(engine, name) for name in partitions[:2])
    write(engine, models, keys, [lower + timedelta(hours=1)] * 3)
    with engine.connect() as reader:  # a reader of the weekly partition: its DETACH times out
        reader.begin()
        reader.execute(text(f"SELECT count(*) FROM {partitions[1]}"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            drop_partitions(model, engine, older_than=upper, concurrently=False, lock_timeout=0.2)
        reader.rollback()
    assert marks(engine, "c")[0][1] == 5
    late = EventFeed(model, engine, consumer="late")
    assert late.register()
    assert marks(engine, "late")[0][1:3] == (3, upper)
    assert EventFeed(model, engine, consumer="later").register(start=lower + timedelta(hours=2))
    assert marks(engine, "later")[0][1] is None


@pytest.mark.parametrize("concurrently", [True, False])
def test_a_drop_losing_its_connection_raises_that_with_the_feed_too(
    engine: Engine, layout: tuple[HostModels, list[str]], concurrently: bool
) -> None:
    """The error of the lost connection, not one of releasing the claims lock on it."""
    model, _, upper = three_old_events_and_a_consumer(engine, layout)
    error = drop_losing_its_connection(
        engine, model, older_than=upper, concurrently=concurrently, lock_timeout=30
    )
    assert isinstance(error, OperationalError), repr(error)
    assert EventFeed(model, engine, consumer="late").register()  # no lock left behind


def test_the_commands_read_the_feeds_column_without_a_warning(
    engine: Engine, layout: tuple[HostModels, list[str]], database_url: URL
) -> None:
    """A refusal or a result is what stderr holds, not SQLAlchemy's "Did not recognize type
    'xid8'" on every run (cron mail); a real process, as a warning shows once per process."""
    url = database_url.render_as_string(hide_password=False)
    for argv in (
        ["purge", "--url", url, "--older-than", "30d", "--dry-run"],
        ["partitions", "list", "--url", url],
        ["partitions", "drop", "--url", url, "--older-than", "30d", "--dry-run"],
    ):
        done = run_main(argv, real=True)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""


def three_old_events_and_a_consumer(
    engine: Engine, layout: tuple[HostModels, list[str]]
) -> tuple[Any, str, datetime]:
    """Three events in the oldest partition and consumer "c" behind them; returns the
    model, that partition and its upper bound."""
    models, partitions = layout
    keys = seed(engine, models)
    EventFeed(models.EventLog, engine, consumer="c").register()
    write(engine, models, keys, [NOW - timedelta(weeks=5)] * 3)
    return models.EventLog, partitions[0], partition_bound(engine, partitions[0])


def test_a_partition_once_detached_to_keep_then_to_drop_is_dropped_by_a_later_run(
    engine: Engine, layout: tuple[HostModels, list[str]]
) -> None:
    # Run 1 (keep_detached) marks the consumers and fails at its detach; run 2 (drop) detaches
    # but fails at the DROP; run 3 must still know the table is to be dropped.
    model, oldest, upper = three_old_events_and_a_consumer(engine, layout)
    with engine.connect() as reader:  # a reader of the partition: a plain DETACH times out
        reader.begin()
        reader.execute(text(f"SELECT count(*) FROM {oldest}"))
        with pytest.raises(DBAPIError, match="lock timeout"):
            drop_partitions(
                model,
                engine,
                older_than=upper,
                keep_detached=True,
                concurrently=False,
                lock_timeout=0.2,
            )
        reader.rollback()
    with (
        read_from(engine, oldest, when="DROP TABLE") as reads,
        pytest.raises(DBAPIError, match="lock timeout"),
    ):
        drop_partitions(model, engine, older_than=upper, lock_timeout=0.2)
    assert len(reads) == 1
    result = drop_partitions(model, engine, older_than=upper)
    assert result.dropped == (oldest,)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT to_regclass(:n)"), {"n": oldest}).scalar() is None
    assert marks(engine, "c")[0][1] == 3  # counted once over the three runs


def test_a_detach_to_keep_left_pending_is_finished_and_kept_without_our_comment(
    database_url: URL, engine: Engine, layout: tuple[HostModels, list[str]]
) -> None:
    model, oldest, upper = three_old_events_and_a_consumer(engine, layout)
    # The DETACH ... CONCURRENTLY waits for a reader of event_logs past the session's
    # lock_timeout: the partition stays "detach pending", marked and commented to be kept.
    impatient = create_engine(database_url, connect_args={"options": "-c lock_timeout=300"})
    try:
        with engine.connect() as reader:
            reader.execute(text("SELECT count(*) FROM event_logs"))
            with pytest.raises(DBAPIError, match="lock timeout"):
                drop_partitions(model, impatient, older_than=upper, keep_detached=True)
    finally:
        impatient.dispose()
    assert marks(engine, "c")[0][1] == 3
    result = drop_partitions(model, engine, older_than=upper - timedelta(weeks=100))
    assert result == type(result)(detached=(oldest,), finalized=(oldest,))
    assert comment_and_rows(engine, oldest) == (None, 3)
    assert marks(engine, "c")[0][1] == 3
