"""The spool: a worker killed with SIGKILL; the next writer on its spool writes its events."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid

from sqlalchemy import ForeignKey, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from eventlog_persist import BufferedWriter, EventType, Spool, event_log_model


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


EventLog = event_log_model(Base)


def worker(url: str, directory: str, user_id: uuid.UUID, session_id: uuid.UUID) -> None:
    """A worker that enqueues 200 events and is killed before its writer writes them."""
    spool = Spool(directory, fsync="never", max_bytes=256 * 1024 * 1024)
    buffered = BufferedWriter(EventLog, url, spool=spool, flush_interval=60).start()
    for n in range(200):
        buffered.enqueue(
            session_id=session_id,
            user_id=user_id,
            event_type=EventType.TOOL_CALL,
            tool_name="search",
            payload={"query": f"restaurants {n}"},
        )
    os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: as the OOM killer would


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
    conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    directory = tempfile.mkdtemp(prefix="eventlog-spool-")
    args = [conninfo, directory, str(user_id), str(session_id)]
    killed = subprocess.run([sys.executable, __file__, *args], check=False)
    print("worker killed by signal", -killed.returncode)

    # The next writer on the same directory (here, in another process) adopts the dead
    # worker's spool and writes its events; ids make a replay idempotent.
    with BufferedWriter(EventLog, conninfo, spool=Spool(directory)) as buffered:
        buffered.flush()
    print("replayed from the spool:", buffered.counters.replayed)

    with Session(engine) as session:
        total = session.scalar(select(func.count()).select_from(EventLog)) or 0
    engine.dispose()
    os.rmdir(directory)  # empty: every event was written
    print("events stored:", total)
    return total


if __name__ == "__main__":
    if len(sys.argv) == 5:
        url, directory, user, session = sys.argv[1:]
        worker(url, directory, uuid.UUID(user), uuid.UUID(session))
    else:
        main(sys.argv[1])
