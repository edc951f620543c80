"""Every read and purge statement is served by an index, proven with EXPLAIN on a loaded table."""

from __future__ import annotations

import importlib.util
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pgserver import ServerInfo
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text

from eventlog_persist import (
    ANY_ERROR,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    UNSCOPED,
    EventFilter,
    EventLogReader,
    count_purgeable,
)
from eventlog_persist._retention import purge_statement

ROWS = 30_000
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SESSION_IX = "ix_event_logs_session_id_created_at"
USER_IX = "ix_event_logs_user_id_created_at"
PROJECT_IX = "ix_event_logs_project_id_created_at"
AGENT_IX = "ix_event_logs_agent_id_created_at"


def bench_module(name: str) -> ModuleType:
    """Import a script from benchmarks/ (not a package) under its own name."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def loaded(pg_server: ServerInfo) -> Iterator[tuple[Engine, Any]]:
    """A database of its own with ROWS generated events, analyzed; shared by this module."""
    datagen = bench_module("datagen")
    dbname = f"evl_explain_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=dbname,
    )
    janitor.init()
    engine = create_engine(pg_server.sqlalchemy_url(dbname))
    try:
        datagen.create_schema(engine)
        data = datagen.load(pg_server.libpq_dsn(dbname), ROWS)
        yield engine, data
    finally:
        engine.dispose()
        janitor.drop()


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Record the SQL and parameters that reach the driver."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", hook)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", hook)


def plan_of(engine: Engine, statement: str, parameters: Any) -> dict[str, Any]:
    with engine.connect() as connection:
        return plan_on(connection, statement, parameters)


def plan_on(connection: Connection, statement: str, parameters: Any) -> dict[str, Any]:
    result = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
    plan: dict[str, Any] = result.scalar_one()[0]["Plan"]
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def scope_column(index: str) -> str:
    """The column an ``ix_event_logs_<column>_created_at`` index leads with."""
    return index.removeprefix("ix_event_logs_").removesuffix("_created_at")


def assert_indexed(plan: dict[str, Any], *allowed: str) -> str:
    """The plan reads event_logs through one of ``allowed``, searching it by its scope column
    (not walking the whole index), and never scans the table whole."""
    used = {node["Index Name"] for node in nodes(plan) if "Index Name" in node}
    scans = [
        node["Node Type"]
        for node in nodes(plan)
        if node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "event_logs"
    ]
    assert not scans, f"sequential scan of event_logs in {plan}"
    assert used & set(allowed), f"expected one of {allowed}, the plan uses {used}: {plan}"
    for node in nodes(plan):
        index = node.get("Index Name")
        if index in allowed:
            condition = node.get("Index Cond", "")
            assert re.search(rf"\b{scope_column(index)} = ", condition), (
                f"{index} is used without a condition on {scope_column(index)}: {node}"
            )
    return next(iter(used & set(allowed)))


def explain_call(engine: Engine, call: Callable[[], object]) -> list[dict[str, Any]]:
    """Run ``call`` and return the plans of the statements it executed."""
    with captured(engine) as seen:
        call()
    statements = [(sql, params) for sql, params in seen if "event_logs" in sql]
    assert statements, "the call executed no statement on event_logs"
    return [plan_of(engine, sql, params) for sql, params in statements]


def pick(data: Any) -> dict[str, Any]:
    """Arguments for the calls: a typical session, its user, and that user's project/agent."""
    session, user, _ = sorted(data.sessions, key=lambda s: s[2])[len(data.sessions) // 2]
    project = next(key for key, owner in data.projects if owner == user)
    agent = next(key for key, owner in data.agents if owner == user)
    until = bench_module("datagen").END
    return {
        "session": session,
        "user": user,
        "project": project,
        "agent": agent,
        "week": {"since": until - timedelta(days=7), "until": until},
        "month": {"since": until - timedelta(days=30), "until": until},
    }


def reader_calls(reader: Any, k: dict[str, Any]) -> list[tuple[str, Any, tuple[str, ...]]]:
    def last_week() -> EventFilter:
        return EventFilter(error_code=ANY_ERROR, **k["week"])

    return [
        (
            "session",
            lambda: reader.session_timeline(k["session"], user_id=k["user"]),
            (SESSION_IX,),
        ),
        (
            "session, oldest, typed",
            lambda: reader.session_timeline(
                k["session"],
                user_id=k["user"],
                order="oldest",
                filters=EventFilter(event_types={"tool_call", "tool_result"}),
            ),
            (SESSION_IX,),
        ),
        (
            "session unscoped",
            lambda: reader.session_timeline(k["session"], user_id=UNSCOPED),
            (SESSION_IX,),
        ),
        ("user", lambda: reader.user_timeline(k["user"]), (USER_IX,)),
        (
            "user errors last week",
            lambda: reader.user_timeline(k["user"], filters=last_week()),
            (USER_IX,),
        ),
        (
            "user tool",
            lambda: reader.user_timeline(k["user"], filters=EventFilter(tool_name="tool_00")),
            (USER_IX,),
        ),
        (
            "user approvals",
            lambda: reader.user_timeline(
                k["user"], filters=EventFilter(approval_status="denied", error_code="E000")
            ),
            (USER_IX,),
        ),
        (
            "user in project",
            lambda: reader.user_timeline(k["user"], project_id=k["project"]),
            (USER_IX, PROJECT_IX),
        ),
        ("project", lambda: reader.project_timeline(k["project"]), (PROJECT_IX,)),
        (
            "project of user",
            lambda: reader.project_timeline(k["project"], user_id=k["user"]),
            (PROJECT_IX, USER_IX),
        ),
        ("agent", lambda: reader.agent_timeline(k["agent"], user_id=k["user"]), (AGENT_IX,)),
        *[
            (
                f"count by {field}",
                lambda field=field: reader.count_by(field, user_id=k["user"], **k["month"]),
                (USER_IX,),
            )
            for field in ("event_type", "tool_name", "error_code", "agent_id")
        ],
        (
            "count in project",
            lambda: reader.count_by("tool_name", project_id=k["project"], **k["month"]),
            (PROJECT_IX,),
        ),
        (
            "count of agent",
            lambda: reader.count_by(
                "event_type", user_id=k["user"], agent_id=k["agent"], **k["month"]
            ),
            (USER_IX, AGENT_IX),
        ),
        (
            "hourly",
            lambda: reader.count_by_bucket(timedelta(hours=1), user_id=k["user"], **k["week"]),
            (USER_IX,),
        ),
        (
            "daily in Paris",
            lambda: reader.count_by_bucket(
                "day", user_id=k["user"], time_zone="Europe/Paris", **k["month"]
            ),
            (USER_IX,),
        ),
        *narrowed_calls(reader, k),
        *token_usage_calls(reader, k),
    ]


def narrowed_calls(reader: Any, k: dict[str, Any]) -> list[tuple[str, Any, tuple[str, ...]]]:
    """Timelines narrowed by the other keys, offset pages and totals (new in 0.3.0).

    A narrowing adds an equality on another key: the planner may read either key's index
    (or both, combined in a bitmap), each searched by its leading column.
    """

    def typed_week() -> EventFilter:
        return EventFilter(event_types={"tool_call", "tool_result"}, **k["week"])

    return [
        (
            "project of user and agent, typed, last week, offset",
            lambda: reader.project_timeline(
                k["project"],
                user_id=k["user"],
                agent_id=k["agent"],
                filters=typed_week(),
                limit=20,
                offset=40,
            ),
            (PROJECT_IX, AGENT_IX, USER_IX),
        ),
        (
            "project, session",
            lambda: reader.project_timeline(k["project"], session_id=k["session"]),
            (PROJECT_IX, SESSION_IX),
        ),
        (
            "user, agent",
            lambda: reader.user_timeline(k["user"], agent_id=k["agent"]),
            (USER_IX, AGENT_IX),
        ),
        (
            "user, session, oldest",
            lambda: reader.user_timeline(k["user"], session_id=k["session"], order="oldest"),
            (USER_IX, SESSION_IX),
        ),
        (
            "session, agent, oldest",
            lambda: reader.session_timeline(
                k["session"], user_id=k["user"], agent_id=k["agent"], order="oldest"
            ),
            (SESSION_IX, AGENT_IX),
        ),
        (
            "agent, project",
            lambda: reader.agent_timeline(k["agent"], user_id=k["user"], project_id=k["project"]),
            (AGENT_IX, PROJECT_IX),
        ),
        (
            "user, deepest offset",
            lambda: reader.user_timeline(k["user"], limit=MAX_PAGE_SIZE, offset=MAX_OFFSET),
            (USER_IX,),
        ),
        ("total of user", lambda: reader.count(user_id=k["user"]), (USER_IX,)),
        (
            "total of user last week",
            lambda: reader.count(user_id=k["user"], **k["week"]),
            (USER_IX,),
        ),
        (
            "total of project of user and agent, typed",
            lambda: reader.count(
                project_id=k["project"],
                user_id=k["user"],
                agent_id=k["agent"],
                filters=typed_week(),
            ),
            (PROJECT_IX, AGENT_IX, USER_IX),
        ),
        (
            "total of session",
            lambda: reader.count(user_id=k["user"], session_id=k["session"]),
            (SESSION_IX, USER_IX),
        ),
        (
            "count by event_type, all time",
            lambda: reader.count_by("event_type", user_id=k["user"]),
            (USER_IX,),
        ),
        (
            "count by agent in project, all time",
            lambda: reader.count_by("agent_id", project_id=k["project"]),
            (PROJECT_IX,),
        ),
        (
            "count errors in session",
            lambda: reader.count_by(
                "error_code",
                user_id=k["user"],
                session_id=k["session"],
                filters=EventFilter(error_code=ANY_ERROR),
            ),
            (SESSION_IX, USER_IX),
        ),
    ]


def token_usage_calls(reader: Any, k: dict[str, Any]) -> list[tuple[str, Any, tuple[str, ...]]]:
    """Token sums from the GenAI payload keys (new in 0.3.0): the payload is read only from
    the rows the scope's index finds, never scanned for."""
    return [
        (
            "token usage of user",
            lambda: reader.token_usage(user_id=k["user"], **k["month"]),
            (USER_IX,),
        ),
        (
            "token usage in project, by model",
            lambda: reader.token_usage(project_id=k["project"], by=("model",), **k["month"]),
            (PROJECT_IX,),
        ),
    ]


CALL_NAMES = [name for name, _, _ in reader_calls(None, {})]


@pytest.mark.parametrize("name", CALL_NAMES)
def test_reader_call_uses_its_index(loaded: tuple[Engine, Any], name: str) -> None:
    engine, data = loaded
    reader = EventLogReader(bench_module("datagen").EventLog, engine)
    (call, allowed) = next((c, a) for n, c, a in reader_calls(reader, pick(data)) if n == name)
    for plan in explain_call(engine, call):
        assert_indexed(plan, *allowed)


def test_second_page_keeps_the_index(loaded: tuple[Engine, Any]) -> None:
    engine, data = loaded
    k = pick(data)
    reader = EventLogReader(bench_module("datagen").EventLog, engine)
    first = reader.session_timeline(k["session"], user_id=k["user"], limit=10)
    assert first.next_cursor is not None
    (plan,) = explain_call(
        engine,
        lambda: reader.session_timeline(
            k["session"], user_id=k["user"], limit=10, cursor=first.next_cursor
        ),
    )
    assert_indexed(plan, SESSION_IX)
    # The keyset's row comparison reaches the index as a bound on created_at.
    scans = [node for node in nodes(plan) if node.get("Index Name") == SESSION_IX]
    assert "created_at" in scans[0]["Index Cond"]


def test_lookup_by_id_uses_the_primary_key(loaded: tuple[Engine, Any]) -> None:
    engine, data = loaded
    k = pick(data)
    reader = EventLogReader(bench_module("datagen").EventLog, engine)
    target = reader.session_timeline(k["session"], user_id=k["user"], limit=1).items[0]
    for user_id in (k["user"], UNSCOPED):
        (plan,) = explain_call(engine, lambda u=user_id: reader.event(target.id, user_id=u))
        scans = [node for node in nodes(plan) if "Index Name" in node]
        assert scans, f"no index scan in {plan}"
        used = {node["Index Name"] for node in scans}
        # The id's time window is narrow enough that the user's index may serve it too.
        assert "pk_event_logs" in used
        assert used <= {"pk_event_logs", USER_IX}
        assert not [node for node in nodes(plan) if node["Node Type"] == "Seq Scan"]


@pytest.mark.parametrize(("scope", "index"), [("user_id", USER_IX), ("project_id", PROJECT_IX)])
def test_scoped_purge_uses_its_index(loaded: tuple[Engine, Any], scope: str, index: str) -> None:
    engine, data = loaded
    k = pick(data)
    table = bench_module("datagen").EventLog.__table__
    key = k["user"] if scope == "user_id" else k["project"]
    statement = purge_statement(
        table, older_than=k["month"]["since"], batch_size=500, **{scope: key}
    )
    compiled = statement.compile(engine)
    assert_indexed(plan_of(engine, str(compiled), compiled.params), index)
    for plan in explain_call(
        engine,
        lambda: count_purgeable(table, engine, older_than=k["month"]["since"], **{scope: key}),
    ):
        assert_indexed(plan, index)


def test_unscoped_purge_deletes_its_batch_through_the_primary_key(
    loaded: tuple[Engine, Any],
) -> None:
    engine, data = loaded
    k = pick(data)
    table = bench_module("datagen").EventLog.__table__
    statement = purge_statement(table, older_than=k["month"]["since"], batch_size=500)
    compiled = statement.compile(engine)
    plan = plan_of(engine, str(compiled), compiled.params)
    # The batch is found by a scan that stops at 500 rows; each is then deleted by its key.
    by_key = [node for node in nodes(plan) if node.get("Index Name") == "pk_event_logs"]
    assert by_key, f"the DELETE does not find its rows by the primary key: {plan}"
    assert all(re.search(r"\bid = ", node.get("Index Cond", "")) for node in by_key), plan
    assert not [node for node in nodes(plan) if node["Node Type"] in ("Hash Join", "Merge Join")]


@pytest.mark.parametrize(
    ("name", "index", "margin"),
    [
        ("user", USER_IX, 3),
        ("count by event_type", USER_IX, 3),
        ("project", PROJECT_IX, 3),
        # An all-time total reads every entry of its scope, so its edge over a scan is the
        # scope's share of the table (3 % here, less in a real table with more users).
        ("total of user", USER_IX, 1.3),
        ("count by agent in project, all time", PROJECT_IX, 1.3),
    ],
)
def test_without_its_index_the_planner_scans_the_table(
    loaded: tuple[Engine, Any], name: str, index: str, margin: float
) -> None:
    """Control: drop the scope's index (in a transaction, rolled back) and the same statement
    is planned as a sequential scan, so the table is big enough for the index to matter."""
    engine, data = loaded
    reader = EventLogReader(bench_module("datagen").EventLog, engine)
    call = next(c for n, c, _ in reader_calls(reader, pick(data)) if n == name)
    with captured(engine) as seen:
        call()
    ((sql, params),) = [(sql, params) for sql, params in seen if "event_logs" in sql]
    with engine.connect() as connection:
        indexed = plan_on(connection, sql, params)
        assert_indexed(indexed, index)
        connection.execute(text(f'DROP INDEX "{index}"'))
        scanned = plan_on(connection, sql, params)
        connection.rollback()
    assert any(
        node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "event_logs"
        for node in nodes(scanned)
    ), scanned
    assert scanned["Total Cost"] > margin * indexed["Total Cost"]
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(text("event_logs"))) == ROWS
        assert connection.scalar(
            text("SELECT count(*) FROM pg_indexes WHERE indexname = :index"), {"index": index}
        )


@pytest.mark.parametrize(
    ("name", "index"),
    [("token usage of user", USER_IX), ("token usage in project, by model", PROJECT_IX)],
)
def test_without_its_index_token_usage_reads_the_whole_range(
    loaded: tuple[Engine, Any], name: str, index: str
) -> None:
    """Control for `token_usage`: drop the scope's index (rolled back) and the statement reads
    every event of the range, of all users (a sequential scan, or on PostgreSQL 18 another
    ``(…, created_at)`` index walked by its time alone), at several times the cost. The
    payload expressions are costed per row read, which is what the scope's index saves."""
    engine, data = loaded
    reader = EventLogReader(bench_module("datagen").EventLog, engine)
    call = next(c for n, c, _ in reader_calls(reader, pick(data)) if n == name)
    with captured(engine) as seen:
        call()
    ((sql, params),) = [(sql, params) for sql, params in seen if "event_logs" in sql]
    scope = rf"\b{scope_column(index)} = "
    with engine.connect() as connection:
        indexed = plan_on(connection, sql, params)
        assert_indexed(indexed, index)
        connection.execute(text(f'DROP INDEX "{index}"'))
        unscoped = plan_on(connection, sql, params)
        connection.rollback()
    searched = [
        node
        for node in nodes(unscoped)
        if re.search(scope, node.get("Index Cond", "") + node.get("Recheck Cond", ""))
    ]
    assert not searched, unscoped
    assert unscoped["Total Cost"] > 3 * indexed["Total Cost"], (indexed, unscoped)
