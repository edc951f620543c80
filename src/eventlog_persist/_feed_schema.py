"""The feed's schema on the model side: the ``xid8`` and ``pg_snapshot`` column types and the
``event_log_consumers`` table, as revision ``evlfeed_0001`` creates them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import base as postgresql_base
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import conv
from sqlalchemy.types import UserDefinedType

from eventlog_persist._schema import CONSUMER_NAME_LENGTH, CONSUMERS_TABLE

__all__ = [
    "LOST_BY_LENGTH",
    "OWNER_LENGTH",
    "PgSnapshot",
    "Xid8",
    "consumers_table",
    "register_feed_types",
]

OWNER_LENGTH: Final = 200
"""Longest lease owner name a consumer row holds."""
LOST_BY_LENGTH: Final = 64
"""Longest list of the retention paths that removed a part's undelivered events."""


class Xid8(UserDefinedType[int]):
    """PostgreSQL ``xid8``, a 64-bit transaction id (epoch and xid), as a Python ``int``.

    Values are sent as text and cast (``::XID8``; asyncpg, which knows the type, as ``int``),
    and read back as ``int``: Python compares them as numbers, as PostgreSQL does, never as
    text.
    """

    cache_ok = True
    render_bind_cast = True

    def get_col_spec(self, **kw: Any) -> str:
        return "XID8"

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        send: Callable[[int], Any] = int if dialect.driver == "asyncpg" else str

        def process(value: Any) -> Any:
            return None if value is None else send(int(value))

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            return None if value is None else int(value)

        return process


class PgSnapshot(UserDefinedType[str]):
    """PostgreSQL ``pg_snapshot`` (``xmin:xmax:xip,...``), as its text.

    asyncpg, which knows the type, sends and returns it as ``(xmin, xmax, xip)``; it is
    translated from and to the text here, so the rest of the package sees text only.
    """

    cache_ok = True
    render_bind_cast = True

    def get_col_spec(self, **kw: Any) -> str:
        return "PG_SNAPSHOT"

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.driver != "asyncpg":
            return None

        def process(value: Any) -> Any:
            if value is None:
                return None
            xmin, xmax, xip = str(value).split(":")
            return (int(xmin), int(xmax), [int(x) for x in xip.split(",") if x])

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, tuple):
                xmin, xmax, xip = value
                return f"{xmin}:{xmax}:{','.join(map(str, xip))}"
            return str(value)

        return process


def register_feed_types() -> None:
    """Let SQLAlchemy reflect ``xid8`` and ``pg_snapshot`` columns (Alembic autogenerate).

    Without it, reflecting the feed's columns warns "Did not recognize type 'xid8'". The one
    change this package makes outside its own objects: two type names SQLAlchemy's
    PostgreSQL dialect does not know, added when a host opts in to the feed. Idempotent.
    """
    postgresql_base.ischema_names.setdefault("xid8", Xid8)
    postgresql_base.ischema_names.setdefault("pg_snapshot", PgSnapshot)


def consumers_table(metadata: MetaData, *, schema: str | None) -> Table:
    """Declare ``event_log_consumers`` on ``metadata`` (once), as ``evlfeed_0001`` creates it.

    One row per consumer and part: ``snapshot_done`` is the last snapshot whose events were
    all delivered; ``snapshot_target`` with ``after_xid``/``after_id`` the batch in progress
    and the last event delivered of it; ``backfill_since``/``backfill_after`` the pending
    delivery of rows stored before the feed (``xid`` NULL); ``owner``, ``lease_until`` and
    ``generation`` the lease and its fencing token; ``lost_*`` the events retention removed
    before they were delivered (NULL: none), which stop the part's fetches.
    """
    key = f"{schema}.{CONSUMERS_TABLE}" if schema else CONSUMERS_TABLE
    existing = metadata.tables.get(key)
    if existing is not None:
        return existing
    return Table(
        CONSUMERS_TABLE,
        metadata,
        Column("consumer", String(CONSUMER_NAME_LENGTH), nullable=False),
        Column(
            "part",
            SmallInteger(),
            nullable=False,
            server_default=text("0"),
            autoincrement=False,
        ),
        Column("parts", SmallInteger(), nullable=False, server_default=text("1")),
        Column("snapshot_done", PgSnapshot(), nullable=False),
        Column("snapshot_target", PgSnapshot()),
        Column("after_xid", Xid8()),
        Column("after_id", Uuid()),
        Column("backfill_since", DateTime(timezone=True)),
        Column("backfill_after", Uuid()),
        Column("owner", String(OWNER_LENGTH)),
        Column("lease_until", DateTime(timezone=True)),
        Column("generation", BigInteger(), nullable=False, server_default=text("0")),
        Column("delivered", BigInteger(), nullable=False, server_default=text("0")),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
        Column("committed_at", DateTime(timezone=True)),
        Column("lost_events", BigInteger()),
        Column("lost_before", DateTime(timezone=True)),
        Column("lost_at", DateTime(timezone=True)),
        Column("lost_by", String(LOST_BY_LENGTH)),
        PrimaryKeyConstraint("consumer", "part", name=conv(f"pk_{CONSUMERS_TABLE}")),
        CheckConstraint("part >= 0 AND part < parts", name=conv(f"ck_{CONSUMERS_TABLE}_part")),
        schema=schema,
    )
