"""In-process host models: a fresh declarative Base per test, as hosts define them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import BigInteger, Engine, ForeignKey, Integer, MetaData, String, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import EventLogMixin, ForeignKeyTargets, event_log_model


@dataclass
class HostModels:
    """One host's classes; ``EventLog`` is bound to its ``Base``."""

    Base: type[DeclarativeBase]
    User: type[Any]
    ChatSession: type[Any]
    UserProject: type[Any]
    UserAgent: type[Any]
    EventLog: type[EventLogMixin[Any]]

    def new_key(self) -> Any:
        """A fresh primary-key value of this host's key type (``None``: let the server pick)."""
        return uuid.uuid4() if self.keys == "uuid" else None

    keys: str = "uuid"


def build_host_models(
    *,
    keys: str = "uuid",
    naming_convention: dict[str, str] | None = None,
    targets: ForeignKeyTargets | None = None,
    partitioned: bool = False,
    feed: bool = False,
) -> HostModels:
    """Declare a host's tables and bind ``EventLog`` to its ``Base``.

    Args:
        keys: ``"uuid"`` or ``"integer"`` (INTEGER keys, BIGINT ``chat_sessions.id``).
        naming_convention: Given to the host's ``MetaData``.
        targets: Host table names / schema for the event log's foreign keys.
        partitioned: Bind ``EventLog`` in the partitioned layout; create its partitions
            with `create_partitions` after ``create_all()``.
        feed: Bind ``EventLog`` with the feed's ``xid`` column (and its consumers table).
    """
    targets = targets or ForeignKeyTargets()
    host_metadata = MetaData(naming_convention=naming_convention or {}, schema=targets.schema)

    class Base(DeclarativeBase):
        metadata = host_metadata

    def key_column(big: bool = False) -> Any:
        if keys == "uuid":
            return mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
        return mapped_column(BigInteger if big else Integer, primary_key=True, autoincrement=True)

    owner = targets.qualified(targets.users)

    class User(Base):
        __tablename__ = targets.users
        id: Mapped[Any] = key_column()
        name: Mapped[str] = mapped_column(String(100), default="someone")

    class UserProject(Base):
        __tablename__ = targets.user_projects
        id: Mapped[Any] = key_column()
        user_id: Mapped[Any] = mapped_column(ForeignKey(owner, ondelete="CASCADE"))

    class UserAgent(Base):
        __tablename__ = targets.user_agents
        id: Mapped[Any] = key_column()
        user_id: Mapped[Any] = mapped_column(ForeignKey(owner, ondelete="CASCADE"))

    class ChatSession(Base):
        __tablename__ = targets.chat_sessions
        id: Mapped[Any] = key_column(big=True)
        user_id: Mapped[Any] = mapped_column(ForeignKey(owner, ondelete="CASCADE"))

    event_log = event_log_model(
        Base,
        key_type=uuid.UUID if keys == "uuid" else int,
        targets=targets,
        partitioned=partitioned,
        feed=feed,
    )
    return HostModels(Base, User, ChatSession, UserProject, UserAgent, event_log, keys)


def seed(engine: Engine, models: HostModels) -> tuple[Any, Any]:
    """Create a user and a chat session of ``models``; return their keys."""
    with Session(engine) as session:
        user = models.User(id=models.new_key())
        session.add(user)
        session.flush()
        chat = models.ChatSession(id=models.new_key(), user_id=user.id)
        session.add(chat)
        session.commit()
        return user.id, chat.id


def create_partitions(
    engine: Engine, *, schema: str | None = None, catch_all: bool = True
) -> list[str]:
    """Give a partitioned ``event_logs`` weekly partitions around now, and range partitions
    below and above them, so tests may write any ``created_at`` (none is a DEFAULT partition).

    Args:
        catch_all: Also the range partitions below and above the weekly ones; without
            them, an event outside the 6 weeks has no partition.

    Returns:
        The names of the partitions, oldest first.
    """
    table = f'"{schema}".event_logs' if schema else "event_logs"
    prefix = f'"{schema}".' if schema else ""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    monday = today - timedelta(days=today.weekday())
    bounds = [monday + timedelta(weeks=week) for week in range(-2, 5)]
    parts = [("event_logs_before", "MINVALUE", f"'{bounds[0].isoformat()}'")] if catch_all else []
    parts += [
        (f"event_logs_p{start:%Y%m%d}", f"'{start.isoformat()}'", f"'{end.isoformat()}'")
        for start, end in pairwise(bounds)
    ]
    if catch_all:
        parts.append(("event_logs_after", f"'{bounds[-1].isoformat()}'", "MAXVALUE"))
    with engine.begin() as connection:
        for name, low, high in parts:
            connection.execute(
                text(
                    f"CREATE TABLE {prefix}{name} PARTITION OF {table} "
                    f"FOR VALUES FROM ({low}) TO ({high})"
                )
            )
    return [name for name, _, _ in parts]
