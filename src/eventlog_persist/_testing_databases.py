"""Test databases of the pytest plugin: a template migrated once, fresh clones of it per test."""

from __future__ import annotations

import contextlib
import logging.config
import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import create_engine, pool, text

from eventlog_persist._testing_server import PostgresServer

__all__ = ["DatabaseFactory", "drop_database", "migrate_template", "new_template_name"]


def _ident(name: str) -> sql.Composable:
    return sql.Identifier(name)


def migrate_template(server: PostgresServer, name: str, alembic_ini: Path) -> None:
    """Create database ``name`` and run the host's ``alembic upgrade heads`` on it.

    The host's ``env.py`` gets the connection in ``config.attributes["connection"]`` and the
    URL as ``sqlalchemy.url``; its ``fileConfig`` call is skipped, so that the test run keeps
    its own logging (pytest's capture handlers).

    Raises:
        ValueError: The ini file is missing, the upgrade failed, or ``env.py`` migrated some
            other database; the message names the fix.
    """
    from alembic import command
    from alembic.config import Config

    if not alembic_ini.is_file():
        raise ValueError(
            f"no Alembic configuration at {alembic_ini}; point the plugin at the host's "
            "alembic.ini with --eventlog-alembic-ini PATH or the ini setting "
            "eventlog_alembic_ini (relative to the pytest configuration file)"
        )
    with server.connect() as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(_ident(name)))
        except psycopg.errors.InsufficientPrivilege as exc:
            conn.rollback()
            role = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            raise ValueError(
                f"role {role!r} cannot create the test databases ({str(exc).strip()}); grant "
                f"it CREATEDB (ALTER ROLE {role} CREATEDB) or give a DSN of a role that has it"
            ) from None
    url = server.url(name)
    config = Config(str(alembic_ini))
    # ConfigParser interpolates "%": the URL's escapes (a socket path's %2F) need doubling.
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection, _without_file_config():
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, "heads")
                connection.commit()
            except Exception as exc:
                raise ValueError(
                    f"alembic upgrade heads failed on the test template database {name!r} "
                    f"(Alembic configuration {alembic_ini}): {type(exc).__name__}: "
                    f"{str(exc).strip()[:2000]}; run 'alembic upgrade heads' on an empty "
                    "database to see the whole traceback, and fix the migration"
                ) from exc
            tables = connection.scalar(_COUNT_TABLES)
    finally:
        engine.dispose()
    if not tables:
        raise ValueError(
            f"alembic upgrade heads created no table in the test template database {name!r}: "
            "env.py migrated another database (or the history is empty); make env.py use "
            "config.attributes['connection'] when it is set (see the env.py recipe in "
            "docs/testing.md)"
        )


_COUNT_TABLES = text(
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'information_schema'"
    " AND n.nspname NOT LIKE 'pg\\_%'"
)


@contextlib.contextmanager
def _without_file_config() -> Iterator[None]:
    """``logging.config.fileConfig`` does nothing meanwhile (env.py imports it on each run)."""
    original = logging.config.fileConfig
    logging.config.fileConfig = _no_file_config
    try:
        yield
    finally:
        logging.config.fileConfig = original


def _no_file_config(*args: object, **kwargs: object) -> None:
    """Stands in for ``fileConfig``, which would close every log handler, pytest's too."""


class DatabaseFactory:
    """Makes fresh databases from one template, one clone ahead, and drops them afterwards.

    All ``CREATE`` and ``DROP DATABASE`` run in one background thread on one connection to
    the maintenance database, so a test takes a clone that was made (and connected to once)
    while the previous test ran, and its drop costs it nothing. The template has no other
    connection, which ``CREATE DATABASE ... TEMPLATE`` requires.
    """

    def __init__(self, server: PostgresServer, template: str) -> None:
        self.server = server
        self.template = template
        self._prefix = f"{template.removesuffix('_tpl')}_"
        self._count = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog-testdb")
        self._conn = self._executor.submit(server.connect).result()
        # FILE_COPY (PostgreSQL 15+) copies a small template faster than WAL_LOG.
        self._strategy = sql.SQL(" STRATEGY FILE_COPY" if server.version >= 150000 else "")
        self._next: Future[str] | None = None
        self._drops: list[Future[None]] = []
        self._unused: list[str] = []

    def take(self) -> str:
        """The name of a fresh clone of the template, for the caller alone.

        Raises:
            ValueError: The clone failed; the message says why.
        """
        with self._lock:
            ready = self._next if self._next is not None else self._submit_clone()
            self._next = self._submit_clone()
            self._submit_drops()
        return ready.result()

    def _submit_drops(self) -> None:
        self._drops += [self._executor.submit(self._drop, name) for name in self._unused]
        self._unused.clear()

    def release(self, name: str) -> None:
        """Drop ``name`` in the background, closing the connections still open on it.

        The drop waits until the next `take` has asked for its clone, which goes first.
        """
        with self._lock:
            self._unused.append(name)

    def close(self) -> None:
        """Drop the clone made ahead, wait for every drop, close the connection.

        Raises:
            ValueError: A drop failed.
        """
        with self._lock:
            if self._next is not None:
                with contextlib.suppress(ValueError):
                    self._unused.append(self._next.result())
                self._next = None
            self._submit_drops()
            drops, self._drops = self._drops, []
        try:
            for drop in drops:
                drop.result()
        finally:
            self._executor.submit(self._conn.close).result()
            self._executor.shutdown()

    def _submit_clone(self) -> Future[str]:
        self._count += 1
        return self._executor.submit(self._clone, f"{self._prefix}{self._count}")

    def _clone(self, name: str) -> str:
        try:
            self._conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(
                    _ident(name), _ident(self.template), self._strategy
                )
            )
        except Exception as exc:
            raise ValueError(
                f"cannot clone the migrated template {self.template!r} into {name!r}: "
                f"{str(exc).strip()}; no session may stay connected to the template (a "
                "fixture or test connecting to it by name)"
            ) from exc
        # CREATE DATABASE copies no ALTER DATABASE (or ALTER ROLE ... IN DATABASE) setting:
        # the host's migrations may have set a search_path its code relies on.
        settings = self._conn.execute(_SETTINGS, [self.template]).fetchall()
        for role, setting in settings:
            parameter, _, value = str(setting).partition("=")
            target = (
                sql.SQL("DATABASE {}").format(_ident(name))
                if role is None
                else sql.SQL("ROLE {} IN DATABASE {}").format(_ident(role), _ident(name))
            )
            try:
                self._conn.execute(
                    sql.SQL("ALTER {} SET {} = {}").format(
                        target, sql.Identifier(parameter), _setting_value(parameter, value)
                    )
                )
            except psycopg.Error as exc:
                with contextlib.suppress(Exception):  # the cause is reported, not the cleanup's
                    drop_database(self._conn, name)
                whose = "" if role is None else f" for role {role!r}"
                raise ValueError(
                    f"cannot set {parameter}{whose} on the test database {name!r} as the "
                    f"template has it: {str(exc).strip()}; give the plugin's role the right to "
                    "set it, or let the migrations not set it"
                ) from exc
        # The first connection to a new database builds its relation cache file: do it here,
        # in the background, rather than in the test.
        try:
            psycopg.connect(self.server.conninfo(name)).close()
        except Exception as exc:
            with contextlib.suppress(Exception):  # the cause is reported, not the cleanup's
                drop_database(self._conn, name)
            raise ValueError(
                f"cannot connect to the new test database {name!r}: {str(exc).strip()}; "
                "check the server's max_connections and what else holds connections to it"
            ) from exc
        return name

    def _drop(self, name: str) -> None:
        drop_database(self._conn, name)


_SETTINGS = (
    "SELECT r.rolname, unnest(s.setconfig) FROM pg_db_role_setting s "
    "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole "
    "WHERE d.datname = %s ORDER BY 1 NULLS FIRST"
)
# The settings PostgreSQL stores as a list of quoted items (pg_dump's GUC_LIST_QUOTE ones):
# each item is given as a string of its own, the others as one string.
_LISTS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


def _setting_value(parameter: str, value: str) -> sql.Composable:
    if parameter.lower() not in _LISTS:
        return sql.Literal(value)
    items = _list_items(value)
    return sql.SQL(", ").join(map(sql.Literal, items)) if items else sql.Literal("")


def _list_items(value: str) -> list[str]:
    """The items of a stored list setting: ``"$user", public`` is ``$user`` and ``public``."""
    items: list[str] = []
    item, quoted, index = "", False, 0
    while index < len(value):
        char = value[index]
        if quoted:
            if char == '"' and value[index + 1 : index + 2] == '"':
                item += '"'
                index += 1
            elif char == '"':
                quoted = False
            else:
                item += char
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append(item)
            item = ""
        elif not char.isspace():  # between items; a quoted item keeps its own
            item += char
        index += 1
    if item or items:
        items.append(item)
    return items


def drop_database(conn: psycopg.Connection[Any], name: str) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)`` on an autocommit connection."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(_ident(name)))


def new_template_name() -> str:
    """A database name no other test session picks (also under pytest-xdist)."""
    return f"evl_test_{secrets.token_hex(5)}_tpl"
