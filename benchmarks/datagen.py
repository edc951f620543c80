"""Load a realistic mix of agent events into ``event_logs`` quickly, through COPY.

The mix, for N events (all draws from one seeded ``random.Random``, so a seed gives the
same data every time):

- **Cardinalities** scale with N, so per-user and per-session volumes stay the same at
  every size: N/100 chat sessions, N/1000 users (about 10 sessions each), 2 projects and
  3 agents per user. 70% of sessions belong to one of their user's projects and 80% to one
  of their agents; every event of a session shares its project and agent.
- **Sessions** last ``lognormal`` 5..1,000 events (median ~60, mean ~100), one event every
  1 to 60 seconds, and start uniformly over the 180 days before ``END``. Sessions are
  written in start order, so the heap is (nearly) in ``created_at`` order, as in a live
  append-mostly table.
- **Event types** (per 100 events): tool_call 19, tool_result 19, agent_message 16,
  user_message 14, chat 12, execute_tool 4, invoke_agent 4, embeddings 3.3, error 3,
  approval_requested 3, approval_granted 2.2, approval_denied 0.5.
- **Columns**: ``tool_name`` on tool and approval events (40 tools, Zipf-like: the top tool
  is ~20% of calls); ``error_code`` on every error event and 2% of tool results (15 codes,
  Zipf-like); ``approval_status`` pending/expired (95/5) on requests, granted, denied.
- **Payload sizes** (JSON text, lognormal): messages and chat median ~500 B with a tail to
  ~8 kB, tool results median ~800 B to ~16 kB, tool calls ~150 B, others ~80 B; overall
  median ~250 B, mean ~700 B. Text is drawn from a word list, so it compresses like prose.

Run ``python benchmarks/datagen.py --url URL --rows 1000000 --create`` to fill a database.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import time
import uuid
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import psycopg
from sqlalchemy import Engine, ForeignKey, String, Uuid, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from eventlog_persist import event_log_model

END = datetime(2025, 6, 1, tzinfo=UTC)
"""The newest event of a generated data set is just before this instant."""
SPAN = timedelta(days=180)

EVENT_TYPES: dict[str, float] = {
    "tool_call": 19,
    "tool_result": 19,
    "agent_message": 16,
    "user_message": 14,
    "chat": 12,
    "execute_tool": 4,
    "invoke_agent": 4,
    "embeddings": 3.3,
    "error": 3,
    "approval_requested": 3,
    "approval_granted": 2.2,
    "approval_denied": 0.5,
}
# (median bytes, sigma) of each type's payload size.
PAYLOAD_SIZES: dict[str, tuple[float, float]] = {
    "user_message": (250, 1.0),
    "agent_message": (600, 1.0),
    "chat": (600, 1.0),
    "tool_call": (150, 0.6),
    "tool_result": (800, 1.1),
}
_SMALL_PAYLOAD = (80, 0.4)
TOOLS = [f"tool_{n:02d}" for n in range(40)]
ERROR_CODES = [f"E{n:03d}" for n in range(15)]
_TOOL_EVENTS = {"tool_call", "tool_result", "execute_tool", "approval_requested"}
_TOOL_EVENTS |= {"approval_granted", "approval_denied"}
_WORDS = [
    "agent",
    "tool",
    "call",
    "result",
    "user",
    "message",
    "search",
    "file",
    "open",
    "read",
    "write",
    "plan",
    "step",
    "model",
    "token",
    "context",
    "answer",
    "error",
    "retry",
    "approve",
    "deny",
    "review",
    "code",
    "test",
    "build",
    "deploy",
    "query",
    "table",
    "index",
    "page",
    "cursor",
    "session",
    "project",
    "summary",
    "report",
    "chart",
    "value",
    "list",
    "item",
    "note",
    "draft",
    "final",
]


def host_tables(
    *, partitioned: bool = False, feed: bool = False
) -> tuple[type[DeclarativeBase], type[Any]]:
    """A declarative Base of its own holding the benchmark host's tables, and its EventLog
    (``partitioned``: in the partitioned layout; ``feed``: opted in to the feed)."""

    class Base(DeclarativeBase):
        pass

    class User(Base):
        __tablename__ = "users"
        id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
        name: Mapped[str] = mapped_column(String(100))

    class _Owned:
        id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
        user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))

    for name in ("chat_sessions", "user_projects", "user_agents"):
        type(name, (_Owned, Base), {"__tablename__": name})
    return Base, event_log_model(Base, partitioned=partitioned, feed=feed)


BenchBase, EventLog = host_tables()


@dataclass
class Dataset:
    """Keys of what was loaded, for picking query arguments."""

    rows: int = 0
    users: list[uuid.UUID] = field(default_factory=list)
    sessions: list[tuple[uuid.UUID, uuid.UUID, int]] = field(default_factory=list)
    """``(session id, user id, event count)``."""
    projects: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    agents: list[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=list)
    seconds: float = 0.0


def create_schema(engine: Engine) -> None:
    """Create the benchmark host's tables and ``event_logs`` with its indexes."""
    BenchBase.metadata.create_all(engine)


def _zipf(count: int, exponent: float = 1.1) -> list[float]:
    return list(accumulate(1 / (rank + 1) ** exponent for rank in range(count)))


def _pick(rng: random.Random, cumulative: list[float], items: list[Any]) -> Any:
    return items[bisect(cumulative, rng.random() * cumulative[-1])]


def _payloads(rng: random.Random, event_type: str, count: int = 128) -> list[str]:
    median, sigma = PAYLOAD_SIZES.get(event_type, _SMALL_PAYLOAD)
    pool = []
    for _ in range(count):
        size = int(min(max(rng.lognormvariate(math.log(median), sigma), 30), 20_000))
        words: list[str] = []
        length = 0
        while length < size - 40:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        document = {"kind": event_type, "text": " ".join(words), "n": rng.randrange(1000)}
        # COPY text format: escape backslashes; the JSON holds no tab or newline.
        pool.append(json.dumps(document).replace("\\", "\\\\"))
    return pool


def _key(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


def _uuid7(rng: random.Random, millis: int) -> str:
    value = (millis << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64)
    value |= (0b10 << 62) | rng.getrandbits(62)
    return str(uuid.UUID(int=value))


def plan(rows: int, *, seed: int = 0) -> Dataset:
    """Draw the users, projects, agents and sessions for ``rows`` events (no events yet)."""
    rng = random.Random(seed)
    data = Dataset(rows=rows)
    users = max(1, rows // 1000)
    for _ in range(users):
        user = _key(rng)
        data.users.append(user)
        data.projects.extend((_key(rng), user) for _ in range(2))
        data.agents.extend((_key(rng), user) for _ in range(3))
    left = rows
    while left > 0:
        size = min(left, int(min(max(rng.lognormvariate(math.log(60), 1.0), 5), 1000)))
        data.sessions.append((_key(rng), rng.choice(data.users), size))
        left -= size
    return data


def event_lines(data: Dataset, *, seed: int = 0, end: datetime = END) -> Iterator[str]:
    """Yield the events of ``data`` as COPY text lines, sessions in start order."""
    rng = random.Random(seed + 1)
    types = list(EVENT_TYPES)
    type_weights = list(accumulate(EVENT_TYPES.values()))
    tool_weights, code_weights = _zipf(len(TOOLS)), _zipf(len(ERROR_CODES))
    payloads = {name: _payloads(rng, name) for name in types}
    projects: dict[uuid.UUID, list[uuid.UUID]] = {}
    agents: dict[uuid.UUID, list[uuid.UUID]] = {}
    for project, owner in data.projects:
        projects.setdefault(owner, []).append(project)
    for agent, owner in data.agents:
        agents.setdefault(owner, []).append(agent)
    start_span = (SPAN - timedelta(hours=12)).total_seconds()
    first = (end - SPAN).timestamp()
    starts = sorted((first + rng.random() * start_span, n) for n in range(len(data.sessions)))
    for start, index in starts:
        session, user, size = data.sessions[index]
        project = str(rng.choice(projects[user])) if rng.random() < 0.7 else "\\N"
        agent = str(rng.choice(agents[user])) if rng.random() < 0.8 else "\\N"
        prefix = f"\t{session}\t{user}\t{project}\t{agent}\t"
        moment = start
        for _ in range(size):
            moment += 1 + rng.random() * 59
            kind = types[bisect(type_weights, rng.random() * type_weights[-1])]
            tool = _pick(rng, tool_weights, TOOLS) if kind in _TOOL_EVENTS else "\\N"
            code = "\\N"
            if kind == "error" or (kind == "tool_result" and rng.random() < 0.02):
                code = _pick(rng, code_weights, ERROR_CODES)
            status = "\\N"
            if kind == "approval_requested":
                status = "pending" if rng.random() < 0.95 else "expired"
            elif kind == "approval_granted":
                status = "granted"
            elif kind == "approval_denied":
                status = "denied"
            when = datetime.fromtimestamp(moment, UTC).isoformat()
            yield (
                f"{_uuid7(rng, int(moment * 1000))}{prefix}{kind}\t"
                f"{payloads[kind][rng.randrange(128)]}\t{when}\t{code}\t{tool}\t{status}\n"
            )


def _copy_rows(cursor: psycopg.Cursor[Any], statement: str, lines: Iterator[str]) -> None:
    buffer = io.StringIO()
    with cursor.copy(statement) as copy:
        for line in lines:
            buffer.write(line)
            if buffer.tell() > 1 << 20:
                copy.write(buffer.getvalue())
                buffer = io.StringIO()
        copy.write(buffer.getvalue())


def load(dsn: str, rows: int, *, seed: int = 0, end: datetime = END) -> Dataset:
    """Fill the (empty) host tables and ``event_logs`` of the database at ``dsn``.

    Secondary indexes of ``event_logs`` are dropped during the COPY and rebuilt after it
    (much faster than maintaining them row by row; on every partition of a partitioned
    ``event_logs``, whose partitions must cover the events), then the tables are analyzed.
    Foreign-key triggers are skipped when the login may set ``session_replication_role``; the
    data is consistent by construction.

    Args:
        dsn: A libpq connection string or ``postgresql://`` URL.
        rows: How many events to load.
        seed: Seed of the random draws.
        end: The newest events are just before this instant.
    """
    began = time.perf_counter()
    data = plan(rows, seed=seed)
    with psycopg.connect(dsn, autocommit=True) as connection, connection.cursor() as cursor:
        # Skip the per-row foreign-key triggers when allowed; the data is consistent anyway.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            cursor.execute("SET session_replication_role = replica")
        indexes = [
            (name, definition)
            for name, definition in cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'event_logs' "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        ]
        for name, _ in indexes:
            cursor.execute(f'DROP INDEX "{name}"')
        _copy_rows(cursor, "COPY users (id, name) FROM STDIN", (f"{u}\tu\n" for u in data.users))
        for table, pairs in (("user_projects", data.projects), ("user_agents", data.agents)):
            lines = (f"{key}\t{owner}\n" for key, owner in pairs)
            _copy_rows(cursor, f"COPY {table} (id, user_id) FROM STDIN", lines)
        sessions = (f"{key}\t{owner}\n" for key, owner, _ in data.sessions)
        _copy_rows(cursor, "COPY chat_sessions (id, user_id) FROM STDIN", sessions)
        _copy_rows(
            cursor,
            "COPY event_logs (id, session_id, user_id, project_id, agent_id, event_type, "
            "payload, created_at, error_code, tool_name, approval_status) FROM STDIN",
            event_lines(data, seed=seed, end=end),
        )
        for _, definition in indexes:
            # A partitioned table's index is shown "ON ONLY" its parent: without the ONLY,
            # the index is built on every partition too (else the partitions have none).
            cursor.execute(definition.replace(" ON ONLY ", " ON ", 1))
        cursor.execute("ANALYZE")
    data.seconds = time.perf_counter() - began
    return data


def main() -> None:
    """Command line: create the benchmark schema if asked, then load ``--rows`` events."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="postgresql:// URL of an empty database")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--create", action="store_true", help="create the tables first")
    args = parser.parse_args()
    if args.create:
        engine = create_engine(args.url.replace("postgresql://", "postgresql+psycopg://", 1))
        create_schema(engine)
        engine.dispose()
    data = load(args.url, args.rows, seed=args.seed)
    print(f"loaded {data.rows} events, {len(data.sessions)} sessions in {data.seconds:.1f} s")


if __name__ == "__main__":
    main()
