"""Partition maintenance: create ahead, list, detach and drop old ones, recovery of an
interrupted detach, and purge_events on the partitioned layout."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from eventlog_persist import (
    EventWriter,
    drop_partitions,
    ensure_partitions,
    list_partitions,
    purge_events,
    write_events,
)
from eventlog_persist.exceptions import ConfigurationError, ValidationError

# A Wednesday: its week starts on Monday 2026-11-30.
NOW = datetime(2026, 12, 2, 15, 30, tzinfo=UTC)
MONDAY = datetime(2026, 11, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
WEEK = timedelta(weeks=1)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(partitioned=True)


@pytest.fixture
def host_engine(engine: Engine, host_models: HostModels) -> Engine:
    """The partitioned table with no partition yet."""
    host_models.Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def keys(host_engine: Engine, host_models: HostModels) -> dict[str, Any]:
    user_id, session_id = seed(host_engine, host_models)
    return {"user_id": user_id, "session_id": session_id}


def names(engine: Engine, model: Any) -> list[str]:
    return [p.name for p in list_partitions(model, engine)]


def count(engine: Engine, where: str = "true") -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(text(f"SELECT count(*) FROM event_logs WHERE {where}")).scalar_one()
        )


def table_exists(engine: Engine, name: str) -> bool:
    with engine.connect() as connection:
        return connection.execute(
            text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}
        ).scalar_one()


# --- ensure_partitions ------------------------------------------------------------------------


def test_ensure_creates_the_current_week_and_those_ahead_once(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    created = ensure_partitions(model, host_engine, ahead=2, now=NOW)
    assert created == ("event_logs_p20261130", "event_logs_p20261207", "event_logs_p20261214")
    assert ensure_partitions(model, host_engine, ahead=2, now=NOW) == ()
    # One more ahead, a week later: only the missing one.
    assert ensure_partitions(model, host_engine, ahead=2, now=NOW + WEEK) == (
        "event_logs_p20261221",
    )
    found = list_partitions(model, host_engine)
    assert [(p.lower, p.upper) for p in found] == [
        (MONDAY + n * WEEK, MONDAY + (n + 1) * WEEK) for n in range(4)
    ]
    first = found[0]
    assert first.schema == "public"
    assert not first.default
    assert not first.detach_pending
    assert first.total_bytes > 0  # its indexes exist, even empty
    assert first.estimated_rows is None  # never analyzed


def test_created_partitions_take_writes_with_the_keys_and_indexes_of_the_parent(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    ensure_partitions(model, host_engine, ahead=1)
    writer = EventWriter(model)
    event = writer.event(event_type="user_message", **keys)
    result = write_events(model, host_engine, [event, event])
    # The second copy meets the partition's primary key and is counted a duplicate.
    assert (result.written, result.duplicates) == (2, 1)
    with host_engine.connect() as connection:
        indexes = connection.execute(
            text(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                "WHERE c.relname = :name"
            ),
            {"name": list_partitions(model, host_engine)[0].name},
        ).scalar_one()
        foreign_keys = connection.execute(
            text(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                "AND conrelid = to_regclass(:name)"
            ),
            {"name": list_partitions(model, host_engine)[0].name},
        ).scalar_one()
    assert (indexes, foreign_keys) == (5, 4)


def test_ensure_by_month_and_the_interval_read_from_the_newest_partition(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    assert ensure_partitions(model, host_engine, ahead=1, interval="month", now=NOW) == (
        "event_logs_p20261201",
        "event_logs_p20270101",
    )
    # Later, without interval: a month, as the newest partition; across the new year.
    later = datetime(2027, 1, 20, tzinfo=UTC)
    assert ensure_partitions(model, host_engine, ahead=1, now=later) == ("event_logs_p20270201",)


def test_a_period_held_in_part_gets_a_partition_for_the_rest(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    cut = datetime(
        2026, 12, 2, 9, 0, tzinfo=UTC
    )  # a converted table's legacy partition ends mid-week
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE event_logs_legacy PARTITION OF event_logs "
                f"FOR VALUES FROM (MINVALUE) TO ('{cut.isoformat()}')"
            )
        )
    assert ensure_partitions(model, host_engine, ahead=1, now=NOW) == (
        "event_logs_p20261202",
        "event_logs_p20261207",
    )
    found = list_partitions(model, host_engine)
    assert [(p.name, p.lower, p.upper) for p in found] == [
        ("event_logs_legacy", None, cut),
        ("event_logs_p20261202", cut, MONDAY + WEEK),
        ("event_logs_p20261207", MONDAY + WEEK, MONDAY + 2 * WEEK),
    ]


def test_two_runs_at_once_both_succeed(host_engine: Engine, host_models: HostModels) -> None:
    model = host_models.EventLog
    results: list[tuple[str, ...]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            results.append(ensure_partitions(model, host_engine, ahead=6, now=NOW))
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(len(created) for created in results) == [0, 0, 0, 7]
    assert len(names(host_engine, model)) == 7


def test_refusals_name_the_fix(
    engine: Engine, host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    with pytest.raises(ConfigurationError, match="from 0 to 52"):
        ensure_partitions(model, host_engine, ahead=53)
    with pytest.raises(ConfigurationError, match="'week' or 'month'"):
        ensure_partitions(model, host_engine, interval="day")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lock_timeout"):
        ensure_partitions(model, host_engine, lock_timeout=-1)
    with pytest.raises(ValidationError, match="time-zone aware"):
        drop_partitions(model, host_engine, older_than=datetime(2026, 1, 1))
    with pytest.raises(ConfigurationError, match="keep_detached must be True or False"):
        drop_partitions(model, host_engine, older_than=NOW, keep_detached="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="sync sqlalchemy Engine"):
        list_partitions(model, "postgresql://x/y")  # type: ignore[arg-type]
    with (
        host_engine.connect() as connection,
        connection.begin(),
        pytest.raises(ConfigurationError, match="already in a transaction"),
    ):
        drop_partitions(model, connection, older_than=NOW)


def test_a_plain_table_is_refused_with_the_fix(engine: Engine) -> None:
    plain = build_host_models()
    plain.Base.metadata.create_all(engine)
    for call in (
        lambda: ensure_partitions(plain.EventLog, engine),
        lambda: list_partitions(plain.EventLog, engine),
        lambda: drop_partitions(plain.EventLog, engine, older_than=NOW),
    ):
        with pytest.raises(ConfigurationError, match="is not partitioned") as refused:
            call()
        assert "evlpart_0001" in str(refused.value)
        assert "purge_events" in str(refused.value)


def test_a_missing_table_is_refused(engine: Engine) -> None:
    with pytest.raises(ConfigurationError, match="there is no event_logs table"):
        list_partitions(build_host_models(partitioned=True).EventLog, engine)


# --- drop_partitions --------------------------------------------------------------------------


def old_and_new(engine: Engine, model: Any, keys: dict[str, Any]) -> datetime:
    """Partitions from 4 weeks back to 1 ahead, 2 events in each week; returns the cutoff
    (two weeks back, mid-week: the partition holding it straddles it, with events on each
    side whatever the day of the week)."""
    now = datetime.now(UTC)
    ensure_partitions(model, engine, ahead=5, now=now - 4 * WEEK)
    ensure_partitions(model, engine, ahead=1, now=now)
    start = now - now.weekday() * timedelta(days=1)  # this week's Monday, at now's time of day
    monday = start.replace(hour=0, minute=0, second=0, microsecond=0)
    cutoff = monday - 2 * WEEK + timedelta(days=3)
    writer = EventWriter(model)
    # This week's events an hour or two ago; each past week's the evening before its
    # Thursday, which is before the cutoff in the straddling week.
    times = [now - timedelta(hours=h) for h in (1, 2)]
    times += [cutoff - n * WEEK + shift for n in (-1, 0, 1) for shift in (-HOUR, -2 * HOUR)]
    events = [writer.event(event_type="user_message", created_at=t, **keys) for t in times]
    assert write_events(model, engine, events).written == 8
    return cutoff


def test_drop_removes_only_partitions_wholly_before_the_cutoff(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    before = list_partitions(model, host_engine)
    old = [p.name for p in before if p.upper is not None and p.upper <= cutoff]
    assert len(old) == 2
    result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.dropped == tuple(old)
    assert (result.detached, result.finalized) == ((), ())
    assert names(host_engine, model) == [p.name for p in before if p.name not in old]
    assert not any(table_exists(host_engine, name) for name in old)
    # The straddling partition stays: purge_events deletes its older events.
    straddling = next(p for p in list_partitions(model, host_engine) if p.lower is not None)
    assert straddling.lower is not None
    assert straddling.upper is not None
    assert straddling.lower < cutoff < straddling.upper
    assert drop_partitions(model, host_engine, older_than=cutoff) == type(result)()


def test_two_drops_at_once_both_succeed(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    results: list[Any] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(drop_partitions(model, host_engine, older_than=cutoff))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(len(result.dropped) for result in results) == [0, 2]


def test_drop_can_keep_the_tables_for_archiving(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    total = count(host_engine)
    with host_engine.connect() as connection:
        result = drop_partitions(model, connection, older_than=cutoff, keep_detached=True)
        assert connection.get_isolation_level() != "AUTOCOMMIT"  # the connection's own again
    assert result.dropped == ()
    assert len(result.detached) == 2
    assert count(host_engine) < total
    with host_engine.connect() as connection:
        kept = sum(
            connection.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
            for name in result.detached
        )
    assert count(host_engine) + kept == total


def test_a_plain_detach_when_there_is_a_default_partition(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    ensure_partitions(model, host_engine, ahead=1, now=NOW - 4 * WEEK)
    with host_engine.begin() as connection:
        connection.execute(text("CREATE TABLE event_logs_default PARTITION OF event_logs DEFAULT"))
    with pytest.raises(ConfigurationError, match="concurrently=False"):
        drop_partitions(model, host_engine, older_than=NOW)
    result = drop_partitions(model, host_engine, older_than=NOW, concurrently=False)
    assert len(result.dropped) == 2
    assert [p.default for p in list_partitions(model, host_engine)] == [True]


def hold(url: URL) -> tuple[Engine, Any]:
    """A transaction that has read event_logs and stays open: a detach waits for it."""
    engine = create_engine(url)
    connection = engine.connect()
    connection.execute(text("SELECT count(*) FROM event_logs"))
    return engine, connection


def test_an_interrupted_detach_is_finished_by_the_next_run(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    holder, held = hold(database_url)
    # Our own run, interrupted: the detach waits for the reader past the session's
    # lock_timeout, as a cancel or a lost connection would cut it.
    impatient = create_engine(database_url, connect_args={"options": "-c lock_timeout=300"})
    try:
        with pytest.raises(OperationalError, match="lock timeout"):
            drop_partitions(model, impatient, older_than=cutoff)
    finally:
        impatient.dispose()
        held.close()
        holder.dispose()
    pending = [p for p in list_partitions(model, host_engine) if p.detach_pending]
    assert [p.name for p in pending] == [oldest]
    result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.finalized == (oldest,)
    assert len(result.dropped) == 2
    assert result.dropped[0] == oldest
    assert not any(p.detach_pending for p in list_partitions(model, host_engine))


def test_a_partition_detached_but_not_dropped_is_dropped_by_the_next_run(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    # Dropping the partition's foreign keys locks the tables they reference: a reader of
    # users holds it up.
    holder = create_engine(database_url)
    held = holder.connect()
    held.execute(text("SELECT count(*) FROM users"))
    try:
        with pytest.raises(OperationalError, match="lock timeout"):
            drop_partitions(model, host_engine, older_than=cutoff, lock_timeout=0.2)
    finally:
        held.close()
        holder.dispose()
    assert table_exists(host_engine, oldest)
    assert oldest not in names(host_engine, model)
    result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.dropped[0] == oldest
    assert len(result.dropped) == 2
    assert not table_exists(host_engine, oldest)


def foreign_keys(engine: Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                    "AND conrelid = to_regclass(:t)"
                ),
                {"t": table},
            ).scalar_one()
        )


@contextmanager
def reading_during_drop_table(engine: Engine, url: URL, table: str) -> Iterator[list[str]]:
    """While ``engine`` runs a ``DROP TABLE``, another transaction has read ``table`` and
    stays open; yields the tables dropped."""
    other = create_engine(url)
    dropped: list[str] = []
    held: list[Any] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("DROP TABLE"):
            dropped.append(statement.split(".")[-1].strip('"'))
            connection = other.connect()
            connection.execute(text(f"SELECT count(*) FROM {table}"))
            held.append(connection)

    def after(*_: Any) -> None:
        while held:
            held.pop().close()

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "handle_error", after)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield dropped
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "handle_error", after)
        event.remove(engine, "after_cursor_execute", after)
        after()
        other.dispose()


def test_the_referenced_host_tables_are_free_while_a_partition_is_dropped(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # The DROP TABLE frees the partition's files at commit (tens of ms a week, more with
    # online discard): the foreign keys are dropped before, so it holds no lock on the host's
    # tables meanwhile, and a transaction that has read users does not hold it up.
    model = host_models.EventLog
    old_and_new(host_engine, model, keys)
    for host_table in ("users", "chat_sessions", "user_projects", "user_agents"):
        oldest = list_partitions(model, host_engine)[0]
        assert oldest.lower is not None
        # A week before the oldest, with the foreign keys every partition has.
        (created,) = ensure_partitions(model, host_engine, ahead=0, now=oldest.lower - WEEK)
        assert foreign_keys(host_engine, created) == 4
        with reading_during_drop_table(host_engine, database_url, host_table) as dropped:
            result = drop_partitions(model, host_engine, older_than=oldest.lower, lock_timeout=0.2)
        assert result.dropped == tuple(dropped) == (created,)
        assert not table_exists(host_engine, created)


def test_a_partition_left_without_foreign_keys_is_dropped_by_the_next_run(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    # Its foreign keys dropped, the DROP TABLE waits for a reader of the partition itself.
    with (
        reading_during_drop_table(host_engine, database_url, oldest),
        pytest.raises(OperationalError, match="lock timeout"),
    ):
        drop_partitions(model, host_engine, older_than=cutoff, lock_timeout=0.2)
    assert table_exists(host_engine, oldest)
    assert oldest not in names(host_engine, model)
    assert foreign_keys(host_engine, oldest) == 0
    result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.dropped[0] == oldest
    assert len(result.dropped) == 2
    assert not table_exists(host_engine, oldest)


def test_a_pending_detach_left_by_a_cancelled_backend_is_finalized(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    old_and_new(host_engine, model, keys)
    newest = list_partitions(model, host_engine)[-1].name
    holder, held = hold(database_url)
    errors: list[BaseException] = []

    def detach() -> None:
        with host_engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            try:
                connection.execute(
                    text(f"ALTER TABLE event_logs DETACH PARTITION {newest} CONCURRENTLY")
                )
            except OperationalError as exc:
                errors.append(exc)

    thread = threading.Thread(target=detach)
    thread.start()
    try:
        with host_engine.connect() as connection:
            for _ in range(200):  # wait until the DETACH waits for the reader, then cancel it
                cancelled = connection.execute(
                    text(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                        "WHERE query LIKE '%DETACH PARTITION%' AND wait_event_type = 'Lock' "
                        "AND pid <> pg_backend_pid()"
                    )
                ).all()
                connection.commit()
                if cancelled:
                    break
                threading.Event().wait(0.05)
        thread.join(30)
    finally:
        held.close()
        holder.dispose()
    assert len(errors) == 1
    assert "canceling statement" in str(errors[0])
    assert [p.name for p in list_partitions(model, host_engine) if p.detach_pending] == [newest]
    # A cutoff far back: nothing is old, but the pending detach is finished, the table kept.
    result = drop_partitions(model, host_engine, older_than=NOW - 100 * WEEK)
    assert result == type(result)(detached=(newest,), finalized=(newest,))
    assert table_exists(host_engine, newest)
    assert newest not in names(host_engine, model)


# --- purge_events on the partitioned layout ---------------------------------------------------


def test_purge_serves_the_straddling_partition_and_scoped_deletes(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    other_user, other_session = seed(host_engine, host_models)
    writer = EventWriter(model)
    others = [
        writer.event(
            event_type="user_message",
            created_at=cutoff - timedelta(hours=h),
            user_id=other_user,
            session_id=other_session,
        )
        for h in (1, 2, 3)
    ]
    assert write_events(model, host_engine, others).written == 3
    drop_partitions(model, host_engine, older_than=cutoff)
    older = f"created_at < '{cutoff.isoformat()}'"
    assert count(host_engine, older) > 3  # the straddling partition holds older events
    # Scoped to a user: only theirs go.
    result = purge_events(model, host_engine, older_than=cutoff, user_id=other_user)
    assert result.deleted == 3
    assert count(host_engine, f"user_id = '{other_user}'") == 0
    assert count(host_engine, older) > 0
    # Unscoped, in small batches: the rest of the straddling partition's older events.
    newer = count(host_engine, f"created_at >= '{cutoff.isoformat()}'")
    result = purge_events(model, host_engine, older_than=cutoff, batch_size=1)
    assert result.deleted == result.batches > 0
    assert count(host_engine, older) == 0
    assert count(host_engine) == newer
