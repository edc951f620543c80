"""The canonical leaf of an event, recomputed in Python: the bytes an auditor hashes."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from eventlog_persist.exceptions import ValidationError

__all__ = [
    "LEAF_COLUMNS",
    "LEAF_PREFIX",
    "LEAF_VERSION",
    "audit_leaf_hash",
    "canonical_json",
    "leaf_document",
]

LEAF_VERSION: Final = 1
"""The ``v`` of every leaf document of this encoding."""
LEAF_PREFIX: Final = b"\x00"
"""Prefix of a leaf before hashing (RFC 6962 domain separation: interior nodes use 0x01)."""
LEAF_COLUMNS: Final = (
    "id",
    "session_id",
    "user_id",
    "project_id",
    "agent_id",
    "event_type",
    "payload",
    "created_at",
    "error_code",
    "tool_name",
    "approval_status",
    "request_id",
    "trace_id",
    "span_id",
    "xid",
)
"""The columns of ``event_logs`` a leaf covers."""
_KEYS: Final = ("session_id", "user_id", "project_id", "agent_id")
_TEXTS: Final = ("event_type", "error_code", "tool_name", "approval_status", "request_id")
_TEXTS_MORE: Final = ("trace_id", "span_id")


def _string(value: str) -> str:
    # The escapes jsonb prints: \" \\ \b \f \n \r \t, other code points below U+0020 as
    # \u00XX (lowercase hex), everything else as itself; json.dumps writes the same.
    return json.dumps(value, ensure_ascii=False)


def _number(value: Decimal) -> str:
    """A number as PostgreSQL's numeric prints it: plain digits, the scale of its input."""
    if not value.is_finite():
        raise ValidationError(f"a payload number must be finite, got {value!r}")
    text = format(value, "f")
    return text[1:] if text.startswith("-") and not value else text  # numeric has no -0


def _canonical(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        # As the writers send it (repr, via json.dumps) and jsonb stores it (numeric).
        out.append(_number(Decimal(repr(value))))
    elif isinstance(value, Decimal):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        out.append("{")
        for index, key in enumerate(sorted(value)):
            if not isinstance(key, str):
                raise ValidationError(f"a payload key must be a str, got {key!r}")
            if index:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _canonical(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _canonical(item, out)
        out.append("]")
    else:
        raise ValidationError(
            f"a payload value must be JSON (dict, list, str, int, float, Decimal, bool, "
            f"None), got {type(value).__name__}"
        )


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a payload: sorted keys, no whitespace, jsonb's numbers.

    Args:
        value: The payload as ``jsonb`` text (``str`` or ``bytes``: exact, every number as
            stored) or as a JSON value (a dict, list, number, bool or None; floats are taken
            as their ``repr``, as the writers send them). A ``str`` is always jsonb text: a
            payload that is a bare JSON string is given as its text, e.g. ``'"hi"'``.
    """
    if isinstance(value, bytes | bytearray):
        value = value.decode()
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_float=Decimal, parse_int=Decimal)
        except ValueError as exc:
            raise ValidationError(
                f"a payload given as str must be its jsonb text (payload::text), got "
                f"{value[:40]!r}: {exc}"
            ) from exc
    out: list[str] = []
    _canonical(value, out)
    return "".join(out)


def _key(value: Any, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValidationError(f"{column} must be a UUID, an int or None, got {value!r}")


def _time(value: Any) -> str:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValidationError(f"created_at must be a time-zone aware datetime, got {value!r}")
    utc = value.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def leaf_document(row: Mapping[Any, Any]) -> bytes:
    """The canonical leaf document of an event row, UTF-8 (docs/audit.md, "The leaf").

    Args:
        row: The row's columns (`LEAF_COLUMNS`), e.g. ``result.mappings()`` of a select of
            ``event_logs``; ``payload`` best as its ``jsonb`` text (``payload::text``).

    Raises:
        ValidationError: A column is missing or has a value no ``event_logs`` row holds.
    """
    missing = [column for column in LEAF_COLUMNS if column not in row]
    if missing:
        raise ValidationError(
            f"the row lacks the columns {', '.join(missing)}; select every column of "
            "LEAF_COLUMNS (payload best as payload::text)"
        )
    event_id = row["id"]
    if not isinstance(event_id, uuid.UUID):
        raise ValidationError(f"id must be a UUID, got {event_id!r}")
    fields: dict[str, str] = {
        "created_at": _string(_time(row["created_at"])),
        "id": _string(str(event_id)),
        "payload": canonical_json(row["payload"]),
        "v": str(LEAF_VERSION),
    }
    for column in _KEYS:
        key = _key(row[column], column)
        fields[column] = "null" if key is None else _string(key)
    for column in (*_TEXTS, *_TEXTS_MORE):
        text = row[column]
        if text is not None and not isinstance(text, str):
            raise ValidationError(f"{column} must be a str or None, got {text!r}")
        fields[column] = "null" if text is None else _string(text)
    xid = row["xid"]
    if xid is not None and (isinstance(xid, bool) or not isinstance(xid, int)):
        raise ValidationError(f"xid must be an int or None, got {xid!r}")
    fields["xid"] = "null" if xid is None else _string(str(xid))
    body = ",".join(f"{_string(name)}:{fields[name]}" for name in sorted(fields))
    return ("{" + body + "}").encode()


def audit_leaf_hash(row: Mapping[Any, Any]) -> bytes:
    """Recompute an event's leaf hash from its row, without the database's hash functions.

    SHA-256 of ``0x00`` followed by the canonical leaf document: the columns of
    `LEAF_COLUMNS` as one JSON object with sorted keys and no whitespace, the payload in
    canonical JSON, ids as text, ``created_at`` as UTC ISO-8601 with microseconds. It equals
    what the audit revision's triggers store in ``event_log_erasures.leaf`` for the row as
    first written, whatever the sessions' TimeZone, DateStyle or extra_float_digits.

    Args:
        row: The row's columns by name (a ``RowMapping`` or a dict): ``id``, ``session_id``,
            ``user_id``, ``project_id``, ``agent_id``, ``event_type``, ``payload`` (best as
            ``payload::text``: exact for every number), ``created_at`` (aware), the text
            columns and ``xid`` (``int`` or ``None``).

    Returns:
        The 32-byte leaf hash.

    Raises:
        ValidationError: A column is missing or holds a value no ``event_logs`` row holds.

    Example:
        >>> audit_leaf_hash(row).hex()  # doctest: +SKIP
        '5f0c...'

    .. versionadded:: 0.3.0
    """
    return hashlib.sha256(LEAF_PREFIX + leaf_document(row)).digest()
