"""Every entry point takes any PostgreSQL URL, conninfo or engine of its own flavour.

The writers connect with psycopg whatever driver a URL names; other drivers' URL parameters
are translated to libpq's, dropped, or refused by name, never with a password shown.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hostmodels import HostModels, seed
from pgserver import ServerInfo
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from eventlog_persist import (
    UNSCOPED,
    AsyncBufferedWriter,
    AsyncEventLogReader,
    BufferedWriter,
    EventLogReader,
    EventWriter,
    NewEvent,
    awrite_events,
    count_purgeable,
    new_event,
    purge_events,
    write_events,
)
from eventlog_persist._urls import conninfo
from eventlog_persist.exceptions import ConfigurationError

SECRET = "s3cret-pw"


def driver_url(database_url: URL, driver: str) -> URL:
    """The test database as a SQLAlchemy URL of ``driver`` (pg8000 names the socket file)."""
    url = database_url.set(drivername=f"postgresql+{driver}" if driver else "postgresql")
    host = url.query.get("host")
    if driver == "pg8000" and isinstance(host, str):
        socket = f"{host}/.s.PGSQL.{url.query['port']}"
        url = url.difference_update_query(["host", "port"]).update_query_dict({"unix_sock": socket})
    return url


def libpq_conninfo(pg_server: ServerInfo, database_url: URL) -> str:
    return make_conninfo("", **pg_server.connect_kwargs(str(database_url.database)))


def text_of(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def two_events(ids: tuple[Any, Any]) -> list[NewEvent]:
    user_id, session_id = ids
    return [new_event(session_id=session_id, user_id=user_id, event_type="chat") for _ in "ab"]


def stored(engine: Engine, host_models: HostModels) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(host_models.EventLog)).scalar())


@pytest.fixture
def ids(host_engine: Engine, host_models: HostModels) -> tuple[Any, Any]:
    return seed(host_engine, host_models)


@pytest.fixture
def engines() -> Iterator[Callable[[URL], Engine]]:
    made: list[Engine] = []

    def make(url: URL) -> Engine:
        made.append(create_engine(url))
        return made[-1]

    yield make
    for engine in made:
        engine.dispose()


# -- each accepted form connects and writes ----------------------------------------------------

# asyncpg's and SQLAlchemy's own parameters, as an asyncpg application's DATABASE_URL has them.
ASYNCPG_QUERY = {
    "ssl": "prefer",
    "prepared_statement_cache_size": "0",
    "statement_cache_size": "0",
    "command_timeout": "30",
    "timeout": "5",
}

SYNC_FORMS: dict[str, Callable[[ServerInfo, URL], object]] = {
    "libpq conninfo": libpq_conninfo,
    "postgresql:// URL": lambda _, url: text_of(driver_url(url, "")),
    **{
        f"{driver} URL string": lambda _, url, driver=driver: text_of(driver_url(url, driver))
        for driver in ("psycopg", "psycopg2", "asyncpg", "pg8000")
    },
    **{
        f"{driver} URL": lambda _, url, driver=driver: driver_url(url, driver)
        for driver in ("psycopg", "psycopg2", "asyncpg", "pg8000")
    },
    "asyncpg URL with its own parameters": lambda _, url: text_of(
        driver_url(url, "asyncpg").update_query_dict(ASYNCPG_QUERY)
    ),
}


@pytest.mark.parametrize("form", SYNC_FORMS)
def test_both_bulk_writers_take_every_url_form(
    form: str,
    pg_server: ServerInfo,
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    ids: tuple[Any, Any],
) -> None:
    target: Any = SYNC_FORMS[form](pg_server, database_url)
    result = write_events(host_models.EventLog, target, two_events(ids))
    assert (result.written, result.dead_lettered) == (2, [])
    result = asyncio.run(awrite_events(host_models.EventLog, target, two_events(ids)))
    assert (result.written, result.dead_lettered) == (2, [])
    assert stored(host_engine, host_models) == 4


@pytest.mark.parametrize("driver", ["psycopg", "psycopg2", "pg8000"])
def test_write_events_takes_an_engine_of_any_sync_driver(
    driver: str,
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    ids: tuple[Any, Any],
    engines: Callable[[URL], Engine],
) -> None:
    engine = engines(driver_url(database_url, driver))
    assert write_events(host_models.EventLog, engine, two_events(ids)).written == 2
    assert stored(host_engine, host_models) == 2


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_awrite_events_takes_an_async_engine_of_any_driver(
    driver: str,
    database_url: URL,
    host_engine: Engine,
    host_models: HostModels,
    ids: tuple[Any, Any],
) -> None:
    url = driver_url(database_url, driver)
    if driver == "asyncpg":  # with asyncpg's own parameters, which asyncpg uses too
        url = url.update_query_dict(ASYNCPG_QUERY)

    async def write() -> int:
        engine = create_async_engine(url)
        try:
            return (await awrite_events(host_models.EventLog, engine, two_events(ids))).written
        finally:
            await engine.dispose()

    assert asyncio.run(write()) == 2
    assert stored(host_engine, host_models) == 2


def test_buffered_writers_take_an_asyncpg_url_and_engine(
    database_url: URL, host_engine: Engine, host_models: HostModels, ids: tuple[Any, Any]
) -> None:
    asyncpg_url = driver_url(database_url, "asyncpg").update_query_dict(ASYNCPG_QUERY)
    with BufferedWriter(host_models.EventLog, text_of(asyncpg_url)) as writer:
        for event in two_events(ids):
            writer.enqueue(event)
        assert writer.flush(timeout=20)

    async def buffered() -> None:
        engine = create_async_engine(asyncpg_url)
        try:
            async with AsyncBufferedWriter(host_models.EventLog, engine) as writer:
                for event in two_events(ids):
                    await writer.enqueue(event)
                assert await writer.flush(timeout=20)
        finally:
            await engine.dispose()

    asyncio.run(buffered())
    assert stored(host_engine, host_models) == 4


@pytest.mark.parametrize("driver", ["psycopg2", "pg8000"])
def test_readers_detached_writes_and_purge_run_on_other_sync_drivers(
    driver: str,
    database_url: URL,
    host_models: HostModels,
    ids: tuple[Any, Any],
    engines: Callable[[URL], Engine],
) -> None:
    engine = engines(driver_url(database_url, driver))
    user_id, session_id = ids
    old = datetime.now(UTC) - timedelta(days=400)
    writer = EventWriter(host_models.EventLog)
    writer.record_detached(engine, session_id=session_id, user_id=user_id, event_type="chat")
    writer.record_detached(
        engine, session_id=session_id, user_id=user_id, event_type="chat", created_at=old
    )
    page = EventLogReader(host_models.EventLog, engine).session_timeline(
        session_id, user_id=user_id
    )
    assert len(page.items) == 2
    cutoff = datetime.now(UTC) - timedelta(days=90)
    assert count_purgeable(host_models.EventLog, engine, older_than=cutoff) == 1
    assert purge_events(host_models.EventLog, engine, older_than=cutoff).deleted == 1


def test_async_reader_and_detached_writes_run_on_asyncpg(
    database_url: URL, host_models: HostModels, ids: tuple[Any, Any]
) -> None:
    user_id, session_id = ids

    async def run() -> int:
        engine = create_async_engine(driver_url(database_url, "asyncpg"))
        try:
            await EventWriter(host_models.EventLog).arecord_detached(
                engine, session_id=session_id, user_id=user_id, event_type="chat"
            )
            reader = AsyncEventLogReader(host_models.EventLog, engine)
            page = await reader.session_timeline(session_id, user_id=UNSCOPED)
            return len(page.items)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == 1


# -- the translation table, both sides ---------------------------------------------------------

BASE = f"postgresql+asyncpg://app:{SECRET}@db.example:6432/app"


def params(target: object) -> dict[str, Any]:
    return conninfo_to_dict(conninfo(target))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ssl=require", {"sslmode": "require"}),
        ("ssl=verify_full", {"sslmode": "verify-full"}),
        ("sslmode=VERIFY-CA", {"sslmode": "verify-ca"}),
        ("ssl=disable", {"sslmode": "disable"}),
        ("direct_tls=true", {"sslnegotiation": "direct"}),
        ("timeout=2.5", {"connect_timeout": "3"}),
        ("timeout=0.5", {"connect_timeout": "2"}),  # libpq's least
        ("unix_sock=/run/pg/.s.PGSQL.5433", {"host": "/run/pg", "port": "5433"}),
        ("tcp_keepalive=false", {"keepalives": "0"}),
        # libpq's own parameters pass as they are.
        ("application_name=api&target_session_attrs=read-write", {"application_name": "api"}),
        ("options=-c search_path=app", {"options": "-c search_path=app"}),
    ],
)
def test_parameters_with_a_libpq_equivalent_are_translated(
    query: str, expected: dict[str, str]
) -> None:
    got = params(f"{BASE}?{query}")
    assert {key: got.get(key) for key in expected} == expected
    assert (got["user"], got["password"], got["dbname"]) == ("app", SECRET, "app")


@pytest.mark.parametrize(
    "query",
    [
        "prepared_statement_cache_size=500",
        "prepared_statement_name_func=x",
        "statement_cache_size=0",
        "max_cached_statement_lifetime=0",
        "max_cacheable_statement_size=1024",
        "command_timeout=60",
        "async_fallback=true",
        "prepare_threshold=0",
        "plugin=tracing",
    ],
)
def test_parameters_of_another_drivers_client_are_dropped(query: str) -> None:
    assert params(f"{BASE}?{query}") == params(BASE)


def test_several_hosts_become_libpq_lists() -> None:
    repeated = params("postgresql+psycopg://app@/app?host=a:5432&host=b:5433")
    assert (repeated["host"], repeated["port"]) == ("a,b", "5432,5433")
    listed = params("postgresql://app@/app?host=a,b&port=5432,5433&sslmode=require")
    assert (listed["host"], listed["port"], listed["sslmode"]) == ("a,b", "5432,5433", "require")
    netloc = params("postgresql://app@a:5432,b:5433/app?target_session_attrs=read-write")
    assert (netloc["host"], netloc["port"]) == ("a,b", "5432,5433")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("server_settings=x", "has the parameter server_settings, which libpq does not know"),
        ("record_class=Row", "has the parameter record_class"),
        ("ssl=maybe", "ssl='maybe', which is not an SSL mode; use one of disable, allow"),
        ("timeout=soon", "timeout='soon', which is not a number of seconds; use e.g. 10"),
        ("direct_tls=perhaps", "direct_tls='perhaps', which is neither true nor false"),
        ("unix_sock=/tmp", "unix_sock='/tmp', which is not the path of a PostgreSQL socket"),
        ("sslmode=a&sslmode=b", "gives the parameter sslmode 2 times; give it once"),
    ],
)
def test_other_parameters_are_refused_by_name_before_connecting(
    query: str, message: str, host_models: HostModels
) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        write_events(host_models.EventLog, f"{BASE}?{query}", [])
    assert SECRET not in str(raised.value)
    assert f"app:***@db.example:6432/app?{query.split('&')[0]}" in str(raised.value)


# -- wrong flavour, wrong database, bad strings ------------------------------------------------


@pytest.fixture
def sync_engine(database_url: URL) -> Iterator[Engine]:
    engine = create_engine(database_url)  # never connected
    yield engine
    engine.dispose()


@pytest.fixture
def async_engine(database_url: URL) -> Iterator[AsyncEngine]:
    engine = create_async_engine(database_url)  # never connected
    yield engine
    asyncio.run(engine.dispose())


def test_a_sync_api_given_an_async_engine_names_its_twin(
    host_models: HostModels, async_engine: AsyncEngine
) -> None:
    model = host_models.EventLog
    with pytest.raises(ConfigurationError, match="use awrite_events from async code, or pass"):
        write_events(model, async_engine, [])
    with pytest.raises(ConfigurationError, match="use AsyncBufferedWriter from async code"):
        BufferedWriter(model, async_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"use arecord_detached from async code$"):
        EventWriter(model).record_detached(async_engine, event_type="x")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="use AsyncEventLogReader"):
        EventLogReader(model, async_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="there is no async twin: from async code"):
        purge_events(model, async_engine, older_than=datetime.now(UTC))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="there is no async twin: from async code"):
        count_purgeable(model, async_engine, older_than=datetime.now(UTC))  # type: ignore[arg-type]
    unstarted = async_engine.connect()  # an AsyncConnection, never connected
    for refused in (purge_events, count_purgeable):
        with pytest.raises(ConfigurationError, match="there is no async twin: from async code"):
            refused(model, unstarted, older_than=datetime.now(UTC))  # type: ignore[arg-type]


def test_an_async_api_given_a_sync_engine_names_its_twin(
    host_models: HostModels, sync_engine: Engine
) -> None:
    model = host_models.EventLog
    with pytest.raises(ConfigurationError, match="use write_events in sync code, or pass"):
        asyncio.run(awrite_events(model, sync_engine, []))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="use BufferedWriter in sync code"):
        AsyncBufferedWriter(model, sync_engine)  # type: ignore[arg-type]
    detached = EventWriter(model).arecord_detached(sync_engine, event_type="x")  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match=r"use record_detached in sync code$"):
        asyncio.run(detached)
    with pytest.raises(ConfigurationError, match="use EventLogReader"):
        AsyncEventLogReader(model, sync_engine)  # type: ignore[arg-type]


def test_a_psycopg_connection_of_the_other_flavour_names_the_twin(
    pg_server: ServerInfo, database_url: URL, host_models: HostModels
) -> None:
    with (
        psycopg.connect(libpq_conninfo(pg_server, database_url)) as conn,
        pytest.raises(ConfigurationError, match="a sync Connection is not for async code"),
    ):
        asyncio.run(awrite_events(host_models.EventLog, conn, []))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "target",
    [
        f"mysql+pymysql://app:{SECRET}@db/app",
        f"mysql://app:{SECRET}@db:port/app",  # named before any parse, which would fail
        "sqlite:///events.db",
        URL.create("sqlite"),
        URL.create("mssql+pyodbc", username="app", password=SECRET, host="db"),
    ],
)
def test_a_database_that_is_not_postgresql_is_one_line(
    target: object, host_models: HostModels
) -> None:
    with pytest.raises(ConfigurationError, match="is not a PostgreSQL database, the only one") as e:
        write_events(host_models.EventLog, target, [])  # type: ignore[arg-type]
    assert SECRET not in str(e.value)
    assert "\n" not in str(e.value)


def test_an_engine_of_another_database_is_one_line(host_models: HostModels) -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match=r"^'Engine\(sqlite://\)' is not a PostgreSQL"):
        write_events(host_models.EventLog, engine, [])


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        (f"host=db password={SECRET} dbname", "'host=db password=***' is not a usable"),
        (f"host=db password='{SECRET} x' nonsense", "'host=db password=***' is not a"),
        (f"dbname=app passwrd={SECRET}", "invalid connection option"),
        (f"postgresql://app:{SECRET}@db:notaport/app", "'postgresql://app:***@db:notaport/app'"),
        ("host=db port=5432,x", "has a port '5432,x' that is not a number"),
        # An unencoded "/" in the password: libpq reads its first piece as the port.
        (f"postgresql://app:{SECRET}/k3y@db1:5432,db2/app", "has a port that is not a number"),
        # ... a piece that the shown text holds elsewhere too (the scheme).
        ("postgresql://app:postgres/Secret1@db1:5432,db2/app", "has a port that is not a"),
        (f"postgresql+psycopg://app:{SECRET}@db:port/app", "is not a valid database URL"),
        ("events.db", "'events.db' is not a usable PostgreSQL conninfo or URL"),
    ],
)
def test_a_bad_conninfo_is_a_configuration_error_without_the_password(
    target: str, shown: str, host_models: HostModels
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        write_events(host_models.EventLog, target, [])
    message = str(raised.value)
    assert shown in message
    assert SECRET not in message
    assert "Secret1" not in message
    assert "'postgres'" not in message  # a piece of a password read as the port
    assert "; write it as postgresql://user:password@host:5432/dbname" in message
    assert raised.value.__cause__ is None  # no psycopg error behind it, with the value inside


@pytest.mark.parametrize("password", [f"pa ss{SECRET}", f"p@ss{SECRET}", f"p@s s@{SECRET}"])
def test_a_password_with_a_space_or_an_at_sign_is_hidden_whole(
    host_models: HostModels, password: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        write_events(host_models.EventLog, f"postgresql://app:{password}@db/app?foo=1", [])
    assert "'postgresql://app:***@db/app?foo=1' has the parameter foo" in str(raised.value)
    assert SECRET not in str(raised.value)


def test_things_that_are_not_targets_are_refused_without_secrets(
    host_models: HostModels,
) -> None:
    with pytest.raises(ConfigurationError, match="None is not a database URL or conninfo"):
        write_events(host_models.EventLog, None, [])  # type: ignore[arg-type]
    url = f"postgresql://app:{SECRET}@db/app"
    with pytest.raises(ConfigurationError, match="pass it \\(an engine made") as raised:
        EventLogReader(host_models.EventLog, url)  # type: ignore[arg-type]
    assert SECRET not in str(raised.value)
    with pytest.raises(ConfigurationError, match="needs a sqlalchemy Engine") as raised:
        EventWriter(host_models.EventLog).record_detached(url, event_type="x")  # type: ignore[call-overload]
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://app@%2Fvar%2Frun%2Fpostgresql/app",  # a socket folder as the host
        f"postgres://app:{SECRET}@%2Frun%2Fpg:5433/app?sslmode=disable",
        "postgresql://app@h1,h2:5433/app",  # h1 on the default port
        "postgresql://app@[::1],[::2]:5433/app",
        "postgresql:///app?host=/tmp&port=5433",
    ],
)
def test_a_libpq_uri_is_read_as_libpq_reads_it(uri: str) -> None:
    assert params(uri) == {key: str(value) for key, value in conninfo_to_dict(uri).items()}


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        # The forms SQLAlchemy reads otherwise than libpq, as the host's own engine reads them.
        ("postgresql://app@/app?host=h1:5432&host=h2:5433", {"host": "h1,h2", "port": "5432,5433"}),
        ("postgresql://app@/app?host=h1:5432", {"host": "h1", "port": "5432"}),
        (f"postgresql://app:pass/{SECRET}@db/app", {"host": "db", "password": f"pass/{SECRET}"}),
        (
            "postgresql://app@db/app?options=-c+statement_timeout%3D5000",
            {"options": "-c statement_timeout=5000"},
        ),
    ],
)
def test_a_driverless_url_is_read_as_the_hosts_engine_reads_it(
    uri: str, expected: dict[str, str]
) -> None:
    got = params(uri)
    assert {key: got.get(key) for key in expected} == expected


@pytest.mark.parametrize("target", ["", "   ", " \n", "\t"])
def test_an_empty_url_is_refused_not_read_as_libpqs_defaults(
    target: str, host_models: HostModels, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq reads "" as every default: a cron line's --url "$DATABASE_URL", the variable
    unset, purged whatever database PGHOST or the local socket named."""
    with pytest.raises(ConfigurationError, match="the database URL is empty"):
        write_events(host_models.EventLog, target, [])
    with pytest.raises(ConfigurationError, match="is DATABASE_URL unset"):
        BufferedWriter(host_models.EventLog, target)
    monkeypatch.setenv("DATABASE_URL", text_of(database_url))
    result = subprocess.run(
        [sys.executable, "-m", "eventlog_persist", "purge", "--url", target, "--older-than", "1d"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result
    assert "the database URL is empty" in result.stderr


def test_every_sqlalchemy_postgresql_driver_name_is_a_url() -> None:
    for driver in ("psycopg", "psycopg_async", "psycopg2", "psycopg2cffi", "asyncpg", "pg8000"):
        got = params(f"postgresql+{driver}://app:{SECRET}@db:5433/app")
        assert (got["host"], got["port"], got["password"]) == ("db", "5433", SECRET), driver


def test_libpqs_reason_is_given_where_no_password_can_be_in_it(host_models: HostModels) -> None:
    with pytest.raises(ConfigurationError) as raised:
        write_events(host_models.EventLog, "host=db dbname", [])
    assert '(missing "=" after "dbname" in connection info string)' in str(raised.value)
    with pytest.raises(ConfigurationError) as raised:
        write_events(host_models.EventLog, "postgresql://db:x:y/app?#", [])
    assert "(libpq cannot parse it)" in str(raised.value)


@pytest.mark.parametrize(
    "target",
    [
        "host=db user=app password=correct horse",
        "host=db user=app password='correct horse",
        "host=db password=correct\thorse 'x",
        "postgresql+psycopg_async://app:correct horse@db:port/app",
        "postgresql://app:correct\nhorse@db:notaport/app",
    ],
)
def test_no_piece_of_a_password_is_in_a_refusal(target: str, host_models: HostModels) -> None:
    with pytest.raises(ConfigurationError) as raised:
        write_events(host_models.EventLog, target, [])
    assert "horse" not in str(raised.value)
