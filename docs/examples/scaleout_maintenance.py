"""FastAPI app: partition maintenance as a task of the application's lifespan, no scheduler."""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, ForeignKey, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import (
    EventWriter,
    drop_partitions,
    ensure_partitions,
    event_log_model,
    list_partitions,
    purge_events,
    write_events,
)

log = logging.getLogger("app.eventlog")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class ChatSession(Base):
    __tablename__ = "chat_sessions"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))


class UserProject(Base):
    __tablename__ = "user_projects"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class UserAgent(Base):
    __tablename__ = "user_agents"
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


EventLog = event_log_model(Base, partitioned=True)

RETENTION = timedelta(days=90)


def maintain(engine: Engine) -> None:
    """One round, in the order of the cron recipe: create ahead, drop whole, purge the rest."""
    created = ensure_partitions(EventLog, engine, ahead=4)
    cutoff = datetime.now(UTC) - RETENTION
    dropped = drop_partitions(EventLog, engine, older_than=cutoff)
    purged = purge_events(EventLog, engine, older_than=cutoff)
    log.info("created %s, dropped %s, purged %d", created, dropped.dropped, purged.deleted)


async def maintenance_loop(engine: Engine, stop: asyncio.Event, every: float) -> None:
    while True:
        try:
            # The functions take a sync Engine and block: a worker thread keeps the loop free.
            await asyncio.to_thread(maintain, engine)
        except Exception:  # a lock timeout, a lost connection: the next round finishes the job
            log.exception("event log maintenance failed; next round in %s s", every)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        if stop.is_set():
            return


def create_app(database_url: str, *, every: float = 3600.0) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A sync engine of its own, on a direct connection (not through PgBouncer).
        maintenance = create_engine(database_url, pool_size=1)
        stop = asyncio.Event()
        task = asyncio.create_task(maintenance_loop(maintenance, stop, every))
        yield
        stop.set()
        await task  # a round under way finishes first
        maintenance.dispose()

    return FastAPI(lifespan=lifespan)


def main(url: str) -> int:
    engine = create_engine(url)
    Base.metadata.create_all(engine)  # a real host runs its Alembic migrations instead
    with Session(engine) as session:
        user = User(id=uuid.uuid4())
        session.add(user)
        session.flush()
        chat = ChatSession(id=uuid.uuid4(), user_id=user.id)
        session.add(chat)
        session.commit()
        user_id, session_id = user.id, chat.id
    # Events from half a year ago, in a partition made for them, as if the table were that old.
    old = datetime.now(UTC) - timedelta(days=180)
    ensure_partitions(EventLog, engine, ahead=0, now=old)
    writer = EventWriter(EventLog)
    events = [
        writer.event(session_id=session_id, user_id=user_id, event_type="chat", created_at=old)
        for _ in range(100)
    ]
    write_events(EventLog, engine, events)

    with TestClient(create_app(url)):  # runs the lifespan, as an ASGI server does
        pass  # the first round runs at start-up; leaving waits for it

    partitions = list_partitions(EventLog, engine)
    with Session(engine) as session:
        left = session.scalar(select(func.count()).select_from(EventLog)) or 0
    engine.dispose()
    print("partitions:", len(partitions))
    print("events left:", left)
    return len(partitions)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1])
