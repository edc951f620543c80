"""The lock that retention and the feed's claims on stored events take turns on.

A registration or a reset of a consumer claims events already stored (``start="earliest"``,
a past time); retention marks the parts whose claims it breaks (`_feed_retention`). A claim
made while a purge batch or a partition's detach runs, committed after the marking read
the consumers and before the removal committed, would be broken and never marked. So a
claim holds this advisory lock exclusively until it commits, and each removal holds it
shared from before its marking statement (whose snapshot then sees every claim committed)
until its removal is committed: removals never wait for each other, and a claim waits for
the removals in progress, which leave it nothing to claim.

The key is per ``event_log_consumers`` table: this constant in the high 32 bits, the
table's oid in the low (``pg_locks``: classid ``_SPACE``, objid the oid, objsubid 1).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import BigInteger, ColumnElement, Select, Table, cast, func, literal, select
from sqlalchemy.dialects.postgresql import OID

from eventlog_persist._table import quoted_name

__all__ = ["claiming", "retaining", "retaining_ended"]

_SPACE: Final = 0x45564C46  # "EVLF"


def _key(consumers: Table) -> ColumnElement[int]:
    oid = cast(cast(func.to_regclass(literal(quoted_name(consumers))), OID()), BigInteger())
    return literal(_SPACE << 32, BigInteger()).op("|", return_type=BigInteger())(oid)


def claiming(consumers: Table) -> Select[tuple[object]]:
    """Wait for the removals in progress, and hold off new ones until this transaction ends."""
    return select(func.pg_advisory_xact_lock(_key(consumers)))


def retaining(consumers: Table, *, session: bool = False) -> Select[tuple[object]]:
    """Wait for the claims in progress, and hold off new ones until this transaction ends,
    or with ``session`` until `retaining_ended` (for a removal that spans transactions)."""
    if session:
        return select(func.pg_advisory_lock_shared(_key(consumers)))
    return select(func.pg_advisory_xact_lock_shared(_key(consumers)))


def retaining_ended(consumers: Table) -> Select[tuple[object]]:
    """Release what ``retaining(consumers, session=True)`` took."""
    return select(func.pg_advisory_unlock_shared(_key(consumers)))
