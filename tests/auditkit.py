"""Databases with the audit revision applied, copied from a template built once per module,
and the steps the audit tests share: sealing everything, waiting for the horizon, tampering."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hostkit import make_host
from pgserver import ServerInfo
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from test_audit_migrations import AUDIT, opt_in
from test_feed_migrations import FEED, MAIN, PARTITIONED
from test_partitioned_migrations import opt_in as opt_in_partitioned

from eventlog_persist import (
    AsyncAuditSealer,
    AuditReport,
    Seal,
    audit_leaf_hash,
    seal_events,
    verify_audit,
)

LEAF_SELECT = (
    "SELECT id, session_id, user_id, project_id, agent_id, event_type, payload::text AS payload, "
    "created_at, error_code, tool_name, approval_status, request_id, trace_id, span_id, "
    "xid::text AS xid FROM event_logs"
)
"""Every leaf column of ``event_logs``: the payload as its jsonb text, xid as text."""

CHUNK = 4
"""The tests' chunk size: a few events make several chunks."""


def database(server: ServerInfo, dbname: str, template: str | None = None) -> DatabaseJanitor:
    """The janitor that creates (``init``) and drops database ``dbname`` on ``server``."""
    return DatabaseJanitor(
        user=server.user,
        host=server.host,
        port=server.port,
        password=server.password,
        dbname=dbname,
        template_dbname=template,
    )


@contextlib.contextmanager
def audited_template(
    server: ServerInfo, folder: Path, *, partitioned: bool = False
) -> Iterator[str]:
    """A database upgraded to every head with the feed and the audit (and the partitioned
    layout, if asked); yields its name."""
    name = f"evl_audit_tpl_{uuid.uuid4().hex[:10]}"
    janitor = database(server, name)
    janitor.init()
    try:
        host = make_host(folder / "host", server.sqlalchemy_url(name))
        opt_in(host)
        if partitioned:
            opt_in_partitioned(host, location=False)
            host.edit("alembic.ini", MAIN + FEED + AUDIT, MAIN + FEED + AUDIT + PARTITIONED)
        host.run("upgrade", "heads")
        yield name
    finally:
        janitor.drop()


@contextlib.contextmanager
def audited_engine(server: ServerInfo, template: str) -> Iterator[Engine]:
    """An engine on a fresh copy of the template database."""
    name = f"evl_audit_{uuid.uuid4().hex[:12]}"
    janitor = database(server, name, template)
    janitor.init()
    engine = create_engine(server.sqlalchemy_url(name))
    try:
        yield engine
    finally:
        engine.dispose()
        janitor.drop()


def add_session(connection: Connection, *, events: int = 1, **keys: Any) -> dict[str, Any]:
    """A user, a project, an agent and a chat session with ``events`` events; their ids."""
    ids = {
        "user": keys.get("user")
        or connection.execute(
            text("INSERT INTO users (id, name) VALUES (gen_random_uuid(), 'u') RETURNING id")
        ).scalar_one()
    }
    for table, key in (("user_projects", "project"), ("user_agents", "agent")):
        ids[key] = (
            keys.get(key)
            or connection.execute(
                text(
                    f"INSERT INTO {table} (id, user_id, name) VALUES (gen_random_uuid(), :u, 'n') "
                    "RETURNING id"
                ),
                {"u": ids["user"]},
            ).scalar_one()
        )
    ids["session"] = connection.execute(
        text(
            "INSERT INTO chat_sessions (id, user_id, title) VALUES (gen_random_uuid(), :u, 't') "
            "RETURNING id"
        ),
        {"u": ids["user"]},
    ).scalar_one()
    ids["events"] = [
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, project_id, agent_id, "
                "event_type, payload, tool_name) VALUES (gen_random_uuid(), :s, :u, :p, :a, "
                "'tool_call', CAST(:payload AS jsonb), 'search') RETURNING id"
            ),
            {
                "s": ids["session"],
                "u": ids["user"],
                "p": ids["project"],
                "a": ids["agent"],
                "payload": f'{{"n": {n}, "q": "é\\n", "x": 1.50}}',
            },
        ).scalar_one()
        for n in range(events)
    ]
    return ids


def leaves(connection: Connection, where: str = "true", **params: Any) -> dict[Any, bytes]:
    """Each selected event's leaf hash, recomputed in Python from its row."""
    rows = connection.execute(text(f"{LEAF_SELECT} WHERE {where}"), params).mappings()
    return {
        row["id"]: audit_leaf_hash({**row, "xid": None if row["xid"] is None else int(row["xid"])})
        for row in rows
    }


def tombstones(connection: Connection) -> list[dict[str, Any]]:
    """Every tombstone, oldest first."""
    return [
        dict(row)
        for row in connection.execute(
            text("SELECT * FROM event_log_erasures ORDER BY seq")
        ).mappings()
    ]


def seal_all(model: Any, db: Engine, **options: Any) -> list[Seal]:
    """Seal until every committed event and tombstone is sealed (another test's transaction
    on the server may hold the horizon back for a moment); the seals made."""
    seals = []
    deadline = time.monotonic() + 30
    while True:
        seal = seal_events(model, db, **{"chunk_size": CHUNK, **options})
        if seal is not None:
            seals.append(seal)
        if verify_audit(model, db).unsealed == 0 and _unsealed_tombstones(db) == 0:
            return seals
        assert time.monotonic() < deadline, "the horizon did not pass the test's writes"
        time.sleep(0.05)


def seal_async(model: Any, db: Engine) -> list[Seal]:
    """Run an `AsyncAuditSealer` on ``db`` until every committed event is sealed; the seals
    it exported."""
    exported: list[Seal] = []

    async def main() -> None:
        engine = create_async_engine(db.url)
        try:
            async with AsyncAuditSealer(
                model, engine, interval=0.05, chunk_size=CHUNK, anchor=exported.append
            ):
                deadline = time.monotonic() + 30
                while not exported or await asyncio.to_thread(
                    lambda: verify_audit(model, db).unsealed
                ):
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
        finally:
            await engine.dispose()

    asyncio.run(main())
    return exported


def _unsealed_tombstones(db: Engine) -> int:
    with db.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM event_log_erasures WHERE erased_xid >= "
                    "coalesce((SELECT max(xid_to) FROM event_log_seals), '0')"
                )
            ).scalar_one()
        )


def settle(db: Engine) -> None:
    """Wait until the horizon passes every event written so far."""
    deadline = time.monotonic() + 30
    with db.connect() as connection:
        while not connection.execute(
            text(
                "SELECT pg_snapshot_xmin(pg_current_snapshot()) > (SELECT max(xid) FROM event_logs)"
            )
        ).scalar_one():
            connection.rollback()
            assert time.monotonic() < deadline, "the horizon did not pass the test's writes"
            time.sleep(0.05)


def tamper(db: Engine, *statements: str, **params: Any) -> None:
    """Run statements as the table owner with the triggers off."""
    with db.begin() as connection:
        connection.execute(text("SET LOCAL session_replication_role = replica"))
        for statement in statements:
            connection.execute(text(statement), params)


def problems(report: AuditReport) -> list[tuple[str, int | None, int | None]]:
    """Each problem's kind, seal and chunk."""
    return [(p.kind, p.seal, p.chunk) for p in report.problems]
