"""Opaque keyset-pagination cursors: a position ``(created_at, id)`` bound to one query."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import struct
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

from eventlog_persist.exceptions import InvalidCursorError

__all__ = ["CursorPosition", "InvalidCursorError", "decode_cursor", "encode_cursor"]

# 2: query keys became JSON (version 1 keys could collide, e.g. event types "a,b" vs "a", "b").
_VERSION: Final = 2
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Positions a cursor may hold: the datetimes Python can represent (years 1 to 9999, UTC), which
# lie inside PostgreSQL's timestamptz range (4713 BC to 294276 AD).
_MIN_MICROS: Final = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
_MAX_MICROS: Final = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // timedelta(microseconds=1)
# version, microseconds since the epoch (UTC), id bytes, then a tag over those and the query.
_BODY: Final = struct.Struct(">Bq16s")
_TAG_BYTES: Final = 12
# The length of every token (unpadded base64 of the body and tag): 50 characters.
_TOKEN_CHARS: Final = -(-(_BODY.size + _TAG_BYTES) * 4 // 3)

CursorPosition = tuple[datetime, uuid.UUID]
"""Where a page ended: the ``(created_at, id)`` of its last event."""


def _tag(body: bytes, query_key: str) -> bytes:
    # A checksum, not a secret: anyone can rebuild it, and need not be stopped from doing so.
    # Scoping is enforced by the query itself, so a forged cursor can only move the start of
    # the page within the rows the call may read anyway; decode_cursor range-checks it.
    return hashlib.blake2b(body + b"\0" + query_key.encode(), digest_size=_TAG_BYTES).digest()


def encode_cursor(position: CursorPosition, query_key: str) -> str:
    """Return the url-safe token for ``position`` in the query identified by ``query_key``.

    Args:
        position: ``(created_at, id)`` of the last event on the page; ``created_at`` aware.
        query_key: Canonical description of the query (scope, filters, order).
    """
    created_at, event_id = position
    micros = (created_at - _EPOCH) // timedelta(microseconds=1)
    body = _BODY.pack(_VERSION, micros, event_id.bytes)
    return base64.urlsafe_b64encode(body + _tag(body, query_key)).rstrip(b"=").decode("ascii")


def decode_cursor(token: str, query_key: str) -> CursorPosition:
    """Return the position a token holds, after checking it was made by the same query.

    Args:
        token: A ``Page.next_cursor`` value.
        query_key: Canonical description of the query now being run.

    Raises:
        InvalidCursorError: The token is not a cursor, was altered, or comes from a query
            with another scope, other filters or another order.
    """
    if not isinstance(token, str):
        raise InvalidCursorError(
            f"cursor must be a str (a Page.next_cursor value), got {type(token).__name__}"
        )
    raw = b""
    if len(token) == _TOKEN_CHARS:  # a token of any other length is not decoded at all
        with contextlib.suppress(binascii.Error, ValueError):
            raw = base64.urlsafe_b64decode(token + "==")
    if len(raw) != _BODY.size + _TAG_BYTES or raw[0] != _VERSION:
        raise InvalidCursorError(
            f"cursor {_show(token)} is not a cursor made by this version of eventlog_persist; "
            "pass a Page.next_cursor value unchanged, or None to start from the first page"
        )
    body, tag = raw[: _BODY.size], raw[_BODY.size :]
    # Only the exact token decodes: base64 also reads other spellings of the same bytes
    # (unused bits of the last character changed, '+' for '-', padding, stray characters).
    canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if _tag(body, query_key) != tag or canonical != token:
        raise InvalidCursorError(
            f"cursor {_show(token)} was altered or belongs to another query (another scope, "
            "filters or order); pass the next_cursor of the previous page of this same query, "
            "or None to start from the first page"
        )
    _, micros, id_bytes = _BODY.unpack(body)
    try:
        if not _MIN_MICROS <= micros <= _MAX_MICROS:
            raise OverflowError(micros)
        created_at = _EPOCH + timedelta(microseconds=micros)
    except (OverflowError, ValueError):
        raise InvalidCursorError(
            f"cursor {_show(token)} holds a position outside the timestamps an event can have "
            "(years 1 to 9999), so it was not made by this reader; pass a Page.next_cursor "
            "value unchanged, or None to start from the first page"
        ) from None
    return created_at, uuid.UUID(bytes=id_bytes)


def _show(token: str) -> str:
    return repr(token) if len(token) <= 24 else f"{token[:24]!r}..."
