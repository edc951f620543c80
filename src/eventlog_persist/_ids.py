"""Event ids: UUIDv7 (RFC 9562), time-ordered, generated client-side."""

from __future__ import annotations

import uuid

from uuid_utils.compat import uuid7

__all__ = ["new_event_id"]


def new_event_id() -> uuid.UUID:
    """Return a new UUIDv7 as a standard ``uuid.UUID``.

    Ids from one process are strictly increasing, so a B-tree on ``id`` appends at its right
    edge instead of splitting random pages, and ``(created_at, id)`` orders events stably.
    """
    return uuid7()
