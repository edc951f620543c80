"""Online conversion of a filled, plain event_logs into the partitioned layout."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from catalog import UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import HostProject, make_host
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from test_partitioned_migrations import expected_partitioned, opt_in, partitions

from eventlog_persist import (
    BufferedWriter,
    EventWriter,
    NewEvent,
    RetryPolicy,
    convert_to_partitioned,
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
    result = convert_to_partitioned(engine)
    assert result.state == "converted"
    assert [step for step, _ in result.steps] == ["bound", "validate", "key", "swap"]
    assert result.swap_attempts == 1
    assert result.swap_hold is not None
    assert result.swap_hold < 1
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


def test_partitions_missing_after_an_interrupted_swap_are_created_when_run_again(
    plain: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: Any, **kwargs: Any) -> None:
        raise Interrupted

    with monkeypatch.context() as patch:
        patch.setattr(conversion._Conversion, "_add_partitions", interrupt)
        with pytest.raises(Interrupted):
            convert_to_partitioned(plain)
    assert [name for name, _ in partitions(plain)] == ["event_logs_legacy"]
    again = convert_to_partitioned(plain)
    assert again.state == "already_partitioned"
    assert again.partitions
    assert sorted(name for name, _ in partitions(plain)) == [
        "event_logs_legacy",
        *sorted(again.partitions),
    ]


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
    result = convert_to_partitioned(plain)
    assert [name for name, _ in result.steps] == ["key", "swap"]
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


def test_a_bound_that_came_too_close_is_set_again(plain: Engine) -> None:
    near = datetime.now(UTC) + timedelta(minutes=10)
    with plain.begin() as connection:
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT event_logs_legacy_bound "
                f"CHECK (created_at < '{near.isoformat()}') NOT VALID"
            )
        )
    result = convert_to_partitioned(plain)
    assert result.boundary is not None
    assert result.boundary > near + timedelta(hours=12)
    assert [name for name, _ in result.steps] == ["bound", "validate", "key", "swap"]


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
    result = convert_to_partitioned(plain, lock_timeout=0.02, retry_delay=0.05)
    assert result.state == "converted"
    assert result.swap_attempts > 1


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
    assert kind(plain) == "r"
    held.set()
    time.sleep(0.1)
    assert [name for name, _ in convert_to_partitioned(plain).steps] == ["swap"]


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
    assert len(written) > 500
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


def test_a_partitioned_table_is_left_alone_unless_it_has_a_default_partition(
    plain: Engine,
) -> None:
    converted = convert_to_partitioned(plain)
    again = convert_to_partitioned(plain)
    assert (again.state, again.boundary, again.steps, again.partitions) == (
        "already_partitioned",
        converted.boundary,
        (),
        (),
    )
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
    with pytest.raises(ConversionError) as refused:
        convert_to_partitioned(plain)
    assert "trigger audit" in str(refused.value)
    assert "index ix_event_logs_agent_id_created_at is missing" in str(refused.value)
    assert kind(plain) == "r"


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
        ({"partition_interval": "day"}, "partition_interval='day'"),
        ({"partitions_ahead": 0}, "partitions_ahead=0"),
        ({"lock_timeout": 0}, "lock_timeout=0"),
        ({"swap_attempts": 0}, "swap_attempts=0"),
    ],
)
def test_bad_arguments_are_refused(engine: Engine, options: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        convert_to_partitioned(engine, **options)


# --- the command line ---------------------------------------------------------------------------


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
