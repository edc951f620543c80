"""No gaps, by construction: every committed event once, whatever the commit order.

Concurrent short writers (ORM sessions, savepoints, detached writes, COPY batches), a writer
that holds its transaction open for seconds, and rollbacks, against a snapshot-mode and a
horizon-mode consumer reading all the while; transaction ids that cross digit boundaries.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, build_host_models, seed
from pgserver import ServerInfo
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from eventlog_persist import EventFeed, EventWriter, new_event, write_events
from eventlog_persist._feed_sql import (
    Checkpoint,
    FeedStatements,
    Snapshot,
    horizon_target,
    plan_page,
    records,
    since_snapshot,
)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


class Ledger:
    """What the writers committed and rolled back, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.committed: set[uuid.UUID] = set()
        self.rolled_back: set[uuid.UUID] = set()
        self.errors: list[BaseException] = []

    def add(self, ids: list[uuid.UUID], *, committed: bool) -> None:
        with self.lock:
            (self.committed if committed else self.rolled_back).update(ids)


def short_writer(
    kind: str, engine: Engine, models: HostModels, keys: tuple[Any, Any], ledger: Ledger, n: int
) -> Callable[[], None]:
    user_id, session_id = keys
    writer = EventWriter(models.EventLog)
    rng = random.Random(kind)

    def run() -> None:
        try:
            for i in range(n):
                count = rng.randint(1, 3)
                if kind == "copy":
                    batch = [
                        new_event(session_id=session_id, user_id=user_id, event_type="copy")
                        for _ in range(count)
                    ]
                    write_events(models.EventLog, engine, batch)
                    ledger.add([event.id for event in batch], committed=True)
                elif kind == "detached":
                    event = writer.record_detached(
                        engine, session_id=session_id, user_id=user_id, event_type="detached"
                    )
                    ledger.add([event.id], committed=True)
                else:
                    with Session(engine) as session:
                        rows = [
                            writer.record(
                                session, session_id=session_id, user_id=user_id, event_type=kind
                            )
                            for _ in range(count)
                        ]
                        session.flush()
                        if kind == "savepoint":  # more events, inside a subtransaction
                            with session.begin_nested():
                                rows.append(
                                    writer.record(
                                        session,
                                        session_id=session_id,
                                        user_id=user_id,
                                        event_type=kind,
                                    )
                                )
                        if i % 10 == 3:  # one transaction in ten rolls back
                            session.rollback()
                            ledger.add([row.id for row in rows], committed=False)
                        else:
                            session.commit()
                            ledger.add([row.id for row in rows], committed=True)
        except BaseException as exc:  # pragma: no cover - reported by the test
            ledger.errors.append(exc)

    return run


def long_writer(
    engine: Engine, keys: tuple[Any, Any], ledger: Ledger, holds: list[float]
) -> Callable[[], None]:
    """Each transaction writes, holds its locks for a while, writes again, then ends."""
    user_id, session_id = keys

    def insert(connection: Any, ids: list[uuid.UUID]) -> None:
        for event_id in ids:
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, event_type) "
                    "VALUES (:id, :s, :u, 'long')"
                ),
                {"id": event_id, "s": session_id, "u": user_id},
            )

    def run() -> None:
        try:
            for number, hold in enumerate(holds):
                ids = [uuid.uuid4() for _ in range(20)]
                with engine.connect() as connection:
                    insert(connection, ids[:10])
                    time.sleep(hold)
                    insert(connection, ids[10:])
                    if number == 1:
                        connection.rollback()
                        ledger.add(ids, committed=False)
                    else:
                        connection.commit()
                        ledger.add(ids, committed=True)
        except BaseException as exc:  # pragma: no cover - reported by the test
            ledger.errors.append(exc)

    return run


class Reader:
    """A consumer reading batch after batch, committing each, until told to drain."""

    def __init__(self, feed: EventFeed[Any], seed_: int) -> None:
        self.feed = feed
        self.delivered: list[uuid.UUID] = []
        self.batches = 0
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.rng = random.Random(seed_)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step(self.rng.randint(20, 300))
                time.sleep(self.rng.random() * 0.01)
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.errors.append(exc)

    def step(self, limit: int) -> int:
        batch = self.feed.fetch(limit=limit)
        self.delivered += [event.id for event in batch.events]
        self.feed.commit(batch)
        self.batches += 1
        return len(batch.events)

    def drain(self, expected: int) -> None:
        """Read until every committed event came (a horizon feed may wait for other tests'
        transactions on a shared server)."""
        deadline = time.monotonic() + 30
        while len(set(self.delivered)) < expected and time.monotonic() < deadline:
            if not self.step(1000):
                time.sleep(0.05)
        self.step(1000)  # and nothing after


@pytest.mark.timeout(180)
def test_concurrent_writers_long_transactions_and_rollbacks_lose_and_repeat_nothing(
    host_engine: Engine, host_models: HostModels
) -> None:
    keys = seed(host_engine, host_models)
    ledger = Ledger()
    readers = [
        Reader(EventFeed(host_models.EventLog, host_engine, consumer="snap"), 1),
        Reader(EventFeed(host_models.EventLog, host_engine, consumer="hor", mode="horizon"), 2),
    ]
    for reader in readers:
        reader.feed.register(start="earliest")
    writers = [
        short_writer(kind, host_engine, host_models, keys, ledger, 400)
        for kind in ("session", "savepoint", "detached", "copy")
    ]
    writers.append(long_writer(host_engine, keys, ledger, [0.5, 1.5, 2.5, 1.0]))
    threads = [threading.Thread(target=run) for run in writers]
    reading = [threading.Thread(target=reader.run) for reader in readers]
    for thread in [*reading, *threads]:
        thread.start()
    for thread in threads:
        thread.join()
    for reader, thread in zip(readers, reading, strict=True):
        reader.stop.set()
        thread.join()
    assert not ledger.errors
    assert len(ledger.committed) > 2500
    assert len(ledger.rolled_back) > 50
    for reader in readers:
        assert not reader.errors
        reader.drain(len(ledger.committed))
        counts = Counter(reader.delivered)
        missed = ledger.committed - set(counts)
        repeated = [event_id for event_id, seen in counts.items() if seen > 1]
        phantom = set(counts) - ledger.committed
        assert (len(missed), len(repeated), len(phantom)) == (0, 0, 0), reader.feed.consumer
        assert reader.batches > 20  # it read while the writers wrote


def test_snapshot_mode_never_waits_for_a_long_transaction_horizon_mode_does(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    snap = EventFeed(host_models.EventLog, host_engine, consumer="snap")
    horizon = EventFeed(host_models.EventLog, host_engine, consumer="hor", mode="horizon")
    snap.register()
    horizon.register()
    long_id = uuid.uuid4()
    with host_engine.connect() as long:
        long.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type) "
                "VALUES (:id, :s, :u, 'long')"
            ),
            {"id": long_id, "s": session_id, "u": user_id},
        )
        short = [
            new_event(session_id=session_id, user_id=user_id, event_type="short") for _ in range(3)
        ]
        write_events(host_models.EventLog, host_engine, short)
        batch = snap.fetch()
        assert [event.id for event in batch.events] == [event.id for event in short]
        snap.commit(batch)
        held = horizon.fetch()
        assert held.events == ()  # below the long transaction: nothing yet
        horizon.commit(held)
        long.commit()
    assert [event.id for event in snap.fetch().events] == [long_id]
    deadline = time.monotonic() + 30
    got: list[uuid.UUID] = []
    while len(got) < 4 and time.monotonic() < deadline:
        batch = horizon.fetch()
        horizon.commit(batch)
        got += [event.id for event in batch.events]
    assert got == [long_id, *(event.id for event in short)]  # by transaction id


# -- ordering across digit boundaries ------------------------------------------------------

BOUNDARIES = [9, 10, 99, 100, 101, 999, 1000, 1001, 9999, 10000, 10001]


def burn_transaction_ids(pg_server: ServerInfo, dbname: str, beyond: int) -> None:
    """Start and end transactions until the server's next transaction id is past ``beyond``.

    A fresh test server's ids are in the low thousands; the synthetic ids below must be
    finished ones, below every snapshot's xmin. A DO block commits once per id.
    """
    with psycopg.connect(**pg_server.connect_kwargs(dbname), autocommit=True) as connection:
        connection.execute(
            f"DO $$ BEGIN WHILE pg_current_xact_id()::text::bigint <= {int(beyond)} LOOP "
            "COMMIT; END LOOP; END $$"
        )


def test_transaction_ids_across_digit_boundaries_come_in_numeric_order(
    host_engine: Engine, host_models: HostModels, pg_server: ServerInfo
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    burn_transaction_ids(pg_server, host_engine.url.database or "", max(BOUNDARIES) + 10)
    expected = []
    with host_engine.begin() as connection:
        for xid in reversed(BOUNDARIES):  # stored in the opposite order
            for _ in range(2):
                event_id = uuid.uuid4()
                connection.execute(
                    text(
                        "INSERT INTO event_logs (id, session_id, user_id, event_type, xid) "
                        "VALUES (:id, :s, :u, 'synthetic', CAST(:x AS xid8))"
                    ),
                    {"id": event_id, "s": session_id, "u": user_id, "x": str(xid)},
                )
                expected.append((xid, event_id))
    expected.sort()
    feed = EventFeed(host_models.EventLog, host_engine, consumer="c")
    feed.register()
    delivered = []
    while True:
        batch = feed.fetch(limit=3)  # small pages: the keyset crosses every boundary
        if not batch.events:
            break
        delivered += [event.id for event in batch.events]
        feed.commit(batch)
    assert delivered == [event_id for _, event_id in expected]


@pytest.mark.parametrize(
    "xids",
    [
        [9_998, 9_999, 10_000, 10_001, 99_999, 100_000],
        # Epochs: after 2**32 - 1 comes 2**32 + 3 (ids 0 to 2 of an epoch are never used).
        [2**32 - 2, 2**32 - 1, 2**32 + 3, 2**32 + 4, 10 * 2**32 - 1, 10 * 2**32 + 3],
    ],
    ids=["digits", "epochs"],
)
def test_pages_of_synthetic_snapshots_cross_boundaries_in_order(
    host_engine: Engine, host_models: HostModels, xids: list[int]
) -> None:
    """The batch statements and the checkpoint logic alone, with snapshots made up to lie
    beyond the server's own ids: pages of two, a transaction in flight at each end."""
    user_id, session_id = seed(host_engine, host_models)
    rows = [(xid, uuid.uuid4()) for xid in xids for _ in range(2)]
    with host_engine.begin() as connection:
        for xid, event_id in rows:
            connection.execute(
                text(
                    "INSERT INTO event_logs (id, session_id, user_id, event_type, xid) "
                    "VALUES (:id, :s, :u, 'synthetic', CAST(:x AS xid8))"
                ),
                {"id": event_id, "s": session_id, "u": user_id, "x": str(xid)},
            )
    statements = FeedStatements(host_models.EventLog)
    # Batch 1: everything below the third id finished, the second still running.
    first = Snapshot(xids[1], xids[2], (xids[1],))
    # Batch 2: everything finished.
    second = Snapshot(xids[-1] + 1, xids[-1] + 1)
    checkpoint = Checkpoint(done=Snapshot(xids[0], xids[0]))
    delivered: list[uuid.UUID] = []
    with host_engine.connect() as connection:
        for current in (first, second):
            while True:
                plan = plan_page(checkpoint, current, mode="snapshot", limit=2)
                page = connection.execute(statements.page(plan), plan.params).all()
                delivered += [record.id for record in records(page)]
                checkpoint = plan.next_checkpoint(page)
                if checkpoint.target is None:
                    break
    by_xid = sorted(rows)
    in_flight = [event_id for xid, event_id in by_xid if xid == xids[1]]
    assert delivered[:2] == [event_id for xid, event_id in by_xid if xid == xids[0]]
    assert delivered[2:4] == in_flight  # finished late: first in the second batch
    assert delivered[4:] == [event_id for xid, event_id in by_xid if xid > xids[1]]


def test_snapshot_arithmetic() -> None:
    done = Snapshot.parse("100:110:100,105,108")
    assert str(done) == "100:110:100,105,108"
    assert done.visible(99)
    assert not done.visible(100)
    assert done.visible(101)
    assert not done.visible(110)
    # The horizon below the oldest running transaction keeps what done saw finished.
    assert horizon_target(done, Snapshot.parse("105:130:105,120")) == Snapshot(105, 110, (105, 108))
    assert horizon_target(done, Snapshot.parse("120:130:120")) == Snapshot(120, 120)
    assert horizon_target(done, Snapshot.parse("90:95:")) == done  # never backwards
    # A start time whose first event is 104, read in a snapshot with 102 in flight.
    assert since_snapshot(104, Snapshot.parse("102:115:102,112")) == Snapshot(102, 104, (102,))
    assert since_snapshot(None, Snapshot.parse("102:115:102")) == Snapshot(102, 115, (102,))
