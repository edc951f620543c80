"""Idempotency and the missing-partition error of every writer on the partitioned layout."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, build_host_models, create_partitions, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session
from waiting import wait_for, waits_for_a_lock

from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    EventWriter,
    NewEvent,
    RetryPolicy,
    Spool,
    ensure_partitions,
    write_events,
)
from eventlog_persist import _buffered as buffered_module
from eventlog_persist._failures import ErrorKind, classify_error, is_primary_key
from eventlog_persist.exceptions import EventWriteError, WriterClosedError

# Unbounded retries: a missing partition retried as if transient would hang the test.
FAST_RETRY = RetryPolicy(max_attempts=None, max_elapsed=None, initial_delay=0.01, max_delay=0.2)
FAR = datetime.now(UTC) - timedelta(days=400)  # before the oldest partition (a backfill)
NO_PARTITION = "event_logs is partitioned and no partition holds its created_at"


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(partitioned=True)


@pytest.fixture
def host_engine(engine: Engine, host_models: HostModels) -> Engine:
    """The partitioned table with weekly partitions only: 2 weeks back to 4 weeks ahead."""
    host_models.Base.metadata.create_all(engine)
    create_partitions(engine, catch_all=False)
    return engine


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> dict[str, Any]:
    user_id, session_id = seed(host_engine, host_models)
    return {"user_id": user_id, "session_id": session_id}


class DeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[NewEvent, BaseException]] = []
        self.lock = threading.Lock()

    def __call__(self, event: NewEvent, error: BaseException) -> None:
        with self.lock:
            self.items.append((event, error))


def buffered(
    models: HostModels, engine: Engine, dead: DeadLetters, **options: Any
) -> BufferedWriter[Any]:
    """A buffered writer that writes each event at once (unless told otherwise) and reports
    the events it gives up on to ``dead``."""
    return BufferedWriter(
        models.EventLog, engine, on_dead_letter=dead, **{"flush_interval": 0.01, **options}
    )


def stored(engine: Engine) -> list[tuple[Any, datetime]]:
    with engine.connect() as connection:
        return [
            tuple(row)
            for row in connection.execute(text("SELECT id, created_at FROM event_logs ORDER BY id"))
        ]  # type: ignore[misc]


def test_the_primary_key_of_a_partition_is_recognised_by_its_name() -> None:
    assert is_primary_key("pk_event_logs", "event_logs")
    assert is_primary_key("event_logs_p20261130_pkey", "event_logs_p20261130")
    assert is_primary_key("event_logs_p20261130_pkey1", "event_logs_p20261130")
    long = "event_logs_" + "x" * 60
    assert is_primary_key(f"{long[:58]}_pkey", long)  # PostgreSQL cuts the name to 63 bytes
    assert not is_primary_key("uq_event_logs_request_id", "event_logs")
    assert not is_primary_key("other_table_pkey", "event_logs_p20261130")
    assert not is_primary_key(None, "event_logs_p20261130")


def test_a_duplicate_in_a_partition_is_a_duplicate_and_a_missing_partition_a_bad_row(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    writer = EventWriter(host_models.EventLog)
    event = writer.event(event_type="user_message", **keys)
    insert = "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at) "
    insert += "VALUES (%s, %s, %s, 'user_message', %s)"
    values = (event.id, keys["session_id"], keys["user_id"], event.created_at)
    with host_engine.connect() as connection:
        raw: Any = connection.connection.dbapi_connection
        raw.autocommit = True
        raw.execute(insert, values)
        with pytest.raises(psycopg.errors.UniqueViolation) as duplicate:
            raw.execute(insert, values)
        assert duplicate.value.diag.constraint_name.endswith("_pkey")
        assert classify_error(duplicate.value) is ErrorKind.DUPLICATE
        with pytest.raises(psycopg.errors.CheckViolation) as missing:
            raw.execute(insert, (*values[:3], FAR))
        assert classify_error(missing.value) is ErrorKind.ROW


def test_record_in_the_callers_session(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    writer = EventWriter(host_models.EventLog)
    with Session(host_engine) as session:
        row = writer.record(session, event_type="user_message", **keys)
        session.commit()
        assert session.get(host_models.EventLog, (row.id, row.created_at)) is row
    with Session(host_engine) as session:
        writer.record(session, event_type="user_message", created_at=FAR, **keys)
        # The caller's flush raises the database's own error, with a note naming the fix.
        with pytest.raises(IntegrityError, match='no partition of relation "event_logs"') as caught:
            session.commit()
    assert len(stored(host_engine)) == 1
    (note,) = caught.value.__notes__
    assert "event_logs is partitioned and no partition holds the created_at" in note
    assert "ensure_partitions()" in note
    # Another error of the same flush (a session that does not exist) is left as it is.
    with Session(host_engine) as session:
        writer.record(session, event_type="user_message", **{**keys, "session_id": uuid.uuid4()})
        with pytest.raises(IntegrityError, match="foreign key") as refused:
            session.commit()
    assert not getattr(refused.value, "__notes__", None)
    # Another partitioned table's error of the same kind is left as it is.
    with host_engine.begin() as connection:
        connection.execute(text("CREATE TABLE other (at date) PARTITION BY RANGE (at)"))
    with Session(host_engine) as session, pytest.raises(IntegrityError) as other:
        session.execute(text("INSERT INTO other VALUES ('2026-01-01')"))
    assert not getattr(other.value, "__notes__", None)


@pytest.mark.asyncio
async def test_record_in_an_async_session_names_the_fix_too(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any], database_url: URL
) -> None:
    engine = create_async_engine(database_url)
    writer = EventWriter(host_models.EventLog)
    try:
        async with AsyncSession(engine) as session:
            writer.record(session, event_type="user_message", created_at=FAR, **keys)
            with pytest.raises(IntegrityError) as caught:
                await session.commit()
    finally:
        await engine.dispose()
    assert "ensure_partitions()" in caught.value.__notes__[0]


def test_a_detached_retry_stores_the_event_once(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    writer = EventWriter(host_models.EventLog)
    event = writer.event(event_type="user_message", **keys)
    # A retry after a commit whose outcome was unknown writes the very same event again.
    assert writer.record_detached(host_engine, event) is event
    assert writer.record_detached(host_engine, event) is event
    assert stored(host_engine) == [(event.id, event.created_at)]


def test_a_detached_write_without_a_partition_names_the_fix(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    writer = EventWriter(host_models.EventLog, retry=FAST_RETRY)
    event = writer.event(event_type="user_message", created_at=FAR, **keys)
    started = time.monotonic()
    with pytest.raises(EventWriteError) as refused:
        writer.record_detached(host_engine, event)
    assert time.monotonic() - started < 5  # given up at once, never retried
    assert refused.value.sqlstate == "23514"
    assert NO_PARTITION in str(refused.value)
    assert FAR.isoformat() in str(refused.value)
    assert "docs/adoption.md" in str(refused.value)
    assert stored(host_engine) == []


def test_bulk_writes_are_idempotent_and_count_duplicates(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    writer = EventWriter(host_models.EventLog)
    first = [writer.event(event_type="user_message", **keys) for _ in range(30)]
    later = [writer.event(event_type="user_message", **keys) for _ in range(20)]
    week = timedelta(weeks=1)
    spread = [  # over three partitions
        writer.event(event_type="user_message", created_at=datetime.now(UTC) + n * week, **keys)
        for n in (-2, -1, 0)
    ]
    assert write_events(host_models.EventLog, host_engine, first).written == 30
    # Straight COPY meets the partition's own key, then the batch goes through ON CONFLICT.
    result = write_events(host_models.EventLog, host_engine, first[10:] + later + spread)
    assert (result.written, result.duplicates, result.dead_lettered) == (43, 20, [])
    assert sorted(stored(host_engine)) == sorted(
        (e.id, e.created_at) for e in first + later + spread
    )


def test_bulk_dead_letters_only_the_events_without_a_partition(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    writer = EventWriter(host_models.EventLog)
    events = [writer.event(event_type="user_message", **keys) for _ in range(9)]
    lost = writer.event(event_type="user_message", created_at=FAR, **keys)
    dead = DeadLetters()
    result = write_events(
        host_models.EventLog,
        host_engine,
        [*events[:4], lost, *events[4:]],
        retry=FAST_RETRY,
        on_dead_letter=dead,
    )
    assert result.written == 9
    assert [event for event, _ in result.dead_lettered] == [lost]
    assert NO_PARTITION in str(result.dead_lettered[0][1])
    assert [event for event, _ in dead.items] == [lost]
    assert len(stored(host_engine)) == 9


def test_buffered_writer_retries_events_without_a_partition_for_a_while_and_goes_on(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    dead = DeadLetters()
    with buffered(
        host_models,
        host_engine,
        dead,
        batch_size=20,
        retry=FAST_RETRY,
        missing_partition_timeout=2.0,
    ) as writer:
        started = time.monotonic()
        for i in range(50):
            when = FAR if i % 10 == 0 else None
            writer.enqueue(event_type="chat", payload={"i": i}, created_at=when, **keys)
        # The queue is not blocked: the other events are stored while those five wait.
        deadline = time.monotonic() + 10
        while len(stored(host_engine)) < 45 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(stored(host_engine)) == 45
        assert dead.items == []
        writer.enqueue(event_type="chat", payload={"i": 50}, **keys)
        assert writer.flush(timeout=20)
        waited = time.monotonic() - started
        counters = writer.counters
    assert 2.0 <= waited < 10
    assert len(stored(host_engine)) == 46
    assert sorted(json.loads(event.payload_json)["i"] for event, _ in dead.items) == [
        0,
        10,
        20,
        30,
        40,
    ]
    assert all(NO_PARTITION in str(error) for _, error in dead.items)
    assert all("retried it for 2 s (missing_partition_timeout)" in str(e) for _, e in dead.items)
    assert all(error.sqlstate == "23514" for _, error in dead.items)
    assert (counters.written, counters.dead_lettered, counters.queued) == (46, 5, 0)
    assert counters.retried >= 10  # each of the five offered at least three times


def test_buffered_writer_writes_a_held_event_once_its_partition_exists(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    dead = DeadLetters()
    late = FAR  # a week without a partition, as if maintenance were late
    with buffered(host_models, host_engine, dead) as writer:
        event = writer.enqueue(event_type="chat", created_at=late, **keys)
        assert not writer.flush(timeout=1)  # set aside, retried, not given up
        ensure_partitions(host_models.EventLog, host_engine, ahead=0, now=late)
        assert writer.flush(timeout=20)
    assert dead.items == []
    assert stored(host_engine) == [(event.id, event.created_at)]


def test_an_event_held_again_after_it_was_written_gets_a_new_wait(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # Written once its partition came, the event is forgotten: replayed after retention
    # dropped that partition, it waits missing_partition_timeout again from its new failure.
    dead = DeadLetters()
    late = FAR
    with buffered(host_models, host_engine, dead, missing_partition_timeout=1.5) as writer:
        event = writer.enqueue(event_type="chat", created_at=late, **keys)
        first_failure = time.monotonic()
        assert not writer.flush(timeout=0.3)
        ensure_partitions(host_models.EventLog, host_engine, ahead=0, now=late)
        assert writer.flush(timeout=20)
        with host_engine.begin() as connection:
            partition = connection.execute(
                text("SELECT tableoid::regclass::text FROM event_logs WHERE id = :id"),
                {"id": event.id},
            ).scalar_one()
            connection.execute(text(f"DROP TABLE {partition}"))
        time.sleep(max(0.0, first_failure + 1.6 - time.monotonic()))
        writer.enqueue(event)
        assert not writer.flush(timeout=0.5)  # held again, not given up
        assert dead.items == []
        ensure_partitions(host_models.EventLog, host_engine, ahead=0, now=late)
        assert writer.flush(timeout=20)
    assert dead.items == []
    assert stored(host_engine) == [(event.id, event.created_at)]
    assert writer.counters.written == 2


def test_an_event_replayed_after_it_was_given_up_gets_a_new_wait(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    dead = DeadLetters()
    with buffered(host_models, host_engine, dead, missing_partition_timeout=1.0) as writer:
        event = writer.enqueue(event_type="chat", created_at=FAR, **keys)
        assert writer.flush(timeout=10)
        assert [given for given, _ in dead.items] == [event]
        writer.enqueue(event)  # the hook's replay, before the partition exists
        assert not writer.flush(timeout=0.5)  # held again, not given up at once
        assert len(dead.items) == 1
        assert writer.flush(timeout=10)
    assert [given for given, _ in dead.items] == [event, event]
    assert all("retried it for 1 s" in str(error) for _, error in dead.items)


def test_a_refused_event_does_not_take_a_held_one_of_its_batch_with_it(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # A host's own CHECK refuses with the same SQLSTATE as a missing partition (23514) but
    # names its constraint: that event is given up at once, the one after it is held.
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT ck_no_forbidden "
                "CHECK (event_type <> 'forbidden')"
            )
        )
    dead = DeadLetters()
    with buffered(host_models, host_engine, dead, flush_interval=0.5) as writer:
        refused = writer.enqueue(event_type="forbidden", **keys)
        late = writer.enqueue(event_type="chat", created_at=FAR, **keys)
        fine = writer.enqueue(event_type="chat", **keys)
        assert not writer.flush(timeout=1.5)
        assert [event for event, _ in dead.items] == [refused]
        assert "ck_no_forbidden" in str(dead.items[0][1])
        ensure_partitions(host_models.EventLog, host_engine, ahead=0, now=FAR)
        assert writer.flush(timeout=20)
    assert len(dead.items) == 1
    assert sorted(stored(host_engine)) == sorted(
        (event.id, event.created_at) for event in (late, fine)
    )


@pytest.mark.parametrize("flush_interval", [0.01, 3.0])
def test_a_held_event_is_offered_again_after_half_a_second_then_twice_as_late(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any], flush_interval: float
) -> None:
    # Offers after 0.5, 1 and 2 s (then 4, and every 5 s), and a last one at the deadline;
    # an offer is due at once, not flush_interval after it (only the first write waits).
    offers: list[float] = []
    with buffered(
        host_models,
        host_engine,
        DeadLetters(),
        missing_partition_timeout=3.2,
        flush_interval=flush_interval,
    ) as writer:
        started = time.monotonic()
        writer.enqueue(event_type="chat", created_at=FAR, **keys)
        seen = 0
        while writer.counters.dead_lettered == 0:
            assert time.monotonic() - started < 15
            if writer.counters.retried > seen:
                seen = writer.counters.retried
                offers.append(time.monotonic() - started)
            time.sleep(0.005)
        ended = time.monotonic() - started
    assert len(offers) == 3  # held three times, then given up at the fourth offer
    assert (writer.counters.retried, writer.counters.read_only_retries) == (3, 0)
    gaps = [later - earlier for earlier, later in itertools.pairwise([*offers, ended])]
    for gap, expected in zip(gaps, [0.5, 1.0, 1.7], strict=True):
        assert expected - 0.05 <= gap <= expected + 0.4, (gaps, offers)


def hold_one(writer: BufferedWriter[Any], keys: dict[str, Any]) -> None:
    """Enqueue an event without a partition and one more: with ``batch_size=2`` a full
    batch, written at once; wait until the first is held."""
    writer.enqueue(event_type="chat", created_at=FAR, **keys)
    writer.enqueue(event_type="chat", **keys)
    wait_for(lambda: writer.counters.retried == 1, 10, "the first hold")


def test_a_held_event_is_offered_on_time_after_a_full_batch_went_by(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # A full batch is written at once, so the queue's clock still shows its first event's
    # arrival: the held event offered into the empty queue after it must not wait that out.
    with buffered(host_models, host_engine, DeadLetters(), batch_size=2, flush_interval=3.0) as w:
        hold_one(w, keys)
        held = time.monotonic()
        w.enqueue(event_type="chat", **keys)
        w.enqueue(event_type="chat", **keys)  # another full batch, just before the offer
        wait_for(lambda: w.counters.retried == 2, 10, "the second hold")
        assert time.monotonic() - held < 1.5  # offered after 0.5 s, not after flush_interval


def test_a_flush_writes_a_held_event_offered_again_behind_a_full_batch(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    with buffered(host_models, host_engine, DeadLetters(), batch_size=2, flush_interval=600) as w:
        hold_one(w, keys)
        ensure_partitions(host_models.EventLog, host_engine, ahead=0, now=FAR)
        with host_engine.connect() as holder:
            holder.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
            for _ in range(4):  # a batch written (waiting for the lock), a batch behind it
                w.enqueue(event_type="chat", **keys)
            wait_for(lambda: waits_for_a_lock(host_engine), 10, "the batch's write")
            time.sleep(0.6)  # the held event is due: queued again, behind that batch
        # Left over when that batch is taken, it waits for flush_interval unless flushed.
        assert w.flush(timeout=10)
    assert len(stored(host_engine)) == 6


def test_a_writer_holding_an_event_sleeps_until_its_next_offer(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    with buffered(host_models, host_engine, DeadLetters()) as writer:
        writer.enqueue(event_type="chat", created_at=FAR, **keys)
        wait_for(lambda: writer.counters.retried == 1, 10, "the first hold")
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(1.5)  # an offer at 0.5 s, the next at 1.5 s
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        assert writer.counters.retried >= 2
    assert cpu < wall / 3, f"{cpu:.2f} s of CPU in {wall:.2f} s: the writer spins"


@pytest.mark.parametrize("limit", [60.0, math.inf])  # the default, and no limit but the close
def test_closing_gives_up_held_events_at_once(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any], limit: float
) -> None:
    dead = DeadLetters()
    writer = buffered(host_models, host_engine, dead, missing_partition_timeout=limit).start()
    writer.enqueue(event_type="chat", created_at=FAR, **keys)
    assert not writer.flush(timeout=0.5)
    started = time.monotonic()
    counters = writer.close(timeout=20)
    assert time.monotonic() - started < 10  # not the 60 s default
    assert (counters.dead_lettered, counters.queued) == (1, 0)
    assert NO_PARTITION in str(dead.items[0][1])


def test_an_event_set_aside_for_its_partition_counts_in_the_oldest_queued_age(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    """It is queued (``counters.queued``) and in memory: the alert signal must see it age."""
    dead = DeadLetters()
    writer = buffered(host_models, host_engine, dead, flush_interval=0.05).start()
    started = time.monotonic()
    writer.enqueue(event_type="chat", created_at=FAR, **keys)
    wait_for(lambda: writer.counters.retried >= 2, 10, "the event offered again")
    stats = writer.stats
    assert stats.counters.queued == 1
    assert stats.oldest_queued_age is not None
    assert stats.oldest_queued_age >= 0.5  # the first backoff is 0.5 s: not restarted by it
    assert stats.oldest_queued_age <= time.monotonic() - started
    writer.close(timeout=0.5)
    assert writer.stats.oldest_queued_age is None


def test_an_event_set_aside_then_given_up_by_a_bug_no_longer_ages(
    host_engine: Engine,
    host_models: HostModels,
    keys: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its re-offer fails in the writer's own code (a bug): reported, and no longer in memory."""
    real = buffered_module.deliver
    calls: list[int] = []

    def deliver(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the re-offer of the event set aside
            raise RuntimeError("a bug of the package's")
        return real(*args, **kwargs)

    monkeypatch.setattr(buffered_module, "deliver", deliver)
    dead = DeadLetters()
    writer = buffered(host_models, host_engine, dead, flush_interval=0.01).start()
    writer.enqueue(event_type="chat", created_at=FAR, **keys)
    wait_for(lambda: len(dead.items) == 1, 10, "the event given up")
    stats = writer.stats
    writer.close(timeout=1)
    assert (stats.counters.queued, stats.oldest_queued_age) == (0, None)


@pytest.mark.fault
def test_a_close_that_gives_up_reports_the_held_events_with_the_rest(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # The batch being written hangs (a lock held here), an event queued behind it, another
    # set aside for its partition: the close that gives up reports all three, and none is
    # offered again once the hung write returns.
    dead = DeadLetters()
    writer = buffered(host_models, host_engine, dead).start()
    held = writer.enqueue(event_type="chat", created_at=FAR, **keys)
    wait_for(lambda: writer.counters.retried > 0, 10, "the event set aside")
    with host_engine.connect() as holder:
        holder.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
        hung = writer.enqueue(event_type="chat", **keys)
        wait_for(lambda: waits_for_a_lock(host_engine), 10, "the hung write")
        queued = writer.enqueue(event_type="chat", **keys)
        final = writer.close(timeout=0.3)
        assert [event for event, _ in dead.items] == [hung, queued, held]
        assert all(type(error) is WriterClosedError for _, error in dead.items)
        assert "may not have been written" in str(dead.items[0][1])
        assert all("was not written" in str(error) for _, error in dead.items[1:])
        assert (final.unwritten, final.queued, final.written) == (3, 0, 0)
        assert writer.stats.oldest_queued_age is None
    # The lock is gone: the hung write commits (as its error said it might), and that is all.
    wait_for(lambda: len(stored(host_engine)) == 1, 10, "the hung write's commit")
    time.sleep(0.3)
    assert stored(host_engine) == [(hung.id, hung.created_at)]
    assert (writer.stats.oldest_queued_age, writer.counters.unwritten) == (None, 3)


def test_with_a_spool_an_event_without_a_partition_is_given_up_at_once(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any], tmp_path: Path
) -> None:
    dead = DeadLetters()
    with buffered(host_models, host_engine, dead, spool=Spool(tmp_path)) as writer:
        writer.enqueue(event_type="chat", created_at=FAR, **keys)
        writer.enqueue(event_type="chat", **keys)
        assert writer.flush(timeout=5)
    assert len(stored(host_engine)) == 1
    assert len(dead.items) == 1
    assert NO_PARTITION in str(dead.items[0][1])
    assert "retried it for" not in str(dead.items[0][1])


def test_with_no_wait_an_event_without_a_partition_is_given_up_as_a_bulk_write_does(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    dead = DeadLetters()
    with buffered(host_models, host_engine, dead, missing_partition_timeout=0) as writer:
        event = writer.enqueue(event_type="chat", created_at=FAR, **keys)
        assert writer.flush(timeout=5)
    [(given, error)] = dead.items
    [(_, bulk_error)] = write_events(host_models.EventLog, host_engine, [event]).dead_lettered
    assert given is event
    assert (type(error), str(error)) == (type(bulk_error), str(bulk_error))
    assert NO_PARTITION in str(error)


@pytest.mark.asyncio
async def test_the_async_writer_retries_and_gives_up_too(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    dead = DeadLetters()
    async with AsyncBufferedWriter(
        host_models.EventLog,
        host_engine.url,
        flush_interval=0.01,
        on_dead_letter=dead,
        missing_partition_timeout=1.0,
    ) as writer:
        await writer.enqueue(event_type="chat", created_at=FAR, **keys)
        await writer.enqueue(event_type="chat", **keys)
        assert await writer.flush(timeout=20)
    assert len(stored(host_engine)) == 1
    assert len(dead.items) == 1
    assert "retried it for 1 s" in str(dead.items[0][1])


def test_a_plain_model_on_a_partitioned_table_names_the_setting(
    host_engine: Engine, keys: dict[str, Any]
) -> None:
    plain = build_host_models()
    writer = EventWriter(plain.EventLog, retry=FAST_RETRY)
    with pytest.raises(EventWriteError) as refused:
        writer.record_detached(host_engine, event_type="user_message", **keys)
    assert refused.value.sqlstate == "42P10"
    assert "__eventlog_partitioned__ = True" in str(refused.value)
    assert isinstance(refused.value.__cause__, psycopg.Error)
    assert not isinstance(refused.value.__cause__, DBAPIError)
