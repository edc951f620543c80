"""Test helpers for hosts: a pytest plugin giving real, migrated PostgreSQL databases, and
capturing writers for unit tests that need no database.

The plugin is opt-in; installing the package changes no test run. Enable it in the host's
top ``conftest.py`` with ``pytest_plugins = ["eventlog_persist.testing"]`` (or run
``pytest -p eventlog_persist.testing``). See docs/testing.md.

Fixtures (all lazy: a run that uses none starts no server):

* ``eventlog_postgresql`` (session): the `PostgresServer`. The server of ``--eventlog-dsn``
  or ``$EVENTLOG_TEST_DSN``; else the session fixture named by the ini setting
  ``eventlog_server_fixture`` (pytest-postgresql's ``postgresql_proc``); else an embedded
  PostgreSQL (``pip install 'eventlog-persist[testing]'``) with durability off.
* ``eventlog_template_database`` (session): the name of a database migrated once per session
  with the host's ``alembic upgrade heads`` (``--eventlog-alembic-ini`` or the ini setting
  ``eventlog_alembic_ini``; default ``alembic.ini`` next to the pytest configuration).
* ``eventlog_database_url``: the SQLAlchemy URL of a fresh clone of it for one test, dropped
  afterwards; ``eventlog_engine``, ``eventlog_session``, ``eventlog_async_engine`` and
  ``eventlog_async_session`` (with pytest-asyncio) on it.
* ``alembic_engine`` and ``alembic_config``: an engine on a fresh *empty* database and the
  host's Alembic configuration, for pytest-alembic's built-in tests.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from sqlalchemy import Engine, create_engine, pool
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist._testing_capture import (
    AsyncCapturingWriter,
    CapturedEvent,
    CapturingWriter,
    payload_of,
)
from eventlog_persist._testing_databases import (
    DatabaseFactory,
    drop_database,
    migrate_template,
    new_template_name,
)
from eventlog_persist._testing_server import (
    PostgresServer,
    embedded_server,
    server_from_dsn,
    server_from_object,
)

__all__ = [
    "DSN_ENVIRONMENT_VARIABLE",
    "AsyncCapturingWriter",
    "CapturedEvent",
    "CapturingWriter",
    "PostgresServer",
    "payload_of",
]

DSN_ENVIRONMENT_VARIABLE = "EVENTLOG_TEST_DSN"
"""The environment variable naming the test server when ``--eventlog-dsn`` is not given."""

_PREFIX = "eventlog_persist.testing: "
_T = TypeVar("_T")


def _fail(message: str) -> NoReturn:
    """Fail the fixture (and so each test using it) with one message and no traceback."""
    pytest.fail(_PREFIX + message, pytrace=False)


def _or_fail(action: Callable[[], _T]) -> _T:
    """``action()``; its `ValueError` (a setup problem, and its fix) fails the fixture."""
    try:
        return action()
    except ValueError as exc:
        message = str(exc)
    _fail(message)


# -- options -------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("eventlog", "eventlog-persist test databases")
    group.addoption(
        "--eventlog-dsn",
        default=None,
        metavar="DSN",
        help="libpq DSN or URL of the PostgreSQL server for the test databases (a role with "
        f"CREATEDB); default ${DSN_ENVIRONMENT_VARIABLE}, else the eventlog_server_fixture, "
        "else an embedded server",
    )
    group.addoption(
        "--eventlog-alembic-ini",
        default=None,
        metavar="PATH",
        help="the host's alembic.ini, migrated to heads once per session (overrides the ini "
        "setting eventlog_alembic_ini)",
    )
    parser.addini(
        "eventlog_alembic_ini",
        "the host's alembic.ini, relative to the pytest configuration file (default: alembic.ini)",
        default="alembic.ini",
    )
    parser.addini(
        "eventlog_server_fixture",
        "a session fixture giving the server of the test databases (e.g. postgresql_proc of "
        "pytest-postgresql), used when no DSN is given",
        default="",
    )


def _dsn(config: pytest.Config) -> tuple[str, str] | None:
    option = config.getoption("eventlog_dsn")
    if option:
        return str(option), "--eventlog-dsn"
    value = os.environ.get(DSN_ENVIRONMENT_VARIABLE)
    if value:
        return value, DSN_ENVIRONMENT_VARIABLE
    return None


def _alembic_ini(config: pytest.Config) -> Path:
    option = config.getoption("eventlog_alembic_ini")
    if option:
        return (config.invocation_params.dir / str(option)).resolve()
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return (base / str(config.getini("eventlog_alembic_ini"))).resolve()


def pytest_report_header(config: pytest.Config) -> str:
    dsn = _dsn(config)
    fixture = str(config.getini("eventlog_server_fixture"))
    where = (
        f"the server of {dsn[1]}"
        if dsn
        else f"the server of fixture {fixture}"
        if fixture
        else "an embedded server"
    )
    return f"eventlog test databases: {where}, migrated with {_alembic_ini(config)}"


# -- server and template -------------------------------------------------------------------


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job, ``docker stop``) ends the run as Ctrl-C does, so that the
    session's teardown removes the embedded server and the test databases; by default it
    ends the process at once, leaving them behind. A handler of the host's is kept."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def eventlog_postgresql(request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """The PostgreSQL server of the test databases (see the module docs for which)."""
    dsn = _dsn(request.config)
    fixture = str(request.config.getini("eventlog_server_fixture"))
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())
        server = _or_fail(
            lambda: (
                server_from_dsn(dsn[0], source=dsn[1])
                if dsn
                else server_from_object(
                    request.getfixturevalue(fixture), source=f"fixture {fixture}"
                )
                if fixture
                else stack.enter_context(embedded_server())
            )
        )
        yield server


@pytest.fixture(scope="session")
def eventlog_template_database(
    request: pytest.FixtureRequest, eventlog_postgresql: PostgresServer
) -> Iterator[str]:
    """Name of the database migrated to heads once per session, which tests get clones of."""
    name = new_template_name()
    try:
        _or_fail(lambda: migrate_template(eventlog_postgresql, name, _alembic_ini(request.config)))
        yield name
    finally:
        with eventlog_postgresql.connect() as conn:
            drop_database(conn, name)


@pytest.fixture(scope="session")
def _eventlog_databases(
    eventlog_postgresql: PostgresServer, eventlog_template_database: str
) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(eventlog_postgresql, eventlog_template_database)
    try:
        yield factory
    finally:
        factory.close()


# -- one fresh migrated database per test --------------------------------------------------


@pytest.fixture
def eventlog_database_url(
    _eventlog_databases: DatabaseFactory, eventlog_postgresql: PostgresServer
) -> Iterator[URL]:
    """URL (``postgresql+psycopg``) of a fresh migrated database for this test alone."""
    name = _or_fail(_eventlog_databases.take)
    try:
        yield eventlog_postgresql.url(name)
    finally:
        _eventlog_databases.release(name)


@pytest.fixture
def eventlog_engine(eventlog_database_url: URL) -> Iterator[Engine]:
    """A SQLAlchemy ``Engine`` on this test's database, disposed afterwards."""
    engine = create_engine(eventlog_database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def eventlog_session(eventlog_engine: Engine) -> Iterator[Session]:
    """A ``Session`` on this test's database, closed afterwards (commit what you keep)."""
    with Session(eventlog_engine) as session:
        yield session


@pytest.fixture
def eventlog_async_engine(eventlog_database_url: URL) -> AsyncEngine:
    """An ``AsyncEngine`` on this test's database.

    It pools no connection (``NullPool``), so it works on whatever event loop the test runs
    and needs no ``await engine.dispose()``.
    """
    return create_async_engine(eventlog_database_url, poolclass=pool.NullPool)


async def _async_session(eventlog_async_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """An ``AsyncSession`` on this test's database, closed afterwards (needs pytest-asyncio).

    ``expire_on_commit=False``, as async code needs: reading an attribute after a commit
    must not load it implicitly.
    """
    async with AsyncSession(eventlog_async_engine, expire_on_commit=False) as session:
        yield session


def _needs_pytest_asyncio() -> AsyncSession:
    """An ``AsyncSession`` on this test's database, closed afterwards (needs pytest-asyncio)."""
    _fail(
        "eventlog_async_session needs pytest-asyncio (pip install pytest-asyncio); or open "
        "sessions yourself: async with AsyncSession(eventlog_async_engine) as session"
    )


def _async_session_fixture() -> Callable[..., Any]:
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - the test extras install it
        return pytest.fixture(name="eventlog_async_session")(_needs_pytest_asyncio)
    return pytest_asyncio.fixture(name="eventlog_async_session")(_async_session)


eventlog_async_session = _async_session_fixture()


# -- pytest-alembic ------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # Registered now, after every plugin (pytest-alembic's entry point included), so that
    # alembic_engine and alembic_config are ours also under -p, which loads this module first.
    config.pluginmanager.import_plugin("eventlog_persist._testing_alembic")
