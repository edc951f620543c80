"""The canonical leaf of an event, recomputed in Python: the bytes an auditor hashes."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from json.encoder import encode_basestring
from typing import Any, Final

import msgspec

from eventlog_persist._json_deep import loads as deep_loads
from eventlog_persist.exceptions import ValidationError

__all__ = [
    "LEAF_COLUMNS",
    "LEAF_PREFIX",
    "LEAF_VERSION",
    "audit_leaf_hash",
    "canonical_json",
    "leaf_document",
    "leaf_document_of",
    "leaf_hash_of",
    "leaf_hash_of_text",
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
"""The columns of ``event_logs`` a leaf covers: spelled out, not taken from the writers'
column list, because a leaf version's encoding never changes."""
_Q: Final = '"'


# The escapes jsonb prints: \" \\ \b \f \n \r \t, other code points below U+0020 as
# \u00XX (lowercase hex), everything else as itself: what json.dumps(ensure_ascii=False)
# writes for a str, with the encoder's own (C) function.
_string: Callable[[str], str] = encode_basestring
# Compact, keys in code point order, no NaN: the fast path of `canonical_json`.
_COMPACT: Final = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, sort_keys=True, separators=(",", ":")
)


class _NotVerbatim(Exception):
    """A number that the fast path would not write back as its jsonb text."""


def _verbatim_float(token: str) -> float:
    """``token`` as a float that json writes back as ``token`` exactly, else `_NotVerbatim`.

    Never one with an exponent: jsonb prints ``1e+16`` as ``10000000000000000`` (json
    writes it back as ``1e+16``), and text from ``json.dumps`` has such tokens."""
    if "e" in token or "E" in token:
        raise _NotVerbatim
    value = float(token)
    if repr(value) != token or (not value and token.startswith("-")):
        raise _NotVerbatim
    return value


def _refuse_constant(token: str) -> float:
    raise _NotVerbatim


_VERBATIM: Final = json.JSONDecoder(parse_float=_verbatim_float, parse_constant=_refuse_constant)


def _fast_canonical(text: str | bytes | bytearray) -> str | None:
    """The canonical JSON of jsonb text when every number is written back as it was read
    (jsonb prints numbers as numeric does: an int, or a float whose repr is its text);
    None when one is not (the exact, slower path then runs)."""
    try:
        value = _VERBATIM.decode(text if isinstance(text, str) else text.decode())
    except (_NotVerbatim, ValueError, RecursionError):
        return None
    return _COMPACT.encode(value)


def _refuse_float(token: str) -> float:
    raise _NotVerbatim


_QUICK_DECODER: Final = msgspec.json.Decoder(float_hook=_refuse_float)
_SORTED_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def _quick_canonical(text: str | bytes) -> bytes | None:
    """The canonical JSON of jsonb text, UTF-8, in two C calls (msgspec); None when the
    payload holds a number with a fraction (then `_fast_canonical` or the exact path runs).

    Exact otherwise: jsonb text has no exponents, so every other number is an integer
    token, which msgspec reads as an int of any size and writes back as the same digits;
    msgspec escapes strings as `_string` does and sorts keys by code point (the tests
    check both against the exact path and the database function).
    """
    try:
        return _SORTED_ENCODER.encode(_QUICK_DECODER.decode(text))
    except (_NotVerbatim, msgspec.MsgspecError, RecursionError):
        return None


def _number(value: Decimal) -> str:
    """A number as PostgreSQL's numeric prints it: plain digits, the scale of its input."""
    if not value.is_finite():
        raise ValidationError(f"a payload number must be finite, got {value!r}")
    text = format(value, "f")
    return text[1:] if text.startswith("-") and not value else text  # numeric has no -0


class _Text(str):
    """Text `_canonical` writes as it is (punctuation, a key), not a value to encode."""


class _Close:
    """The end of a container `_canonical` is writing: its bracket, and its id to forget."""

    __slots__ = ("bracket", "container")

    def __init__(self, bracket: str, container: int) -> None:
        self.bracket = bracket
        self.container = container


def _canonical(value: Any, out: list[str]) -> None:
    # A stack of what is left to write, not recursion: a payload another tool stored may
    # be nested far past Python's recursion limit. A container inside itself never ends.
    todo: list[Any] = [value]
    open_containers: set[int] = set()
    while todo:
        value = todo.pop()
        if type(value) is _Text:
            out.append(value)
        elif type(value) is _Close:
            out.append(value.bracket)
            open_containers.discard(value.container)
        elif value is None:
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
        elif isinstance(value, Mapping | list | tuple):
            if id(value) in open_containers:
                raise ValidationError("a payload value contains itself; no stored row does")
            open_containers.add(id(value))
            if isinstance(value, Mapping):
                out.append("{")
                todo.append(_Close("}", id(value)))
                for index, key in enumerate(sorted(value, reverse=True)):
                    if not isinstance(key, str):
                        raise ValidationError(f"a payload key must be a str, got {key!r}")
                    todo.append(value[key])
                    todo.append(_Text(_string(key) + ":"))
                    if index < len(value) - 1:
                        todo.append(_COMMA)
            else:
                out.append("[")
                todo.append(_Close("]", id(value)))
                for index in range(len(value) - 1, -1, -1):
                    todo.append(value[index])
                    if index:
                        todo.append(_COMMA)
        else:
            raise ValidationError(
                f"a payload value must be JSON (dict, list, str, int, float, Decimal, bool, "
                f"None), got {type(value).__name__}"
            )


_COMMA: Final = _Text(",")


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a payload: sorted keys, no whitespace, jsonb's numbers.

    Args:
        value: The payload as ``jsonb`` text (``str`` or ``bytes``: exact, every number as
            stored) or as a JSON value (a dict, list, number, bool or None; floats are taken
            as their ``repr``, as the writers send them). A ``str`` is always jsonb text: a
            payload that is a bare JSON string is given as its text, e.g. ``'"hi"'``.

    Raises:
        ValidationError: ``value`` is no payload a row holds. Any depth is taken: another
            tool may store a payload nested past Python's recursion limit.
    """
    try:
        return _canonical_json(value)
    except ValidationError:
        raise
    except (UnicodeError, ValueError) as exc:
        raise ValidationError(f"this payload has no canonical JSON: {_reason(exc)}") from exc


def _canonical_json(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        value = value.decode()
    if isinstance(value, str):
        quick = _quick_canonical(value)
        if quick is not None:
            return quick.decode()
        fast = _fast_canonical(value)
        if fast is not None:
            return fast
        try:
            try:
                value = json.loads(value, parse_float=Decimal, parse_int=Decimal)
            except RecursionError:
                value = deep_loads(value, parse_float=Decimal, parse_int=Decimal)
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
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValidationError(
            f"created_at={value.isoformat()} is before year 1 or after 9999 once moved to "
            "UTC; no stored event has such a time"
        ) from None
    # isoformat pads the year to 4 digits and, in UTC, ends with +00:00.
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def _text(value: Any, column: str) -> str:
    if value is None:
        return "null"
    if not isinstance(value, str):
        raise ValidationError(f"{column} must be a str or None, got {value!r}")
    return _string(value)


def _quoted_key(value: Any, column: str) -> str:
    key = _key(value, column)
    return "null" if key is None else _string(key)


def _quoted_text(value: str | None, column: str) -> str:
    return "null" if value is None else _string(value)


def leaf_document_of(values: Sequence[Any], *, as_text: bool = False) -> bytes:
    """The canonical leaf document of the values of `LEAF_COLUMNS`, in that order.

    ``as_text``: ``id``, the four keys and ``xid`` are given as PostgreSQL prints them
    (``::text``: a UUID lowercase with hyphens, an integer in decimal), as the verifier
    reads them; else as a driver returns them (UUID, int).
    """
    (
        event_id,
        session_id,
        user_id,
        project_id,
        agent_id,
        event_type,
        payload,
        created_at,
        error_code,
        tool_name,
        approval_status,
        request_id,
        trace_id,
        span_id,
        xid,
    ) = values
    key: Callable[[Any, str], str] = _quoted_text if as_text else _quoted_key
    if as_text:
        if not isinstance(event_id, str) or (xid is not None and not isinstance(xid, str)):
            raise ValidationError(f"id and xid must be text here, got {event_id!r}, {xid!r}")
    elif not isinstance(event_id, uuid.UUID):
        raise ValidationError(f"id must be a UUID, got {event_id!r}")
    elif xid is not None and (isinstance(xid, bool) or not isinstance(xid, int)):
        raise ValidationError(f"xid must be an int or None, got {xid!r}")
    # The keys in code point order; the encoding is described in docs/audit.md.
    document = (
        f'{{"agent_id":{key(agent_id, "agent_id")},'
        f'"approval_status":{_text(approval_status, "approval_status")},'
        f'"created_at":"{_time(created_at)}",'
        f'"error_code":{_text(error_code, "error_code")},'
        f'"event_type":{_text(event_type, "event_type")},'
        f'"id":"{event_id}",'
        f'"payload":{canonical_json(payload)},'
        f'"project_id":{key(project_id, "project_id")},'
        f'"request_id":{_text(request_id, "request_id")},'
        f'"session_id":{key(session_id, "session_id")},'
        f'"span_id":{_text(span_id, "span_id")},'
        f'"tool_name":{_text(tool_name, "tool_name")},'
        f'"trace_id":{_text(trace_id, "trace_id")},'
        f'"user_id":{key(user_id, "user_id")},'
        f'"v":{LEAF_VERSION},'
        f'"xid":{"null" if xid is None else f"{_Q}{xid}{_Q}"}}}'
    )
    return document.encode()


def leaf_hash_of(values: Sequence[Any], *, as_text: bool = False) -> bytes:
    """`audit_leaf_hash` of the values of `LEAF_COLUMNS`, in that order (see
    `leaf_document_of` for ``as_text``)."""
    return hashlib.sha256(LEAF_PREFIX + leaf_document_of(values, as_text=as_text)).digest()


def _null_or(value: str | None) -> str:
    return "null" if value is None else _string(value)


def leaf_hash_of_text(values: Sequence[Any]) -> bytes:
    """`leaf_hash_of` with ``as_text``, for rows as the verifier reads them: the document
    built in one expression (ids and keys are ``::text`` of a UUID or an integer, which
    need no escaping), checked against `leaf_document_of` by the tests.

    ``created_at`` may also be given as the verifier reads it: UTC text in the fixed
    format ``YYYY-MM-DD HH:MM:SS.ffffff`` (``to_char(created_at AT TIME ZONE 'UTC',
    'YYYY-MM-DD HH24:MI:SS.US')``, which no session setting changes).
    """
    (i, s, u, p, a, event_type, payload, created_at, e, tool, status, r, t, span, x) = values
    if type(created_at) is str and len(created_at) == _UTC_TEXT_SIZE and created_at[10] == " ":
        when = created_at[:10] + "T" + created_at[11:]
    elif isinstance(created_at, datetime) and created_at.utcoffset() is not None:
        when = created_at.astimezone(UTC).isoformat(timespec="microseconds")[:-6]
    else:
        when = None
    if when is None or not isinstance(event_type, str) or not isinstance(payload, str):
        return leaf_hash_of(values, as_text=True)  # the checked path raises
    head = (
        f'\x00{{"agent_id":{"null" if a is None else _Q + a + _Q},'
        f'"approval_status":{_null_or(status)},"created_at":"{when}Z",'
        f'"error_code":{_null_or(e)},"event_type":{_string(event_type)},"id":"{i}",'
        '"payload":'
    )
    tail = (
        f',"project_id":{"null" if p is None else _Q + p + _Q},'
        f'"request_id":{_null_or(r)},"session_id":"{s}","span_id":{_null_or(span)},'
        f'"tool_name":{_null_or(tool)},"trace_id":{_null_or(t)},"user_id":"{u}",'
        f'"v":{LEAF_VERSION},"xid":{"null" if x is None else _Q + x + _Q}}}'
    )
    canonical = _quick_canonical(payload)
    digest = _sha256(head.encode())
    digest.update(canonical_json(payload).encode() if canonical is None else canonical)
    digest.update(tail.encode())
    return digest.digest()


_UTC_TEXT_SIZE: Final = len("2026-12-03 10:15:00.123456")
_sha256: Final = hashlib.sha256


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
    return leaf_document_of([row[column] for column in LEAF_COLUMNS])


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
        ValidationError: A column is missing or holds a value no ``event_logs`` row holds
            (text that is not UTF-8, a lone surrogate).

    Example:
        >>> audit_leaf_hash(row).hex()  # doctest: +SKIP
        '5f0c...'

    .. versionadded:: 0.3.0
    """
    try:
        document = leaf_document(row)
    except ValidationError:
        raise
    except (UnicodeError, ValueError) as exc:
        raise ValidationError(f"this row has no leaf: {_reason(exc)}") from exc
    return hashlib.sha256(LEAF_PREFIX + document).digest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, UnicodeError):
        return (
            f"{exc} (PostgreSQL text is UTF-8 and holds no lone surrogate, so no stored row "
            "has this value)"
        )
    return str(exc)
