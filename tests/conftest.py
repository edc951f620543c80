"""Real PostgreSQL for every test: the server of --pg-dsn / EVENTLOG_TEST_DSN, else embedded.

Under pytest-xdist (``-n auto`` in pyproject) each worker starts its own embedded server; the
controller, which runs no test, starts none. Every test gets a database of its own, so workers
can share the --pg-dsn server.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, build_host_models
from pgserver import ServerInfo, start_embedded, throwaway_server
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL

_SERVER = pytest.StashKey[ServerInfo]()
_STOP = pytest.StashKey[object]()
_PARENT = pytest.StashKey[Path]()  # the folder the embedded server lives in


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--pg-dsn",
        default=os.environ.get("EVENTLOG_TEST_DSN"),
        help="libpq DSN of a PostgreSQL server to test against (a superuser); default: "
        "$EVENTLOG_TEST_DSN, else an embedded PostgreSQL 18 started for the run",
    )


def _is_xdist_controller(config: pytest.Config) -> bool:
    """Whether this process only hands tests to pytest-xdist workers (it runs none itself)."""
    return config.pluginmanager.has_plugin("dsession")


def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    dsn = config.getoption("--pg-dsn")
    if not dsn and _is_xdist_controller(config):
        return  # each worker starts its own embedded server
    if dsn:
        params = conninfo_to_dict(dsn)
        info = ServerInfo(
            host=str(params.get("host", "localhost")),
            port=int(params.get("port", 5432)),
            user=str(params.get("user", "postgres")),
            password=str(params["password"]) if params.get("password") else None,
        )
    else:
        parent = Path(tempfile.mkdtemp(prefix="eventlog-pg-"))
        server, info = start_embedded(parent)
        config.stash[_STOP] = server
        config.stash[_PARENT] = parent
        _skip_durability(info)
    # Fail the run loudly when the chosen server is not there; never skip.
    with psycopg.connect(**info.connect_kwargs("postgres")) as conn:
        info.version = conn.info.server_version // 10000
        info.version_text = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    config.stash[_SERVER] = info


def _skip_durability(info: ServerInfo) -> None:
    """No fsync on the throwaway embedded server: every test creates and drops a database."""
    with psycopg.connect(**info.connect_kwargs("postgres"), autocommit=True) as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.execute(f"ALTER SYSTEM SET {setting} = off")
        conn.execute("SELECT pg_reload_conf()")


def pytest_sessionfinish(session: pytest.Session) -> None:
    server = session.config.stash.get(_STOP, None)
    if server is not None:
        server.cleanup()  # type: ignore[attr-defined]
        shutil.rmtree(session.config.stash[_PARENT], ignore_errors=True)


def pytest_report_header(config: pytest.Config) -> str:
    info = config.stash.get(_SERVER, None)
    if info is None:
        if _is_xdist_controller(config):
            return "postgresql: embedded, one per xdist worker"
        return "postgresql: not started"
    where = "embedded" if config.stash.get(_STOP, None) is not None else "--pg-dsn"
    return f"postgresql: {info.version_text} ({where}, {info.host}:{info.port})"


# Module-scoped fixtures that are expensive to build: with --dist loadgroup (pyproject), the
# tests using one run on the same xdist worker, so it is built once, not once per worker.
_SHARED_SETUP = {"loaded": "explain-table"}  # test_explain.py: a table of generated events


@pytest.hookimpl(tryfirst=True)  # before xdist reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    info = config.stash.get(_SERVER, None)
    grouping = config.pluginmanager.has_plugin("xdist")  # -p no:xdist: no such marker
    for item in items:
        for fixture, group in _SHARED_SETUP.items():
            if grouping and fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
        marker = item.get_closest_marker("pg_min")
        if marker and info and info.version < marker.args[0]:
            item.add_marker(pytest.mark.skip(reason=f"needs PostgreSQL >= {marker.args[0]}"))


@pytest.fixture(scope="session")
def pg_server(pytestconfig: pytest.Config) -> ServerInfo:
    """The PostgreSQL server under test."""
    return pytestconfig.stash[_SERVER]


@pytest.fixture
def database_url(pg_server: ServerInfo) -> Iterator[URL]:
    """A fresh, empty database for one test, dropped afterwards."""
    dbname = f"evl_test_{uuid.uuid4().hex[:12]}"
    janitor = DatabaseJanitor(
        user=pg_server.user,
        host=pg_server.host,
        port=pg_server.port,
        password=pg_server.password,
        dbname=dbname,
    )
    janitor.init()
    try:
        yield pg_server.sqlalchemy_url(dbname)
    finally:
        janitor.drop()


@pytest.fixture
def engine(database_url: URL) -> Iterator[Engine]:
    """An engine on the test's fresh database."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def host_models() -> HostModels:
    """A UUID-keyed host's models with ``EventLog``; override to test other host shapes."""
    return build_host_models()


@pytest.fixture
def host_engine(engine: Engine, host_models: HostModels) -> Engine:
    """The fresh database with the host's tables and ``event_logs`` created from the models."""
    host_models.Base.metadata.create_all(engine)
    return engine


@pytest.fixture
def restartable() -> Iterator[tuple[Any, ServerInfo]]:
    """A throwaway embedded PostgreSQL of this test's own, so it can be stopped and started."""
    with throwaway_server() as server:
        yield server


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A "database" that accepts TCP connections and never answers (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"host=127.0.0.1 port={listener.getsockname()[1]} dbname=x user=x"
    finally:
        listener.close()
