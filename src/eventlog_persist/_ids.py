"""Event ids: UUIDv7 (RFC 9562), time-ordered, generated client-side."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Final

from uuid_utils import uuid7 as _uuid7

from eventlog_persist.exceptions import ValidationError

__all__ = ["ID_TIME_WINDOW", "id_time", "new_event_id"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _counter() -> Iterator[int]:
    return itertools.count(int.from_bytes(os.urandom(10)) >> 7)


# The 74 bits after an id's time, for ids minted at a given instant: one counter for the
# process, from a random start, so that such ids of the same millisecond keep the order they
# were made in (RFC 9562's monotonic random method, across milliseconds too).
_tails = _counter()


def _new_counter_in_child() -> None:
    # A forked child (gunicorn --preload, Celery prefork) would go on from the parent's count
    # and mint the ids its siblings mint for the same millisecond.
    global _tails
    _tails = _counter()


os.register_at_fork(after_in_child=_new_counter_in_child)
_TAIL_BITS: Final = (1 << 74) - 1
_LOW_BITS: Final = (1 << 62) - 1

# A standard UUID filled through its slots: uuid.UUID(int=...) checks and converts again,
# and each read of SafeUUID.unknown goes through the Enum machinery.
_SET_INT: Final = vars(uuid.UUID)["int"].__set__
_SET_SAFE: Final = vars(uuid.UUID)["is_safe"].__set__
_UNKNOWN: Final = uuid.SafeUUID.unknown


def _uuid_of(value: int) -> uuid.UUID:
    made: uuid.UUID = object.__new__(uuid.UUID)
    _SET_INT(made, value)
    _SET_SAFE(made, _UNKNOWN)
    return made


def _new_uuid7() -> uuid.UUID:
    """A new UUIDv7 (uuid_utils' monotonic generator) as a standard ``uuid.UUID``."""
    return _uuid_of(_uuid7().int)


ID_TIME_WINDOW: Final = timedelta(minutes=1)
"""How far an id the package mints may lie from its event's ``created_at``.

The id and the time come from the same clock: an event written now gets both at once, an
event given its ``created_at`` (a backfill) gets an id minted at that instant. Lookups by id
read only the ``created_at`` range this window around the id's time gives (one partition
in the partitioned layout), and fall back to every partition when the event is not there."""


def new_event_id(at: datetime | None = None) -> uuid.UUID:
    """Return a new UUIDv7 as a standard ``uuid.UUID``.

    Ids made without ``at`` in one process are strictly increasing, so a B-tree on ``id``
    appends at its right edge instead of splitting random pages, and ``(created_at, id)``
    orders events stably; ids made at the same instant keep the order they were made in.

    Args:
        at: The instant the id records (time-zone aware), e.g. the ``created_at`` of a
            backfilled event; default: now. An instant before 1970 cannot be recorded:
            the id then records now.

    Raises:
        ValidationError: ``at`` is not a time-zone aware datetime.

    .. versionchanged:: 0.3.0
       ``at``.
    """
    if at is None:
        return _new_uuid7()
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise ValidationError(
            f"new_event_id(at=...) needs a time-zone aware datetime, got {at!r}; e.g. "
            "value.replace(tzinfo=UTC)"
        )
    milliseconds = (at - _EPOCH) // timedelta(milliseconds=1)
    if milliseconds < 0:
        return _new_uuid7()
    tail = next(_tails) & _TAIL_BITS
    # time (48 bits), version 7, 12 tail bits, variant 0b10, 62 tail bits
    return _uuid_of(
        milliseconds << 80 | 0x7 << 76 | (tail >> 62) << 64 | 0b10 << 62 | tail & _LOW_BITS
    )


def id_time(event_id: uuid.UUID) -> datetime | None:
    """The instant a UUIDv7 records (to the millisecond); None for other versions."""
    if event_id.version != 7:
        return None
    milliseconds = event_id.int >> 80
    try:
        return _EPOCH + timedelta(milliseconds=milliseconds)
    except OverflowError:  # beyond year 9999: no event time can be there
        return None
