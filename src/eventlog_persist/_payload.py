"""Make an event payload storable as PostgreSQL JSONB in one recursive pass, redacting secrets."""

from __future__ import annotations

import base64
import dataclasses
import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from enum import Enum
from typing import Final, Literal, TypeAlias, cast
from uuid import UUID

import msgspec

from eventlog_persist._detectors import (
    DEFAULT_DETECTORS,
    HEADER_PAIR,
    REDACTED,
    SecretMasker,
    masker,
)
from eventlog_persist.exceptions import ConfigurationError, PayloadError

__all__ = [
    "DEFAULT_DETECTORS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_POLICY",
    "DEFAULT_PREVIEW_CHARS",
    "DEFAULT_REDACT_KEYS",
    "MAX_DEPTH_LIMIT",
    "MIN_MAX_BYTES",
    "REDACTED",
    "REDACTION_RECORD_KEY",
    "DefaultHook",
    "JSONSafeValue",
    "NonFiniteMode",
    "NulMode",
    "OversizeMode",
    "PayloadPolicy",
    "PreparedPayload",
    "Redactor",
    "SurrogateMode",
    "prepare_payload",
]

JSONSafeValue: TypeAlias = (
    dict[str, "JSONSafeValue"] | list["JSONSafeValue"] | str | int | float | bool | None
)
"""What `prepare_payload` returns: only dict (str keys), list, str, int, float, bool and None."""

Redactor: TypeAlias = Callable[[str, str], str]
"""``redactor(path, text) -> text``: return ``text`` itself to keep it, or a replacement."""

DefaultHook: TypeAlias = Callable[[object], object]
"""``default(obj) -> replacement``, tried on values no built-in rule converts."""

NulMode: TypeAlias = Literal["replace", "error"]
SurrogateMode: TypeAlias = Literal["replace", "error"]
NonFiniteMode: TypeAlias = Literal["null", "error"]
OversizeMode: TypeAlias = Literal["error", "truncate"]

DEFAULT_MAX_DEPTH: Final = 64
MAX_DEPTH_LIMIT: Final = 256
"""Highest accepted ``max_depth``: deeper recursion would approach Python's recursion limit."""
DEFAULT_MAX_BYTES: Final = 256 * 1024
MIN_MAX_BYTES: Final = 256
"""Smallest accepted ``max_bytes``: room for the truncation marker with any sizes in it."""
DEFAULT_PREVIEW_CHARS: Final = 2048
# A hook whose result needs a hook again, this many times at one container level, is taken
# to be endless: failing here keeps the walk far from Python's recursion limit, where a
# garbage collection could run other code's finalizers on an almost full stack.
_HOOK_CHAIN_LIMIT: Final = 16

REDACTION_RECORD_KEY: Final = "_redacted"
"""Default top-level key that lists the redacted paths."""

DEFAULT_REDACT_KEYS: Final = frozenset(
    {
        # Passwords and generic secrets.
        "password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "secret_key",
        "private_key",
        "credential",
        "credentials",
        "pwd",
        "signing_key",
        "encryption_key",
        "master_key",
        # Connection strings, which carry a password.
        "dsn",
        "database_url",
        "database_uri",
        "db_url",
        "connection_string",
        "conn_str",
        # Tokens; the *_token names stay listed so that dropping "token" keeps them.
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "session_token",
        "auth_token",
        "bearer_token",
        "csrf_token",
        "jwt",
        # API keys.
        "api_key",
        "apikey",
        "x-api-key",
        "access_key",
        # HTTP headers that carry credentials.
        "authorization",
        "proxy-authorization",
        "cookie",
        "cookies",
        "set-cookie",
        # Payment and identity numbers.
        "card_number",
        "cvv",
        "cvc",
        "ssn",
    }
)
"""Key names whose values are redacted by default.

A key matches when, after case-folding and removing ``-``, ``_``, ``.`` and spaces, it
equals or ends with one of these names so normalized, or with its plural made by adding ``s``:
``"X-Api-Key"``, ``"openai_api_key"``, ``"DB Password"``, ``"llm.api.key"``, ``"secrets"`` and
``"apiKeys"`` all match. Names that end in ``token`` get no plural, because ``*_tokens``
keys count tokens in LLM payloads: ``"max_tokens"``, ``"input_tokens"`` and ``"token_count"``
stay visible. The
``"token"`` entry also matches the ``token`` field of LLM log-probabilities; drop it with
``DEFAULT_REDACT_KEYS - {"token"}`` if you log those.

.. versionchanged:: 0.3.0
   Added ``pwd``, ``signing_key``, ``encryption_key``, ``master_key``, ``dsn``,
   ``database_url``, ``database_uri``, ``db_url``, ``connection_string``, ``conn_str``, and
   the plural rule.
"""

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# Exact types that never carry __json__ or model_dump: skip those lookups, which are slow
# because a missing attribute raises internally.
_HOOKLESS: Final = frozenset(
    {datetime, date, time, UUID, Decimal, bytes, bytearray, memoryview, set, frozenset}
)
# PostgreSQL numeric keeps at most 131072 digits before the decimal point.
_PG_MAX_INT_DIGITS: Final = 131072


def _normalize_key(key: str) -> str:
    return key.casefold().replace("-", "").replace("_", "").replace(" ", "").replace(".", "")


def _pointer(parts: Sequence[str | int]) -> str:
    """Format path parts as an RFC 6901 JSON pointer (``""`` is the whole payload)."""
    return "".join(
        f"/{part}" if isinstance(part, int) else "/" + part.replace("~", "~0").replace("/", "~1")
        for part in parts
    )


def _where(path: str) -> str:
    return f"at {path!r}" if path else "at the top level"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _type_name(value: object) -> str:
    cls = type(value)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        options = " or ".join(repr(choice) for choice in choices)
        raise ConfigurationError(f"PayloadPolicy({name}={value!r}) is not valid; use {options}")


def _int_field(name: str, value: object, low: int, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigurationError(
            f"PayloadPolicy({name}={value!r}) is not valid; use an int {bounds}"
        )


# --- the quick path ---------------------------------------------------------------------------
#
# Most payloads hold plain JSON types only, and no rule changes them: then the careful pass
# returns what the C encoder makes of the payload as it is. The quick path proves that no
# rule applies, and any doubt sends the payload to the careful pass:
#
# * One walk over the containers (no path bookkeeping, nothing copied): every value is
#   exactly a dict with str keys, a list, a tuple, a str, an int of 64 bits (signed or not:
#   what the decoder reads back), a finite float, a bool or None (no subclass: an Enum or a
#   str with __json__ goes the careful way); the nesting is within max_depth (a cycle runs
#   into it); no key, and no str that opens a two-item list (a header pair), is a secret
#   name. Names found not secret are remembered per policy, so the walk tests most keys
#   with one set lookup per dict.
# * The encoder fails on a lone surrogate and on an int over sys.get_int_max_str_digits().
# * The text: within max_bytes, no NUL (written "\u0000"), no literal that starts a secret
#   shape (`SecretMasker.may_find_in`), no int over PostgreSQL's digit limit.
# * The reserved record key is not a top-level key.

_KNOWN_NAMES_MAX: Final = 4096
"""Most names one policy remembers as not secret (each at most _KNOWN_NAME_CHARS long)."""
_KNOWN_NAME_CHARS: Final = 128
_TOO_MANY_DIGITS: Final = re.compile(rb"(?<![0-9])[0-9]{%d}" % (_PG_MAX_INT_DIGITS + 1))
# Ints the quick path takes: those of 64 bits (signed or not), which the decoder of `prepare`
# always reads back; a larger one takes the careful pass.
_64_BIT_INTS: Final = range(-(2**63), 2**64)
_PLAIN_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_INFINITIES: Final = frozenset({math.inf, -math.inf})

_Walk: TypeAlias = Callable[[object, int], bool]


def _walker(suffixes: tuple[str, ...], header_pairs: bool) -> _Walk:
    """``plain(container, levels_left)``: the walk of the quick path for one policy."""
    known: set[str] = set()  # names that are not secret

    def plain_name(name: object) -> bool:
        if type(name) is not str or _normalize_key(name).endswith(suffixes):
            return False
        if len(known) < _KNOWN_NAMES_MAX and len(name) <= _KNOWN_NAME_CHARS:
            known.add(name)
        return True

    def plain(container: object, left: int) -> bool:
        if not left:
            return False
        items: Iterable[object]
        if type(container) is dict:
            if suffixes and not known.issuperset(container):
                for key in container:
                    if key not in known and not plain_name(key):
                        return False
            elif not suffixes and not all(type(key) is str for key in container):
                return False
            items = container.values()
        else:  # a list or a tuple
            sequence = cast("list[object]", container)
            items = sequence
            if (
                header_pairs
                and len(sequence) == 2
                and type(sequence[0]) is str
                and sequence[0] not in known
                and not plain_name(sequence[0])
            ):
                return False
        left -= 1
        for item in items:
            kind = type(item)
            if kind is str or kind is bool or item is None:
                continue
            if kind is int:
                if item not in _64_BIT_INTS:
                    return False
            elif kind is float:
                if item != item or item in _INFINITIES:
                    return False
            elif kind is dict or kind is list or kind is tuple:
                if not plain(item, left):
                    return False
            else:
                return False
        return True

    return plain


def _name_of(item: object) -> str | None:
    """The name a ``[name, value]`` pair's first item holds, if it is one: a str (a str
    Enum's text too), an Enum whose value is one, or bytes (ASGI's raw headers)."""
    if isinstance(item, str):
        return str.__str__(item)
    if isinstance(item, Enum) and isinstance(item.value, str):
        return str.__str__(item.value)
    if isinstance(item, bytes | bytearray):
        return bytes(item).decode("latin-1")
    return None


@dataclass(frozen=True, slots=True)
class _Quick:
    """The quick path of one policy: what its tests need, built once."""

    walk: _Walk
    masker: SecretMasker | None
    max_depth: int
    max_bytes: int | None
    record_key: str | None

    @classmethod
    def of(cls, policy: PayloadPolicy) -> _Quick | None:
        """The quick path for ``policy``; None when a redactor must see every string."""
        if policy.redactor is not None:
            return None
        suffixes = policy._redact_suffixes
        return cls(
            _walker(suffixes, bool(suffixes) and HEADER_PAIR in policy.detectors),
            policy._masker,
            policy.max_depth,
            policy.max_bytes,
            policy.redaction_record_key,
        )

    def text(self, value: object) -> tuple[str, bytes] | None:
        """The JSON text (and its UTF-8) the careful pass writes for ``value`` when no rule
        changes it, else None; `prepare` without the copy of the value."""
        kind = type(value)
        if kind is dict or kind is list or kind is tuple:
            if not self.walk(value, self.max_depth):
                return None
        elif (
            kind not in _PLAIN_SCALARS
            or value != value
            or value in _INFINITIES
            or (kind is int and value not in _64_BIT_INTS)
        ):
            return None
        try:
            data = _ENCODE(value)
        except (UnicodeEncodeError, ValueError):  # a lone surrogate, too many digits
            return None
        size = len(data)
        if (
            (self.max_bytes is not None and size > self.max_bytes)
            or (b"\\" in data and b"\\u0000" in data)
            or (type(value) is dict and self.record_key is not None and self.record_key in value)
        ):
            return None
        text = data.decode()
        if (self.masker is not None and self.masker.may_find_in(text)) or (
            size > _PG_MAX_INT_DIGITS and _TOO_MANY_DIGITS.search(data)
        ):
            return None
        return text, data

    def prepare(self, value: object) -> PreparedPayload | None:
        """What the careful pass returns for ``value`` when no rule changes it, else None."""
        found = self.text(value)
        if found is None:
            return None
        text, data = found
        try:
            copy = _DECODE(data)
        except msgspec.ValidationError:  # pragma: no cover - `text` takes 64-bit ints only
            return None
        prepared = object.__new__(PreparedPayload)
        for set_field, field_value in zip(
            _PREPARED_SETTERS, (copy, text, len(data), (), (), False), strict=True
        ):
            set_field(prepared, field_value)
        return prepared


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadPolicy:
    """How `prepare_payload` treats what JSONB cannot store; every field is validated on creation.

    Attributes:
        max_depth: Most container levels (dict, list, ...) allowed; the top-level container
            is level 1. Default 64, at most `MAX_DEPTH_LIMIT`. Reference cycles are reported
            when they reach this depth.
        max_bytes: Cap on the UTF-8 size of the compact JSON text, default 256 KiB; ``None``
            disables it. At least `MIN_MAX_BYTES`.
        oversize: ``"error"`` (default) raises `PayloadError` over the cap; ``"truncate"``
            stores the marker ``{"_truncated": true, "original_bytes": N, "max_bytes": cap,
            "preview": "<start of the JSON text>"}`` instead, sized to fit the cap.
        preview_chars: Most characters of JSON text kept in the truncation marker's preview,
            default 2048 (fewer when the cap needs it).
        nul: U+0000, which JSONB rejects in strings and keys: ``"replace"`` (default) with
            U+FFFD and record the path in ``replaced_paths``, or ``"error"``.
        surrogates: Lone surrogates (``"\\ud800"``), which UTF-8 cannot encode: ``"replace"``
            (default) with U+FFFD and record the path, or ``"error"``.
        non_finite: NaN and ±Infinity, which JSON has no literal for: ``"null"`` (default)
            stores null and records the path; ``"error"`` raises. -0.0 is kept as is in the
            JSON text (JSONB stores it as 0.0).
        redact_keys: Key names whose whole value is stored as ``"[REDACTED]"``; see
            `DEFAULT_REDACT_KEYS` for the matching rule. Extend with
            ``DEFAULT_REDACT_KEYS | {"pin"}``; an empty set turns key redaction off.
        detectors: Names of the detectors that look at values, all of `DEFAULT_DETECTORS` by
            default. Each one masks the secrets of one shape inside any string value, in
            place, keeping the text around them: ``"llm_api_key"`` (``sk-...``, ``sk-proj-...``,
            ``sk-ant-...``), ``"aws_access_key"`` (``AKIA...``, ``ASIA...``),
            ``"git_host_token"`` (``ghp_...``, ``gho_...``, ``ghu_...``, ``ghs_...``,
            ``ghr_...``, ``github_pat_...``, ``glpat-...``), ``"slack_token"``
            (``xoxb-...`` and the other ``xox?-`` kinds), ``"jwt"`` (``eyJ...eyJ...``),
            ``"bearer_token"`` (the credential after ``Bearer``) and ``"url_password"`` (the
            password of ``scheme://user:password@host``). ``"header_pair"`` redacts the
            second item of a two-item list whose first item is a str matching `redact_keys`,
            such as ``["Authorization", "Bearer ..."]``. Switch one off with
            ``DEFAULT_DETECTORS - {"jwt"}``; an empty set turns them all off. Text made from
            bytes, UUID, Decimal and datetime values is not scanned.

            .. versionadded:: 0.3.0
        redactor: Called as ``redactor(path, text)`` for every string value (not key) after
            conversion, NUL/surrogate repair and the detectors, except values already redacted
            whole (by key or as a header pair). Return ``text`` unchanged to keep it; a
            different str replaces it and counts as a redaction. Default ``None``.
        redaction_record_key: Top-level key listing the redacted paths, added only when
            something was redacted and the payload is a dict; that key is then reserved in
            every dict payload. ``None`` keeps the list in `PreparedPayload` only.
        default: Called with any value no built-in rule converts; its result is prepared in
            turn. Raise (e.g. ``TypeError``) to reject the value. Default ``None``.
    """

    max_depth: int = DEFAULT_MAX_DEPTH
    max_bytes: int | None = DEFAULT_MAX_BYTES
    oversize: OversizeMode = "error"
    preview_chars: int = DEFAULT_PREVIEW_CHARS
    nul: NulMode = "replace"
    surrogates: SurrogateMode = "replace"
    non_finite: NonFiniteMode = "null"
    redact_keys: frozenset[str] = DEFAULT_REDACT_KEYS
    detectors: frozenset[str] = DEFAULT_DETECTORS
    redactor: Redactor | None = None
    redaction_record_key: str | None = REDACTION_RECORD_KEY
    default: DefaultHook | None = None
    _redact_suffixes: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _masker: SecretMasker | None = field(init=False, repr=False, compare=False)
    _quick: _Quick | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _int_field("max_depth", self.max_depth, 1, MAX_DEPTH_LIMIT)
        if self.max_bytes is not None:
            _int_field("max_bytes", self.max_bytes, MIN_MAX_BYTES)
        _int_field("preview_chars", self.preview_chars, 0)
        _choice("oversize", self.oversize, ("error", "truncate"))
        _choice("nul", self.nul, ("replace", "error"))
        _choice("surrogates", self.surrogates, ("replace", "error"))
        _choice("non_finite", self.non_finite, ("null", "error"))
        for name in ("redactor", "default"):
            hook = getattr(self, name)
            if hook is not None and not callable(hook):
                raise ConfigurationError(
                    f"PayloadPolicy({name}={hook!r}) is not valid; pass a callable or None"
                )
        record_key = self.redaction_record_key
        if record_key is not None and (
            type(record_key) is not str
            or not record_key
            or "\x00" in record_key
            or _SURROGATE.search(record_key) is not None
        ):
            raise ConfigurationError(
                f"PayloadPolicy(redaction_record_key={record_key!r}) is not valid; use a "
                "non-empty str without NUL or lone surrogates, or None to keep the record out "
                "of the payload"
            )
        object.__setattr__(self, "redact_keys", self._checked_redact_keys())
        object.__setattr__(self, "_redact_suffixes", _suffixes(self.redact_keys))
        object.__setattr__(self, "detectors", self._checked_detectors())
        object.__setattr__(self, "_masker", masker(self.detectors))
        object.__setattr__(self, "_quick", _Quick.of(self))

    def _checked_redact_keys(self) -> frozenset[str]:
        keys: object = self.redact_keys
        if not isinstance(keys, (frozenset, set)):
            raise ConfigurationError(
                f"PayloadPolicy(redact_keys={_show(keys)}) is not valid; pass a frozenset of "
                "key names, e.g. DEFAULT_REDACT_KEYS | {'pin'}"
            )
        for key in keys:
            if not isinstance(key, str) or not _normalize_key(key):
                raise ConfigurationError(
                    f"PayloadPolicy(redact_keys=...) contains {key!r}; every entry must be a "
                    "key name with at least one character other than '-', '_', '.' and space"
                )
        return frozenset(keys)

    def _checked_detectors(self) -> frozenset[str]:
        names: object = self.detectors
        if not isinstance(names, (frozenset, set)):
            raise ConfigurationError(
                f"PayloadPolicy(detectors={_show(names)}) is not valid; pass a frozenset of "
                "detector names, e.g. DEFAULT_DETECTORS - {'jwt'}, or frozenset() for none"
            )
        for name in names:
            if name not in DEFAULT_DETECTORS:
                valid = ", ".join(repr(known) for known in sorted(DEFAULT_DETECTORS))
                raise ConfigurationError(
                    f"PayloadPolicy(detectors=...) contains {_show(name)}, which is not a "
                    f"detector; use names among {valid}"
                )
        return frozenset(names)


def _suffixes(keys: frozenset[str]) -> tuple[str, ...]:
    names = {_normalize_key(key) for key in keys}
    # Plurals match too, except for token names: "*_tokens" keys count tokens.
    names |= {f"{name}s" for name in names if not name.endswith("token")}
    # A name that ends with another listed name can never decide a match on its own.
    return tuple(
        sorted(
            name
            for name in names
            if not any(name != other and name.endswith(other) for other in names)
        )
    )


DEFAULT_POLICY: Final = PayloadPolicy()


@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedPayload:
    """A payload ready for the ``payload`` column.

    Attributes:
        value: The JSON-safe structure (a new object; the input is never modified).
        json_text: ``value`` as compact JSON (``separators=(",", ":")``, non-ASCII kept as is,
            strings escaped as ``json.dumps`` escapes them), ready to send without encoding
            again. Numbers are written as msgspec writes them: the shortest text that reads
            back as the same float, with a bare exponent (``1e16``, ``1e-7``, where
            ``json.dumps`` writes ``1e+16``, ``1e-07``); PostgreSQL stores the same number.

            .. versionchanged:: 0.3.0 Encoded with msgspec.
        size_bytes: Length of ``json_text`` in UTF-8.
        redacted_paths: JSON pointers of the redacted values, in document order.
        replaced_paths: JSON pointers of values or keys changed by the ``nul``, ``surrogates``
            or ``non_finite`` rules, in document order.
        truncated: Whether ``value`` is the truncation marker instead of the payload.
    """

    value: JSONSafeValue
    json_text: str
    size_bytes: int
    redacted_paths: tuple[str, ...] = ()
    replaced_paths: tuple[str, ...] = ()
    truncated: bool = False


# The slots' own setters, which a frozen dataclass's __setattr__ does not stand in front of.
_PREPARED_SETTERS: Final = tuple(
    getattr(PreparedPayload, item.name).__set__ for item in dataclasses.fields(PreparedPayload)
)


def prepare_payload(value: object, *, policy: PayloadPolicy = DEFAULT_POLICY) -> PreparedPayload:
    """Convert, check and redact ``value`` in one pass, then encode it once.

    Conversions, tried in this order for values that are not plain JSON types:

    * an object whose class has ``__json__()``: its return value;
    * an object whose class has ``model_dump()`` (pydantic v2): ``model_dump(mode="json")``;
    * `Enum` member: its ``value``;
    * subclasses of str, int, float: the plain value; tuple and list subclasses: list;
    * datetime, date, time: ``isoformat()``; naive values stay naive (no offset is invented);
    * UUID: its canonical str; Decimal: ``str()``, exact (a float would round, and many
      JSON readers parse numbers as doubles);
    * bytes, bytearray, memoryview: a standard base64 str with padding (no type marker);
    * dataclass or `msgspec.Struct` instance: a dict of its fields by attribute name (a
      Struct's ``rename``, ``tag`` and ``array_like`` are not applied); other `Mapping`: a
      dict;
    * set, frozenset: a list, sorted when the elements are mutually comparable, else in
      iteration order;
    * anything else: ``policy.default(value)`` when set, else `PayloadError`.

    Converted values are prepared recursively under the same rules; a value that takes more
    than 16 hook calls in a row (each result needing another hook) is an error. Dict keys
    must be str, or int, float, bool, None, UUID or Enum, converted as ``json.dumps`` does
    (``True`` -> ``"true"``, ``None`` -> ``"null"``, ``1.5`` -> ``"1.5"``; a NaN or infinite
    key becomes ``"null"`` under ``non_finite="null"``); two keys that become the same str
    are an error.

    Redaction (see `PayloadPolicy`) replaces values, never keys: whole values under secret
    keys and in ``[name, value]`` pairs, and secrets that the detectors find inside strings,
    in place. Each changed value's path is listed once, in document order; for a dict
    payload also under ``policy.redaction_record_key``, while other payloads are not wrapped
    and report them in `PreparedPayload.redacted_paths` only.

    Args:
        value: The payload, usually a dict.
        policy: The rules to apply; `DEFAULT_POLICY` unless given.

    Returns:
        The JSON-safe value, its JSON text and what was changed.

    Raises:
        PayloadError: The payload breaks a rule set to ``"error"``, holds something that
            cannot be converted, nests too deeply or in a cycle, or exceeds ``max_bytes``
            under ``oversize="error"``. ``path`` says where.
        ConfigurationError: ``policy`` is not a `PayloadPolicy`, or ``policy.redactor``
            returned something other than a str.
    """
    if policy is not DEFAULT_POLICY and not isinstance(policy, PayloadPolicy):
        raise ConfigurationError(f"policy={policy!r} is not valid; pass a PayloadPolicy")
    return prepare_unchecked(value, policy)


def prepare_unchecked(value: object, policy: PayloadPolicy) -> PreparedPayload:
    """`prepare_payload` for a policy already checked (the event builder's)."""
    quick = policy._quick
    if quick is not None:
        done = quick.prepare(value)
        if done is not None:
            return done
    return _prepare_carefully(value, policy)


def payload_text(value: object, policy: PayloadPolicy) -> tuple[str, tuple[str, ...]]:
    """`prepare_payload`'s ``json_text`` and ``redacted_paths`` alone, for an event.

    An event keeps no copy of the value, so the quick path makes none.

    Raises:
        PayloadError: As `prepare_payload`.
        ConfigurationError: As `prepare_payload`.
    """
    quick = policy._quick
    if quick is not None:
        found = quick.text(value)
        if found is not None:
            return found[0], ()
    prepared = _prepare_carefully(value, policy)
    return prepared.json_text, prepared.redacted_paths


def _prepare_carefully(value: object, policy: PayloadPolicy) -> PreparedPayload:
    """`prepare_payload` by the careful pass, which applies every rule value by value."""
    run = _Pass(policy)
    try:
        prepared = run.value(value)
    except RecursionError:
        path = _pointer(run.parts)
        raise PayloadError(
            f"payload nests too deeply for Python's recursion limit {_where(path)} (depth "
            f"{len(run.parts)}): each level of a converted container (a namedtuple, a "
            "dataclass, a Mapping other than dict) takes more of the stack than a dict's, "
            "and a __json__(), model_dump() or default hook that keeps returning new objects "
            "never ends; flatten the payload (or lower PayloadPolicy(max_depth=...)), or make "
            "the hook return plain data",
            path=path,
        ) from None
    record_key = policy.redaction_record_key
    if record_key is not None and type(prepared) is dict:
        if record_key in prepared:
            path = _pointer([record_key])
            raise PayloadError(
                f"top-level key {record_key!r} is reserved for the list of redacted paths; "
                "rename it, or set PayloadPolicy(redaction_record_key=...) to another key or None",
                path=path,
            )
        if run.redacted:
            prepared[record_key] = list(run.redacted)
    text = _encode(prepared)
    size = _utf8_size(text)
    truncated = False
    cap = policy.max_bytes
    if cap is not None and size > cap:
        if policy.oversize == "error":
            raise PayloadError(
                f"payload is {size} bytes as UTF-8 JSON, over max_bytes={cap}; shrink it, raise "
                "PayloadPolicy(max_bytes=...) (None disables the cap), or use "
                "PayloadPolicy(oversize='truncate') to store a truncation marker",
                path="",
            )
        prepared, text = _truncation_marker(text, size, cap, policy.preview_chars)
        size = _utf8_size(text)
        truncated = True
    return PreparedPayload(
        value=prepared,
        json_text=text,
        size_bytes=size,
        redacted_paths=tuple(run.redacted),
        replaced_paths=tuple(run.replaced),
        truncated=truncated,
    )


_ENCODE: Final = msgspec.json.Encoder().encode
_DECODE: Final = msgspec.json.Decoder().decode


def _encode(value: JSONSafeValue) -> str:
    # The pass already rules out cycles, NaN, lone surrogates and too many digits.
    return _ENCODE(value).decode()


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _truncation_marker(
    text: str, size: int, cap: int, preview_chars: int
) -> tuple[dict[str, JSONSafeValue], str]:
    def build(chars: int) -> tuple[dict[str, JSONSafeValue], str]:
        marker: dict[str, JSONSafeValue] = {
            "_truncated": True,
            "original_bytes": size,
            "max_bytes": cap,
            "preview": text[:chars],
        }
        return marker, _encode(marker)

    # Escapes make the encoded preview longer than its characters, so search for the fit.
    low, high = 0, min(preview_chars, len(text))
    while low < high:
        middle = (low + high + 1) // 2
        if _utf8_size(build(middle)[1]) <= cap:
            low = middle
        else:
            high = middle - 1
    return build(low)


class _Pass:
    """State of one `prepare_payload` call: the current path, ancestors and what changed."""

    __slots__ = (
        "default",
        "header_pairs",
        "hook_levels",
        "masker",
        "max_depth",
        "max_int_bits",
        "non_finite",
        "nul",
        "parts",
        "redacted",
        "redactor",
        "replaced",
        "secret_cache",
        "stack",
        "suffixes",
        "surrogates",
    )

    def __init__(self, policy: PayloadPolicy) -> None:
        self.max_depth = policy.max_depth
        self.nul = policy.nul
        self.surrogates = policy.surrogates
        self.non_finite = policy.non_finite
        self.redactor = policy.redactor
        self.default = policy.default
        self.suffixes = policy._redact_suffixes
        self.header_pairs = bool(self.suffixes) and HEADER_PAIR in policy.detectors
        self.masker = policy._masker
        # parts[i] is the key or index being visited inside stack[i].
        self.parts: list[str | int] = []
        self.stack: list[object] = []
        # The container level of each hook call under way, outermost first.
        self.hook_levels: list[int] = []
        self.redacted: list[str] = []
        self.replaced: list[str] = []
        self.secret_cache: dict[str, bool] = {}
        digits = sys.get_int_max_str_digits() or _PG_MAX_INT_DIGITS
        # 3 bits per digit undercounts (log2(10) ~ 3.32): smaller ints surely fit.
        self.max_int_bits = 3 * min(digits, _PG_MAX_INT_DIGITS)

    def fields_of(self, value: object, names: Iterable[str]) -> Iterator[tuple[str, object]]:
        """The fields of a dataclass or msgspec Struct, but those at ``msgspec.UNSET``, which
        msgspec leaves out of what it encodes too."""
        for name in names:
            try:
                item = getattr(value, name)
            except AttributeError:
                where = _pointer(self.parts[:-1])  # read as the object's entries are made
                raise self.fail(
                    f"the field {name!r} of the {_type_name(value)} {_where(where)} has no "
                    "value (a field(init=False) never set?); set it, or convert the object to "
                    "a dict first",
                    where,
                ) from None
            if item is not msgspec.UNSET:
                yield name, item

    def fail(self, message: str, path: str | None = None) -> PayloadError:
        return PayloadError(message, path=_pointer(self.parts) if path is None else path)

    def note_replaced(self) -> None:
        path = _pointer(self.parts)
        if not self.replaced or self.replaced[-1] != path:
            self.replaced.append(path)

    def value(self, value: object) -> JSONSafeValue:
        if type(value) is str:
            return self.text(value)
        if type(value) is int:
            return value if value.bit_length() <= self.max_int_bits else self.big_int(value)
        if type(value) is float:
            if math.isfinite(value):
                return value
            self.not_finite(value)
            return None
        if value is None or type(value) is bool:
            return value
        if type(value) is dict:
            return self.entries(value, value.items())
        if type(value) is list or type(value) is tuple:
            return self.sequence(value)
        return self.other(value)

    def other(self, value: object) -> JSONSafeValue:
        cls = type(value)
        if cls not in _HOOKLESS:
            hook = getattr(cls, "__json__", None)
            if callable(hook) and not isinstance(value, type):
                return self.converted(value, "__json__()", lambda: hook(value))
            dump = getattr(cls, "model_dump", None)
            if callable(dump) and not isinstance(value, type):
                return self.converted(value, "model_dump()", lambda: dump(value, mode="json"))
        return self.known(value)

    def known(self, value: object) -> JSONSafeValue:
        """Apply the built-in conversions, then ``default``; raise when nothing applies."""
        if isinstance(value, str):  # a str Enum's too: its text, as for a key
            return self.text(str.__str__(value))
        if isinstance(value, Enum):
            return self.value(value.value)
        if isinstance(value, int):  # bool is final, so only true int subclasses get here
            return self.value(int(value))
        if isinstance(value, float):
            return self.value(float(value))
        # Text made from these holds no secret the detectors look for (base64 could only
        # give false hits), so it is not scanned.
        if isinstance(value, (datetime, date, time)):
            return self.text(value.isoformat(), scan=False)
        if isinstance(value, UUID):
            return self.text(str(value), scan=False)
        if isinstance(value, Decimal):
            return self.text(str(value), scan=False)
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = value.tobytes() if isinstance(value, memoryview) else value
            return self.text(base64.b64encode(raw).decode("ascii"), scan=False)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            names = [f.name for f in dataclasses.fields(value)]
            return self.entries(value, self.fields_of(value, names))
        if isinstance(value, msgspec.Struct):
            return self.entries(value, self.fields_of(value, value.__struct_fields__))
        if isinstance(value, Mapping):
            return self.entries(value, value.items())
        if isinstance(value, (list, tuple)):
            return self.sequence(value)
        if isinstance(value, (set, frozenset)):
            try:
                ordered: list[object] = sorted(value)
            except TypeError:
                ordered = list(value)
            return self.items(value, ordered)
        default = self.default
        if default is not None:
            return self.converted(value, "PayloadPolicy.default", lambda: default(value))
        raise self.fail(
            f"cannot store a value of type {_type_name(value)} {_where(_pointer(self.parts))} "
            "as JSON: convert it to str, int, float, bool, None, dict or list first, give its "
            "class a __json__() method, or pass PayloadPolicy(default=...) to convert it"
        )

    def converted(self, value: object, hook: str, call: Callable[[], object]) -> JSONSafeValue:
        levels = self.hook_levels
        level = len(self.stack)
        # Levels only grow along a path: when the call _HOOK_CHAIN_LIMIT back is at this
        # level, so are all the calls since.
        if len(levels) >= _HOOK_CHAIN_LIMIT and levels[-_HOOK_CHAIN_LIMIT] == level:
            raise self.fail(
                f"{hook} would be hook number {_HOOK_CHAIN_LIMIT + 1} in a row for the "
                f"{_type_name(value)} {_where(_pointer(self.parts))}, each returning a value "
                "that needs another hook; a hook likely returns new objects forever: make "
                "it return plain data (dict, list, str, ...)"
            )
        try:
            result = call()
        except PayloadError:
            raise
        except Exception as exc:
            raise self.fail(
                f"{hook} raised {type(exc).__name__}: {exc} for the {_type_name(value)} "
                f"{_where(_pointer(self.parts))}; fix the hook or convert the value first"
            ) from exc
        if result is value:
            raise self.fail(
                f"{hook} returned the {_type_name(value)} {_where(_pointer(self.parts))} "
                "unchanged; it must return plain data (dict, list, str, ...)"
            )
        levels.append(level)
        try:
            return self.value(result)
        finally:
            levels.pop()

    def enter(self, container: object) -> None:
        stack = self.stack
        if len(stack) >= self.max_depth:
            self.raise_too_deep(container)
        stack.append(container)
        self.parts.append("")

    def leave(self) -> None:
        self.stack.pop()
        self.parts.pop()

    def raise_too_deep(self, container: object) -> None:
        seen: dict[int, int] = {}
        for level, ancestor in enumerate([*self.stack, container]):
            first = seen.setdefault(id(ancestor), level)
            if first != level:
                path = _pointer(self.parts[:level])
                raise self.fail(
                    f"reference cycle: the value at {path!r} is the same object as its "
                    f"ancestor {_where(_pointer(self.parts[:first]))}; break the cycle or "
                    "copy the data before logging it",
                    path,
                )
        raise self.fail(
            f"payload nests deeper than max_depth={self.max_depth} "
            f"{_where(_pointer(self.parts))}; flatten it or raise PayloadPolicy(max_depth=...)"
        )

    def entries(
        self, container: object, entries: Iterable[tuple[object, object]]
    ) -> dict[str, JSONSafeValue]:
        self.enter(container)
        parts = self.parts
        suffixes = self.suffixes
        out: dict[str, JSONSafeValue] = {}
        for raw_key, item in entries:
            key, changed = (raw_key, False) if type(raw_key) is str else self.key(raw_key)
            if "\x00" in key or not key.isascii():
                key, repaired = self.repair(key, is_key=True)
                changed = changed or repaired
            if key in out:
                raise self.fail(
                    f"key {_show(raw_key)} becomes {key!r}, which this object already has "
                    f"{_where(_pointer([*parts[:-1], key]))}; rename one of the two keys",
                    _pointer([*parts[:-1], key]),
                )
            parts[-1] = key
            if changed:
                self.note_replaced()
            if suffixes and self.is_secret(key):
                out[key] = REDACTED
                self.redacted.append(_pointer(parts))
            else:
                out[key] = self.value(item)
        self.leave()
        return out

    def sequence(self, value: list[object] | tuple[object, ...]) -> list[JSONSafeValue]:
        """A list or tuple: a ``[name, value]`` pair with a secret name, or plain items."""
        if (
            len(value) == 2
            and self.header_pairs
            and (named := _name_of(value[0])) is not None
            and self.is_secret(named)
        ):
            self.enter(value)
            parts = self.parts
            parts[-1] = 0
            # A bytes name is stored as bytes are (base64); only its value is withheld.
            name = (
                self.value(value[0])
                if isinstance(value[0], bytes | bytearray)
                else (self.text(named))
            )
            parts[-1] = 1
            self.redacted.append(_pointer(parts))
            self.leave()
            return [name, REDACTED]
        return self.items(value, value)

    def items(self, container: object, items: Iterable[object]) -> list[JSONSafeValue]:
        self.enter(container)
        parts = self.parts
        out: list[JSONSafeValue] = []
        for index, item in enumerate(items):
            parts[-1] = index
            out.append(self.value(item))
        self.leave()
        return out

    def key(self, key: object) -> tuple[str, bool]:
        """Convert a non-str key as ``json.dumps`` does; the flag says a non-finite was replaced."""
        if isinstance(key, str):  # a str Enum's too: its text, as json.dumps and the quick path
            return str.__str__(key), False
        if isinstance(key, Enum):
            return self.key(key.value)
        if key is None:
            return "null", False
        if isinstance(key, bool):
            return ("true" if key else "false"), False
        if isinstance(key, int):
            return self.int_text(int(key), _pointer(self.parts[:-1])), False
        if isinstance(key, float):
            if math.isfinite(key):
                return float.__repr__(key), False
            if self.non_finite == "error":
                raise self.fail(
                    f"key {key!r} in the object {_where(_pointer(self.parts[:-1]))} is not a "
                    "finite number, which JSON cannot hold; use a str key or "
                    "PayloadPolicy(non_finite='null')",
                    _pointer(self.parts[:-1]),
                )
            return "null", True
        if isinstance(key, UUID):
            return str(key), False
        raise self.fail(
            f"key {_show(key)} ({_type_name(key)}) in the object "
            f"{_where(_pointer(self.parts[:-1]))} cannot be a JSON key; convert it to a str "
            "first (int, float, bool, None, UUID and Enum keys are converted automatically)",
            _pointer(self.parts[:-1]),
        )

    def is_secret(self, key: str) -> bool:
        cache = self.secret_cache
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = _normalize_key(key).endswith(self.suffixes)
        return hit

    def text(self, text: str, *, scan: bool = True) -> str:
        if "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None):
            text, _ = self.repair(text, is_key=False)
            self.note_replaced()
        redacted = False
        masker = self.masker
        if masker is not None and scan and len(text) >= masker.min_length:
            masked = masker(text)
            if masked is not text and masked != text:
                text = masked
                redacted = True
        redactor = self.redactor
        if redactor is not None:
            new = redactor(_pointer(self.parts), text)
            if new is not text:
                if type(new) is not str:
                    raise ConfigurationError(
                        f"PayloadPolicy.redactor returned a {_type_name(new)} for the string "
                        f"{_where(_pointer(self.parts))}; it must return a str (the text "
                        "itself to keep it)"
                    )
                if new != text:
                    if "\x00" in new or (not new.isascii() and _SURROGATE.search(new) is not None):
                        new, _ = self.repair(new, is_key=False)
                        self.note_replaced()
                    text = new
                    redacted = True
        if redacted:
            self.redacted.append(_pointer(self.parts))
        return text

    def repair(self, text: str, *, is_key: bool) -> tuple[str, bool]:
        """Apply the ``nul`` and ``surrogates`` rules; the flag says whether text changed."""
        what = "key" if is_key else "string"
        path = _pointer(self.parts[:-1] if is_key else self.parts)
        where = f"in the object {_where(path)}" if is_key else _where(path)
        changed = False
        if "\x00" in text:
            if self.nul == "error":
                raise self.fail(
                    f"{what} {_show(text)} {where} contains NUL (\\u0000), which PostgreSQL "
                    "JSONB cannot store; remove it or use PayloadPolicy(nul='replace')",
                    path,
                )
            text = text.replace("\x00", "\ufffd")
            changed = True
        if not text.isascii() and _SURROGATE.search(text) is not None:
            if self.surrogates == "error":
                raise self.fail(
                    f"{what} {_show(text)} {where} contains a lone surrogate, which UTF-8 "
                    "cannot encode; decode the source text correctly or use "
                    "PayloadPolicy(surrogates='replace')",
                    path,
                )
            text = _SURROGATE.sub("\ufffd", text)
            changed = True
        return text, changed

    def not_finite(self, number: float) -> None:
        if self.non_finite == "error":
            raise self.fail(
                f"number {number!r} {_where(_pointer(self.parts))} is not finite, which JSON "
                "cannot hold; store None or a str instead, or use PayloadPolicy(non_finite='null')"
            )
        self.note_replaced()

    def big_int(self, number: int) -> int:
        self.int_text(number, _pointer(self.parts))
        return number

    def int_text(self, number: int, path: str) -> str:
        try:
            text = int.__repr__(number)
        except ValueError:  # over sys.get_int_max_str_digits()
            text = ""
        if not text or len(text.lstrip("-")) > _PG_MAX_INT_DIGITS:
            raise self.fail(
                f"integer {_where(path)} has too many digits to write as JSON (Python's "
                f"int_max_str_digits, or PostgreSQL's {_PG_MAX_INT_DIGITS}); store it as a str",
                path,
            )
        return text
