"""Partition maintenance: create ahead, list, detach and drop old ones, recovery of an
interrupted detach, and purge_events on the partitioned layout."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from catalog import lock_waiters
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError, ProgrammingError

from eventlog_persist import (
    EventWriter,
    count_purgeable,
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
DAY = timedelta(days=1)
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


def test_created_partitions_keep_the_hosts_own_check_constraints(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # A CHECK the host added to event_logs: ATTACH refuses a table without it.
    model = host_models.EventLog
    with host_engine.begin() as connection:
        connection.execute(
            text("ALTER TABLE event_logs ADD CONSTRAINT ck_kind CHECK (event_type <> 'banned')")
        )
    created = ensure_partitions(model, host_engine, ahead=1)
    assert created
    banned = EventWriter(model).event(event_type="banned", **keys)
    [(_, error)] = write_events(model, host_engine, [banned]).dead_lettered
    assert "ck_kind" in str(error)
    with host_engine.connect() as connection:
        checks = connection.execute(
            text(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'c' "
                "AND conname = 'ck_kind' AND conrelid = to_regclass(:name)"
            ),
            {"name": created[0]},
        ).scalar_one()
    assert checks == 1


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


def test_a_period_held_in_several_places_gets_a_partition_for_each_gap(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    held = {  # made by hand inside this week; one takes the name a gap would get
        "event_logs_hand1": (MONDAY + 3 * HOUR, MONDAY + 5 * HOUR),
        "event_logs_p20261202": (MONDAY + 2 * DAY, MONDAY + 2 * DAY + 9 * HOUR),
        "event_logs_hand2": (MONDAY + 4 * DAY, MONDAY + 5 * DAY),
    }
    with host_engine.begin() as connection:
        for name, (low, high) in held.items():
            connection.execute(
                text(
                    f"CREATE TABLE {name} PARTITION OF event_logs "
                    f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
                )
            )
    created = ensure_partitions(model, host_engine, ahead=0, interval="week", now=NOW)
    assert created == (
        "event_logs_p20261130",
        "event_logs_p20261130_050000",
        "event_logs_p20261202_090000",
        "event_logs_p20261205",
    )
    found = [(p.lower, p.upper) for p in list_partitions(model, host_engine)]
    assert found == [
        (MONDAY, MONDAY + 3 * HOUR),
        (MONDAY + 3 * HOUR, MONDAY + 5 * HOUR),
        (MONDAY + 5 * HOUR, MONDAY + 2 * DAY),
        (MONDAY + 2 * DAY, MONDAY + 2 * DAY + 9 * HOUR),
        (MONDAY + 2 * DAY + 9 * HOUR, MONDAY + 4 * DAY),
        (MONDAY + 4 * DAY, MONDAY + 5 * DAY),
        (MONDAY + 5 * DAY, MONDAY + WEEK),
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


@contextmanager
def sent(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Collects the statements ``engine`` runs meanwhile, with their parameters."""
    statements: list[tuple[str, Any]] = []

    def before(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", before)


def lock_timeouts(statements: list[tuple[str, Any]]) -> list[str]:
    return [p["value"] for s, p in statements if "set_config('lock_timeout'" in s]


def test_ensure_defaults_four_weeks_ahead_and_two_second_lock_timeout(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    with sent(host_engine) as statements:
        created = ensure_partitions(model, host_engine, now=NOW)
    assert created == tuple(f"event_logs_p{MONDAY + n * WEEK:%Y%m%d}" for n in range(5))
    assert lock_timeouts(statements) == ["2000ms"]
    # Only list_partitions reads the sizes (a stat() of every file of every partition).
    assert not any("pg_total_relation_size" in statement for statement, _ in statements)
    # interval="week" given explicitly is the same as the default read from the partitions.
    later = ensure_partitions(model, host_engine, interval="week", now=NOW + WEEK)
    assert later == (f"event_logs_p{MONDAY + 5 * WEEK:%Y%m%d}",)
    with sent(host_engine) as statements:
        ensure_partitions(model, host_engine, lock_timeout=None, now=NOW)
    assert lock_timeouts(statements) == []


# The key documented in docs/adoption.md (Partition maintenance): "EVLP" and the table's oid.
LOCK_SPACE = 0x45564C50


def waiting_for_the_maintenance_lock(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = "
                    "current_database()) AND NOT granted AND classid = :space "
                    "AND objid = 'event_logs'::regclass::oid AND objsubid = 1)"
                ),
                {"space": LOCK_SPACE},
            ).scalar_one()
        )


@pytest.mark.parametrize("job", ["ensure", "drop"])
def test_runs_take_turns_on_the_documented_advisory_lock(
    job: str, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    before = names(host_engine, model)
    results: list[Any] = []

    def run() -> None:
        if job == "ensure":
            results.append(ensure_partitions(model, host_engine, ahead=7))
        else:
            results.append(drop_partitions(model, host_engine, older_than=cutoff))

    with host_engine.connect() as other:
        key = other.execute(
            text("SELECT (CAST(:space AS bigint) << 32) | 'event_logs'::regclass::oid::bigint"),
            {"space": LOCK_SPACE},
        ).scalar_one()
        other.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while not waiting_for_the_maintenance_lock(host_engine):
            assert time.monotonic() < deadline, "the run never waited for the lock"
            time.sleep(0.02)
        assert thread.is_alive()
        assert names(host_engine, model) == before
        other.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        thread.join(30)
    (result,) = results
    if job == "ensure":
        assert len(result) == 6
    else:
        assert len(result.dropped) == 2
    assert names(host_engine, model) != before


@pytest.mark.parametrize("bind", ["engine", "connection", "autocommit engine", "autocommit"])
def test_a_failed_ensure_creates_nothing(
    bind: str, host_engine: Engine, host_models: HostModels
) -> None:
    # A stray table holds the name of the third partition: its CREATE fails, and the second
    # one, created and attached in the same transaction, goes too (in autocommit mode too).
    model = host_models.EventLog
    ensure_partitions(model, host_engine, ahead=0, now=NOW)
    with host_engine.begin() as connection:
        connection.execute(text("CREATE TABLE event_logs_p20261214 ()"))
    given = host_engine.execution_options(
        isolation_level="AUTOCOMMIT" if bind.startswith("autocommit") else "READ COMMITTED"
    )
    with given.connect() as connection:
        target = given if bind.endswith("engine") else connection
        with pytest.raises(ProgrammingError, match="already exists"):
            ensure_partitions(model, target, ahead=2, now=NOW)
        if not bind.endswith("engine"):
            assert not connection.in_transaction()
            assert [p.name for p in list_partitions(model, connection)] == ["event_logs_p20261130"]
    assert names(host_engine, model) == ["event_logs_p20261130"]
    assert not table_exists(host_engine, "event_logs_p20261207")
    with host_engine.begin() as connection:
        connection.execute(text("DROP TABLE event_logs_p20261214"))
    assert ensure_partitions(model, host_engine, ahead=2, now=NOW) == (
        "event_logs_p20261207",
        "event_logs_p20261214",
    )


def test_a_partition_analyzed_empty_estimates_zero_rows(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    ensure_partitions(model, host_engine, ahead=1, now=NOW)
    with host_engine.connect() as connection:
        connection.execute(text("ANALYZE event_logs_p20261130"))
        connection.commit()
    estimates = {p.name: p.estimated_rows for p in list_partitions(model, host_engine)}
    assert estimates == {"event_logs_p20261130": 0, "event_logs_p20261207": None}


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


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"ahead": -1}, "ahead=-1 is not valid; use a whole number from 0 to 52 (default 4)"),
        ({"ahead": True}, "ahead=True is not valid"),
        ({"ahead": 2.0}, "ahead=2.0 is not valid"),
        ({"interval": "Week"}, "interval='Week' is not valid; use 'week' or 'month', or None"),
        ({"lock_timeout": 0}, "lock_timeout=0 is not valid; use seconds above 0, at most 3600"),
        ({"lock_timeout": 3600.5}, "lock_timeout=3600.5 is not valid"),
        ({"lock_timeout": float("nan")}, "lock_timeout=nan is not valid"),
        ({"lock_timeout": True}, "lock_timeout=True is not valid"),
        ({"lock_timeout": "1"}, "lock_timeout='1' is not valid"),
        ({"now": datetime(2026, 12, 2)}, "now must be a time-zone aware datetime"),
        ({"now": "2026-12-02T00:00:00+00:00"}, "now must be a time-zone aware datetime"),
        (
            {"now": datetime(9999, 12, 1, tzinfo=UTC)},
            "now=9999-12-01T00:00:00+00:00 is out of range; pass a time from 0002-01-01 to "
            "9990-12-31 (UTC), or None for the clock",
        ),
        (
            {"now": datetime.min.replace(tzinfo=timezone(timedelta(hours=1)))},
            "now=0001-01-01T00:00:00+01:00 is out of range",
        ),
    ],
)
def test_ensure_refuses_each_bad_argument_before_touching_the_database(
    arguments: dict[str, Any], message: str, host_engine: Engine, host_models: HostModels
) -> None:
    with (
        sent(host_engine) as statements,
        pytest.raises((ConfigurationError, ValidationError)) as refused,
    ):
        ensure_partitions(host_models.EventLog, host_engine, **arguments)
    assert str(refused.value).startswith(message)
    assert statements == []


def test_the_arguments_at_their_limits_are_taken(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    assert ensure_partitions(model, host_engine, ahead=0, lock_timeout=3600, now=NOW) == (
        "event_logs_p20261130",
    )
    created = ensure_partitions(model, host_engine, ahead=52, lock_timeout=0.001, now=NOW)
    assert len(created) == 52
    assert created[-1] == f"event_logs_p{MONDAY + 52 * WEEK:%Y%m%d}"
    for flag in (0, None, "no"):
        with pytest.raises(ConfigurationError, match="concurrently must be True or False"):
            drop_partitions(model, host_engine, older_than=NOW, concurrently=flag)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="lock_timeout=0 is not valid"):
        drop_partitions(model, host_engine, older_than=NOW, lock_timeout=0)
    with pytest.raises(ValidationError, match="older_than must be a time-zone aware"):
        drop_partitions(model, host_engine, older_than="2026-12-02")  # type: ignore[arg-type]
    with sent(host_engine) as statements:
        drop_partitions(model, host_engine, older_than=NOW - WEEK, lock_timeout=3600)
    # Nothing older than the cutoff: no step, no lock_timeout set.
    assert lock_timeouts(statements) == []


def test_an_interval_that_cannot_be_read_from_the_newest_partition_must_be_given(
    host_engine: Engine, host_models: HostModels
) -> None:
    model = host_models.EventLog
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE event_logs_odd PARTITION OF event_logs "
                "FOR VALUES FROM ('2026-11-30 00:00+00') TO ('2026-12-03 00:00+00')"
            )
        )
    with pytest.raises(ConfigurationError) as refused:
        ensure_partitions(model, host_engine, now=NOW)
    assert str(refused.value) == (
        "cannot tell the partition interval from the newest partition event_logs_odd "
        "(2026-11-30T00:00:00+00:00 to 2026-12-03T00:00:00+00:00): it is neither a week nor "
        "a calendar month; pass interval='week' or interval='month' (CLI: --interval)"
    )
    assert ensure_partitions(model, host_engine, ahead=0, interval="week", now=NOW) == (
        "event_logs_p20261203",
    )
    # A month that does not start on the 1st is not a calendar month either.
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE event_logs_shifted PARTITION OF event_logs "
                "FOR VALUES FROM ('2027-01-02 00:00+00') TO ('2027-02-02 00:00+00')"
            )
        )
    with pytest.raises(ConfigurationError, match=r"event_logs_shifted .* neither a week"):
        ensure_partitions(model, host_engine, now=NOW)


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
    with sent(host_engine) as statements:
        result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.dropped == tuple(old)
    assert (result.detached, result.finalized) == ((), ())
    assert not any("pg_total_relation_size" in statement for statement, _ in statements)
    # Each partition's foreign-key and DROP steps under the default 2 s, restored after.
    assert lock_timeouts(statements)[:2] == ["2000ms", "0"]
    assert names(host_engine, model) == [p.name for p in before if p.name not in old]
    assert not any(table_exists(host_engine, name) for name in old)
    # The straddling partition stays: purge_events deletes its older events.
    straddling = next(p for p in list_partitions(model, host_engine) if p.lower is not None)
    assert straddling.lower is not None
    assert straddling.upper is not None
    assert straddling.lower < cutoff < straddling.upper
    assert drop_partitions(model, host_engine, older_than=cutoff) == type(result)()


@pytest.mark.parametrize("level", ["READ COMMITTED", "REPEATABLE READ", "AUTOCOMMIT"])
def test_a_connection_passed_in_gets_its_own_isolation_level_back(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any], level: str
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    with host_engine.execution_options(isolation_level=level).connect() as given:
        ensure_partitions(model, given)
        assert len(drop_partitions(model, given, older_than=cutoff).dropped) == 2
        dbapi: Any = given.connection.dbapi_connection
        assert dbapi.autocommit is (level == "AUTOCOMMIT")
        if level != "AUTOCOMMIT":
            assert given.get_isolation_level() == level


def test_a_cutoff_in_the_future_is_refused_and_nothing_is_dropped(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    old_and_new(host_engine, model, keys)
    before = names(host_engine, model)
    future = datetime.now(UTC) + timedelta(days=90)  # a sign slip for 90 days ago
    with pytest.raises(ValidationError) as caught:
        drop_partitions(model, host_engine, older_than=future)
    assert str(caught.value).startswith(
        f"older_than={future.isoformat()} is in the future, so partitions being written "
        "would go; pass a past cutoff such as datetime.now(UTC) - timedelta(days=90)"
    )
    assert names(host_engine, model) == before
    drop_partitions(model, host_engine, older_than=datetime.now(UTC))  # now itself is taken
    assert len(names(host_engine, model)) < len(before)


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


def test_a_partition_another_tool_attached_from_another_schema_is_left_alone(
    host_engine: Engine,
    host_models: HostModels,
    keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It stopped every drop run (and a table of its name in event_logs' schema would have
    been taken for it and dropped); now it is skipped with a warning, the others go."""
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    with host_engine.begin() as connection:
        connection.execute(text("CREATE SCHEMA archive"))
        connection.execute(
            text(
                "CREATE TABLE archive.event_logs_2025 PARTITION OF event_logs "
                "FOR VALUES FROM ('2025-01-01+00') TO ('2026-01-01+00')"
            )
        )
        connection.execute(text("CREATE TABLE public.event_logs_2025 (note text)"))
        connection.execute(text("INSERT INTO public.event_logs_2025 VALUES ('precious')"))
    with caplog.at_level(logging.WARNING, logger="eventlog_persist"):
        result = drop_partitions(model, host_engine, older_than=cutoff)
    assert len(result.dropped) == 2
    assert "event_logs_2025" not in result.dropped
    assert 'partition "archive"."event_logs_2025" of' in caplog.text
    assert "is in another schema than its table: partition maintenance leaves it alone" in (
        caplog.text
    )
    with host_engine.connect() as connection:
        assert connection.execute(text("SELECT note FROM public.event_logs_2025")).all() == [
            ("precious",)
        ]
        assert connection.execute(text("SELECT to_regclass('archive.event_logs_2025')")).scalar()
    assert ensure_partitions(model, host_engine, ahead=1) == ()


def test_drop_can_keep_the_tables_for_archiving(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    total = count(host_engine)
    with host_engine.connect() as connection:
        result = drop_partitions(model, connection, older_than=cutoff, keep_detached=True)
        # The connection is the caller's own again: out of autocommit, so this rolls back.
        connection.execute(text("CREATE TABLE probe ()"))
        connection.rollback()
        assert not table_exists(host_engine, "probe")
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
    first, second = (p for p in list_partitions(model, host_engine) if not p.default)
    assert first.upper is not None
    kept = drop_partitions(
        model, host_engine, older_than=first.upper, keep_detached=True, concurrently=False
    )
    assert kept == type(kept)(detached=(first.name,))
    assert table_exists(host_engine, first.name)
    result = drop_partitions(model, host_engine, older_than=NOW, concurrently=False)
    assert result.dropped == (second.name,)
    assert [p.default for p in list_partitions(model, host_engine)] == [True]


def hold(url: URL) -> tuple[Engine, Any]:
    """A transaction that has read event_logs and stays open: a detach waits for it."""
    engine = create_engine(url)
    connection = engine.connect()
    connection.execute(text("SELECT count(*) FROM event_logs"))
    return engine, connection


def drop_timing_out(url: URL, model: Any, cutoff: datetime) -> None:
    """A `drop_partitions` run whose role's lock_timeout (300 ms) cuts a lock wait short."""
    impatient = create_engine(url, connect_args={"options": "-c lock_timeout=300"})
    try:
        with pytest.raises(OperationalError, match="lock timeout"):
            drop_partitions(model, impatient, older_than=cutoff)
    finally:
        impatient.dispose()


def test_an_interrupted_detach_is_finished_by_the_next_run(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    holder, held = hold(database_url)
    # Our own run, interrupted: the detach waits for the reader past the session's
    # lock_timeout, as a cancel or a lost connection would cut it.
    try:
        drop_timing_out(database_url, model, cutoff)
    finally:
        held.close()
        holder.dispose()
    pending = [p for p in list_partitions(model, host_engine) if p.detach_pending]
    assert [p.name for p in pending] == [oldest]
    # The next run, even with a cutoff before every partition, finishes the detach and drops
    # the table, which the interrupted run had marked to be dropped.
    result = drop_partitions(model, host_engine, older_than=NOW - 100 * WEEK)
    assert result == type(result)(dropped=(oldest,), finalized=(oldest,))
    assert not table_exists(host_engine, oldest)
    assert not any(p.detach_pending for p in list_partitions(model, host_engine))
    assert len(drop_partitions(model, host_engine, older_than=cutoff).dropped) == 1


def test_a_table_kept_after_a_drop_that_never_detached_it_stays_kept(
    database_url: URL, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    # A drop run marks the partition to be dropped, then its DETACH cannot even start.
    blocker = host_engine.connect()
    blocker.begin()
    blocker.execute(text("LOCK TABLE ONLY event_logs IN SHARE MODE"))
    try:
        drop_timing_out(database_url, model, cutoff)
    finally:
        blocker.close()
    assert not any(p.detach_pending for p in list_partitions(model, host_engine))
    # The host changes its mind and archives: what it keeps, later runs keep too.
    first = drop_partitions(model, host_engine, older_than=cutoff, keep_detached=True)
    assert oldest in first.detached
    again = drop_partitions(model, host_engine, older_than=cutoff, keep_detached=True)
    assert again.dropped == ()
    later = drop_partitions(model, host_engine, older_than=NOW - 100 * WEEK)
    assert later.dropped == ()
    assert table_exists(host_engine, oldest)


def ending_the_waiting_detach(
    engine: Engine, call: Callable[[], object], *, end: str = "pg_terminate_backend"
) -> BaseException:
    """Run ``call`` in a thread while a reader of event_logs holds up its DETACH, end the
    DETACH's backend (or only its statement, with ``pg_cancel_backend``) once it waits,
    and return what ``call`` raised."""
    holder, held = hold(engine.url)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        with engine.connect() as connection:
            pids = lock_waiters(connection, "DETACH PARTITION")
            assert pids, "the detach never waited"
            connection.execute(text(f"SELECT {end}(pid) FROM unnest(:pids) pid"), {"pids": pids})
        thread.join(30)
    finally:
        held.close()
        holder.dispose()
    (error,) = errors
    return error


def drop_losing_its_connection(engine: Engine, model: Any, **arguments: Any) -> BaseException:
    """What ``drop_partitions`` raises when its waiting DETACH loses its connection."""
    return ending_the_waiting_detach(engine, lambda: drop_partitions(model, engine, **arguments))


@pytest.mark.parametrize("concurrently", [True, False])
def test_a_drop_whose_connection_is_lost_raises_that_and_the_next_run_finishes(
    concurrently: bool, host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    error = drop_losing_its_connection(
        host_engine, model, older_than=cutoff, concurrently=concurrently, lock_timeout=30
    )
    # The error of the lost connection itself, not one of cleaning up after it (releasing
    # the advisory lock, restoring lock_timeout) on the dead connection.
    assert isinstance(error, OperationalError), repr(error)
    pending = [p.name for p in list_partitions(model, host_engine) if p.detach_pending]
    # A plain DETACH rolls back with its transaction; a concurrent one is left pending.
    assert pending == ([oldest] if concurrently else [])
    result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.finalized == ((oldest,) if concurrently else ())
    assert result.dropped[0] == oldest
    assert len(result.dropped) == 2


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


def comment_and_rows(engine: Engine, table: str) -> tuple[str | None, int]:
    """The comment on ``table`` and its number of rows."""
    with engine.connect() as connection:
        comment = connection.execute(
            text("SELECT obj_description(to_regclass(:t), 'pg_class')"), {"t": table}
        ).scalar()
        rows = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    return comment, int(rows)


@contextmanager
def read_from(engine: Engine, table: str, *, when: str, each: bool = False) -> Iterator[list[str]]:
    """When ``engine`` starts a statement that contains ``when``, another connection reads
    ``table`` in a transaction it keeps open: from the first such statement to the end of
    the block, or (``each``) during each such statement only. Yields those statements."""
    seen: list[str] = []
    held: list[Any] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if when in statement and (each or not seen):
            seen.append(statement)
            reader = engine.connect()
            reader.execute(text(f"SELECT count(*) FROM {table}"))
            held.append(reader)

    def after(*_: Any) -> None:
        while held:
            held.pop().close()

    ends = ("handle_error", "after_cursor_execute") if each else ()
    event.listen(engine, "before_cursor_execute", before)
    for name in ends:
        event.listen(engine, name, after)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        for name in ends:
            event.remove(engine, name, after)
        after()


def test_the_referenced_host_tables_are_free_while_a_partition_is_dropped(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
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
        with read_from(host_engine, host_table, when="DROP TABLE", each=True) as drops:
            result = drop_partitions(model, host_engine, older_than=oldest.lower, lock_timeout=0.2)
        assert result.dropped == (created,)
        assert [drop.rsplit(".", 1)[-1].strip('"') for drop in drops] == [created]
        assert not table_exists(host_engine, created)


def test_a_partition_left_without_foreign_keys_is_dropped_by_the_next_run(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    model = host_models.EventLog
    cutoff = old_and_new(host_engine, model, keys)
    oldest = list_partitions(model, host_engine)[0].name
    # Its foreign keys dropped, the DROP TABLE waits for a reader of the partition itself.
    with (
        read_from(host_engine, oldest, when="DROP TABLE", each=True),
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

    def detach() -> None:
        with host_engine.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(
                text(f"ALTER TABLE event_logs DETACH PARTITION {newest} CONCURRENTLY")
            )

    error = ending_the_waiting_detach(host_engine, detach, end="pg_cancel_backend")
    assert isinstance(error, OperationalError)
    assert "canceling statement" in str(error)
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


def test_purge_leaves_a_newer_event_that_shares_the_id_of_an_older_one(
    host_engine: Engine, host_models: HostModels, keys: dict[str, Any]
) -> None:
    # The key is (id, created_at), so one id may be stored at two times (an event written
    # again with another created_at); the copy at or after the cutoff is not the purge's.
    model = host_models.EventLog
    now = datetime.now(UTC)
    ensure_partitions(model, host_engine, ahead=5, now=now - 4 * WEEK)
    old = EventWriter(model).event(event_type="user_message", created_at=now - 3 * WEEK, **keys)
    new = msgspec.structs.replace(old, created_at=now - HOUR)
    assert write_events(model, host_engine, [old, new]).written == 2
    cutoff = now - 2 * WEEK
    assert count_purgeable(model, host_engine, older_than=cutoff) == 1
    assert purge_events(model, host_engine, older_than=cutoff).deleted == 1
    with host_engine.connect() as connection:
        kept = connection.execute(
            text("SELECT created_at FROM event_logs WHERE id = :id"), {"id": old.id}
        ).scalars()
        assert list(kept) == [new.created_at]
