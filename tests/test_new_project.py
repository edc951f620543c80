"""A brand-new project, as a new user builds it: ``alembic init`` to ``alembic check``.

Real CLIs in subprocesses, as docs/adoption.md ("New project") tells a host to run them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from hostkit import HostProject
from hostmodels import HostModels
from sqlalchemy import Engine, MetaData, inspect, text
from sqlalchemy.engine import URL

import eventlog_persist

MODELS = '''\
"""The new project's models, EventLog among them."""

import uuid

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from eventlog_persist import EventLogMixin


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    email: Mapped[str] = mapped_column(String(200))


class UserProject(Base):
    __tablename__ = "user_projects"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))


class UserAgent(Base):
    __tablename__ = "user_agents"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))


class ChatSession(Base):
    __tablename__ = "chat_sessions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))


class EventLog(EventLogMixin[uuid.UUID], Base):
    pass
'''

ENV_HOOKS = """\
from app.models import Base
from eventlog_persist import include_name, include_object

target_metadata = Base.metadata
"""


@pytest.mark.timeout(180)  # nine CLI processes, each importing SQLAlchemy and Alembic
def test_a_new_project_from_alembic_init_to_alembic_check(
    tmp_path: Path, database_url: URL, engine: Engine
) -> None:
    project = HostProject(tmp_path / "project", database_url)
    project.root.mkdir()
    url = database_url.render_as_string(hide_password=False)
    project.run_cli("init", "migrations")

    # The models, EventLog registered on the host's Base; env.py with the package's hooks.
    (project.root / "app").mkdir()
    (project.root / "app" / "__init__.py").write_text("")
    (project.root / "app" / "models.py").write_text(MODELS)
    project.edit("migrations/env.py", "target_metadata = None\n", ENV_HOOKS)
    project.edit(
        "migrations/env.py",
        "target_metadata=target_metadata",
        "target_metadata=target_metadata, include_name=include_name, include_object=include_object",
        count=2,
    )
    project.edit(
        "alembic.ini",
        "sqlalchemy.url = driver://user:pass@localhost/dbname",
        f"sqlalchemy.url = {url.replace('%', '%%')}",
    )

    # The host's first revision creates the host's tables, and not event_logs.
    project.run_cli("revision", "--autogenerate", "-m", "init")
    [first] = (project.root / "migrations" / "versions").glob("*_init.py")
    assert "op.create_table('users'" in first.read_text()
    assert "event_logs" not in first.read_text()

    # Adoption as the guide says: the anchor, then the location with a space separator.
    project.run_cli(
        "revision", "-m", "eventlog_persist prerequisites", "--rev-id", "eventlog_prereqs"
    )
    project.edit(
        "alembic.ini",
        "path_separator = os\n",
        "path_separator = space\n"
        "version_locations = %(here)s/migrations/versions eventlog_persist:migrations\n",
    )
    upgrade = project.run_cli("upgrade", "heads")
    assert "-> evl_0001" in upgrade.stderr
    assert set(inspect(engine).get_table_names()) >= {"users", "chat_sessions", "event_logs"}
    assert "No new upgrade operations detected." in project.run_cli("check").stdout
    check = project.run_cli("eventlog-persist", "check", "--url", url)
    assert check.stdout == "eventlog-persist: setup OK (branch mode)\n"

    # Drift made by hand: the hooks hide it from alembic check; eventlog-persist check finds it.
    with engine.begin() as connection:
        connection.execute(text("DROP INDEX ix_event_logs_user_id_created_at"))
    assert "No new upgrade operations detected." in project.run_cli("check").stdout
    drift = project.run_cli("eventlog-persist", "check", "--url", url, check=False)
    assert drift.returncode == 1
    assert drift.stderr in _adoption_guide()  # the guide shows this very line


def _adoption_guide() -> str:
    return (Path(__file__).resolve().parent.parent / "docs" / "adoption.md").read_text()


def _autogenerate(engine: Engine, metadata: MetaData, **hooks: Any) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"target_metadata": metadata, **hooks}
        )
        return compare_metadata(context, metadata)


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "not-registered"])
def test_the_hooks_keep_autogenerate_off_the_event_log(
    engine: Engine, host_models: HostModels, registered: bool
) -> None:
    metadata = host_models.Base.metadata
    event_logs = metadata.tables["event_logs"]
    if registered:  # in the model only: autogenerate would create it
        metadata.create_all(
            engine, tables=[t for t in metadata.sorted_tables if t is not event_logs]
        )
    else:  # in the database only: autogenerate would drop it
        metadata.create_all(engine)
        metadata.remove(event_logs)
    assert _autogenerate(engine, metadata)  # what the hooks prevent
    hooks = {
        "include_name": eventlog_persist.include_name,
        "include_object": eventlog_persist.include_object,
    }
    assert _autogenerate(engine, metadata, **hooks) == []


def test_the_hooks_compose_with_the_hosts_own(engine: Engine, host_models: HostModels) -> None:
    metadata = host_models.Base.metadata
    metadata.create_all(engine, tables=[metadata.tables["users"]])

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        """A host's own rule (skip its scratch tables), and the package's."""
        if not eventlog_persist.include_object(obj, name, type_, reflected, compare_to):
            return False
        return not (type_ == "table" and name in ("user_projects", "user_agents", "chat_sessions"))

    assert _autogenerate(engine, metadata, include_object=include_object) == []
