"""The EventLog model on real PostgreSQL: schema, round trips, FK actions, host shapes."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from catalog import INTEGER_KEYS, UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import NAMING_CONVENTION
from hostmodels import HostModels, build_host_models
from sqlalchemy import Engine, MetaData, create_engine, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session

from eventlog_persist import EventLogMixin, ForeignKeyTargets, event_log_model
from eventlog_persist.exceptions import ConfigurationError


def seed(session: Session, models: HostModels) -> dict[str, object]:
    """One user with a session, a project and an agent; returns their keys."""
    user = models.User(id=models.new_key())
    session.add(user)
    session.flush()
    rows = {
        "session": models.ChatSession(id=models.new_key(), user_id=user.id),
        "project": models.UserProject(id=models.new_key(), user_id=user.id),
        "agent": models.UserAgent(id=models.new_key(), user_id=user.id),
    }
    session.add_all(rows.values())
    session.flush()
    return {"user": user.id, **{name: row.id for name, row in rows.items()}}


def test_create_all_matches_the_migration_schema(host_engine: Engine) -> None:
    with host_engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_event_logs(UUID_KEYS)


@pytest.mark.parametrize("convention", [None, eval(NAMING_CONVENTION)])
def test_integer_host_and_naming_convention_keep_our_names(
    engine: Engine, convention: dict[str, str] | None
) -> None:
    models = build_host_models(keys="integer", naming_convention=convention)
    models.Base.metadata.create_all(engine)
    with engine.connect() as connection:
        assert of_table(snapshot(connection), "event_logs") == expected_event_logs(INTEGER_KEYS)


def test_custom_target_names_and_schema(engine: Engine) -> None:
    targets = ForeignKeyTargets(
        users="accounts",
        chat_sessions="conversations",
        user_projects="workspaces",
        user_agents="assistants",
        schema="app",
    )
    models = build_host_models(targets=targets)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE SCHEMA app")
    models.Base.metadata.create_all(engine)
    with engine.connect() as connection:
        constraints = of_table(snapshot(connection, "app"), "event_logs")["constraints"]
    assert constraints["fk_event_logs_user_id"] == (
        "FOREIGN KEY (user_id) REFERENCES app.accounts(id) ON DELETE CASCADE"
    )
    assert constraints["fk_event_logs_session_id"].startswith(
        "FOREIGN KEY (session_id) REFERENCES app.conversations(id)"
    )


def test_round_trip_python_types(host_engine: Engine, host_models: HostModels) -> None:
    payload = {"text": "héllo", "tools": [{"name": "search", "args": {"q": 1}}], "ok": True}
    with Session(host_engine) as session:
        keys = seed(session, host_models)
        event = host_models.EventLog(
            session_id=keys["session"],
            user_id=keys["user"],
            project_id=keys["project"],
            agent_id=keys["agent"],
            event_type="tool_call",
            payload=payload,
            tool_name="search",
        )
        session.add(event)
        session.commit()
        event_id = event.id
    with Session(host_engine) as session:
        loaded = session.get(host_models.EventLog, event_id)
        assert loaded is not None
        assert isinstance(loaded.id, uuid.UUID)
        assert loaded.id.version == 7
        assert isinstance(loaded.session_id, uuid.UUID)
        assert loaded.payload == payload
        assert loaded.created_at.tzinfo is not None
        assert abs(loaded.created_at - datetime.now(UTC)) < timedelta(minutes=5)
        assert (loaded.tool_name, loaded.error_code, loaded.approval_status) == (
            "search",
            None,
            None,
        )


def test_payload_defaults_to_empty_object_and_event_time_is_kept(
    host_engine: Engine, host_models: HostModels
) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    with Session(host_engine) as session:
        keys = seed(session, host_models)
        event = host_models.EventLog(
            session_id=keys["session"], user_id=keys["user"], event_type="error", created_at=when
        )
        session.add(event)
        session.commit()
        session.expire_all()
        assert event.payload == {}
        assert event.created_at == when


def test_each_row_of_one_transaction_gets_its_own_time(
    host_engine: Engine, host_models: HostModels
) -> None:
    # A tool call and its result logged in one request transaction must show how long the
    # tool took: neither the ORM nor a Core insert may fall back to now() (transaction start).
    model = host_models.EventLog
    with Session(host_engine) as session:
        keys = seed(session, host_models)
        started = session.scalar(select(func.now()))
        call = model(session_id=keys["session"], user_id=keys["user"], event_type="tool_call")
        session.add(call)
        time.sleep(0.01)
        result = model(session_id=keys["session"], user_id=keys["user"], event_type="tool_result")
        session.add(result)
        session.execute(
            insert(model).values(
                id=uuid.uuid4(), session_id=keys["session"], user_id=keys["user"], event_type="core"
            )
        )
        session.commit()
        times = {
            row[0]: row[1] for row in session.execute(select(model.event_type, model.created_at))
        }
    assert times["tool_result"] - times["tool_call"] >= timedelta(milliseconds=10)
    assert times["core"] > times["tool_result"] > started


def test_ids_are_time_ordered(host_models: HostModels) -> None:
    ids = [
        host_models.EventLog(session_id=uuid.uuid4(), user_id=uuid.uuid4(), event_type="x").id
        for _ in range(1000)
    ]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000


def test_required_columns_are_enforced(host_engine: Engine, host_models: HostModels) -> None:
    with Session(host_engine) as session:
        keys = seed(session, host_models)
        session.commit()
        session.add(
            host_models.EventLog(session_id=keys["session"], user_id=None, event_type="x")  # type: ignore[arg-type]
        )
        with pytest.raises(IntegrityError, match="user_id"):
            session.commit()


def test_deleting_a_session_cascades_its_events(
    host_engine: Engine, host_models: HostModels
) -> None:
    m = host_models
    with Session(host_engine) as session:
        keys = seed(session, m)
        other = m.ChatSession(id=m.new_key(), user_id=keys["user"])
        session.add(other)
        session.flush()
        other_id = other.id
        for sid in (keys["session"], keys["session"], other.id):
            session.add(m.EventLog(session_id=sid, user_id=keys["user"], event_type="x"))
        session.commit()
        session.delete(session.get(m.ChatSession, keys["session"]))
        session.commit()
        remaining = session.scalars(select(m.EventLog.session_id)).all()
    assert remaining == [other_id]


@pytest.mark.parametrize(("target", "column"), [("agent", "agent_id"), ("project", "project_id")])
def test_deleting_an_agent_or_project_keeps_events_and_sets_null(
    host_engine: Engine, host_models: HostModels, target: str, column: str
) -> None:
    m = host_models
    table = {"agent": m.UserAgent, "project": m.UserProject}[target]
    with Session(host_engine) as session:
        keys = seed(session, m)
        session.add(
            m.EventLog(
                session_id=keys["session"],
                user_id=keys["user"],
                agent_id=keys["agent"],
                project_id=keys["project"],
                event_type="x",
            )
        )
        session.commit()
        session.delete(session.get(table, keys[target]))
        session.commit()
        event = session.scalars(select(m.EventLog)).one()
    assert getattr(event, column) is None
    other = "project_id" if column == "agent_id" else "agent_id"
    assert getattr(event, other) is not None


def test_deleting_a_user_is_not_blocked_by_events(
    host_engine: Engine, host_models: HostModels
) -> None:
    m = host_models
    with Session(host_engine) as session:
        keys = seed(session, m)
        session.add(m.EventLog(session_id=keys["session"], user_id=keys["user"], event_type="x"))
        session.commit()
        session.delete(session.get(m.User, keys["user"]))
        session.commit()
        assert session.scalars(select(m.EventLog)).all() == []


def test_integer_host_round_trip(engine: Engine) -> None:
    m = build_host_models(keys="integer")
    m.Base.metadata.create_all(engine)
    with Session(engine) as session:
        keys = seed(session, m)
        session.add(m.EventLog(session_id=keys["session"], user_id=keys["user"], event_type="x"))
        session.commit()
        event = session.scalars(select(m.EventLog)).one()
    assert isinstance(event.session_id, int)
    assert isinstance(event.id, uuid.UUID)


def test_two_hosts_bind_the_model_in_one_process() -> None:
    first = build_host_models()
    second = build_host_models(keys="integer", targets=ForeignKeyTargets(users="accounts"))
    assert first.EventLog is not second.EventLog
    assert first.EventLog.__table__.metadata is first.Base.metadata  # type: ignore[attr-defined]
    assert second.EventLog.__table__.metadata is second.Base.metadata  # type: ignore[attr-defined]
    fk = {fk.parent.name: fk.target_fullname for fk in second.EventLog.__table__.foreign_keys}  # type: ignore[attr-defined]
    assert fk["user_id"] == "accounts.id"


def test_mixin_subclass_is_the_typed_path() -> None:
    class Base(DeclarativeBase):
        pass

    models = build_host_models()  # only to have target tables on a metadata of their own

    class EventLog(EventLogMixin[uuid.UUID], Base):
        __eventlog_targets__ = ForeignKeyTargets()

    assert EventLog.__tablename__ == "event_logs"
    assert models.EventLog.__tablename__ == "event_logs"


def test_sqlite_create_all_still_works_for_host_unit_tests() -> None:
    # Hosts' own unit suites often run create_all() on SQLite: adding the model must not break
    # them. (The package itself supports only PostgreSQL.)
    models = build_host_models()
    sqlite = create_engine("sqlite://")
    models.Base.metadata.create_all(sqlite)
    with Session(sqlite) as session:
        keys = seed(session, models)
        session.add(
            models.EventLog(
                session_id=keys["session"], user_id=keys["user"], event_type="x", payload=[1]
            )
        )
        session.commit()
        assert session.scalars(select(models.EventLog.payload)).one() == [1]
    sqlite.dispose()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base": object}, "base must be the host's declarative base class"),
        ({"key_type": str}, "key_type must be uuid.UUID or int"),
        ({"class_name": "not valid"}, "class_name must be a Python identifier"),
        ({"class_name": 5}, "class_name must be a Python identifier, got 5"),
    ],
)
def test_factory_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    class Base(DeclarativeBase):
        metadata = MetaData()

    arguments: dict[str, object] = {"base": Base, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        event_log_model(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"users": "app.users"}, r"users='app.users' is not a plain SQL identifier.*schema="),
        ({"schema": ""}, "schema='' is not a plain SQL identifier"),
        ({"user_agents": "x" * 64}, "63-byte identifier limit"),
        ({"chat_sessions": 3}, "must be a table or schema name"),
    ],
)
def test_targets_reject_bad_names(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ForeignKeyTargets(**kwargs)  # type: ignore[arg-type]


def test_mixin_rejects_a_bad_targets_attribute() -> None:
    class Base(DeclarativeBase):
        pass

    with pytest.raises(ConfigurationError, match="must be a ForeignKeyTargets instance"):

        class EventLog(EventLogMixin[int], Base):
            __eventlog_targets__ = {"users": "accounts"}  # type: ignore[assignment]  # noqa: RUF012
