"""Competing workers on a consumer in parts, and exactly once in the host's transaction."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from waiting import wait_for

from eventlog_persist import AsyncEventFeed, EventFeed, FeedBatch, new_event, write_events
from eventlog_persist.exceptions import (
    ConfigurationError,
    FeedError,
    LeaseHeldError,
    LeaseLostError,
    StaleBatchError,
)


@pytest.fixture(params=["uuid", "integer"])
def host_models(request: pytest.FixtureRequest) -> HostModels:
    return build_host_models(keys=request.param, feed=True)


def sessions(
    engine: Engine, models: HostModels, n: int, *, parts: int = 1
) -> tuple[Any, list[Any]]:
    """A user and ``n`` chat sessions of it, more if random keys left one of ``parts``
    with fewer than two."""
    user_id, first = seed(engine, models)
    keys = [first]
    with Session(engine) as session:
        while len(keys) < n or min(per_part(engine, keys, parts)) < 2:
            chat = models.ChatSession(id=models.new_key(), user_id=user_id)
            session.add(chat)
            session.flush()
            keys.append(chat.id)
        session.commit()
    return user_id, keys


def sql_parts(engine: Engine, keys: list[Any], parts: int) -> dict[Any, int]:
    """The part of each session key as the documented SQL expression computes it."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT key, ((hashtextextended(key, 0) % :n) + :n) % :n"
                " FROM unnest(CAST(:keys AS text[])) AS key"
            ),
            {"keys": [str(key) for key in keys], "n": parts},
        ).all()
    by_text = {row[0]: int(row[1]) for row in rows}
    return {key: by_text[str(key)] for key in keys}


def per_part(engine: Engine, keys: list[Any], parts: int) -> list[int]:
    """How many of ``keys`` each part holds."""
    counted = Counter(sql_parts(engine, keys, parts).values())
    return [counted[part] for part in range(parts)]


def write(engine: Engine, models: HostModels, user_id: Any, session_ids: list[Any], n: int) -> None:
    events = [
        new_event(session_id=random.choice(session_ids), user_id=user_id, event_type="chat")
        for _ in range(n)
    ]
    write_events(models.EventLog, engine, events, batch_size=n)


def xids(engine: Engine) -> dict[uuid.UUID, tuple[int, uuid.UUID, Any]]:
    """Every stored event's ``(xid, id)`` and session."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT id, xid::text, session_id FROM event_logs")).all()
    return {row[0]: (int(row[1]), row[0], row[2]) for row in rows}


# -- competing workers ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_workers_in_parts_share_the_sessions_and_a_crashed_part_is_taken_over(
    host_engine: Engine, host_models: HostModels
) -> None:
    parts = 3
    user_id, session_ids = sessions(host_engine, host_models, 12, parts=parts)
    write(host_engine, host_models, user_id, session_ids, 40)  # a backlog before the workers
    EventFeed(host_models.EventLog, host_engine, consumer="w", parts=parts).register()

    lock = threading.Lock()
    committed: list[tuple[int, str, list[uuid.UUID]]] = []  # (part, owner, ids), commit order
    fetched: list[uuid.UUID] = []  # every event of every batch fetched, committed or not
    crashed: list[FeedBatch[Any]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def worker(owner: str, *, crash_after: int | None = None) -> None:
        feed = EventFeed(
            host_models.EventLog, host_engine, consumer="w", owner=owner, lease=2.0, parts=parts
        )
        done = 0
        try:
            while not stop.is_set():
                try:
                    batch = feed.fetch(limit=7)
                except LeaseHeldError:
                    time.sleep(0.05)
                    continue
                if not batch.events:
                    time.sleep(0.02)
                    continue
                with lock:
                    fetched.extend(event.id for event in batch.events)
                if crash_after is not None and done == crash_after:
                    crashed.append(batch)  # dies here: no commit, no release
                    return
                feed.commit(batch)
                with lock:
                    committed.append((batch.part, owner, [event.id for event in batch.events]))
                done += 1
        except BaseException as exc:
            failures.append(exc)

    def writer() -> None:
        try:
            for _ in range(25):
                write(host_engine, host_models, user_id, session_ids, random.randint(1, 8))
                time.sleep(random.uniform(0, 0.02))
        except BaseException as exc:
            failures.append(exc)

    workers = [
        threading.Thread(target=worker, args=("w0",), kwargs={"crash_after": 2}),
        threading.Thread(target=worker, args=("w1",)),
        threading.Thread(target=worker, args=("w2",)),
    ]
    writers = [threading.Thread(target=writer) for _ in range(2)]
    standby = threading.Thread(target=worker, args=("standby",))  # takes the crashed part
    for thread in workers + writers:
        thread.start()
    try:
        # The standby comes once w0 has died: started earlier, on a loaded machine it could
        # take the part w0 had not yet leased, and w0 would never fetch.
        wait_for(lambda: crashed or failures, 60, "w0 to crash")
        standby.start()
        for thread in writers:
            thread.join()
        stored = xids(host_engine)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if sum(len(found) for _, _, found in committed) >= len(stored):
                    break
            time.sleep(0.05)
        time.sleep(0.3)  # anything more would be a duplicate: let it show
    finally:
        stop.set()
        for thread in [*workers, standby]:
            if thread.is_alive():
                thread.join(timeout=10)
    assert failures == []

    # None missed, none twice: every committed batch, across the parts, holds each event once.
    delivered = [event_id for _, _, found in committed for event_id in found]
    assert Counter(delivered) == Counter(list(stored))
    # Only the crashed worker's batch came twice, and it came again in its part.
    assert len(crashed) == 1
    lost = crashed[0]
    again = [event.id for event in lost.events]
    assert sorted(event_id for event_id, n in Counter(fetched).items() if n > 1) == sorted(again)
    assert all(n == 2 for event_id, n in Counter(fetched).items() if event_id in set(again))
    taken_over = {
        event_id for part, owner, found in committed if owner == "standby" for event_id in found
    }
    assert set(again) <= taken_over
    assert {part for part, owner, _ in committed if owner == "standby"} == {lost.part}

    # Each session in one part, the one the SQL hash names; within a batch its events come
    # in (xid, id) order. (Across batches the order is the commit order, which this test's
    # overlapping writers of one session do not give in xid order: not checked here.)
    expected = sql_parts(host_engine, session_ids, parts)
    # (Events pick their session at random: compare with the parts their sessions hash to.)
    assert {part for part, _, found in committed if found} == {
        expected[session_id] for _, _, session_id in stored.values()
    }
    for part, _, found in committed:
        per_session: dict[Any, list[tuple[int, uuid.UUID]]] = defaultdict(list)
        for event_id in found:
            xid, _, session_id = stored[event_id]
            assert expected[session_id] == part
            per_session[session_id].append((xid, event_id))
        for order in per_session.values():
            assert order == sorted(order)


def test_the_hash_of_a_session_is_the_same_on_every_server_version(engine: Engine) -> None:
    """The parts rest on ``hashtextextended`` of the key as text: PostgreSQL keeps it stable
    (hash partitions depend on it). Pinned values, checked on every version the suite runs."""
    with engine.connect() as connection:
        found = connection.execute(
            text(
                "SELECT hashtextextended('6f1c2e0a-3b4d-4e5f-8a9b-0c1d2e3f4a5b'::uuid::text, 0),"
                " hashtextextended(12345::bigint::text, 0)"
            )
        ).one()
    assert tuple(found) == (UUID_HASH, INT_HASH)


UUID_HASH = 6377258393240742522
INT_HASH = -4619177982457060005  # negative: the modulo is made non-negative


def test_a_worker_takes_a_given_part_or_a_free_one(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_ids = sessions(host_engine, host_models, 6, parts=2)
    write(host_engine, host_models, user_id, session_ids, 30)
    feeds = [
        EventFeed(host_models.EventLog, host_engine, consumer="p", owner=f"o{i}", parts=2)
        for i in range(3)
    ]
    assert feeds[0].register() is True
    assert feeds[1].register(start="latest") is False
    assert feeds[0].parts == 2
    first = feeds[0].fetch()
    second = feeds[1].fetch()
    assert {first.part, second.part} == {0, 1}
    assert feeds[0].fetch().part == first.part  # a worker keeps its part
    with pytest.raises(LeaseHeldError, match="every part of"):
        feeds[2].fetch()
    given = EventFeed(
        host_models.EventLog, host_engine, consumer="p", owner="o0", parts=2, part=second.part
    )
    with pytest.raises(LeaseHeldError, match=f"part {second.part} of consumer"):
        given.fetch()
    feeds[1].release()
    assert given.fetch().events == second.events  # released, not committed: delivered again
    assert len(first.events) + len(second.events) == 30


def test_the_parts_of_a_consumer_cannot_change(
    host_engine: Engine, host_models: HostModels
) -> None:
    EventFeed(host_models.EventLog, host_engine, consumer="c", parts=2).register()
    other = EventFeed(host_models.EventLog, host_engine, consumer="c", parts=3)
    with pytest.raises(ConfigurationError, match=r"parts=2.*unregister\(\)"):
        other.register()
    with pytest.raises(ConfigurationError, match=r"parts=2.*unregister\(\)"):
        other.fetch()
    assert other.unregister() is True
    assert other.register() is True  # the fix the message names
    assert other.fetch().part == 0


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"])
def test_two_registrations_at_once_with_other_parts_make_one_shape(
    host_engine: Engine, host_models: HostModels, isolation: str
) -> None:
    """Both check that the consumer is not registered, then insert: the second waits for
    the first and is told, instead of adding the parts the first did not have (whatever
    the engine's isolation level)."""
    outcomes: dict[int, object] = {}
    engine = host_engine.execution_options(isolation_level=isolation)

    def register(parts: int) -> None:
        feed = EventFeed(host_models.EventLog, engine, consumer="c", parts=parts)
        try:
            outcomes[parts] = feed.register()
        except ConfigurationError as error:
            outcomes[parts] = error

    def waiting() -> int:
        with host_engine.connect() as connection:
            return int(
                connection.execute(
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                ).scalar_one()
            )

    with host_engine.begin() as blocker:
        blocker.execute(text("LOCK TABLE event_log_consumers IN SHARE ROW EXCLUSIVE MODE"))
        threads = [threading.Thread(target=register, args=(parts,)) for parts in (2, 4)]
        for thread in threads:
            thread.start()
        wait_for(lambda: waiting() == 2, what="both registrations waiting")
    for thread in threads:
        thread.join(timeout=15)
    assert sorted(type(outcome).__name__ for outcome in outcomes.values()) == [
        "ConfigurationError",
        "bool",
    ]
    winner = next(parts for parts, outcome in outcomes.items() if outcome is True)
    with host_engine.connect() as connection:
        shapes = connection.execute(
            text("SELECT parts, count(*) FROM event_log_consumers GROUP BY parts")
        ).all()
    assert shapes == [(winner, winner)]
    loser = next(outcome for outcome in outcomes.values() if outcome is not True)
    assert f"registered with parts={winner}" in str(loser)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"parts": 0}, "parts must be an int from 1"),
        ({"parts": True}, "parts must be an int from 1"),
        ({"parts": 2, "part": 2}, "part must be None"),
        ({"part": -1}, "part must be None"),
    ],
)
def test_parts_are_checked_when_the_feed_is_built(
    host_models: HostModels, host_engine: Engine, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        EventFeed(host_models.EventLog, host_engine, consumer="c", **arguments)


# -- exactly once in the host's transaction --------------------------------------------------


class Boom(Exception):
    pass


def derive(connection: Connection, batch: FeedBatch[Any]) -> None:
    for event in batch.events:
        connection.execute(text("INSERT INTO derived (event_id) VALUES (:id)"), {"id": event.id})


def derived(engine: Engine) -> Counter[uuid.UUID]:
    with engine.connect() as connection:
        return Counter(connection.execute(text("SELECT event_id FROM derived")).scalars())


def delivered(engine: Engine, consumer: str) -> int:
    with engine.connect() as connection:
        found = connection.execute(
            text("SELECT delivered FROM event_log_consumers WHERE consumer = :c"), {"c": consumer}
        )
        return int(found.scalar_one())


def derived_events(
    engine: Engine, models: HostModels, n_sessions: int, n_events: int, *, parts: int = 1
) -> None:
    """An empty ``derived`` table of the host's, and ``n_events`` events written over
    ``n_sessions`` sessions of one user (each part with two or more)."""
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE derived (event_id uuid NOT NULL)"))
    user_id, session_ids = sessions(engine, models, n_sessions, parts=parts)
    write(engine, models, user_id, session_ids, n_events)


def test_a_batch_and_its_checkpoint_commit_in_the_hosts_transaction(
    host_engine: Engine, host_models: HostModels
) -> None:
    derived_events(host_engine, host_models, 3, 12)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="once")
    feed.register()

    def handle(batch: FeedBatch[Any], *, crash: str | None = None) -> None:
        with host_engine.begin() as connection:
            derive(connection, batch)
            if crash == "before":
                raise Boom  # the handler crashes before the commit
            feed.commit(batch, connection=connection)
            if crash == "after":
                raise Boom  # or after it, before the host's transaction commits

    batch = feed.fetch(limit=5)
    with pytest.raises(Boom):
        handle(batch, crash="before")
    with pytest.raises(Boom):
        handle(batch, crash="after")
    assert derived(host_engine) == Counter()
    assert delivered(host_engine, "once") == 0  # neither moved

    while True:
        batch = feed.fetch(limit=5)
        if not batch.events:
            break
        handle(batch)
    assert derived(host_engine) == Counter(list(xids(host_engine)))  # each event once
    assert delivered(host_engine, "once") == 12


def test_a_worker_that_lost_its_lease_rolls_the_hosts_transaction_back(
    host_engine: Engine, host_models: HostModels
) -> None:
    derived_events(host_engine, host_models, 2, 4)
    slow = EventFeed(host_models.EventLog, host_engine, consumer="once", lease=0.2)
    slow.register()
    batch = slow.fetch()
    time.sleep(0.3)
    taker = EventFeed(host_models.EventLog, host_engine, consumer="once")
    assert taker.fetch().events == batch.events

    def handle() -> None:
        with host_engine.begin() as connection:
            derive(connection, batch)
            slow.commit(batch, connection=connection)

    with pytest.raises(LeaseLostError):
        handle()
    assert derived(host_engine) == Counter()
    with (
        Session(host_engine) as session,
        pytest.raises(ConfigurationError, match=r"session\.connection\(\)"),
    ):
        slow.commit(batch, connection=session)  # type: ignore[arg-type]


def test_a_commit_in_a_long_host_transaction_renews_the_lease_from_when_it_ran(
    host_engine: Engine, host_models: HostModels
) -> None:
    """Not from the transaction's start: the lease would have ended before the commit."""
    derived_events(host_engine, host_models, 2, 4)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="once", lease=1.0)
    feed.register()
    batch = feed.fetch()
    with host_engine.begin() as connection:
        connection.execute(text("SELECT 1"))  # the transaction starts here
        time.sleep(1.2)  # the handler works longer than the lease
        derive(connection, batch)
        feed.commit(batch, connection=connection)
        live, committed = connection.execute(
            text(
                "SELECT lease_until > clock_timestamp() + interval '0.5 seconds', "
                "committed_at > now() + interval '1 second' FROM event_log_consumers "
                "WHERE consumer = 'once'"
            )
        ).one()
    assert (live, committed) == (True, True)
    with pytest.raises(LeaseHeldError):  # still this worker's
        EventFeed(host_models.EventLog, host_engine, consumer="once").fetch()


def test_a_batch_committed_again_or_after_a_later_one_moves_nothing(
    host_engine: Engine, host_models: HostModels
) -> None:
    """A retried commit (the first one's COMMIT outcome unknown to the host), or an older
    batch committed after a newer one, would move the checkpoint back and derive its rows
    twice: it raises `StaleBatchError` and the host's transaction rolls back."""
    derived_events(host_engine, host_models, 2, 6)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="once")
    feed.register()
    older = feed.fetch(limit=2)
    batch = feed.fetch(limit=4)  # fetched again before a commit: the same start, more events

    def handle(batch: FeedBatch[Any]) -> None:
        with host_engine.begin() as connection:
            derive(connection, batch)
            feed.commit(batch, connection=connection)

    handle(batch)
    for again in (batch, older):
        with pytest.raises(StaleBatchError, match="committed already") as raised:
            handle(again)
        assert isinstance(raised.value, FeedError)
    with pytest.raises(StaleBatchError):
        feed.commit(batch)
    assert derived(host_engine) == Counter({event.id: 1 for event in batch.events})
    assert delivered(host_engine, "once") == 4
    rest = feed.fetch()  # from where the first commit put the checkpoint
    assert len(rest.events) == 2
    assert not {event.id for event in rest.events} & {event.id for event in batch.events}
    feed.commit(rest)
    assert feed.fetch().events == ()


def test_the_async_feed_commits_in_the_hosts_transaction_and_takes_parts(
    database_url: URL, host_engine: Engine, host_models: HostModels
) -> None:
    derived_events(host_engine, host_models, 4, 20, parts=2)

    async def main() -> None:
        engine = create_async_engine(database_url)
        try:
            one = AsyncEventFeed(host_models.EventLog, engine, consumer="a", owner="1", parts=2)
            two = AsyncEventFeed(host_models.EventLog, engine, consumer="a", owner="2", parts=2)
            assert await one.register() is True

            async def handle(feed: AsyncEventFeed[Any], batch: FeedBatch[Any], crash: bool) -> None:
                async with engine.begin() as connection:
                    await connection.run_sync(derive, batch)
                    await feed.commit(batch, connection=connection)
                    if crash:
                        raise Boom

            parts = set()
            for feed in (one, two):
                batch = await feed.fetch()
                parts.add(batch.part)
                with pytest.raises(Boom):
                    await handle(feed, batch, crash=True)
                await handle(feed, batch, crash=False)
                assert (await feed.fetch()).events == ()
            assert parts == {0, 1}
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert derived(host_engine) == Counter(list(xids(host_engine)))
