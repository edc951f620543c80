"""Named consumers: registration, checkpoints, crash and resume, leases and fencing."""

from __future__ import annotations

import asyncio
import threading
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
from waiting import wait_for

from eventlog_persist import (
    AsyncEventFeed,
    AsyncEventTail,
    EventFeed,
    EventTail,
    EventWriter,
    FeedBatch,
    afeed_status,
    feed_status,
    new_event,
    write_events,
)
from eventlog_persist.exceptions import (
    ConfigurationError,
    ConsumerNotFoundError,
    LeaseHeldError,
    LeaseLostError,
    MigrationSetupError,
    ValidationError,
)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


def write(
    engine: Engine, models: HostModels, keys: tuple[Any, Any], n: int, *, per_tx: int = 10
) -> list[uuid.UUID]:
    """Store ``n`` events, ``per_tx`` per transaction; return their ids in write order."""
    user_id, session_id = keys
    batch = [
        new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
        for i in range(n)
    ]
    write_events(models.EventLog, engine, batch, batch_size=per_tx)
    return [event.id for event in batch]


def insert_pre_feed(
    engine: Engine, keys: tuple[Any, Any], times: list[datetime]
) -> list[uuid.UUID]:
    """Rows as stored before the feed: no transaction id."""
    user_id, session_id = keys
    ids = sorted(uuid.uuid4() for _ in times)
    with engine.begin() as connection:
        for event_id, created_at in zip(ids, times, strict=True):
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at, "
                    "xid) VALUES (:id, :s, :u, 'old', :t, NULL)"
                ),
                {"id": event_id, "s": session_id, "u": user_id, "t": created_at},
            )
    return ids


def drain(feed: EventFeed[Any], *, limit: int = 500) -> Iterator[FeedBatch[Any]]:
    """Fetch and commit batches until one is empty; yield each non-empty one."""
    while True:
        batch = feed.fetch(limit=limit)
        feed.commit(batch)
        if not batch.events:
            return
        yield batch


def collect(feed: EventFeed[Any], count: int, *, limit: int = 500) -> list[uuid.UUID]:
    """Fetch and commit until ``count`` events came: a horizon feed waits for every
    transaction of the server (other tests' too) that is older than the events."""
    found: list[uuid.UUID] = []
    deadline = time.monotonic() + 30
    while len(found) < count and time.monotonic() < deadline:
        batch = feed.fetch(limit=limit)
        feed.commit(batch)
        found += [event.id for event in batch.events]
        if not batch.events:
            time.sleep(0.05)
    return found


def ids(batches: Iterator[FeedBatch[Any]] | list[FeedBatch[Any]]) -> list[uuid.UUID]:
    return [event.id for batch in batches for event in batch.events]


def consumer_row(engine: Engine, name: str) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT owner, generation, delivered, snapshot_target IS NULL AS idle "
                "FROM event_log_consumers WHERE consumer = :c"
            ),
            {"c": name},
        ).one()
    return dict(row._mapping)


# -- registration and delivery -------------------------------------------------------------


def test_earliest_delivers_every_event_once_in_write_order(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    written = write(host_engine, host_models, keys, 95, per_tx=7)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="warehouse")
    assert feed.register(start="earliest") is True
    assert feed.register(start="latest") is False  # registered: the checkpoint is kept
    assert ids(drain(feed, limit=10)) == written  # one writer: (xid, id) is its order
    assert consumer_row(host_engine, "warehouse")["delivered"] == 95
    more = write(host_engine, host_models, keys, 3)
    assert ids(drain(feed)) == more


def test_a_batch_that_ended_at_the_limit_does_not_hold_the_next_ones_back(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    """Empty batches need no commit: the batch after one that filled ``limit`` exactly
    starts a new target instead of reading the old one's empty rest."""
    feed = EventFeed(host_models.EventLog, host_engine, consumer="exact")
    feed.register()
    first = write(host_engine, host_models, keys, 5)
    batch = feed.fetch(limit=5)
    feed.commit(batch)
    assert [event.id for event in batch.events] == first
    more = write(host_engine, host_models, keys, 3)
    assert [event.id for event in feed.fetch(limit=5).events] == more


def test_a_batch_holds_the_record_fields(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    event = new_event(
        session_id=session_id,
        user_id=user_id,
        event_type="tool_call",
        tool_name="search",
        payload={"q": "x"},
        request_id="req-1",
    )
    write_events(host_models.EventLog, host_engine, [event])
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c")
    feed.register()
    batch = feed.fetch()
    (record,) = batch.events
    assert (record.id, record.session_id, record.user_id) == (event.id, session_id, user_id)
    assert (record.tool_name, record.payload, record.request_id) == ("search", {"q": "x"}, "req-1")
    assert record.created_at == event.created_at
    assert batch.consumer == "c"
    assert batch.generation == 1


def test_latest_skips_committed_events_and_keeps_those_in_flight(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    write(host_engine, host_models, keys, 5)
    user_id, session_id = keys
    in_flight = uuid.uuid4()
    with host_engine.connect() as slow:
        slow.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type) "
                "VALUES (:id, :s, :u, 'slow')"
            ),
            {"id": in_flight, "s": session_id, "u": user_id},
        )
        feed = EventFeed(host_models.EventLog, host_engine, consumer="tail")
        feed.register(start="latest")
        after = write(host_engine, host_models, keys, 2)
        assert ids(drain(feed)) == after
        slow.commit()
    assert ids(drain(feed)) == [in_flight]


def test_pre_feed_rows_come_first_once_when_asked(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    now = datetime.now(UTC)
    old = insert_pre_feed(host_engine, keys, [now - timedelta(days=d) for d in range(23)])
    new = write(host_engine, host_models, keys, 4)
    every = EventFeed(host_models.EventLog, host_engine, consumer="every")
    every.register(start="earliest")
    batches = list(drain(every, limit=5))
    assert [len(batch.events) for batch in batches] == [5, 5, 5, 5, 5, 2]
    assert ids(batches) == old + new  # pre-feed rows by id, then the feed
    assert ids(drain(every)) == []
    recent = EventFeed(host_models.EventLog, host_engine, consumer="recent")
    recent.register(start="latest")
    assert ids(drain(recent)) == []


def test_a_start_time_takes_the_events_from_then_on(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    now = datetime.now(UTC)
    old = insert_pre_feed(host_engine, keys, [now - timedelta(hours=h) for h in (1, 3, 5)])
    before = write(host_engine, host_models, keys, 3)
    time.sleep(0.01)
    start = datetime.now(UTC)
    after = write(host_engine, host_models, keys, 4, per_tx=2)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="since")
    feed.register(start=start - timedelta(hours=2))  # one pre-feed row is that recent
    assert ids(drain(feed)) == [old[0], *before, *after]
    later = EventFeed(host_models.EventLog, host_engine, consumer="later")
    later.register(start=start)
    assert ids(drain(later)) == after
    future = EventFeed(host_models.EventLog, host_engine, consumer="future")
    future.register(start=start + timedelta(days=1))  # no event yet: from now on
    assert ids(drain(future)) == []
    assert ids(drain(future)) == []
    last = write(host_engine, host_models, keys, 1)
    assert ids(drain(future)) == last


def test_the_checkpoint_survives_the_process(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    written = write(host_engine, host_models, keys, 30)
    first = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="worker-1")
    first.register()
    batch = first.fetch(limit=12)
    first.commit(batch)
    # The same worker restarted (same owner): it takes its lease back at once.
    again = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="worker-1")
    rest = list(drain(again, limit=12))
    assert ids([batch, *rest]) == written
    assert rest[0].generation == batch.generation


# -- crash, resume, leases, fencing --------------------------------------------------------


def test_a_crash_before_the_commit_redelivers_that_batch_and_nothing_else(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    written = write(host_engine, host_models, keys, 50, per_tx=5)
    crashed = EventFeed(host_models.EventLog, host_engine, consumer="c", lease=3)
    crashed.register()
    delivered = []
    for _ in range(2):
        batch = crashed.fetch(limit=10)
        delivered += [event.id for event in batch.events]
        crashed.commit(batch)
    lost = crashed.fetch(limit=10)  # delivered, then the worker dies before its commit
    delivered += [event.id for event in lost.events]
    taker = EventFeed(host_models.EventLog, host_engine, consumer="c", lease=5)
    with pytest.raises(LeaseHeldError, match="is leased to") as held:
        taker.fetch()
    assert held.value.owner == crashed.owner
    deadline = time.monotonic() + 10
    while True:  # until the crashed worker's lease ends
        try:
            resumed = taker.fetch(limit=10)
            break
        except LeaseHeldError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert resumed.events == lost.events
    assert resumed.generation == lost.generation + 1
    taker.commit(resumed)
    delivered += [event.id for event in resumed.events] + ids(drain(taker, limit=10))
    assert sorted(set(delivered)) == sorted(written)  # nothing missed
    duplicates = [event_id for event_id in set(delivered) if delivered.count(event_id) > 1]
    assert sorted(duplicates) == sorted(event.id for event in lost.events)


@pytest.mark.parametrize("before", ["never leased", "a lease that ended"])
def test_a_lease_being_taken_at_that_moment_is_named_so_not_as_owner_none(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any], before: str
) -> None:
    write(host_engine, host_models, keys, 3)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="me")
    feed.register()
    if before == "a lease that ended":
        crashed = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="x", lease=0.1)
        crashed.fetch()
        time.sleep(0.2)
    with host_engine.connect() as taking:  # another worker's lease statement, not committed
        taking.execute(text("SELECT 1 FROM event_log_consumers WHERE consumer = 'c' FOR UPDATE"))
        with pytest.raises(LeaseHeldError, match="is taking the lease of consumer 'c'") as held:
            feed.fetch()
        assert (held.value.owner, held.value.lease_until) == (None, None)
        taking.rollback()
    assert len(feed.fetch().events) == 3  # free again


def test_a_worker_that_lost_its_lease_cannot_move_the_checkpoint(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    written = write(host_engine, host_models, keys, 20)
    slow = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="slow", lease=0.3)
    slow.register()
    stale = slow.fetch(limit=8)
    time.sleep(0.4)  # processing took longer than the lease
    fast = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="fast")
    taken = fast.fetch(limit=8)
    assert taken.events == stale.events
    with pytest.raises(LeaseLostError, match="lost its lease") as lost:
        slow.commit(stale)
    assert (lost.value.owner, lost.value.generation) == ("fast", stale.generation + 1)
    assert consumer_row(host_engine, "c")["delivered"] == 0  # the checkpoint did not move
    fast.commit(taken)
    with pytest.raises(LeaseHeldError):
        slow.fetch()
    assert ids([taken, *drain(fast, limit=8)]) == written


def test_a_late_commit_goes_through_when_nobody_took_over(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    written = write(host_engine, host_models, keys, 6)
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c", lease=0.2)
    feed.register()
    batch = feed.fetch()
    time.sleep(0.3)  # the lease ended, but no other worker fetched
    feed.commit(batch)
    assert [event.id for event in batch.events] == written
    assert ids(drain(feed)) == []


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_commit_waiting_for_a_reset_is_told_its_lease_is_lost_whatever_the_engines_level(
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    level: str,
) -> None:
    """commit(), release() and unregister() run at READ COMMITTED as fetch() does: a commit
    that waited for a reset's row lock reads the row as it is then, not a serialization
    failure."""
    write(host_engine, host_models, keys, 4)
    engine = host_engine.execution_options(isolation_level=level)
    feed = EventFeed(host_models.EventLog, engine, consumer="c", owner="w")
    feed.register()

    def waiting() -> bool:
        with host_engine.connect() as connection:
            return bool(
                connection.execute(
                    text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                ).scalar_one()
            )

    def commit_behind_a_reset(commit: Any) -> BaseException | None:
        outcome: list[BaseException | None] = []
        with host_engine.begin() as resetting:
            resetting.execute(
                text(
                    "UPDATE event_log_consumers SET generation = generation + 1, owner = NULL, "
                    "lease_until = NULL WHERE consumer = 'c'"
                )
            )
            thread = threading.Thread(target=lambda: outcome.append(_raised(commit)))
            thread.start()
            wait_for(waiting, what="the commit waiting for the reset")
        thread.join(timeout=15)
        return outcome[0]

    batch = feed.fetch()
    error = commit_behind_a_reset(lambda: feed.commit(batch))
    assert isinstance(error, LeaseLostError), repr(error)
    assert feed.fetch().events == batch.events  # the checkpoint did not move
    feed.release()

    async def run() -> BaseException | None:
        async_engine = create_async_engine(database_url, isolation_level=level)
        try:
            twin = AsyncEventFeed(host_models.EventLog, async_engine, consumer="c", owner="a")
            fetched = await twin.fetch()
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                None,
                commit_behind_a_reset,
                lambda: asyncio.run_coroutine_threadsafe(twin.commit(fetched), loop).result(),
            )
        finally:
            await async_engine.dispose()

    error = asyncio.run(run())
    assert isinstance(error, LeaseLostError), repr(error)


def _raised(call: Any) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # the outcome is the test's to judge
        return exc
    return None


def test_release_hands_the_lease_over_at_once(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    write(host_engine, host_models, keys, 5)
    one = EventFeed(host_models.EventLog, host_engine, consumer="c")
    one.register()
    batch = one.fetch()
    one.release()
    assert consumer_row(host_engine, "c")["owner"] is None
    two = EventFeed(host_models.EventLog, host_engine, consumer="c")
    assert two.fetch().events == batch.events
    with pytest.raises(LeaseLostError, match="held by '"):
        one.commit(batch)


def test_an_unregistered_consumer_says_so(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    feed = EventFeed(host_models.EventLog, host_engine, consumer="nobody")
    with pytest.raises(ConsumerNotFoundError, match="'nobody' is not registered; call register"):
        feed.fetch()
    feed.register()
    batch = feed.fetch()
    assert feed.unregister() is True
    assert feed.unregister() is False
    with pytest.raises(ConsumerNotFoundError):
        feed.commit(batch)
    with pytest.raises(ConfigurationError, match="commit it with the feed that fetched it"):
        EventFeed(host_models.EventLog, host_engine, consumer="nobody").commit(batch)


def test_a_consumer_can_switch_modes_without_loss_or_repeat(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    first = write(host_engine, host_models, keys, 10)
    snapshot = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="w")
    snapshot.register()
    delivered = ids(drain(snapshot, limit=4))
    second = write(host_engine, host_models, keys, 10)
    horizon = EventFeed(host_models.EventLog, host_engine, consumer="c", owner="w", mode="horizon")
    delivered += collect(horizon, 10, limit=4)
    third = write(host_engine, host_models, keys, 3)
    delivered += ids(drain(snapshot))
    assert delivered == first + second + third


# -- refusals ------------------------------------------------------------------------------


def test_a_model_without_the_feed_is_refused(host_engine: Engine) -> None:
    plain = build_host_models()
    with pytest.raises(ConfigurationError, match="feed=True"):
        EventFeed(plain.EventLog, host_engine, consumer="c")


def test_a_database_without_the_feed_schema_names_the_migration(engine: Engine) -> None:
    build_host_models().Base.metadata.create_all(engine)  # the plain schema
    feed = EventFeed(build_host_models(feed=True).EventLog, engine, consumer="c")
    with pytest.raises(MigrationSetupError, match="eventlog_persist:migrations_feed"):
        feed.register()
    with pytest.raises(MigrationSetupError, match="alembic upgrade heads"):
        feed.fetch()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"consumer": ""}, ValidationError, "consumer must be a non-empty name"),
        ({"consumer": "x" * 129}, ValidationError, "at most 128 characters"),
        ({"lease": 0}, ConfigurationError, "lease must be a number of seconds from 0.001 to"),
        ({"lease": 1e-7}, ConfigurationError, r"from 0\.001 to 86400 \(a day\), got 1e-07"),
        ({"owner": ""}, ConfigurationError, "owner must be a non-empty str"),
        ({"mode": "strict"}, ConfigurationError, "mode must be 'snapshot'"),
        ({"listen": "yes"}, ConfigurationError, "listen must be True or False, got 'yes'"),
    ],
)
def test_settings_are_checked_when_the_feed_is_built(
    host_engine: Engine,
    host_models: HostModels,
    options: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    arguments: dict[str, Any] = {"consumer": "c", **options}
    with pytest.raises(error, match=message):
        EventFeed(host_models.EventLog, host_engine, **arguments)
    if "listen" in options:  # the tail takes it too
        with pytest.raises(error, match=message):
            EventTail(host_models.EventLog, host_engine, listen=options["listen"])


def test_arguments_of_the_calls_are_checked(host_engine: Engine, host_models: HostModels) -> None:
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c")
    with pytest.raises(ValidationError, match="naive datetime"):
        feed.register(start=datetime(2026, 1, 1))
    with pytest.raises(ValidationError, match="start must be 'earliest'"):
        feed.register(start="oldest")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="limit must be an int from 1 to 10000"):
        feed.fetch(limit=0)
    with pytest.raises(ConfigurationError, match="takes a FeedBatch"):
        feed.commit([])  # type: ignore[arg-type]


def test_the_wrong_engine_flavour_names_the_twin(
    database_url: URL, host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    engine = create_async_engine(database_url)
    with pytest.raises(ConfigurationError, match="use AsyncEventFeed from async code"):
        EventFeed(model, engine, consumer="c")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="use EventFeed in sync code"):
        AsyncEventFeed(model, host_engine, consumer="c")  # type: ignore[arg-type]
    # The tail, which had no twin on record (a KeyError), and the status calls too.
    with pytest.raises(ConfigurationError, match=r"use AsyncEventTail from async code$"):
        EventTail(model, engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"use EventTail in sync code$"):
        AsyncEventTail(model, host_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"use afeed_status from async code$"):
        feed_status(model, engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"use feed_status in sync code$"):
        asyncio.run(afeed_status(model, host_engine))  # type: ignore[arg-type]
    for refused in (
        lambda: EventTail(model, None),  # type: ignore[arg-type]
        lambda: AsyncEventTail(model, None),  # type: ignore[arg-type]
        lambda: EventFeed(model, None, consumer="c"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigurationError, match=r"needs a sqlalchemy (Async)?Engine, got"):
            refused()
    asyncio.run(engine.dispose())


# -- the async twin ------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg"])
def test_the_async_feed_delivers_fences_and_resumes(
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    keys: tuple[Any, Any],
    driver: str,
) -> None:
    written = write(host_engine, host_models, keys, 25, per_tx=4)
    now = datetime.now(UTC)
    old = insert_pre_feed(host_engine, keys, [now, now])

    async def main() -> list[uuid.UUID]:
        # asyncpg reads and sends xid8 and pg_snapshot in binary forms of its own.
        engine = create_async_engine(database_url.set(drivername=driver))
        try:
            one = AsyncEventFeed(host_models.EventLog, engine, consumer="a", lease=0.3)
            assert await one.register() is True
            assert await one.register(start=now) is False
            delivered: list[uuid.UUID] = []
            first = await one.fetch(limit=10)
            await one.commit(first)
            delivered += [event.id for event in first.events]
            stale = await one.fetch(limit=10)
            await asyncio.sleep(0.4)
            two = AsyncEventFeed(host_models.EventLog, engine, consumer="a")
            taken = await two.fetch(limit=10)
            assert taken.events == stale.events
            with pytest.raises(LeaseLostError):
                await one.commit(stale)
            with pytest.raises(LeaseHeldError):
                await one.fetch()
            while True:
                batch = await two.fetch(limit=10)
                await two.commit(batch)
                if not batch.events:
                    break
                delivered += [event.id for event in batch.events]
            await two.release()
            late = AsyncEventFeed(host_models.EventLog, engine, consumer="late")
            await late.register(start="latest")
            assert (await late.fetch()).events == ()
            assert await late.unregister() is True
            with pytest.raises(ConsumerNotFoundError):
                await late.fetch()
            return delivered
        finally:
            await engine.dispose()

    assert asyncio.run(main()) == old + written


def test_an_integer_keyed_host(engine: Engine) -> None:
    models = build_host_models(keys="integer", feed=True)
    models.Base.metadata.create_all(engine)
    keys = seed(engine, models)
    written = write(engine, models, keys, 12)
    feed = EventFeed(models.EventLog, engine, consumer="ints")
    feed.register()
    batches = list(drain(feed, limit=5))
    assert ids(batches) == written
    assert batches[0].events[0].session_id == keys[1]
    assert isinstance(batches[0].events[0].user_id, int)


def test_a_batch_keeps_transaction_order_when_a_kept_target_ends(
    host_engine: Engine, host_models: HostModels, keys: tuple[Any, Any]
) -> None:
    user_id, session_id = keys
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c")
    feed.register(start="latest")
    with Session(host_engine) as slow:  # an older transaction id, in flight
        EventWriter(host_models.EventLog).record(
            slow, session_id=session_id, user_id=user_id, event_type="slow"
        )
        slow.flush()
        fast = write(host_engine, host_models, keys, 3, per_tx=3)
        first = feed.fetch(limit=2)  # ends at the limit: its target stays in the checkpoint
        feed.commit(first)
        assert ids([first]) == fast[:2]
        slow.commit()
    batches = list(drain(feed, limit=5))
    # The kept target's last event alone, then the slow transaction's: never mixed, as the
    # slow one's lower transaction id would break the batch's (xid, id) order.
    assert [[event.event_type for event in batch.events] for batch in batches] == [
        ["chat"],
        ["slow"],
    ]
    with host_engine.connect() as connection:
        xid = dict(connection.execute(text("SELECT id, xid::text::bigint FROM event_logs")).all())
    for batch in batches:
        order = [(xid[event.id], event.id) for event in batch.events]
        assert order == sorted(order)
