"""The opt-in feed schema (revision evlfeed_0001): branch and linear mode, plain and partitioned."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from catalog import UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import HostProject, make_host
from hostmodels import build_host_models
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from test_partitioned_convert import fill
from test_partitioned_migrations import add_event, expected_partitioned, partitions
from test_partitioned_migrations import opt_in as opt_in_partitioned

from eventlog_persist import convert_to_partitioned, ensure_partitions
from eventlog_persist.exceptions import ConversionError

MAIN = "%(here)s/migrations/versions eventlog_persist:migrations"
FEED = " eventlog_persist:migrations_feed"
PARTITIONED = " eventlog_persist:migrations_partitioned"

INDEX = "ix_event_logs_xid_id"
CONSUMERS = {
    "columns": {
        "consumer": ("character varying(128)", True, None),
        "part": ("smallint", True, "0"),
        "parts": ("smallint", True, "1"),
        "snapshot_done": ("pg_snapshot", True, None),
        "snapshot_target": ("pg_snapshot", False, None),
        "after_xid": ("xid8", False, None),
        "after_id": ("uuid", False, None),
        "backfill_since": ("timestamp with time zone", False, None),
        "backfill_after": ("uuid", False, None),
        "owner": ("character varying(200)", False, None),
        "lease_until": ("timestamp with time zone", False, None),
        "generation": ("bigint", True, "0"),
        "delivered": ("bigint", True, "0"),
        "created_at": ("timestamp with time zone", True, "now()"),
        "committed_at": ("timestamp with time zone", False, None),
        "lost_events": ("bigint", False, None),
        "lost_before": ("timestamp with time zone", False, None),
        "lost_at": ("timestamp with time zone", False, None),
        "lost_by": ("character varying(64)", False, None),
    },
    "constraints": {
        "pk_event_log_consumers": "PRIMARY KEY (consumer, part)",
        "ck_event_log_consumers_part": "CHECK (((part >= 0) AND (part < parts)))",
    },
    "indexes": {
        "pk_event_log_consumers": "CREATE UNIQUE INDEX pk_event_log_consumers ON "
        "public.event_log_consumers USING btree (consumer, part)",
    },
}


def opt_in(host: HostProject, *, location: bool = True) -> None:
    """What a host changes to opt in to the feed: the location (branch mode) and the model."""
    if location:
        host.edit("alembic.ini", MAIN, MAIN + FEED)
    host.edit(
        "app/models/event_log.py",
        '    """Every user-agent interaction event (table ``event_logs``)."""\n',
        '    """Every user-agent interaction event (table ``event_logs``)."""\n\n'
        "    __eventlog_feed__ = True\n",
    )


def with_feed(expected: dict[str, Any], *, partitioned: bool = False) -> dict[str, Any]:
    """``event_logs`` as expected, plus the feed's column and index."""
    on = "ON ONLY public.event_logs" if partitioned else "ON public.event_logs"
    expected["columns"]["xid"] = ("xid8", False, "pg_current_xact_id()")
    expected["indexes"][INDEX] = f"CREATE INDEX {INDEX} {on} USING btree (xid, id)"
    return expected


def tables(engine: Engine) -> dict[str, Any]:
    with engine.connect() as connection:
        found = snapshot(connection)
    return {
        "event_logs": of_table(found, "event_logs"),
        "event_log_consumers": of_table(found, "event_log_consumers"),
    }


def relfilenode(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text("SELECT relfilenode FROM pg_class WHERE oid = 'event_logs'::regclass")
            ).scalar_one()
        )


def valid_indexes(engine: Engine) -> dict[str, bool]:
    """Every index on (xid, id) of event_logs and its partitions: whether it is valid."""
    with engine.connect() as connection:
        return dict(
            connection.execute(
                text(
                    "SELECT c.relname, i.indisvalid FROM pg_index i "
                    "JOIN pg_class c ON c.oid = i.indexrelid "
                    "JOIN pg_class t ON t.oid = i.indrelid "
                    "WHERE t.relname LIKE 'event_logs%' "
                    "AND pg_get_indexdef(i.indexrelid) LIKE '%(xid, id)'"
                )
            ).all()
        )


def xids(engine: Engine) -> list[int | None]:
    with engine.connect() as connection:
        return [
            None if value is None else int(value)
            for value in connection.execute(
                text("SELECT xid::text FROM event_logs ORDER BY created_at")
            ).scalars()
        ]


@pytest.fixture
def host(tmp_path: Path, database_url: URL) -> HostProject:
    host = make_host(tmp_path / "host", database_url)
    opt_in(host)
    return host


def test_heads_show_the_feed_branch(host: HostProject) -> None:
    heads = host.run("heads").stdout.splitlines()
    assert sorted(heads) == [
        "eventlog_prereqs (app) (effective head)",
        "evl_0002 (eventlog) (effective head)",
        "evlfeed_0001 (eventlog_feed) (head)",
    ]


def test_upgrade_adds_the_column_index_and_consumers_table(
    host: HostProject, engine: Engine
) -> None:
    result = host.run("upgrade", "heads")
    assert result.stderr.index("-> evl_0002") < result.stderr.index("-> evlfeed_0001")
    found = tables(engine)
    assert found["event_logs"] == with_feed(expected_event_logs(UUID_KEYS))
    assert found["event_log_consumers"] == CONSUMERS
    assert valid_indexes(engine) == {INDEX: True}
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK (branch mode)" in host.run("eventlog-persist", "check").stdout


def test_upgrade_of_a_table_with_events_rewrites_nothing(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "evl_0002")
    add_event(engine)
    add_event(engine)
    before = relfilenode(engine)
    host.run("upgrade", "heads")
    assert relfilenode(engine) == before  # no table rewrite: the same file on disk
    add_event(engine)
    stored = xids(engine)
    assert stored[:2] == [None, None]  # rows from before the feed keep no transaction id
    assert stored[2] is not None


def test_downgrade_removes_everything_it_added(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "evl_0002")
    with engine.connect() as connection:
        plain = snapshot(connection)
    host.run("upgrade", "heads")
    add_event(engine)
    result = host.run("downgrade", "eventlog_feed@-1")
    assert "Running downgrade evlfeed_0001" in result.stderr
    with engine.connect() as connection:
        assert snapshot(connection) == plain
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 1
    host.run("upgrade", "heads")
    assert tables(engine)["event_logs"] == with_feed(expected_event_logs(UUID_KEYS))


def test_an_interrupted_index_build_is_dropped_and_built_again(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evl_0002")
    add_event(engine)
    add_event(engine)
    with engine.begin() as connection:
        # What an interrupted upgrade leaves: the column and table, and an INVALID index of
        # that name (here a unique build that failed on the two rows' equal NULL-free xids).
        connection.execute(text("ALTER TABLE event_logs ADD COLUMN xid xid8"))
        connection.execute(text("UPDATE event_logs SET xid = '5'"))
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(Exception, match="could not create unique index"):
            connection.execute(
                text(f"CREATE UNIQUE INDEX CONCURRENTLY {INDEX} ON event_logs (xid)")
            )
    assert valid_indexes(engine) == {}  # the invalid one is on (xid) only
    with engine.connect() as connection:
        assert (
            connection.execute(
                text(f"SELECT indisvalid FROM pg_index WHERE indexrelid = '{INDEX}'::regclass")
            ).scalar()
            is False
        )
    host.run("upgrade", "heads")
    assert valid_indexes(engine) == {INDEX: True}
    assert tables(engine)["event_logs"] == with_feed(expected_event_logs(UUID_KEYS))


def test_offline_sql_builds_concurrently_and_refuses_a_partitioned_table(
    host: HostProject,
) -> None:
    sql = host.run("-x", "eventlog_persist.pk_type=uuid", "upgrade", "heads", "--sql").stdout
    feed = sql[sql.index("evlfeed_0001") :]
    assert "ADD COLUMN IF NOT EXISTS xid xid8" in feed
    assert "SET DEFAULT pg_current_xact_id()" in feed
    assert "RAISE EXCEPTION 'eventlog_persist: event_logs is partitioned" in feed
    assert f'COMMIT;\n\nCREATE INDEX CONCURRENTLY IF NOT EXISTS "{INDEX}"' in feed


def test_the_feed_location_alone_is_reported(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "h", database_url)
    host.edit("alembic.ini", MAIN, "%(here)s/migrations/versions" + FEED)
    result = host.run("eventlog-persist", "check", "--offline", check=False)
    assert result.returncode == 1
    assert "'eventlog_persist:migrations_feed' is in version_locations without" in result.stderr
    assert "remove it from version_locations and run 'eventlog-persist linear-revision --feed'" in (
        result.stderr
    )
    # Following that advice without removing it names the location that is there.
    refused = host.run("eventlog-persist", "linear-revision", "--feed", check=False)
    assert refused.returncode == 2
    assert "'eventlog_persist:migrations_feed' is in version_locations (branch mode)" in (
        refused.stderr
    )
    assert "'eventlog_persist:migrations' is" not in refused.stderr


def test_check_reports_a_missing_feed_index(host: HostProject, engine: Engine) -> None:
    host.run("upgrade", "heads")
    with engine.begin() as connection:
        connection.execute(text(f"DROP INDEX {INDEX}"))
    result = host.run("eventlog-persist", "check", check=False)
    assert result.returncode == 1
    assert f"index {INDEX} is missing" in result.stderr


def test_linear_mode_copies_the_feed_revision_on_request(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    host = make_host(tmp_path / "h", database_url, mode="linear")
    host.run("eventlog-persist", "linear-revision")
    host.run("upgrade", "head")
    add_event(engine)
    opt_in(host, location=False)
    written = host.run("eventlog-persist", "linear-revision", "--feed").stdout
    assert "eventlog_feed_0001_add_transaction_ids_and_consumers.py" in written
    assert "eventlog_0001" not in written
    copy = (
        tmp_path
        / "h"
        / "migrations"
        / "versions"
        / "eventlog_feed_0001_add_transaction_ids_and_consumers.py"
    ).read_text()
    assert "down_revision = 'eventlog_0002'" in copy
    assert "eventlog_persist_revision = 'evlfeed_0001'" in copy
    assert host.run("heads").stdout.split() == ["eventlog_feed_0001", "(app)", "(head)"]
    assert "setup OK (linear mode)" in host.run("eventlog-persist", "check", "--offline").stdout
    host.run("upgrade", "head")
    assert tables(engine)["event_logs"] == with_feed(expected_event_logs(UUID_KEYS))
    assert "No new upgrade operations detected." in host.run("check").stdout
    host.run("downgrade", "-1")
    assert tables(engine)["event_logs"] == expected_event_logs(UUID_KEYS)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM event_logs")).scalar() == 1


# -- with the partitioned layout ---------------------------------------------------------


def test_feed_on_a_partitioned_table_indexes_every_partition(
    host: HostProject, engine: Engine
) -> None:
    opt_in_partitioned(host, location=False)
    host.edit("alembic.ini", MAIN + FEED, MAIN + PARTITIONED)
    host.run("upgrade", "heads")  # the partitioned layout first, as an existing host has it
    add_event(engine)
    before = relfilenode(engine)
    host.edit("alembic.ini", MAIN + PARTITIONED, MAIN + PARTITIONED + FEED)
    host.run("upgrade", "heads")
    assert relfilenode(engine) == before
    expected = with_feed(expected_partitioned(UUID_KEYS), partitioned=True)
    assert tables(engine)["event_logs"] == expected
    names = [name for name, _ in partitions(engine)]
    assert valid_indexes(engine) == {
        INDEX: True,
        **{f"{name}_xid_id_idx": True for name in names},
    }
    assert "No new upgrade operations detected." in host.run("check").stdout
    assert "setup OK (branch mode)" in host.run("eventlog-persist", "check").stdout
    # A partition created later gets its index from the parent's.
    added = ensure_partitions(
        build_host_models(partitioned=True, feed=True).EventLog, engine, ahead=6
    )
    assert added
    assert all(valid_indexes(engine).values())
    assert len(valid_indexes(engine)) == len(names) + len(added) + 1
    add_event(engine)
    assert xids(engine)[0] is None  # written before the feed
    assert xids(engine)[1] is not None
    host.run("downgrade", "eventlog_feed@-1")
    assert tables(engine)["event_logs"] == expected_partitioned(UUID_KEYS)


@pytest.mark.parametrize(
    "feed_first", [False, True], ids=["partitioned-listed-first", "feed-listed-first"]
)
def test_both_opt_ins_at_once_on_a_fresh_database(
    host: HostProject, engine: Engine, feed_first: bool
) -> None:
    opt_in_partitioned(host, location=False)
    locations = (FEED + PARTITIONED) if feed_first else (PARTITIONED + FEED)
    host.edit("alembic.ini", MAIN + FEED, MAIN + locations)
    host.run("upgrade", "heads")
    expected = with_feed(expected_partitioned(UUID_KEYS), partitioned=True)
    assert tables(engine)["event_logs"] == expected
    assert all(valid_indexes(engine).values())
    assert len(valid_indexes(engine)) == len(partitions(engine)) + 1
    assert "No new upgrade operations detected." in host.run("check").stdout
    # Back to the plain layout with the feed kept: the index comes along.
    host.run("downgrade", "eventlog_partitioned@base")
    assert tables(engine)["event_logs"] == with_feed(expected_event_logs(UUID_KEYS))


def test_a_filled_feed_table_converts_online_with_its_index(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "heads")
    fill(engine, 200)
    before = xids(engine)
    convert_to_partitioned(engine)
    opt_in_partitioned(host, location=False)
    host.edit("alembic.ini", MAIN + FEED, MAIN + FEED + PARTITIONED)
    host.run("upgrade", "heads")  # evlpart_0001 finds the table partitioned
    assert xids(engine) == before
    assert all(valid_indexes(engine).values())
    assert "event_logs_legacy_xid_id_idx" in valid_indexes(engine)
    assert len(valid_indexes(engine)) == len(partitions(engine)) + 1
    assert "No new upgrade operations detected." in host.run("check").stdout


def test_conversion_refuses_a_feed_table_whose_index_is_not_built(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "heads")
    fill(engine, 10)
    with engine.begin() as connection:
        connection.execute(text(f"DROP INDEX {INDEX}"))
    with pytest.raises(ConversionError, match=f"the feed's index {INDEX} is missing or invalid"):
        convert_to_partitioned(engine)
