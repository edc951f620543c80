"""pytest-alembic's fixtures, on the plugin's server: registered by `eventlog_persist.testing`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import Engine, create_engine, pool

from eventlog_persist._testing_databases import drop_database, new_template_name
from eventlog_persist._testing_server import PostgresServer
from eventlog_persist.testing import _alembic_ini, _fail


@pytest.fixture
def alembic_engine(eventlog_postgresql: PostgresServer) -> Iterator[Engine]:
    """An engine on a fresh, empty database, for pytest-alembic's tests; dropped afterwards."""
    name = new_template_name().removesuffix("_tpl") + "_alembic"
    with eventlog_postgresql.connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = create_engine(eventlog_postgresql.url(name), poolclass=pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
        with eventlog_postgresql.connect() as conn:
            drop_database(conn, name)


@pytest.fixture
def alembic_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The host's Alembic configuration for pytest-alembic: the plugin's alembic.ini."""
    path = _alembic_ini(request.config)
    if not path.is_file():
        _fail(
            f"no Alembic configuration at {path}; point the plugin at the host's alembic.ini "
            "with --eventlog-alembic-ini PATH or the ini setting eventlog_alembic_ini"
        )
    return {"file": str(path)}
