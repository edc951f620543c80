"""The audit's schema on the model side: ``event_log_erasures`` and ``event_log_seals``, as
revision ``evlaudit_0001`` creates them."""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.sql.elements import conv

from eventlog_persist._feed_schema import Xid8, register_feed_types

__all__ = ["ERASURES_TABLE", "ERASURE_KINDS", "SEALS_TABLE", "audit_tables", "created_at_bound"]

ERASURES_TABLE: Final = "event_log_erasures"
SEALS_TABLE: Final = "event_log_seals"
ERASURE_KINDS: Final = ("cascade", "set_null", "retention", "erasure")
"""Why an event was erased: ON DELETE CASCADE, ON DELETE SET NULL, or a declared erasure."""
_KEY_LENGTH: Final = 36  # a UUID's text; an int's is shorter


def created_at_bound() -> CheckConstraint:
    """The CHECK revision ``evlaudit_0002`` puts on ``event_logs``: ``created_at`` in the
    years 1 to 9999, UTC, what the writers store and what a leaf can encode (infinity has no
    leaf, a year past 9999 no Python datetime, and a BC time would read as AD)."""
    return CheckConstraint(
        "created_at >= '0001-01-01 00:00:00+00' AND created_at < '10000-01-01 00:00:00+00'",
        name=conv("ck_event_logs_created_at_range"),
    )


def _existing(metadata: MetaData, name: str, schema: str | None) -> Table | None:
    return metadata.tables.get(f"{schema}.{name}" if schema else name)


def audit_tables(metadata: MetaData, *, schema: str | None) -> tuple[Table, Table]:
    """Declare ``event_log_erasures`` and ``event_log_seals`` on ``metadata`` (once).

    Erasures: one tombstone per erased event, its ids as text and its first-written leaf
    hash, never its content. Seals: the hash-chained seals over the events' leaves.
    """
    register_feed_types()
    erasures = _existing(metadata, ERASURES_TABLE, schema)
    if erasures is None:
        kinds = ", ".join(f"'{kind}'" for kind in ERASURE_KINDS)
        erasures = Table(
            ERASURES_TABLE,
            metadata,
            Column("seq", BigInteger(), Identity(always=True), nullable=False),
            Column("kind", String(16), nullable=False),
            Column("event_id", Uuid(), nullable=False),
            Column("event_created_at", DateTime(timezone=True), nullable=False),
            Column("event_xid", Xid8()),
            Column("session_id", String(_KEY_LENGTH), nullable=False),
            Column("user_id", String(_KEY_LENGTH), nullable=False),
            Column("project_id", String(_KEY_LENGTH)),
            Column("agent_id", String(_KEY_LENGTH)),
            Column("leaf", LargeBinary(), nullable=False),
            Column(
                "erased_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
            ),
            Column(
                "erased_xid", Xid8(), nullable=False, server_default=text("pg_current_xact_id()")
            ),
            PrimaryKeyConstraint("seq", name=conv(f"pk_{ERASURES_TABLE}")),
            CheckConstraint(f"kind IN ({kinds})", name=conv(f"ck_{ERASURES_TABLE}_kind")),
            CheckConstraint("octet_length(leaf) = 32", name=conv(f"ck_{ERASURES_TABLE}_leaf")),
            Index(conv(f"ix_{ERASURES_TABLE}_event_id_seq"), "event_id", "seq"),
            Index(conv(f"ix_{ERASURES_TABLE}_erased_xid_seq"), "erased_xid", "seq"),
            schema=schema,
        )
    seals = _existing(metadata, SEALS_TABLE, schema)
    if seals is None:
        seals = Table(
            SEALS_TABLE,
            metadata,
            Column("seq", BigInteger(), nullable=False, autoincrement=False),
            Column("xid_from", Xid8()),
            Column("xid_to", Xid8(), nullable=False),
            Column("chunk_size", Integer(), nullable=False),
            Column("events", BigInteger(), nullable=False),
            Column("erasures", BigInteger(), nullable=False),
            Column("chunk_roots", LargeBinary(), nullable=False),
            Column("chunk_ends", LargeBinary(), nullable=False),
            Column("events_root", LargeBinary(), nullable=False),
            Column("erasures_root", LargeBinary(), nullable=False),
            Column("prev_hash", LargeBinary()),
            Column("seal_hash", LargeBinary(), nullable=False),
            Column(
                "sealed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")
            ),
            PrimaryKeyConstraint("seq", name=conv(f"pk_{SEALS_TABLE}")),
            UniqueConstraint("seal_hash", name=conv(f"uq_{SEALS_TABLE}_seal_hash")),
            CheckConstraint(
                "(seq = 1) = (prev_hash IS NULL)", name=conv(f"ck_{SEALS_TABLE}_chain")
            ),
            CheckConstraint(
                "xid_from IS NULL OR xid_from <= xid_to", name=conv(f"ck_{SEALS_TABLE}_window")
            ),
            CheckConstraint(
                "octet_length(events_root) = 32 AND octet_length(erasures_root) = 32 "
                "AND octet_length(seal_hash) = 32 AND coalesce(octet_length(prev_hash), 32) = 32 "
                "AND octet_length(chunk_roots) % 32 = 0 "
                "AND octet_length(chunk_ends) * 4 = octet_length(chunk_roots) * 3",
                name=conv(f"ck_{SEALS_TABLE}_hashes"),
            ),
            schema=schema,
        )
    return erasures, seals
