"""The model knows the feed's column, index and consumers table only when the host opts in."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hostmodels import build_host_models
from sqlalchemy import Column, MetaData, Table, Uuid
from sqlalchemy.orm import DeclarativeBase

from eventlog_persist import (
    EventLogMixin,
    ForeignKeyTargets,
    event_log_model,
    include_name,
    include_object,
)
from eventlog_persist.exceptions import ConfigurationError


def test_a_plain_model_has_no_feed() -> None:
    models = build_host_models()
    assert models.EventLog.xid is None
    assert "xid" not in models.EventLog.__table__.c
    assert "event_log_consumers" not in models.Base.metadata.tables


def test_feed_true_adds_the_column_its_index_and_the_consumers_table() -> None:
    models = build_host_models(feed=True, partitioned=True)
    table: Any = models.EventLog.__table__
    assert str(table.c.xid.type) == "XID8"
    assert table.c.xid.nullable
    assert str(table.c.xid.server_default.arg) == "pg_current_xact_id()"
    index = next(index for index in table.indexes if index.name == "ix_event_logs_xid_id")
    assert [column.name for column in index.columns] == ["xid", "id"]
    consumers = models.Base.metadata.tables["event_log_consumers"]
    assert [column.name for column in consumers.primary_key.columns] == ["consumer", "part"]


def test_the_mixin_opts_in_with_a_class_attribute() -> None:
    class Base(DeclarativeBase):
        metadata = MetaData(schema="app")

    for name in ("users", "chat_sessions", "user_projects", "user_agents"):
        Table(name, Base.metadata, Column("id", Uuid(), primary_key=True))

    class EventLog(EventLogMixin[uuid.UUID], Base):
        __eventlog_targets__ = ForeignKeyTargets(schema="app")
        __eventlog_feed__ = True

    assert "xid" in EventLog.__table__.c
    assert "app.event_log_consumers" in Base.metadata.tables

    with pytest.raises(ConfigurationError, match="__eventlog_feed__ must be True or False"):

        class Broken(EventLogMixin[uuid.UUID], Base):
            __tablename__ = "other_events"
            __eventlog_targets__ = ForeignKeyTargets(schema="app")
            __eventlog_feed__ = 1


def test_feed_must_be_a_bool() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="feed must be True or False, got 'yes'"):
        event_log_model(Base, feed="yes")  # type: ignore[call-overload]


def test_the_autogenerate_hooks_hide_the_consumers_table() -> None:
    consumers = build_host_models(feed=True).Base.metadata.tables["event_log_consumers"]
    assert not include_name("event_log_consumers", "table", {})
    assert not include_name(
        "pk_event_log_consumers", "index", {"table_name": "event_log_consumers"}
    )
    assert not include_object(consumers, "event_log_consumers", "table", False, None)
    assert include_name("users", "table", {})
