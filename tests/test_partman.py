"""pg_partman managing the package's partitioned table: the setup docs/adoption.md documents.

Runs where the server under test has pg_partman (CI: the Debian PostgreSQL 15 cluster with
postgresql-15-partman, the 4.x series); elsewhere it is skipped, with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, text

from eventlog_persist import EventWriter, drop_partitions, list_partitions, write_events
from eventlog_persist.exceptions import EventWriteError


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(partitioned=True)


@pytest.fixture
def partman(host_engine: Engine) -> str:
    """pg_partman's version, installed in schema ``partman`` of the test's database."""
    with host_engine.begin() as connection:
        available = connection.execute(
            text("SELECT default_version FROM pg_available_extensions WHERE name = 'pg_partman'")
        ).scalar()
        if available is None:
            pytest.skip(
                "pg_partman is not installed on this PostgreSQL server (CI installs "
                "postgresql-15-partman for the Debian 15 cluster; the embedded server has none)"
            )
        connection.execute(text("CREATE SCHEMA partman"))
        connection.execute(text("CREATE EXTENSION pg_partman SCHEMA partman"))
    return str(available)


def test_pg_partman_4_manages_the_partitioned_table(
    host_engine: Engine, host_models: HostModels, partman: str
) -> None:
    if not partman.startswith("4."):
        pytest.skip(f"this test follows the pg_partman 4.x API; the server has {partman}")
    model = host_models.EventLog
    with host_engine.begin() as connection:
        # 4.x: type 'native' and interval names; it always creates a DEFAULT partition
        # (5.x: p_type 'range', p_interval '1 week', p_default_table false).
        connection.execute(
            text(
                "SELECT partman.create_parent('public.event_logs', 'created_at', 'native', "
                "'weekly', p_premake := 4)"
            )
        )
        default = connection.execute(
            text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'event_logs'::regclass "
                "AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'"
            )
        ).scalar_one()
        assert default == "event_logs_default"
        # No DEFAULT partition, as in the package's layout: a write with no partition fails
        # loudly instead of landing in a table that slows every new partition down.
        connection.execute(text("DROP TABLE event_logs_default"))
    found = list_partitions(model, host_engine)
    assert not any(p.default for p in found)
    # 4.x names weekly partitions by ISO week (event_logs_p2026w49); 5.x by first day.
    assert all(p.name.startswith("event_logs_p") and "w" in p.name for p in found)
    now = datetime.now(UTC)
    # premake 4: 4 weeks ahead of the current one (and 4 back).
    assert max(p.upper for p in found if p.upper is not None) > now + timedelta(weeks=4)

    with host_engine.begin() as connection:
        # 4.x counts premade partitions from the newest event, and makes none for an empty
        # set: infinite_time_partitions counts from now instead (a quiet week still gets
        # its partitions ahead).
        connection.execute(
            text("UPDATE partman.part_config SET premake = 6, infinite_time_partitions = true")
        )
    with host_engine.connect() as connection:
        connection.execute(text("SELECT partman.run_maintenance('public.event_logs')"))
        connection.commit()
    after = list_partitions(model, host_engine)
    # At least 6 weeks ahead of now. 4.x counts weeks by their ISO numbers, so near the end
    # of a 53-week year (2026) it makes one more than asked: the count is partman's business.
    assert len(after) >= len(found) + 2
    assert max(p.upper for p in after if p.upper is not None) > now + timedelta(weeks=6)
    assert not any(p.default for p in after)  # maintenance does not bring the DEFAULT back

    user_id, session_id = seed(host_engine, host_models)
    keys: dict[str, Any] = {"user_id": user_id, "session_id": session_id}
    writer = EventWriter(model)
    events = [
        writer.event(event_type="user_message", created_at=now - timedelta(weeks=n), **keys)
        for n in range(4)
    ]
    assert write_events(model, host_engine, events).written == 4
    with pytest.raises(EventWriteError, match="no partition holds its created_at"):
        writer.record_detached(
            host_engine, event_type="user_message", created_at=now - timedelta(weeks=60), **keys
        )

    # The package's drop works on partman's partitions (partman 4.x's own retention detaches
    # without CONCURRENTLY); partman's config then still lists the parent.
    cutoff = now - timedelta(weeks=2)
    result = drop_partitions(model, host_engine, older_than=cutoff)
    assert result.dropped
    assert all(p.upper is None or p.upper > cutoff for p in list_partitions(model, host_engine))
    with host_engine.connect() as connection:
        connection.execute(text("SELECT partman.run_maintenance('public.event_logs')"))
        connection.commit()
    assert len(list_partitions(model, host_engine)) == len(after) - len(result.dropped)


def test_pg_partman_4_partitions_get_the_audits_check_on_created_at(
    host_engine: Engine, partman: str
) -> None:
    """What docs/audit.md says of pg_partman: with the audit's CHECK (evlaudit_0002's, added
    here as it adds it) on the parent, every partition pg_partman makes has it."""
    if not partman.startswith("4."):
        pytest.skip(f"this test follows the pg_partman 4.x API; the server has {partman}")
    with host_engine.begin() as connection:
        connection.execute(
            text(
                "ALTER TABLE event_logs ADD CONSTRAINT ck_event_logs_created_at_range CHECK "
                "(created_at >= '0001-01-01 00:00:00+00' "
                "AND created_at < '10000-01-01 00:00:00+00')"
            )
        )
        connection.execute(
            text(
                "SELECT partman.create_parent('public.event_logs', 'created_at', 'native', "
                "'weekly', p_premake := 2)"
            )
        )
        connection.execute(text("UPDATE partman.part_config SET premake = 4"))
    with host_engine.connect() as connection:
        connection.execute(text("SELECT partman.run_maintenance('public.event_logs')"))
        connection.commit()
        partitions = set(
            connection.execute(
                text(
                    "SELECT inhrelid::regclass::text FROM pg_inherits "
                    "WHERE inhparent = 'event_logs'::regclass"
                )
            ).scalars()
        )
        bounded = set(
            connection.execute(
                text(
                    "SELECT conrelid::regclass::text FROM pg_constraint "
                    "WHERE conname = 'ck_event_logs_created_at_range'"
                )
            ).scalars()
        )
    assert len(partitions) >= 5
    assert bounded == partitions | {"event_logs"}
