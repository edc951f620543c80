"""Online conversion of a filled, plain event_logs into the partitioned layout."""

from __future__ import annotations

import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from catalog import UUID_KEYS, expected_event_logs, lock_waiters, of_table, snapshot
from hostkit import HostProject, make_host
from hostmodels import HostModels, build_host_models, create_partitions, seed
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from test_partitioned_migrations import expected_partitioned, opt_in, partitions
from test_partitions import sent

from eventlog_persist import (
    BufferedWriter,
    ConversionResult,
    EventWriter,
    NewEvent,
    RetryPolicy,
    convert_to_partitioned,
    ensure_partitions,
)
from eventlog_persist import _conversion as conversion
from eventlog_persist._cli import main
from eventlog_persist._conversion import choose_boundary, partitions_after
from eventlog_persist._failures import ErrorKind, classify_error
from eventlog_persist.exceptions import ConfigurationError, ConversionError, EventWriteError

FAST_RETRY = RetryPolicy(max_attempts=None, max_elapsed=60, initial_delay=0.01, max_delay=0.1)


def fill(engine: Engine, rows: int, *, days: int = 60) -> None:
    """Store ``rows`` events of one user and session, spread over the past ``days``."""
    with engine.begin() as connection:
        user = connection.execute(
            text("INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'a') RETURNING id")
        ).scalar()
        # The example host's chat sessions have a title; the in-process host's have none.
        titled = connection.execute(
            text(
                "SELECT count(*) FROM information_schema.columns "
                "WHERE table_name = 'chat_sessions' AND column_name = 'title'"
            )
        ).scalar()
        title = ("title, ", "'t', ") if titled else ("", "")
        chat = connection.execute(
            text(
                f"INSERT INTO chat_sessions (id, {title[0]}user_id) "
                f"VALUES (gen_random_uuid(), {title[1]}:u) RETURNING id"
            ),
            {"u": user},
        ).scalar()
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at) "
                "SELECT gen_random_uuid(), :c, :u, 'chat', "
                "now() - (:days * interval '1 day') * random() FROM generate_series(1, :n)"
            ),
            {"c": chat, "u": user, "n": rows, "days": days},
        )


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT count(*) FROM event_logs")).scalar_one())


def kind(engine: Engine) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT relkind FROM pg_class WHERE oid = 'event_logs'::regclass")
            ).scalar()
        )


@pytest.fixture
def plain(engine: Engine, host_models: HostModels) -> Engine:
    """A plain event_logs (as evl_0002 creates it) with 500 events over the past 60 days."""
    host_models.Base.metadata.create_all(engine)
    fill(engine, 500)
    return engine


def test_boundary_is_a_week_or_month_start_at_least_a_day_ahead() -> None:
    sunday = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
    assert choose_boundary(sunday, "week") == datetime(2026, 12, 14, tzinfo=UTC)
    assert choose_boundary(sunday - timedelta(days=3), "week") == datetime(2026, 12, 7, tzinfo=UTC)
    assert choose_boundary(datetime(2026, 12, 31, 1, tzinfo=UTC), "month") == datetime(
        2027, 2, 1, tzinfo=UTC
    )
    # Up to the last one evlpart_0001 would create (the week of Nov 30 and 4 ahead).
    names = [name for name, _, _ in partitions_after(
        datetime(2026, 12, 14, tzinfo=UTC), sunday, "week", 4
    )]  # fmt: skip
    assert names == [
        "event_logs_p20261214",
        "event_logs_p20261221",
        "event_logs_p20261228",
    ]
    assert len(partitions_after(datetime(2027, 2, 1, tzinfo=UTC), sunday, "month", 1)) == 1


# --- with Alembic: the result is what evlpart_0001 creates, and the revision only stamps ----


@pytest.fixture
def host(tmp_path: Path, database_url: URL) -> HostProject:
    return make_host(tmp_path / "host", database_url)


def test_a_converted_table_is_what_evlpart_0001_creates_and_alembic_only_stamps(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "heads")
    fill(engine, 1000)
    today = datetime.now(UTC).date()
    result = convert_to_partitioned(engine)
    assert result.state == "converted"
    assert result.boundary is not None
    # By default, weekly partitions from the boundary to the fourth week after this one.
    last = today - timedelta(days=today.weekday()) + timedelta(weeks=4)
    weeks = range((last - result.boundary.date()).days // 7 + 1)
    assert result.partitions == tuple(
        f"event_logs_p{result.boundary + timedelta(weeks=n):%Y%m%d}" for n in weeks
    )
    assert [step for step, _ in result.steps] == ["bound", "validate", "key", "swap"]
    assert result.swap_attempts == 1
    assert result.swap_hold is not None
    assert result.swap_seconds is not None
    # The server's measure lies within the client's: from after the lock's grant to
    # before the commit.
    assert 0 < result.swap_hold <= result.swap_seconds < 1
    assert all(0 < seconds < 30 for _, seconds in result.steps)
    assert result.boundary is not None
    opt_in(host)
    upgrade = host.run("upgrade", "heads")
    assert "Running upgrade  -> evlpart_0001" in upgrade.stderr or "evlpart_0001" in (
        upgrade.stderr
    )
    assert count(engine) == 1000
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_partitioned(UUID_KEYS)
        legacy = of_table(snapshot(connection), "event_logs_legacy")
    assert legacy["constraints"]["event_logs_legacy_pkey"] == "PRIMARY KEY (id, created_at)"
    assert "event_logs_legacy_bound" not in legacy["constraints"]
    assert sorted(legacy["indexes"]) == [
        "event_logs_legacy_agent_id_created_at_idx",
        "event_logs_legacy_pkey",
        "event_logs_legacy_project_id_created_at_idx",
        "event_logs_legacy_session_id_created_at_idx",
        "event_logs_legacy_user_id_created_at_idx",
    ]
    found = dict(partitions(engine))
    assert found.pop("event_logs_legacy") == (
        f"FOR VALUES FROM (MINVALUE) TO ('{result.boundary:%Y-%m-%d %H:%M:%S}+00')"
    )
    assert sorted(found) == list(result.partitions)
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK" in host.run("eventlog-persist", "check").stdout
    # Running it again changes nothing.
    assert convert_to_partitioned(engine).state == "already_partitioned"
    # The downgrade keeps every row, the legacy partition's too.
    host.run("downgrade", "eventlog_partitioned@base")
    assert kind(engine) == "r"
    assert count(engine) == 1000
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_event_logs(UUID_KEYS)


def test_the_revision_refusing_rows_points_at_the_conversion(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evl_0002")
    fill(engine, 3)
    opt_in(host)
    result = host.run("upgrade", "heads", check=False)
    assert result.returncode != 0
    assert "'eventlog-persist convert --url ...'" in result.stdout + result.stderr


def test_a_table_in_the_schema_given_converts_and_the_search_path_one_stays(
    engine: Engine, host_models: HostModels
) -> None:
    host_models.Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(text('CREATE SCHEMA "Tenant"'))
    host_models.Base.metadata.create_all(
        engine.execution_options(schema_translate_map={None: "Tenant"})
    )
    tenant = create_engine(engine.url, connect_args={"options": '-c search_path="Tenant"'})
    try:
        fill(tenant, 50)
        result = convert_to_partitioned(engine, schema="Tenant", partitions_ahead=1)
        assert result.state == "converted"
        with tenant.connect() as connection:
            assert connection.execute(text("SELECT current_schema()")).scalar() == "Tenant"
        assert (kind(tenant), count(tenant)) == ("p", 50)
        assert {name for name, _ in partitions(tenant)} == {"event_logs_legacy", *result.partitions}
        assert kind(engine) == "r"
        again = convert_to_partitioned(engine, schema="Tenant", partitions_ahead=1)
        assert (again.state, again.boundary) == ("already_partitioned", result.boundary)
    finally:
        tenant.dispose()


def privileges(engine: Engine, table: str) -> tuple[str, set[tuple[str, str, bool]]]:
    """The owner of ``table`` and its grants as (grantee, privilege, grantable)."""
    with engine.connect() as connection:
        owner = connection.execute(
            text("SELECT relowner::regrole::text FROM pg_class WHERE oid = to_regclass(:t)"),
            {"t": table},
        ).scalar_one()
        grants = connection.execute(
            text(
                "SELECT coalesce(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable "
                "FROM pg_class c, aclexplode(c.relacl) a LEFT JOIN pg_roles r "
                "ON r.oid = a.grantee WHERE c.oid = to_regclass(:t)"
            ),
            {"t": table},
        ).all()
    return str(owner), {(str(g), str(p), bool(o)) for g, p, o in grants}


def test_the_owner_and_the_grants_carry_over(plain: Engine) -> None:
    owner, reader = f"owner_{plain.url.database}", f"Reader {plain.url.database}"
    with plain.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{owner}"'))
        connection.execute(text(f'CREATE ROLE "{reader}"'))
        connection.execute(text(f'ALTER TABLE event_logs OWNER TO "{owner}"'))
        connection.execute(text(f'GRANT SELECT ON event_logs TO "{reader}" WITH GRANT OPTION'))
        connection.execute(text("GRANT INSERT, UPDATE ON event_logs TO PUBLIC"))
    before = privileges(plain, "event_logs")
    assert before[0] == owner
    assert (reader, "SELECT", True) in before[1]
    assert ("PUBLIC", "UPDATE", False) in before[1]
    result = convert_to_partitioned(plain, partitions_ahead=1)
    assert privileges(plain, "event_logs") == before
    assert privileges(plain, "event_logs_legacy")[0] == owner
    assert result.partitions
    for name in result.partitions:
        assert privileges(plain, name)[0] == owner


def test_the_tables_check_constraints_carry_over_to_every_partition(plain: Engine) -> None:
    with plain.begin() as connection:
        connection.execute(
            text("ALTER TABLE event_logs ADD CONSTRAINT ck_named CHECK (event_type <> '')")
        )
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT ck_later CHECK (tool_name <> 'x') NOT VALID"
            )
        )
    result = convert_to_partitioned(plain, partitions_ahead=1)
    with plain.connect() as connection:
        found = snapshot(connection)["constraints"]
    checks = {(table, name) for (table, name) in found if name in ("ck_named", "ck_later")}
    tables = ["event_logs", "event_logs_legacy", *result.partitions]
    assert checks == {(table, name) for table in tables for name in ("ck_named", "ck_later")}
    with pytest.raises(IntegrityError, match="ck_named"), plain.begin() as connection:
        connection.execute(  # into the first new partition
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, created_at) "
                "SELECT gen_random_uuid(), session_id, user_id, '', :at FROM event_logs LIMIT 1"
            ),
            {"at": result.boundary},
        )


def index_tree(engine: Engine, name: str) -> dict[str, tuple[str, int]]:
    """The partitions' indexes attached to the partitioned index ``name``: each partition's
    index name and file node, by partition."""
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT t.relname, c.relname, c.relfilenode FROM pg_inherits h "
                "JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_index i ON i.indexrelid = c.oid "
                "JOIN pg_class t ON t.oid = i.indrelid WHERE h.inhparent = to_regclass(:name)"
            ),
            {"name": name},
        ).all()
    return {str(table): (str(index), int(node)) for table, index, node in rows}


def test_a_hosts_own_foreign_keys_and_indexes_carry_over_to_every_partition(
    plain: Engine,
) -> None:
    own = {
        "ix_mine_type": "CREATE INDEX ix_mine_type ON event_logs (event_type, created_at)",
        "ix_mine_errors": "CREATE INDEX ix_mine_errors ON event_logs (lower(error_code)) "
        "WHERE error_code IS NOT NULL",
        "ix_mine_payload": "CREATE INDEX ix_mine_payload ON event_logs "
        "USING gin (payload jsonb_path_ops)",
    }
    with plain.begin() as connection:
        connection.execute(text("CREATE TABLE tools (name text PRIMARY KEY)"))
        connection.execute(text("INSERT INTO tools VALUES ('search')"))
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT fk_mine_tool FOREIGN KEY (tool_name) "
                "REFERENCES tools (name) ON DELETE SET NULL"
            )
        )
        for statement in own.values():
            connection.execute(text(statement))
        nodes = dict(
            connection.execute(
                text("SELECT relname, relfilenode FROM pg_class WHERE relname = ANY (:names)"),
                {"names": list(own)},
            ).all()
        )
    result = convert_to_partitioned(plain, partitions_ahead=1)
    tables = {"event_logs_legacy", *result.partitions}
    for name in own:
        tree = index_tree(plain, name)
        assert set(tree) == tables
        # The legacy table's index is attached under a name of its own, not built again.
        assert tree["event_logs_legacy"] == (f"event_logs_legacy_{name}", nodes[name])
    with plain.connect() as connection:
        found = snapshot(connection)["constraints"]
    assert {table for table, name in found if name == "fk_mine_tool"} == {"event_logs", *tables}
    with pytest.raises(IntegrityError, match="fk_mine_tool"), plain.begin() as connection:
        connection.execute(  # into the first new partition
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, tool_name, "
                "created_at) SELECT gen_random_uuid(), session_id, user_id, 'x', 'nope', :at "
                "FROM event_logs LIMIT 1"
            ),
            {"at": result.boundary},
        )


def test_a_legacy_name_is_cut_to_63_bytes_on_a_character_boundary() -> None:
    assert conversion._legacy_name("ix_short") == "event_logs_legacy_ix_short"
    long = "ix" + "é" * 40  # the 63rd byte is the first half of an é
    cut = conversion._legacy_name(long)
    assert len(cut.encode()) == 62
    assert cut == f"event_logs_legacy_ix{'é' * 21}"


# --- resuming -----------------------------------------------------------------------------


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("step", ["validate", "key", "swap"])
def test_an_interrupted_conversion_resumes_after_the_steps_done(
    plain: Engine, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    method = {"validate": "_validate", "key": "_build_key", "swap": "_swap_once"}[step]

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(conversion._Conversion, method, interrupt)
        with pytest.raises(Interrupted):
            convert_to_partitioned(plain)
    assert kind(plain) == "r"
    result = convert_to_partitioned(plain)
    order = ["bound", "validate", "key", "swap"]
    assert [name for name, _ in result.steps] == order[order.index(step) :]
    assert kind(plain) == "p"
    assert count(plain) == 500


@pytest.mark.parametrize("interval", ["week", "month"])
def test_partitions_missing_after_an_interrupted_swap_are_created_when_run_again(
    plain: Engine, monkeypatch: pytest.MonkeyPatch, interval: str
) -> None:
    """No partition but the legacy one says the table's interval yet: its bound, chosen for
    the first run's interval, does; another interval is refused, as on a prepared table."""

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(conversion._Conversion, "_add_partitions", interrupt)
        with pytest.raises(Interrupted):
            convert_to_partitioned(plain, partition_interval=interval)
    assert [name for name, _ in partitions(plain)] == ["event_logs_legacy"]
    other = "week" if interval == "month" else "month"
    if interval == "week":  # a boundary on a Monday that is also the 1st fits both
        with pytest.raises(ConversionError, match=f"was prepared for {interval}ly partitions"):
            convert_to_partitioned(plain, partition_interval=other)
    (bound,) = re.findall(r"TO \('([^']+)'\)", dict(partitions(plain))["event_logs_legacy"])
    ends = datetime.fromisoformat(bound)
    both = ends.weekday() == 0 and ends.day == 1  # then the interval must be given again
    again = convert_to_partitioned(plain, partition_interval=interval if both else None)
    assert again.state == "already_partitioned"
    assert again.partitions
    assert sorted(name for name, _ in partitions(plain)) == [
        "event_logs_legacy",
        *sorted(again.partitions),
    ]
    bounds = dict(partitions(plain))
    for name in again.partitions:
        start, end = (
            datetime.fromisoformat(found) for found in re.findall(r"'([^']+)'", bounds[name])
        )
        if interval == "month":
            assert (start.day, end.day, (end - start).days in (28, 29, 30, 31)) == (1, 1, True)
        else:
            assert (start.weekday(), end - start) == (0, timedelta(days=7))


def next_first(monday: bool) -> datetime:
    """The next 1st of a month, at least two days ahead, that is (or is not) a Monday."""
    month = (datetime.now(UTC) + timedelta(days=2)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    while True:
        month = (month + timedelta(days=32)).replace(day=1)
        if (month.weekday() == 0) == monday:
            return month


@pytest.mark.parametrize("monday", [False, True])
def test_after_a_swap_cut_short_the_legacy_bound_says_the_interval_or_it_must_be_given(
    plain: Engine, host_models: HostModels, monkeypatch: pytest.MonkeyPatch, monday: bool
) -> None:
    """A 1st that is no Monday starts only a month; a Monday the 1st starts both, and neither
    the conversion nor ensure_partitions guesses (it used to be a week: a 3-day stub)."""
    boundary = next_first(monday)
    now = datetime.now(UTC)
    ahead = (boundary.year - now.year) * 12 + boundary.month - now.month
    monkeypatch.setattr(conversion, "choose_boundary", lambda now, interval: boundary)

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(conversion._Conversion, "_add_partitions", interrupt)
        with pytest.raises(Interrupted):
            convert_to_partitioned(plain, partition_interval="month")
    model = host_models.EventLog
    if monday:
        with pytest.raises(ConfigurationError, match="where a week and a month both start"):
            ensure_partitions(model, plain, ahead=ahead)
        with pytest.raises(ConversionError, match="where a week and a month both start"):
            convert_to_partitioned(plain)
        created = ensure_partitions(model, plain, ahead=ahead, interval="month")
    else:
        created = ensure_partitions(model, plain, ahead=ahead)
    assert created == (f"event_logs_p{boundary:%Y%m%d}",)
    after = (boundary + timedelta(days=32)).replace(day=1)
    assert f"TO ('{after:%Y-%m-%d}" in dict(partitions(plain))[created[0]]


def test_a_monday_the_first_is_no_question_once_partitions_of_another_length_exist(
    plain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the legacy partition alone asks for the interval: beside partitions that are
    neither weeks nor months (pg_partman's daily ones, say) the conversion goes on."""
    boundary = next_first(monday=True)
    monkeypatch.setattr(conversion, "choose_boundary", lambda now, interval: boundary)

    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(conversion._Conversion, "_add_partitions", interrupt)
        with pytest.raises(Interrupted):
            convert_to_partitioned(plain)
    with plain.begin() as connection:
        connection.execute(
            text(
                f"CREATE TABLE event_logs_day PARTITION OF event_logs FOR VALUES FROM "
                f"('{boundary.isoformat()}') TO ('{(boundary + timedelta(days=1)).isoformat()}')"
            )
        )
    assert convert_to_partitioned(plain).state == "already_partitioned"


def test_running_again_skips_ranges_that_partitions_named_otherwise_hold(plain: Engine) -> None:
    """pg_partman names its partitions otherwise (4.x: event_logs_pYYYYwWW): the same weeks
    are not attached again under this package's names, which would overlap them."""
    first = convert_to_partitioned(plain, partitions_ahead=1)
    bounds = [
        datetime.fromisoformat(found)
        for _, bound in partitions(plain)
        for found in re.findall(r"TO \('([^']+)'\)", bound)
    ]
    last = max(bounds)
    with plain.begin() as connection:
        for k in range(2):
            low = last + k * timedelta(weeks=1)
            year, week, _ = low.isocalendar()
            connection.execute(
                text(
                    f"CREATE TABLE event_logs_p{year}w{week:02d} PARTITION OF event_logs FOR "
                    f"VALUES FROM ('{low.isoformat()}') TO "
                    f"('{(low + timedelta(weeks=1)).isoformat()}')"
                )
            )
    again = convert_to_partitioned(plain, partitions_ahead=6)
    assert again.state == "already_partitioned"
    assert first.partitions
    after = last + 2 * timedelta(weeks=1)  # the weeks after them, up to 6 ahead
    assert again.partitions
    assert again.partitions[0] == f"event_logs_p{after:%Y%m%d}"


def test_running_again_with_more_partitions_ahead_adds_the_missing_ones(plain: Engine) -> None:
    first = convert_to_partitioned(plain, partitions_ahead=1)
    now = datetime.now(UTC)
    again = convert_to_partitioned(plain, partitions_ahead=3)
    assert again.state == "already_partitioned"
    assert first.boundary is not None
    # Up to the third week after this one. On a week's last day the boundary is two weeks
    # ahead (it keeps a day's margin), so one week fewer is missing then.
    expected = [name for name, _, _ in partitions_after(first.boundary, now, "week", 3)]
    assert again.partitions == tuple(name for name in expected if name not in first.partitions)
    assert len(again.partitions) == (1 if first.boundary - now > timedelta(days=7) else 2)
    assert sorted(name for name, _ in partitions(plain)) == sorted(
        ["event_logs_legacy", *first.partitions, *again.partitions]
    )


def test_an_invalid_index_left_by_an_interrupted_build_is_rebuilt(plain: Engine) -> None:
    convert_to_partitioned(plain, stop_before_swap=True)
    with plain.begin() as connection:
        # What a CREATE INDEX CONCURRENTLY canceled midway leaves behind.
        connection.execute(
            text(
                "UPDATE pg_index SET indisvalid = false "
                "WHERE indexrelid = 'event_logs_legacy_pkey'::regclass"
            )
        )
    lines: list[str] = []
    result = convert_to_partitioned(plain, on_progress=lines.append)
    assert [name for name, _ in result.steps] == ["key", "swap"]
    assert lines[0] == "dropping the invalid index event_logs_legacy_pkey of an interrupted build"
    assert count(plain) == 500


def test_prepare_stops_before_the_swap(plain: Engine) -> None:
    prepared = convert_to_partitioned(plain, stop_before_swap=True)
    assert prepared.state == "prepared"
    assert [name for name, _ in prepared.steps] == ["bound", "validate", "key"]
    assert kind(plain) == "r"
    again = convert_to_partitioned(plain, stop_before_swap=True)
    assert (again.state, again.steps, again.boundary) == ("prepared", (), prepared.boundary)
    done = convert_to_partitioned(plain)
    assert [name for name, _ in done.steps] == ["swap"]
    assert done.boundary == prepared.boundary


def test_progress_is_reported_before_and_after_each_step(plain: Engine) -> None:
    lines: list[str] = []
    prepared = convert_to_partitioned(plain, stop_before_swap=True, on_progress=lines.append)
    assert prepared.boundary is not None
    boundary = prepared.boundary.isoformat()
    done = r"done in (\d+\.\d{3}) s"
    expected = [
        re.escape(f"bound: CHECK (created_at < {boundary}) NOT VALID ..."),
        f"bound: {done}",
        re.escape("validate: VALIDATE CONSTRAINT (scans the table; writers go on) ..."),
        f"validate: {done}",
        re.escape("key: CREATE UNIQUE INDEX CONCURRENTLY (id, created_at) (writers go on) ..."),
        f"key: {done}",
        re.escape(
            "prepared; deploy the EventLog model with partitioned=True, then run the "
            "conversion again to swap"
        ),
    ]
    assert len(lines) == len(expected)
    for line, pattern in zip(lines, expected, strict=True):
        assert re.fullmatch(pattern, line), line
    # The times reported are the steps' own, as in the result.
    reported = [float(m[1]) for line in lines if (m := re.search(done, line))]
    assert reported == pytest.approx([seconds for _, seconds in prepared.steps], abs=0.001)
    assert all(0 <= seconds < 30 for seconds in reported)
    lines.clear()
    swapped = convert_to_partitioned(plain, on_progress=lines.append)
    assert lines[0] == (
        f"swap: one transaction under lock_timeout 50 ms (legacy partition up to {boundary}, "
        f"{len(swapped.partitions)} partitions) ..."
    )
    assert lines[1:-1] == [f"partitions: {name} created" for name in swapped.partitions]
    assert re.fullmatch(
        r"swap: done; ACCESS EXCLUSIVE held \d+\.\d ms \(server\), \d+\.\d ms to the "
        r"commit's return \(client\)",
        lines[-1],
    )
    lines.clear()
    convert_to_partitioned(plain, on_progress=lines.append)
    assert lines == ["event_logs is already converted: nothing else to do"]


def test_a_monthly_conversion_ends_the_legacy_partition_at_a_month_start(plain: Engine) -> None:
    now = datetime.now(UTC)
    result = convert_to_partitioned(plain, partition_interval="month", partitions_ahead=2)
    assert result.boundary is not None
    assert result.boundary == choose_boundary(now, "month")
    assert result.boundary.day == 1
    found = dict(partitions(plain))
    assert found.pop("event_logs_legacy").endswith(f"TO ('{result.boundary:%Y-%m-%d} 00:00:00+00')")
    # From the boundary up to the month two after the current one, one month each.
    expected = partitions_after(result.boundary, now, "month", 2)
    assert result.partitions == tuple(name for name, _, _ in expected)
    assert found == {
        name: f"FOR VALUES FROM ('{start:%Y-%m-%d} 00:00:00+00') TO ('{end:%Y-%m-%d} 00:00:00+00')"
        for name, start, end in expected
    }
    assert all(end.day == 1 and end.month != start.month for _, start, end in expected)
    assert count(plain) == 500


def test_a_conversion_prepared_for_months_swaps_to_months_unless_told_otherwise(
    plain: Engine,
) -> None:
    prepared = convert_to_partitioned(plain, partition_interval="month", stop_before_swap=True)
    with pytest.raises(ConversionError) as refused:
        convert_to_partitioned(plain, partition_interval="week")
    assert str(refused.value) == (
        'convert: "event_logs" was prepared for monthly partitions, not weekly ones; pass '
        "partition_interval='month' (CLI: --interval month), or leave it out to use the "
        "table's own"
    )
    result = convert_to_partitioned(plain)
    assert result.boundary == prepared.boundary
    expected = partitions_after(prepared.boundary, datetime.now(UTC), "month", 4)
    assert result.partitions == tuple(name for name, _, _ in expected)


def test_a_converted_table_keeps_its_interval_when_run_again(
    plain: Engine, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    convert_to_partitioned(plain, partition_interval="month", partitions_ahead=1)
    before = dict(partitions(plain))
    # Without the interval: the table's own, so only missing months are added.
    again = convert_to_partitioned(plain, partitions_ahead=3)
    after = dict(partitions(plain))
    assert set(again.partitions) == set(after) - set(before)
    assert all(re.fullmatch(r"event_logs_p\d{6}01", name) for name in again.partitions)
    with pytest.raises(ConversionError, match=r"has monthly partitions, not weekly ones"):
        convert_to_partitioned(plain, partition_interval="week", partitions_ahead=3)
    url = database_url.render_as_string(hide_password=False)
    assert main(["convert", "--url", url, "--interval", "week"]) == 2
    assert "has monthly partitions, not weekly ones" in capsys.readouterr().err
    assert main(["convert", "--url", url, "--ahead", "4"]) == 0
    (added,) = set(dict(partitions(plain))) - set(after)
    assert capsys.readouterr().out == (
        f"eventlog-persist: event_logs is already partitioned; added the missing partitions "
        f"{added}\n"
    )
    assert main(["convert", "--url", url, "--ahead", "4"]) == 0
    assert "already partitioned; nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("validated", [False, True])
def test_a_bound_that_came_too_close_is_set_again(plain: Engine, validated: bool) -> None:
    near = datetime.now(UTC) + timedelta(minutes=10)
    with plain.begin() as connection:
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT event_logs_legacy_bound "
                f"CHECK (created_at < '{near.isoformat()}') NOT VALID"
            )
        )
        if validated:
            connection.execute(
                text("ALTER TABLE event_logs VALIDATE CONSTRAINT event_logs_legacy_bound")
            )
    lines: list[str] = []
    result = convert_to_partitioned(plain, on_progress=lines.append)
    assert result.boundary is not None
    assert result.boundary > near + timedelta(hours=12)
    assert [name for name, _ in result.steps] == ["bound", "validate", "key", "swap"]
    assert lines[0].startswith("the bound of an interrupted conversion (")
    assert lines[0].endswith(") is too close: starting it again")
    assert datetime.fromisoformat(lines[0].split("(")[1].split(")")[0]) == pytest.approx(
        near, abs=timedelta(seconds=1)
    )


# --- locks ----------------------------------------------------------------------------------


@pytest.fixture
def held(plain: Engine) -> Iterator[threading.Event]:
    """After the online steps, a reader holds ACCESS SHARE on event_logs until the event
    is set (at most 30 s)."""
    convert_to_partitioned(plain, stop_before_swap=True)
    release = threading.Event()
    started = threading.Event()

    def hold() -> None:
        with plain.connect() as connection, connection.begin():
            connection.execute(text("SELECT 1 FROM event_logs LIMIT 1"))
            started.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    started.wait(10)
    try:
        yield release
    finally:
        release.set()
        thread.join()


def test_a_swap_that_times_out_waiting_for_its_lock_is_retried(
    plain: Engine, held: threading.Event
) -> None:
    threading.Timer(0.5, held.set).start()
    lines: list[str] = []
    result = convert_to_partitioned(
        plain, lock_timeout=0.02, retry_delay=0.05, on_progress=lines.append
    )
    assert result.state == "converted"
    assert result.swap_attempts > 1
    retries = [line for line in lines if "timed out" in line]
    assert retries == [
        f"swap: attempt {n} timed out waiting for a lock; retrying"
        for n in range(1, result.swap_attempts)
    ]
    # The swap's time is its last attempt's, which holds the lock for part of it.
    assert result.swap_seconds is not None
    assert result.swap_seconds <= dict(result.steps)["swap"] < 30


def test_a_swap_that_never_gets_its_lock_is_reported_and_resumable(
    plain: Engine, held: threading.Event
) -> None:
    with pytest.raises(ConversionError) as failed:
        convert_to_partitioned(plain, lock_timeout=0.01, swap_attempts=3, retry_delay=0.01)
    assert "'swap' could not get its locks in 3 attempts" in str(failed.value)
    assert re.search(
        r"held now by pid \d+ \(client backend, idle in transaction\)", str(failed.value)
    )
    assert "SELECT 1" not in str(failed.value)  # never another session's SQL
    assert "autovacuum" not in str(failed.value)
    assert kind(plain) == "r"
    held.set()
    time.sleep(0.1)
    assert [name for name, _ in convert_to_partitioned(plain).steps] == ["swap"]


def test_by_default_a_lock_is_tried_50_times_for_50_ms_half_a_second_apart(
    plain: Engine, held: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(conversion.time, "sleep", pauses.append)
    with sent(plain) as statements, pytest.raises(ConversionError) as failed:
        convert_to_partitioned(plain)
    assert "'swap' could not get its locks in 50 attempts of lock_timeout 0.05 s" in str(
        failed.value
    )
    assert str(failed.value).endswith(
        "with more swap_attempts or a longer lock_timeout (CLI: --attempts, --lock-timeout)"
    )
    timeouts = [s for s, _ in statements if s.startswith("SET LOCAL lock_timeout")]
    assert timeouts == ["SET LOCAL lock_timeout = '50ms'"] * 50
    assert pauses == [0.5] * 49
    assert kind(plain) == "r"


@contextmanager
def locked_before(
    engine: Engine, statement: str, *, cancel: bool = False, hold: float = 0.5
) -> Iterator[list[int]]:
    """Before ``engine`` runs its first statement containing ``statement``, another
    transaction locks event_logs SHARE UPDATE EXCLUSIVE; once that statement waits for it,
    ``cancel`` cancels the statement, or else the lock is held ``hold`` seconds. Yields the
    pids of the statements that waited."""
    other = create_engine(engine.url)
    waited: list[int] = []
    threads: list[threading.Thread] = []

    def wait_then_end(holder: Connection) -> None:
        try:
            with other.connect() as watcher:
                pids = lock_waiters(watcher, statement)
                waited.extend(pids)
                if not pids:
                    return
                if cancel:
                    watcher.execute(
                        text("SELECT pg_cancel_backend(pid) FROM unnest(:p) pid"), {"p": pids}
                    )
                else:
                    time.sleep(hold)
        finally:
            holder.close()

    def before(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if statement in sql and not threads:
            holder = other.connect()
            holder.execute(text("LOCK TABLE event_logs IN SHARE UPDATE EXCLUSIVE MODE"))
            threads.append(threading.Thread(target=wait_then_end, args=(holder,)))
            threads[0].start()

    event.listen(engine, "before_cursor_execute", before)
    try:
        yield waited
    finally:
        event.remove(engine, "before_cursor_execute", before)
        for thread in threads:
            thread.join(30)
        other.dispose()
    assert waited, f"no statement with {statement!r} waited for the lock"


@contextmanager
def before_lock(plain: Engine, statement: str) -> Iterator[None]:
    """Another session runs ``statement`` just before the swap's first ``LOCK TABLE``."""
    done: list[bool] = []

    def meanwhile(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if sql.startswith("LOCK TABLE") and not done:
            done.append(True)
            with other.begin() as connection:
                connection.execute(text(statement))

    other = create_engine(plain.url)
    event.listen(plain, "before_cursor_execute", meanwhile)
    try:
        yield
    finally:
        event.remove(plain, "before_cursor_execute", meanwhile)
        other.dispose()
    assert done


def swap_after(plain: Engine, statement: str) -> ConversionResult:
    """Prepare, then swap, another session running ``statement`` just before the swap's
    first lock: the swap finds the table changed under its lock, reads it again and swaps
    on its second attempt."""
    convert_to_partitioned(plain, stop_before_swap=True)
    lines: list[str] = []
    with before_lock(plain, statement):
        result = convert_to_partitioned(plain, partitions_ahead=1, on_progress=lines.append)
    assert result.swap_attempts == 2
    assert (
        "swap: attempt 1: the table changed before the lock was granted; reading it again" in lines
    )
    return result


@pytest.mark.parametrize("when", ["before the swap", "during its reads"])
def test_a_table_renamed_away_is_named_gone(
    plain: Engine, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    convert_to_partitioned(plain, stop_before_swap=True)

    def rename() -> None:
        with plain.begin() as other:
            other.execute(text("ALTER TABLE event_logs RENAME TO elsewhere"))

    if when == "before the swap":
        swap = conversion._Conversion._swap

        def renamed_first(self: Any, boundary: datetime) -> Any:
            rename()
            return swap(self, boundary)

        monkeypatch.setattr(conversion._Conversion, "_swap", renamed_first)
    else:  # after the definition was read, before the refusals read the table again
        read = conversion._Conversion._definition

        def read_then_rename(self: Any, connection: Connection) -> Any:
            found = read(self, connection)
            rename()
            return found

        monkeypatch.setattr(conversion._Conversion, "_definition", read_then_rename)
    with pytest.raises(ConversionError) as gone:
        convert_to_partitioned(plain)
    assert str(gone.value) == (
        'convert: "event_logs" is gone (renamed or dropped while the conversion ran)'
    )


def test_a_table_that_changes_before_every_lock_is_given_up_after_the_attempts(
    plain: Engine,
) -> None:
    convert_to_partitioned(plain, stop_before_swap=True)
    changes = 0

    def meanwhile(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        nonlocal changes
        if sql.startswith("LOCK TABLE"):
            changes += 1
            verb = (
                "GRANT SELECT ON event_logs TO"
                if changes % 2
                else "REVOKE SELECT ON event_logs FROM"
            )
            with other.begin() as connection:
                connection.execute(text(f"{verb} PUBLIC"))

    other = create_engine(plain.url)
    event.listen(plain, "before_cursor_execute", meanwhile)
    try:
        with pytest.raises(ConversionError) as refused:
            convert_to_partitioned(plain, swap_attempts=3)
    finally:
        event.remove(plain, "before_cursor_execute", meanwhile)
        other.dispose()
    assert str(refused.value) == (
        "convert: event_logs changed while the swap waited for its lock (attempt 3 of 3); run "
        "the conversion again"
    )
    assert changes == 3
    assert kind(plain) == "r"


def refused_after(plain: Engine, statement: str, refusal: str) -> None:
    """As `swap_after`, for a change the swap does not carry over: read again, refused."""
    convert_to_partitioned(plain, stop_before_swap=True)
    with before_lock(plain, statement), pytest.raises(ConversionError, match=refusal):
        convert_to_partitioned(plain)
    assert kind(plain) == "r"


def everywhere(plain: Engine, result: ConversionResult) -> set[str]:
    return {"event_logs", "event_logs_legacy", *result.partitions}


def test_a_swap_that_finds_the_online_steps_undone_under_its_lock_stops(plain: Engine) -> None:
    convert_to_partitioned(plain, stop_before_swap=True)
    with (
        before_lock(plain, "ALTER TABLE event_logs DROP CONSTRAINT event_logs_legacy_bound"),
        pytest.raises(ConversionError, match="changed while the conversion ran"),
    ):
        convert_to_partitioned(plain)
    assert kind(plain) == "r"
    # Run again, it sets the bound again and swaps.
    assert [name for name, _ in convert_to_partitioned(plain).steps] == [
        "bound",
        "validate",
        "swap",
    ]


def test_a_check_added_while_the_swap_waits_for_its_lock_is_carried_over(plain: Engine) -> None:
    result = swap_after(
        plain, "ALTER TABLE event_logs ADD CONSTRAINT ck_late CHECK (event_type <> '')"
    )
    with plain.connect() as connection:
        found = snapshot(connection)["constraints"]
    assert {table for table, name in found if name == "ck_late"} == everywhere(plain, result)


def test_an_index_and_a_foreign_key_added_meanwhile_are_carried_over(plain: Engine) -> None:
    result = swap_after(
        plain,
        "CREATE INDEX ix_late ON event_logs (event_type); "
        "ALTER TABLE event_logs ADD CONSTRAINT fk_late FOREIGN KEY (session_id) "
        "REFERENCES chat_sessions (id)",
    )
    assert set(index_tree(plain, "ix_late")) == everywhere(plain, result) - {"event_logs"}
    with plain.connect() as connection:
        found = snapshot(connection)["constraints"]
    assert {table for table, name in found if name == "fk_late"} == everywhere(plain, result)


def test_grants_revokes_and_an_owner_changed_meanwhile_are_carried_over(plain: Engine) -> None:
    owner, reader = f"owner_{plain.url.database}", f"reader_{plain.url.database}"
    with plain.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{owner}"; CREATE ROLE "{reader}"'))
        connection.execute(text(f'GRANT INSERT, SELECT ON event_logs TO "{reader}"'))
    swap_after(
        plain,
        f'REVOKE INSERT ON event_logs FROM "{reader}"; '
        f'GRANT UPDATE (payload) ON event_logs TO "{reader}"; '
        f'ALTER TABLE event_logs OWNER TO "{owner}"',
    )
    found_owner, grants = privileges(plain, "event_logs")
    assert found_owner == owner
    assert (reader, "SELECT", False) in grants
    assert (reader, "INSERT", False) not in grants
    with plain.connect() as connection:
        columns = connection.execute(
            text(
                "SELECT a.attname, a.attacl::text FROM pg_attribute a "
                "WHERE a.attrelid = 'event_logs'::regclass AND a.attacl IS NOT NULL"
            )
        ).all()
    assert [name for name, _ in columns] == ["payload"]
    assert f"{reader}=w/" in columns[0][1]


def test_column_grants_carry_over(plain: Engine) -> None:
    reader = f"reader_{plain.url.database}"
    with plain.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{reader}"'))
        connection.execute(text(f'GRANT SELECT (id, created_at) ON event_logs TO "{reader}"'))
    convert_to_partitioned(plain, partitions_ahead=1)
    with plain.connect() as connection:
        granted = connection.execute(
            text(
                "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = 'event_logs'::regclass "
                "AND has_column_privilege(:r, a.attrelid, a.attnum, 'SELECT') ORDER BY a.attname"
            ),
            {"r": reader},
        ).scalars()
        assert list(granted) == ["created_at", "id"]


@pytest.mark.parametrize(
    ("statement", "refusal"),
    [
        (
            "CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RETURN NEW; END $$; CREATE TRIGGER late BEFORE INSERT ON event_logs "
            "FOR EACH ROW EXECUTE FUNCTION nothing()",
            "trigger late",
        ),
        ("ALTER TABLE event_logs ENABLE ROW LEVEL SECURITY", "row-level security is enabled"),
        ("DROP INDEX ix_event_logs_agent_id_created_at", "index ix_event_logs_agent_id_created"),
        ("CREATE RULE quiet AS ON DELETE TO event_logs DO INSTEAD NOTHING", "rule quiet"),
        (
            "CREATE TABLE notes (event_id uuid PRIMARY KEY REFERENCES event_logs (id))",
            "foreign key from notes",
        ),
    ],
    ids=["trigger", "row-security", "drop-index", "rule", "referenced"],
)
def test_what_the_swap_cannot_carry_added_meanwhile_is_refused(
    plain: Engine, statement: str, refusal: str
) -> None:
    refused_after(plain, statement, refusal)


def test_a_change_made_while_the_swap_reads_the_table_is_caught_under_its_lock(
    plain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The change commits between the swap's reads, right after its statements read the
    # host's indexes (the second read of an attempt; the refusals made the first): the
    # statements miss it, and the definition compared under the lock must not.
    read = conversion._Conversion._own_indexes
    reads: list[bool] = []

    def read_then_change(self: Any, connection: Connection, oid: int) -> Any:
        found = read(self, connection, oid)
        if self._swap_started:
            reads.append(True)
            if len(reads) == 2:
                with plain.begin() as other:
                    other.execute(text("CREATE INDEX ix_between ON event_logs (tool_name)"))
        return found

    convert_to_partitioned(plain, stop_before_swap=True)
    monkeypatch.setattr(conversion._Conversion, "_own_indexes", read_then_change)
    monkeypatch.setattr(conversion._Conversion, "_swap_started", False, raising=False)
    swap_once = conversion._Conversion._swap_once

    def marked(self: Any, boundary: datetime) -> Any:
        self._swap_started = True
        return swap_once(self, boundary)

    monkeypatch.setattr(conversion._Conversion, "_swap_once", marked)
    result = convert_to_partitioned(plain, partitions_ahead=1)
    assert len(reads) == 4  # two attempts
    assert result.swap_attempts == 2
    assert set(index_tree(plain, "ix_between")) == everywhere(plain, result) - {"event_logs"}


def test_what_appears_during_the_online_steps_is_refused_at_the_swap(
    plain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    build = conversion._Conversion._build_key

    def build_then_add(self: Any, connection: Connection) -> None:
        build(self, connection)
        with plain.begin() as other:
            other.execute(text("CREATE RULE quiet AS ON DELETE TO event_logs DO INSTEAD NOTHING"))

    monkeypatch.setattr(conversion._Conversion, "_build_key", build_then_add)
    with pytest.raises(
        ConversionError, match="would not carry over to the partitioned table: rule quiet"
    ):
        convert_to_partitioned(plain)
    assert kind(plain) == "r"


@pytest.mark.parametrize(("step", "statement"), [("validate", "VALIDATE"), ("key", "CONCURRENTLY")])
def test_a_slow_step_waits_for_its_lock_past_the_roles_timeouts(
    plain: Engine, step: str, statement: str
) -> None:
    # A role's timeouts would cancel a slow step that waits (here for half a second); its
    # wait blocks no writer, so the conversion lifts them for those steps.
    impatient = create_engine(
        plain.url, connect_args={"options": "-c lock_timeout=50 -c statement_timeout=100"}
    )
    try:
        with locked_before(impatient, statement) as waited:
            result = convert_to_partitioned(impatient, stop_before_swap=True)
        # None of the engine's pooled connections is left with the timeouts lifted.
        with impatient.connect() as one, impatient.connect() as two:
            for connection in (one, two):
                assert connection.exec_driver_sql("SHOW lock_timeout").scalar() == "50ms"
                assert connection.exec_driver_sql("SHOW statement_timeout").scalar() == "100ms"
    finally:
        impatient.dispose()
    assert len(waited) == 1
    assert result.state == "prepared"
    assert dict(result.steps)[step] >= 0.5


@pytest.mark.parametrize(
    ("step", "statement"),
    [
        ("bound", "ADD CONSTRAINT"),
        ("validate", "VALIDATE"),
        ("key", "CONCURRENTLY"),
        ("swap", "LOCK TABLE"),
    ],
)
def test_a_step_that_fails_is_reported_and_resumed(
    plain: Engine, step: str, statement: str
) -> None:
    # Canceled while it waits for a lock (the swap's lock_timeout is long enough for that).
    with locked_before(plain, statement, cancel=True), pytest.raises(ConversionError) as failed:
        convert_to_partitioned(plain, lock_timeout=10)
    assert str(failed.value).startswith(
        f"convert: step {step!r} failed (canceling statement due to user request); the steps "
        "before it stay done and the conversion resumes when run again"
    )
    assert kind(plain) == "r"
    result = convert_to_partitioned(plain)
    order = ["bound", "validate", "key", "swap"]
    assert [name for name, _ in result.steps] == order[order.index(step) :]
    assert count(plain) == 500


def test_the_bound_is_retried_while_a_reader_holds_the_table_then_given_up(
    plain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(conversion.time, "sleep", pauses.append)
    with plain.connect() as reader:
        reader.execute(text("SELECT 1 FROM event_logs LIMIT 1"))
        with sent(plain) as statements, pytest.raises(ConversionError) as failed:
            convert_to_partitioned(plain, lock_timeout=0.02, swap_attempts=3, retry_delay=0.25)
        assert "'bound' could not get its locks in 3 attempts of lock_timeout 0.02 s" in str(
            failed.value
        )
        timeouts = [s for s, _ in statements if s.startswith("SET LOCAL lock_timeout")]
        assert timeouts == ["SET LOCAL lock_timeout = '20ms'"] * 3
        assert pauses == [0.25] * 2
        # Released after the first attempt, the second one gets it.
        pauses.clear()
        monkeypatch.setattr(conversion.time, "sleep", lambda _: reader.rollback())
        result = convert_to_partitioned(plain, lock_timeout=0.02, swap_attempts=3)
    assert result.state == "converted"
    assert kind(plain) == "p"


GENERIC_HOLDER = (
    "a long transaction holds a lock on event_logs or a table it references (see pg_locks, "
    "pg_stat_activity)"
)


@contextmanager
def answering(engine: Engine, statement: str, instead: str) -> Iterator[None]:
    """``engine`` runs ``instead`` in place of its statements that contain ``statement``."""

    def before(_c: Any, _cur: Any, sql: str, parameters: Any, *_: Any) -> tuple[str, Any]:
        return (instead if statement in sql else sql), parameters

    event.listen(engine, "before_cursor_execute", before, retval=True)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)


def test_a_lock_in_a_clone_of_the_database_is_not_named(plain: Engine) -> None:
    # A database made from this one (CREATE DATABASE ... TEMPLATE) has an event_logs of the
    # same oid; pg_locks lists the locks of every database.
    convert_to_partitioned(plain, stop_before_swap=True)
    plain.dispose()
    clone_name = f"{plain.url.database}_clone"
    admin = create_engine(plain.url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{clone_name}" TEMPLATE "{plain.url.database}"'))
    clone = create_engine(plain.url.set(database=clone_name))
    reading = "SELECT 'event_logs'::regclass::oid, pg_backend_pid() FROM event_logs LIMIT 1"
    try:
        with clone.begin() as theirs, plain.begin() as ours:
            their_oid, their_pid = theirs.execute(text(reading)).one()
            our_oid, our_pid = ours.execute(text(reading)).one()
            assert their_oid == our_oid
            with pytest.raises(ConversionError) as failed:
                convert_to_partitioned(plain, lock_timeout=0.01, swap_attempts=1)
    finally:
        clone.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{clone_name}" WITH (FORCE)'))
        admin.dispose()
    assert f"held now by pid {our_pid} (client backend, idle in transaction)" in str(failed.value)
    assert f"pid {their_pid} " not in str(failed.value)


def test_a_lock_held_on_a_referenced_table_is_named_in_general_terms(plain: Engine) -> None:
    # The swap's foreign keys wait for a transaction that has written to users.
    with plain.connect() as writer:
        writer.execute(text("INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'b')"))
        with pytest.raises(ConversionError) as failed:
            convert_to_partitioned(plain, lock_timeout=0.02, swap_attempts=2, retry_delay=0)
    assert "'swap' could not get its locks in 2 attempts" in str(failed.value)
    assert f"; {GENERIC_HOLDER}. The steps before it stay done" in str(failed.value)


@pytest.mark.parametrize(
    ("answer", "named"),
    [
        ("SELECT 1 / 0 WHERE CAST(%(name)s AS text) IS NOT NULL", GENERIC_HOLDER),
        (
            "SELECT 4242, 'autovacuum worker', NULL, 'autovacuum: VACUUM public.event_logs' "
            "WHERE CAST(%(name)s AS text) IS NOT NULL",
            "held now by pid 4242 (autovacuum worker: autovacuum: VACUUM public.event_logs); "
            "autovacuum yields to a lock waiter only after deadlock_timeout, longer than this "
            "lock_timeout: run the conversion again when it has finished",
        ),
    ],
    ids=["unreadable", "autovacuum"],
)
def test_who_holds_the_lock_is_named_as_far_as_the_server_says(
    plain: Engine, held: threading.Event, answer: str, named: str
) -> None:
    # What pg_locks shows is simulated: its query fails, or an autovacuum worker holds the lock.
    with answering(plain, "FROM pg_locks", answer), pytest.raises(ConversionError) as failed:
        convert_to_partitioned(plain, lock_timeout=0.01, swap_attempts=1)
    assert f"; {named}. The steps before it stay done" in str(failed.value)


# --- writers during the conversion -------------------------------------------------------------


class Writing:
    """A BufferedWriter enqueuing events without pause in a thread, accounting every id."""

    def __init__(self, model: Any, engine: Engine, keys: dict[str, Any]) -> None:
        self.ids: list[uuid.UUID] = []
        self.dead: list[tuple[NewEvent, BaseException]] = []
        self.stop = threading.Event()
        self.writer = BufferedWriter(
            model,
            engine,
            batch_size=50,
            flush_interval=0.005,
            retry=FAST_RETRY,
            on_dead_letter=lambda event, error: self.dead.append((event, error)),
        )
        self.keys = keys
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while not self.stop.is_set():
            self.ids.append(self.writer.enqueue(event_type="chat", **self.keys).id)
            time.sleep(0.0005)

    def __enter__(self) -> Writing:
        self.writer.start()
        self.thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.2)
        self.stop.set()
        self.thread.join()
        self.writer.close()


def stored_ids(engine: Engine) -> list[uuid.UUID]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT id FROM event_logs")).scalars())


def test_a_buffered_writer_loses_and_doubles_nothing_when_the_model_switches_between_steps(
    plain: Engine, host_models: HostModels
) -> None:
    keys = dict(zip(("user_id", "session_id"), seed(plain, host_models), strict=True))
    partitioned = build_host_models(partitioned=True)
    before = set(stored_ids(plain))
    with Writing(host_models.EventLog, plain, keys) as old:
        convert_to_partitioned(plain, stop_before_swap=True)
    # The deploy: the new unique index serves ON CONFLICT (id, created_at) on the plain table.
    with Writing(partitioned.EventLog, plain, keys) as new:
        time.sleep(0.2)
        with plain.connect() as connection, connection.begin():
            # A reader in the way: the swap's first attempts time out while events are written.
            connection.execute(text("SELECT 1 FROM event_logs LIMIT 1"))
            threading.Timer(0.3, connection.rollback).start()
            result = convert_to_partitioned(plain, lock_timeout=0.02, retry_delay=0.05)
    assert result.state == "converted"
    assert not old.dead
    assert not new.dead
    written = old.ids + new.ids
    assert len(written) > 50  # events went on being written (fewer on a loaded machine)
    after = stored_ids(plain)
    assert len(after) == len(set(after))  # nothing doubled
    assert set(after) - before == set(written)  # nothing lost
    assert kind(plain) == "p"


def test_a_plain_model_across_the_swap_copies_on_but_its_conflict_target_fails(
    plain: Engine, host_models: HostModels
) -> None:
    """The one-shot conversion, models switched afterwards: a first attempt (COPY) works on
    the partitioned table; what needs ON CONFLICT (id) (a retry, a detached write) fails."""
    keys = dict(zip(("user_id", "session_id"), seed(plain, host_models), strict=True))
    before = set(stored_ids(plain))
    with Writing(host_models.EventLog, plain, keys) as writing:
        convert_to_partitioned(plain)
    assert not writing.dead
    assert set(stored_ids(plain)) - before == set(writing.ids)
    with pytest.raises(EventWriteError) as refused:
        EventWriter(host_models.EventLog).record_detached(plain, event_type="chat", **keys)
    assert refused.value.sqlstate == "42P10"
    assert classify_error(refused.value.__cause__ or refused.value) is ErrorKind.BATCH
    assert "__eventlog_partitioned__ = True" in str(refused.value)


# --- refusals -------------------------------------------------------------------------------


def test_no_table_is_refused(engine: Engine) -> None:
    with pytest.raises(ConversionError, match="there is no table event_logs on the search_path"):
        convert_to_partitioned(engine)


def test_a_table_that_is_not_the_event_log_is_refused(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE event_logs (id int PRIMARY KEY)"))
    with pytest.raises(ConversionError, match="is not the event log's table"):
        convert_to_partitioned(engine)


@pytest.mark.parametrize("column", ["session_id", "user_id", "event_type", "payload", "created_at"])
def test_a_table_without_a_column_of_the_event_log_is_refused(
    engine: Engine, host_models: HostModels, column: str
) -> None:
    host_models.Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(text(f"ALTER TABLE event_logs DROP COLUMN {column} CASCADE"))
    with pytest.raises(ConversionError, match="is not the event log's table"):
        convert_to_partitioned(engine)


def test_a_table_partitioned_from_the_start_has_nothing_to_convert(engine: Engine) -> None:
    partitioned = build_host_models(partitioned=True)
    partitioned.Base.metadata.create_all(engine)
    before = create_partitions(engine)
    lines: list[str] = []
    result = convert_to_partitioned(engine, on_progress=lines.append)
    assert result == ConversionResult("already_partitioned")
    assert lines == ["event_logs is already partitioned: nothing to do"]
    assert sorted(name for name, _ in partitions(engine)) == sorted(before)


def test_a_legacy_partition_without_an_upper_bound_is_not_a_conversion_of_ours(
    engine: Engine,
) -> None:
    build_host_models(partitioned=True).Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE event_logs_legacy PARTITION OF event_logs "
                "FOR VALUES FROM (MINVALUE) TO (MAXVALUE)"
            )
        )
    assert convert_to_partitioned(engine) == ConversionResult("already_partitioned")
    assert [name for name, _ in partitions(engine)] == ["event_logs_legacy"]


def test_a_partitioned_table_is_left_alone_unless_it_has_a_default_partition(
    plain: Engine,
) -> None:
    converted = convert_to_partitioned(plain)
    again = convert_to_partitioned(plain)
    assert again == ConversionResult("already_partitioned", converted.boundary)
    assert (again.swap_attempts, again.swap_hold, again.swap_seconds) == (0, None, None)
    with plain.begin() as connection:
        connection.execute(text("CREATE TABLE event_logs_rest PARTITION OF event_logs DEFAULT"))
    with pytest.raises(ConversionError, match=r"DEFAULT partition \(event_logs_rest\)"):
        convert_to_partitioned(plain)


def test_what_the_swap_would_not_carry_over_is_refused(plain: Engine) -> None:
    with plain.begin() as connection:
        connection.execute(
            text(
                "CREATE FUNCTION nothing() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NEW; END $$"
            )
        )
        connection.execute(
            text(
                "CREATE TRIGGER audit BEFORE INSERT ON event_logs "
                "FOR EACH ROW EXECUTE FUNCTION nothing()"
            )
        )
        connection.execute(text("DROP INDEX ix_event_logs_agent_id_created_at"))
        connection.execute(text("ALTER TABLE event_logs DROP CONSTRAINT fk_event_logs_user_id"))
        connection.execute(text("ALTER TABLE event_logs ENABLE ROW LEVEL SECURITY"))
        connection.execute(
            text(
                "CREATE TABLE notes (event_id uuid PRIMARY KEY REFERENCES event_logs (id)); "
                "CREATE TABLE more_events () INHERITS (event_logs); "
                "CREATE RULE quiet AS ON DELETE TO event_logs DO INSTEAD NOTHING"
            )
        )
        connection.execute(
            text("ALTER TABLE event_logs ADD CONSTRAINT mine CHECK (true) NO INHERIT")
        )
        connection.execute(
            text(
                "CREATE TABLE tools (name text PRIMARY KEY); "
                "ALTER TABLE event_logs ADD CONSTRAINT fk_tool FOREIGN KEY (tool_name) "
                "REFERENCES tools (name) NOT VALID; "
                "CREATE UNIQUE INDEX ix_unique ON event_logs (id, event_type); "
                "ALTER TABLE event_logs ADD CONSTRAINT no_twins EXCLUDE USING btree (id WITH =)"
            )
        )
    # Fails, and leaves the index behind, invalid.
    with (
        plain.connect().execution_options(isolation_level="AUTOCOMMIT") as connection,
        pytest.raises(DataError),
    ):
        connection.execute(
            text(
                "CREATE INDEX CONCURRENTLY ix_broken ON event_logs "
                "((1 / (length(event_type) - length(event_type))))"
            )
        )
    with pytest.raises(ConversionError) as refused:
        convert_to_partitioned(plain)
    assert str(refused.value) == (
        'convert: "event_logs" has what the swap would not carry over to the partitioned '
        "table: index ix_event_logs_agent_id_created_at is missing (create it CONCURRENTLY "
        "first); foreign key fk_event_logs_user_id is missing (run the package's "
        "migrations); foreign key from notes; trigger audit; inherited by more_events; "
        "rule quiet; NO INHERIT constraint mine; foreign key fk_tool is NOT VALID (VALIDATE "
        "it first); unique or exclusion index ix_unique; unique or exclusion index no_twins; "
        "index ix_broken is invalid (REINDEX INDEX CONCURRENTLY it, or drop it); row-level "
        "security is enabled. Remove or "
        "fix it, convert, then recreate it on the partitioned table (a NO INHERIT constraint "
        "on event_logs_legacy or the partitions: a partitioned table cannot have one)"
    )
    assert kind(plain) == "r"


def test_a_host_index_whose_legacy_name_is_taken_is_refused(plain: Engine) -> None:
    long = "ix_" + "x" * 50
    with plain.begin() as connection:
        connection.execute(text("CREATE INDEX pkey ON event_logs (event_type)"))
        connection.execute(text("CREATE TABLE event_logs_legacy_ix_mine (a int)"))
        connection.execute(text("CREATE INDEX ix_mine ON event_logs (tool_name)"))
        connection.execute(text(f"CREATE INDEX {long}_a ON event_logs (error_code)"))
        connection.execute(text(f"CREATE INDEX {long}_b ON event_logs (approval_status)"))
        connection.execute(text("CREATE TABLE event_logs_legacy_user_id_created_at_idx (a int)"))
    with pytest.raises(ConversionError) as refused:
        convert_to_partitioned(plain)
    cut = conversion._legacy_name(f"{long}_a")
    assert cut == conversion._legacy_name(f"{long}_b")
    message = str(refused.value)
    assert (
        "index ix_mine, whose copy on the legacy partition would be named "
        "event_logs_legacy_ix_mine, which exists (rename the index)"
    ) in message
    assert (
        "index pkey, whose copy on the legacy partition would be named "
        "event_logs_legacy_pkey, which the conversion uses (rename the index)"
    ) in message
    assert (
        f"index {long}_b, whose copy on the legacy partition would be named {cut}, as would "
        f"the copy of index {long}_a (rename the index)"
    ) in message
    assert (
        "relation event_logs_legacy_user_id_created_at_idx exists, and the swap gives its "
        "name (rename or drop it)"
    ) in message
    assert kind(plain) == "r"


def test_a_foreign_key_to_a_table_the_role_may_not_reference_is_refused(plain: Engine) -> None:
    role = f"converter_{plain.url.database}"
    with plain.begin() as connection:
        connection.execute(text("CREATE TABLE tools (name text PRIMARY KEY)"))
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT fk_tool FOREIGN KEY (tool_name) "
                "REFERENCES tools (name)"
            )
        )
        connection.execute(text(f'CREATE ROLE "{role}"'))
        for table in ("event_logs", "users", "chat_sessions", "user_projects", "user_agents"):
            connection.execute(text(f'ALTER TABLE {table} OWNER TO "{role}"'))
    # The role of the session (peer authentication may refuse logging in as another).
    converter = create_engine(plain.url, connect_args={"options": f"-c role={role}"})
    try:
        with pytest.raises(ConversionError) as refused:
            convert_to_partitioned(converter)
    finally:
        converter.dispose()
    assert "foreign key fk_tool needs the REFERENCES privilege on tools" in str(refused.value)
    assert kind(plain) == "r"
    # The referenced column's privilege is enough, as for PostgreSQL.
    with plain.begin() as connection:
        connection.execute(text(f'GRANT REFERENCES (name) ON tools TO "{role}"'))
        connection.execute(text(f'GRANT CREATE ON SCHEMA public TO "{role}"'))
    # The role of the session (peer authentication may refuse logging in as another).
    converter = create_engine(plain.url, connect_args={"options": f"-c role={role}"})
    try:
        assert convert_to_partitioned(converter).state == "converted"
    finally:
        converter.dispose()


def test_a_foreign_key_postgresql_does_not_enforce_is_carried_over(plain: Engine) -> None:
    with plain.connect() as connection:
        version = connection.execute(text("SHOW server_version_num")).scalar_one()
    if int(version) < 180000:
        pytest.skip("NOT ENFORCED foreign keys came with PostgreSQL 18")
    with plain.begin() as connection:
        connection.execute(text("CREATE TABLE tools (name text PRIMARY KEY)"))
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT fk_tool FOREIGN KEY (tool_name) "
                "REFERENCES tools (name) NOT ENFORCED"
            )
        )
    result = convert_to_partitioned(plain, partitions_ahead=1)
    with plain.connect() as connection:
        found = snapshot(connection)["constraints"]
    assert {table for table, name in found if name == "fk_tool"} == everywhere(plain, result)


def test_the_partitioned_table_goes_to_the_schema_of_the_table_found(plain: Engine) -> None:
    # "$user" comes first on the default search_path: a schema named after the role would
    # take a CREATE TABLE that names no schema.
    with plain.begin() as connection:
        connection.execute(text("CREATE SCHEMA AUTHORIZATION CURRENT_USER"))
    result = convert_to_partitioned(plain, partitions_ahead=1)
    with plain.connect() as connection:
        schemas = dict(
            connection.execute(
                text(
                    "SELECT c.relname, n.nspname FROM pg_class c JOIN pg_namespace n "
                    "ON n.oid = c.relnamespace WHERE c.relname LIKE 'event_logs%' "
                    "AND c.relkind IN ('r', 'p')"
                )
            ).all()
        )
    assert schemas == dict.fromkeys(everywhere(plain, result), "public")


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        (["CREATE VIEW event_logs AS SELECT 1 AS id"], "is not a plain table (relkind 'v');"),
        (
            [
                "CREATE TABLE all_logs (id uuid) PARTITION BY LIST (id)",
                "CREATE TABLE event_logs PARTITION OF all_logs DEFAULT",
            ],
            "is not a plain table (relkind 'r', a partition);",
        ),
        (
            [
                "CREATE TABLE all_logs (id uuid)",
                "CREATE TABLE event_logs (id uuid CONSTRAINT pk_event_logs PRIMARY KEY, "
                "session_id uuid, user_id uuid, event_type text, payload jsonb, "
                "created_at timestamptz) INHERITS (all_logs)",
            ],
            "inherits from all_logs",
        ),
        (
            [
                "CREATE TABLE event_logs (id uuid CONSTRAINT pk_event_logs PRIMARY KEY, "
                "session_id uuid, user_id uuid, event_type text, payload jsonb, "
                "created_at timestamptz)"
            ],
            # The columns the conversion needs, and no more: it looks further.
            "index ix_event_logs_session_id_created_at is missing",
        ),
    ],
)
def test_a_relation_that_is_not_the_plain_event_log_is_refused(
    engine: Engine, statements: list[str], message: str
) -> None:
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))
    with pytest.raises(ConversionError, match=re.escape(message)):
        convert_to_partitioned(engine)


@pytest.mark.parametrize(
    "index",
    [
        "CREATE INDEX event_logs_legacy_pkey ON event_logs (id, created_at)",
        "CREATE UNIQUE INDEX event_logs_legacy_pkey ON event_logs (created_at, id)",
    ],
)
def test_an_index_under_the_keys_name_that_cannot_serve_is_rebuilt(
    plain: Engine, index: str
) -> None:
    with plain.begin() as connection:
        connection.execute(text(index))
    lines: list[str] = []
    result = convert_to_partitioned(plain, on_progress=lines.append)
    assert [name for name, _ in result.steps] == ["bound", "validate", "key", "swap"]
    assert "dropping the invalid index event_logs_legacy_pkey of an interrupted build" in lines
    with plain.connect() as connection:
        legacy = of_table(snapshot(connection), "event_logs_legacy")
    assert legacy["constraints"]["event_logs_legacy_pkey"] == "PRIMARY KEY (id, created_at)"


def test_rows_after_the_boundary_are_refused_and_the_bound_removed(plain: Engine) -> None:
    with plain.begin() as connection:
        connection.execute(
            text("UPDATE event_logs SET created_at = now() + interval '400 days' WHERE ctid = "
                 "(SELECT min(ctid) FROM event_logs)")
        )  # fmt: skip
    with pytest.raises(ConversionError, match="holds rows with created_at at or after"):
        convert_to_partitioned(plain)
    with plain.connect() as connection:
        assert (
            "event_logs_legacy_bound"
            not in of_table(snapshot(connection), "event_logs")["constraints"]
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"partition_interval": "day"}, "partition_interval='day' is not valid; use 'week' or"),
        ({"partition_interval": "Week"}, "partition_interval='Week'"),
        ({"partitions_ahead": 0}, "partitions_ahead=0 is not valid; use 1 to 52"),
        ({"partitions_ahead": 53}, "partitions_ahead=53"),
        ({"partitions_ahead": True}, "partitions_ahead=True"),
        ({"partitions_ahead": 4.0}, "partitions_ahead=4.0"),
        ({"lock_timeout": 0}, "lock_timeout=0 is not valid; use at least 0.001 s"),
        ({"lock_timeout": 0.0009}, "lock_timeout=0.0009"),
        ({"lock_timeout": -1}, "lock_timeout=-1 is not valid; use seconds from 0 to 3600"),
        ({"lock_timeout": True}, "lock_timeout=True"),
        ({"lock_timeout": "1"}, "lock_timeout='1'"),
        ({"lock_timeout": math.nan}, "lock_timeout=nan"),
        ({"lock_timeout": math.inf}, "lock_timeout=inf"),
        ({"lock_timeout": 3600.5}, "lock_timeout=3600.5 is not valid; use seconds from 0 to"),
        ({"retry_delay": -0.5}, "retry_delay=-0.5 is not valid; use seconds from 0 to 3600"),
        ({"retry_delay": True}, "retry_delay=True"),
        ({"retry_delay": None}, "retry_delay=None"),
        ({"retry_delay": math.nan}, "retry_delay=nan"),
        ({"retry_delay": math.inf}, "retry_delay=inf"),
        ({"swap_attempts": 0}, "swap_attempts=0 is not valid; use 1 or more"),
        ({"swap_attempts": True}, "swap_attempts=True"),
        ({"swap_attempts": 2.0}, "swap_attempts=2.0"),
    ],
)
def test_bad_arguments_are_refused(engine: Engine, options: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        convert_to_partitioned(engine, **options)


def test_anything_but_a_sync_engine_is_refused_naming_it(database_url: URL) -> None:
    async_engine = create_async_engine(database_url)
    for wrong, shown in [
        (None, "None"),
        (str(database_url), "postgresql"),
        (async_engine, "AsyncEngine("),
    ]:
        with pytest.raises(ConfigurationError) as caught:
            convert_to_partitioned(wrong)  # type: ignore[arg-type]
        message = str(caught.value)
        assert message.startswith("convert_to_partitioned needs a sqlalchemy Engine, got ")
        assert shown in message
        assert message.endswith("; pass the application's engine")


@pytest.mark.parametrize(
    "options",
    [
        {"partition_interval": "month"},
        {"partitions_ahead": 1},
        {"partitions_ahead": 52},
        {"lock_timeout": 0.001},
        {"lock_timeout": 1},
        {"lock_timeout": 3600},
        {"retry_delay": 0},
        {"retry_delay": 3600},
        {"swap_attempts": 1},
    ],
)
def test_arguments_at_their_limits_are_taken(engine: Engine, options: Any) -> None:
    # Taken: the call goes on to look for the table, which this database does not have.
    with pytest.raises(ConversionError, match="there is no table event_logs"):
        convert_to_partitioned(engine, **options)


# --- the command line ---------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", ["0.0009", "3600.5", "nan", "abc"])
def test_the_command_refuses_a_lock_timeout_the_call_would(
    database_url: URL, capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    url = database_url.render_as_string(hide_password=False)
    assert main(["convert", "--url", url, "--lock-timeout", seconds]) == 2
    err = capsys.readouterr().err
    assert f"argument --lock-timeout: {seconds!r} is not a number of seconds from 0.001 to" in err


@pytest.mark.parametrize("ahead", ["0", "53", "99", "four"])
def test_the_command_refuses_partitions_ahead_the_call_would(
    database_url: URL, capsys: pytest.CaptureFixture[str], ahead: str
) -> None:
    url = database_url.render_as_string(hide_password=False)
    assert main(["convert", "--url", url, "--ahead", ahead]) == 2
    err = capsys.readouterr().err
    assert f"argument --ahead: {ahead!r} is not a whole number from 1 to 52; pass e.g. 4" in err


def test_the_command_prepares_then_swaps(
    plain: Engine, database_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    url = database_url.render_as_string(hide_password=False)
    assert main(["convert", "--url", url, "--prepare"]) == 0
    out, err = capsys.readouterr()
    assert "prepared; deploy the model with partitioned=True" in out
    assert "validate: done in" in err
    assert kind(plain) == "r"
    assert main(["convert", "--url", url]) == 0
    out, err = capsys.readouterr()
    assert "converted; event_logs_legacy holds the rows before" in out
    assert "ACCESS EXCLUSIVE held" in err
    assert main(["convert", "--url", url]) == 0
    assert "already partitioned" in capsys.readouterr().out
