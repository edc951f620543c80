"""The canonical leaf: Python and the database's functions produce the same bytes, whatever
the session settings; the documented example holds."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from auditkit import add_session, audited_engine, audited_template, leaves, tombstones
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgserver import ServerInfo
from sqlalchemy import Connection, Engine, text

from eventlog_persist import audit_leaf_hash
from eventlog_persist._audit_leaf import LEAF_COLUMNS, canonical_json, leaf_document
from eventlog_persist.exceptions import ValidationError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit.md"
# The columns a row may leave NULL.
LEAF_OPTIONAL = tuple(
    column
    for column in LEAF_COLUMNS
    if column not in ("id", "session_id", "user_id", "event_type", "payload", "created_at")
)

SESSION_SETTINGS = st.fixed_dictionaries(
    {
        "TimeZone": st.sampled_from(
            ["UTC", "Asia/Kathmandu", "America/St_Johns", "Pacific/Kiritimati", "-11:30"]
        ),
        "DateStyle": st.sampled_from(["ISO, MDY", "SQL, DMY", "German", "Postgres, YMD"]),
        "extra_float_digits": st.sampled_from(["-15", "0", "1", "3"]),
        "IntervalStyle": st.sampled_from(["postgres", "iso_8601"]),
        "bytea_output": st.sampled_from(["hex", "escape"]),
        "standard_conforming_strings": st.sampled_from(["on", "off"]),
    }
)
# PostgreSQL's text holds no NUL; Python's str holds lone surrogates no row can hold.
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=12)
NUMBERS = (
    st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0.0, -0.0, 1e-7, 1e16, 1e300, 5e-324, 1.5, 100.0, -2.5e-10])
)
JSON = st.recursive(
    st.none() | st.booleans() | NUMBERS | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=25,
)
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
CREATED_AT = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=OFFSETS
)
KEYS = st.uuids() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
ROWS = st.fixed_dictionaries(
    {
        "id": st.uuids(),
        "session_id": KEYS,
        "user_id": KEYS,
        "project_id": st.none() | KEYS,
        "agent_id": st.none() | KEYS,
        "event_type": TEXT,
        "payload": JSON,
        "created_at": CREATED_AT,
        "error_code": st.none() | TEXT,
        "tool_name": st.none() | TEXT,
        "approval_status": st.none() | TEXT,
        "request_id": st.none() | TEXT,
        "trace_id": st.none() | TEXT,
        "span_id": st.none() | TEXT,
        "xid": st.none() | st.integers(min_value=3, max_value=2**63 - 1),
    }
)

SQL_LEAF = text(
    "SELECT event_log_canonical_json(CAST(:payload AS jsonb)), CAST(:payload AS jsonb)::text, "
    "event_log_leaf(CAST(:id AS uuid), :session_id, :user_id, :project_id, :agent_id, "
    ":event_type, CAST(:payload AS jsonb), :created_at, :error_code, :tool_name, "
    ":approval_status, :request_id, :trace_id, :span_id, CAST(:xid AS xid8))"
)


@pytest.fixture(scope="module")
def template(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("audit")) as name:
        yield name


@pytest.fixture(scope="module")
def db(pg_server: ServerInfo, template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, template) as engine:
        yield engine


def apply(connection: Connection, session: dict[str, str]) -> None:
    for name, value in session.items():
        connection.execute(
            text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value}
        )


def as_text(key: Any) -> str | None:
    return None if key is None else str(key)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(row=ROWS, session=SESSION_SETTINGS)
def test_python_and_sql_leaves_are_byte_identical(
    db: Engine, row: dict[str, Any], session: dict[str, str]
) -> None:
    payload = json.dumps(row["payload"])  # what the writers send (psycopg, SQLAlchemy JSON)
    params = {
        **row,
        "id": str(row["id"]),
        "payload": payload,
        "xid": as_text(row["xid"]),
        **{key: as_text(row[key]) for key in ("session_id", "user_id", "project_id", "agent_id")},
    }
    with db.connect() as connection:
        apply(connection, session)
        canonical, stored, leaf = connection.execute(SQL_LEAF, params).one()
        connection.rollback()
    # The payload as the database stores it (its text, exact) and as the writer's value (a
    # bare string as its JSON text: a str is always taken as jsonb text).
    value = payload if isinstance(row["payload"], str) else row["payload"]
    assert canonical == canonical_json(stored) == canonical_json(value)
    assert bytes(leaf) == audit_leaf_hash({**row, "payload": stored})
    assert bytes(leaf) == audit_leaf_hash({**row, "payload": value})


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=JSON)
def test_the_databases_flat_canonical_json_is_its_nested_one(db: Engine, payload: Any) -> None:
    """evlaudit_0005: the one without recursion, run past the stack's depth, writes every
    payload as the one that recurses (and as Python) does."""
    with db.connect() as connection:
        nested, flat, stored = connection.execute(
            text(
                "SELECT event_log_canonical_json_nested(CAST(:p AS jsonb)), "
                "event_log_canonical_json_flat(CAST(:p AS jsonb)), CAST(:p AS jsonb)::text"
            ),
            {"p": json.dumps(payload)},
        ).one()
    assert flat == nested == canonical_json(stored)


def test_the_leaf_functions_run_in_a_query_forced_parallel(db: Engine) -> None:
    """evlaudit_0005's EXCEPTION block opens a subtransaction, which PostgreSQL before 17
    refuses in a parallel worker: the functions are marked PARALLEL UNSAFE."""
    with db.connect() as connection:
        version = connection.scalar(text("SHOW server_version_num"))
        setting = "debug_parallel_query" if int(version) >= 160000 else "force_parallel_mode"
        connection.execute(text(f"SET {setting} = on"))
        rows = connection.execute(
            text(
                "SELECT event_log_canonical_json(jsonb_build_object('b', g, 'a', 1)), "
                "length(event_log_leaf(gen_random_uuid(), '1', '2', NULL, NULL, 'x', "
                "jsonb_build_object('g', g), now(), NULL, NULL, NULL, NULL, NULL, NULL, NULL)) "
                "FROM generate_series(1, 3) AS g"
            )
        ).all()
    assert [tuple(row) for row in rows] == [(f'{{"a":1,"b":{g}}}', 32) for g in (1, 2, 3)]


def test_an_event_nested_past_the_stack_is_erased_with_its_leaf(db: Engine) -> None:
    """Its leaf could not be computed in the database ("stack depth limit exceeded"), so such
    a row, which another tool may store, could be neither erased nor purged."""
    deep = '{"b": 1.50, "a": ' * 5000 + '[0.1, 2, {}, [], "\\u00e9"]' + "}" * 5000
    with db.begin() as connection:
        canonical = connection.execute(
            text("SELECT event_log_canonical_json(CAST(:p AS jsonb))"), {"p": deep}
        ).scalar_one()
        assert canonical == canonical_json(deep)
        ids = add_session(connection, events=1)
        connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload) "
                "VALUES (gen_random_uuid(), :s, :u, 'imported', CAST(:p AS jsonb))"
            ),
            {"s": ids["session"], "u": ids["user"], "p": deep},
        )
        before = leaves(connection, "user_id = :u", u=ids["user"])
    with db.begin() as connection:
        connection.execute(text("DELETE FROM users WHERE id = :u"), {"u": ids["user"]})
    with db.connect() as connection:
        stones = {stone["event_id"]: stone["leaf"] for stone in tombstones(connection)}
    assert len(before) == 2
    assert {key: stones[key] for key in before} == before


@pytest.mark.parametrize(
    "session",
    [
        {"TimeZone": "UTC", "DateStyle": "ISO, MDY", "extra_float_digits": "1"},
        {"TimeZone": "Asia/Kathmandu", "DateStyle": "SQL, DMY", "extra_float_digits": "-15"},
        {"TimeZone": "America/St_Johns", "DateStyle": "German", "extra_float_digits": "3"},
    ],
)
def test_tombstones_hold_the_python_leaf_whatever_the_session(
    pg_server: ServerInfo, template: str, session: dict[str, str]
) -> None:
    with audited_engine(pg_server, template) as engine:
        with engine.begin() as connection:
            ids = add_session(connection, events=3)
            before = leaves(connection)
        with engine.begin() as connection:
            apply(connection, session)
            connection.execute(text("DELETE FROM users WHERE id = :u"), {"u": ids["user"]})
        with engine.connect() as connection:
            stones = tombstones(connection)
    assert {stone["event_id"]: stone["leaf"] for stone in stones} == before


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"b": 1, "a": [1.0, -0.0, "x"]}, '{"a":[1.0,0.0,"x"],"b":1}'),
        ('{"b": 1.50, "a": 1e3, "c": -0, "d": 1E-7, "e": 2.5e+2}',
         '{"a":1000,"b":1.50,"c":0,"d":0.0000001,"e":250}'),
        ({"é": 1, "z": 2, "Z": 3, "😀": 4, "\uffff": 5}, '{"Z":3,"z":2,"é":1,"\uffff":5,"😀":4}'),
        ('"\\u001f\\n\\"\\\\/\\u2028"', '"\\u001f\\n\\"\\\\/\u2028"'),
        ({"big": 10**30, "float": 1e16, "tiny": 5e-324}, None),
        # What json.dumps writes for such floats: exponents whose repr is the same text.
        ('{"a": 1e+16, "b": 1e-05, "c": 1.5e+300}', None),
        ([], "[]"),
        ({}, "{}"),
    ],
)  # fmt: skip
def test_canonical_json_examples(db: Engine, value: Any, expected: str | None) -> None:
    payload = value if isinstance(value, str) else json.dumps(value)
    with db.connect() as connection:
        sql = connection.execute(
            text("SELECT event_log_canonical_json(CAST(:p AS jsonb))"), {"p": payload}
        ).scalar_one()
    assert canonical_json(value) == sql
    if expected is not None:
        assert sql == expected


def test_the_documented_example_leaf() -> None:
    """docs/audit.md shows a row, its leaf document and its hash: they are this code's."""
    doc = DOCS.read_text()
    document = re.search(r"```json\n(\{\"agent_id\".*?)\n```", doc, re.S)
    digest = re.search(r"leaf hash: `([0-9a-f]{64})`", doc)
    assert document
    assert digest
    row = {
        "id": uuid.UUID("0193a4f0-5c1e-7d2a-9b3c-4d5e6f708192"),
        "session_id": uuid.UUID("5b0c4a3e-1f2d-4e6f-8a9b-0c1d2e3f4a5b"),
        "user_id": 42,
        "project_id": None,
        "agent_id": None,
        "event_type": "tool_call",
        "payload": '{"tool": "search", "args": {"q": "café", "limit": 10}, "score": 0.50}',
        "created_at": datetime(2026, 12, 3, 10, 15, 0, 123456, tzinfo=UTC),
        "error_code": None,
        "tool_name": "search",
        "approval_status": None,
        "request_id": "req-1",
        "trace_id": None,
        "span_id": None,
        "xid": 7781,
    }
    assert leaf_document(row).decode() == document.group(1)
    assert audit_leaf_hash(row).hex() == digest.group(1)


def nested_past_the_recursion_limit() -> list[Any]:
    value: list[Any] = []
    for _ in range(sys.getrecursionlimit() + 10):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"created_at": datetime(2026, 1, 1)}, "created_at must be a time-zone aware datetime"),
        (
            {"created_at": datetime.min.replace(tzinfo=timezone(timedelta(hours=3)))},
            "created_at=0001-01-01T00:00:00+03:00 is before year 1 or after 9999 once moved",
        ),
        ({"session_id": "abc"}, "session_id must be a UUID, an int or None"),
        ({"payload": "not json"}, "a payload given as str must be its jsonb text"),
        ({"payload": {"x": float("nan")}}, "a payload number must be finite"),
        ({"payload": {1: 2}}, "a payload key must be a str"),
        ({"payload": {"x": {1, 2}}}, "a payload value must be JSON"),
        ({"xid": "12"}, "xid must be an int or None"),
        ({"tool_name": 3}, "tool_name must be a str or None"),
        # Raised by Python's codecs, parser and int conversion before: now named.
        ({"event_type": "a\udc80"}, "this row has no leaf: 'utf-8' codec can't encode"),
        ({"payload": {"a": "\udc80"}}, "holds no lone surrogate, so no stored row"),
        ({"payload": '{"a": "\\udc80"}'}, "holds no lone surrogate, so no stored row"),
        ({"payload": b"\xff"}, "no canonical JSON: 'utf-8' codec can't decode byte 0xff"),
        ({"payload": {"a": 10**5000}}, "Exceeds the limit (4300 digits)"),
    ],
)
def test_values_no_row_holds_are_refused(change: dict[str, Any], message: str) -> None:
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "session_id": 1,
        "user_id": 1,
        "project_id": None,
        "agent_id": None,
        "event_type": "x",
        "payload": {},
        "created_at": datetime.now(UTC),
        "error_code": None,
        "tool_name": None,
        "approval_status": None,
        "request_id": None,
        "trace_id": None,
        "span_id": None,
        "xid": None,
    }
    with pytest.raises(ValidationError, match=re.escape(message)):
        audit_leaf_hash({**row, **change})
    with pytest.raises(ValidationError, match="the row lacks the columns xid"):
        audit_leaf_hash({key: value for key, value in row.items() if key != "xid"})


def test_decimal_payload_values_keep_their_scale() -> None:
    assert canonical_json({"a": Decimal("1.50"), "b": Decimal("-0.00"), "c": Decimal("1E+2")}) == (
        '{"a":1.50,"b":0.00,"c":100}'
    )


@settings(max_examples=300, deadline=None)
@given(row=ROWS)
def test_the_verifiers_text_path_gives_the_same_leaf(row: dict[str, Any]) -> None:
    """The verifier reads ids, keys and xid as ::text and the payload as its jsonb text."""
    from eventlog_persist._audit_leaf import LEAF_COLUMNS, leaf_hash_of, leaf_hash_of_text

    payload = json.dumps(row["payload"])
    expected = audit_leaf_hash({**row, "payload": payload})
    texts = {
        name: None if row[name] is None else str(row[name])
        for name in ("id", "session_id", "user_id", "project_id", "agent_id", "xid")
    }
    values = [texts.get(name, payload if name == "payload" else row[name]) for name in LEAF_COLUMNS]
    assert leaf_hash_of_text(values) == expected
    assert leaf_hash_of(values, as_text=True) == expected
    # created_at as the verifier reads it: UTC text, YYYY-MM-DD HH:MM:SS.ffffff.
    utc = row["created_at"].astimezone(UTC).isoformat(sep=" ", timespec="microseconds")[:26]
    values[LEAF_COLUMNS.index("created_at")] = utc
    assert leaf_hash_of_text(values) == expected


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(created_at=CREATED_AT, session=SESSION_SETTINGS)
def test_the_verifiers_created_at_text_ignores_the_session(
    db: Engine, created_at: datetime, session: dict[str, str]
) -> None:
    """The verifier reads created_at as _UTC_TEXT: the same text whatever the session."""
    from eventlog_persist._audit_chain import _UTC_TEXT, _utc_datetime

    query = text("SELECT " + _UTC_TEXT.replace("created_at", "CAST(:t AS timestamptz)"))
    with db.connect() as connection:
        apply(connection, session)
        read = connection.execute(query, {"t": created_at}).scalar_one()
        connection.rollback()
    assert read == created_at.astimezone(UTC).isoformat(sep=" ", timespec="microseconds")[:26]
    assert _utc_datetime(read) == created_at


def _plain(value: Any) -> bool:
    """No float: what the msgspec path takes."""
    if isinstance(value, float):
        return False
    if isinstance(value, dict):
        return all(_plain(item) for item in value.values())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return True


def _exact(text_: str) -> str:
    from eventlog_persist._audit_leaf import _canonical

    out: list[str] = []
    _canonical(json.loads(text_, parse_float=Decimal, parse_int=Decimal), out)
    return "".join(out)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=JSON)
def test_the_msgspec_path_matches_the_database_or_declines(db: Engine, payload: Any) -> None:
    """msgspec's canonical JSON of the stored text is the database function's, byte for byte,
    for every payload without floats; it declines the others."""
    from eventlog_persist._audit_leaf import _quick_canonical

    with db.connect() as connection:
        canonical, stored = connection.execute(
            text("SELECT event_log_canonical_json(CAST(:p AS jsonb)), CAST(:p AS jsonb)::text"),
            {"p": json.dumps(payload)},
        ).one()
    quick = _quick_canonical(stored)
    if _plain(payload):
        assert quick is not None
    if quick is not None:
        assert quick == canonical.encode()
    assert canonical_json(stored) == canonical


@settings(max_examples=500, deadline=None)
@given(payload=JSON)
def test_the_msgspec_path_matches_the_exact_path(payload: Any) -> None:
    from eventlog_persist._audit_leaf import _quick_canonical

    for text_ in (json.dumps(payload), json.dumps(payload, ensure_ascii=False)):
        quick = _quick_canonical(text_)
        assert (quick is not None) == _plain(payload)
        if quick is not None:
            assert quick.decode() == _exact(text_)


def test_the_msgspec_path_writes_every_code_point_as_jsonb_does() -> None:
    from eventlog_persist._audit_leaf import _quick_canonical, _string

    every = "".join(chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF)
    for chunk in (every[i : i + 4096] for i in range(0, len(every), 4096)):
        document = {chunk: chunk, chunk[:7]: [chunk[-9:]]}
        quick = _quick_canonical(json.dumps(document))
        assert quick is not None
        assert quick.decode() == _exact(json.dumps(document))
        assert quick.decode().startswith("{" + _string(min(chunk, chunk[:7])))


@pytest.mark.parametrize(
    ("payload", "taken"),
    [
        ('{"a": 1.50}', False),  # a float whose repr is not its jsonb text
        ('{"a": 0.1, "b": [1, {"c": 2.0}]}', False),  # any float: the exact paths
        ('{"a": 18446744073709551615, "b": -9223372036854775808}', True),  # 64 bits
        ('{"a": 18446744073709551616, "b": -9223372036854775809}', True),  # beyond
        ('{"a": 1234567890123456789012345678901234567890}', True),
        (r'{"\u00e9\u001f": "\"\\\b\f\n\r\t\u007f\u2028 \ud83d\ude00"}', True),
        ("[" * 300 + "1" + "]" * 300, True),
        # Python 3.13's msgspec reads this depth, 3.11's does not: either way, exact.
        ("[" * 5000 + "1" + "]" * 5000, None),
        (r'"\ud800"', False),  # a lone surrogate: no jsonb holds one
        ("[1, 2", False),  # not JSON
    ],
)
def test_the_msgspec_path_declines_what_it_cannot_write_exactly(
    payload: str, taken: bool | None
) -> None:
    from eventlog_persist._audit_leaf import _quick_canonical

    quick = _quick_canonical(payload)
    if taken is None:  # past msgspec's depth on some versions; the input is canonical already
        assert quick is None or quick.decode() == payload
        assert canonical_json(payload) == payload
        return
    assert (quick is not None) == taken
    if quick is not None:
        assert quick.decode() == canonical_json(payload) == _exact(payload)


def test_a_payload_nested_past_the_recursion_limit_has_its_canonical_json() -> None:
    """Another tool may store one (the writers refuse it): its leaf is computed all the same,
    given as a value or as jsonb text, on every path (numbers with a fraction go the exact
    way, keys are sorted at every level)."""
    depth = sys.getrecursionlimit() + 10
    lists = depth + 1  # the innermost, empty list too
    assert canonical_json(nested_past_the_recursion_limit()) == "[" * lists + "]" * lists
    text = '{"b": 1.50, "a": ' * depth + "[0.1, 2]" + "}" * depth
    assert canonical_json(text) == '{"a":' * depth + "[0.1,2]" + ',"b":1.50}' * depth
    assert canonical_json(text.encode()) == canonical_json(text)


def test_a_payload_inside_itself_is_refused_and_a_shared_one_is_not() -> None:
    """A cycle used to raise RecursionError; written without recursion it would never end."""
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = [cyclic]
    with pytest.raises(ValidationError, match="a payload value contains itself"):
        canonical_json(cyclic)
    with pytest.raises(ValidationError, match="a payload value contains itself"):
        audit_leaf_hash(
            {
                "id": uuid.uuid4(),
                **dict.fromkeys(("session_id", "user_id"), 1),
                **dict.fromkeys(LEAF_OPTIONAL, None),
                "event_type": "x",
                "payload": cyclic,
                "created_at": datetime.now(UTC),
            }
        )
    shared = [1, {"b": 2}]
    assert canonical_json({"x": shared, "y": [shared, shared]}) == (
        '{"x":[1,{"b":2}],"y":[[1,{"b":2}],[1,{"b":2}]]}'
    )


def test_a_nan_payload_is_refused() -> None:
    with pytest.raises(ValidationError, match="must be finite"):
        canonical_json('{"a": NaN}')
    with pytest.raises(ValidationError, match="this payload has no canonical JSON: 'utf-8'"):
        canonical_json(b"\xff")


@pytest.mark.parametrize(
    "payload",
    [
        '{"a": -0.0}',
        '{"a": 1.50, "b": 0.1}',
        '{"a": 1e16}',
        '{"a": 1e+16, "b": 1e-05}',
        '{"é": 1, "e": [1.0, -0, 2]}',
        "[]",
    ],
)
def test_the_fast_canonical_path_matches_the_exact_one(payload: str) -> None:
    from eventlog_persist._audit_leaf import _canonical

    out: list[str] = []
    _canonical(json.loads(payload, parse_float=Decimal, parse_int=Decimal), out)
    assert canonical_json(payload) == "".join(out)


# --- the verifier's paths: rows read as text ---------------------------------------------

TEXT_ROW = (
    "0193a4f0-5c1e-7d2a-9b3c-4d5e6f708192",  # id, as id::text
    "5b0c4a3e-1f2d-4e6f-8a9b-0c1d2e3f4a5b",
    "42",
    None,
    None,
    "tool_call",
    '{"tool": "search", "score": 0.50}',
    datetime(2026, 12, 3, 10, 15, 0, 123456, tzinfo=UTC),
    None,
    "search",
    None,
    "req-1",
    None,
    None,
    "7781",  # xid, as xid::text
)


def test_the_text_paths_give_the_leaf_of_the_typed_row() -> None:
    from eventlog_persist._audit_leaf import leaf_hash_of, leaf_hash_of_text

    typed = list(TEXT_ROW)
    typed[0] = uuid.UUID(TEXT_ROW[0])
    typed[1] = uuid.UUID(TEXT_ROW[1])
    typed[2] = 42
    typed[-1] = 7781
    expected = leaf_hash_of(typed)  # as_text=False is the default: typed values
    assert leaf_hash_of(TEXT_ROW, as_text=True) == expected
    assert leaf_hash_of_text(TEXT_ROW) == expected
    as_read = list(TEXT_ROW)
    as_read[7] = "2026-12-03 10:15:00.123456"  # the verifier's UTC text
    assert leaf_hash_of_text(as_read) == expected
    not_text = list(TEXT_ROW)
    not_text[6] = {"tool": "search", "score": 0.5}  # the checked path takes a value too
    assert leaf_hash_of_text(not_text) == leaf_hash_of(not_text, as_text=True)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (7, datetime(2026, 12, 3, 10, 15), "created_at must be a time-zone aware datetime"),
        (7, "2026-12-03T10:15:00+00:00", "created_at must be a time-zone aware datetime"),
        (5, 3, "event_type must be a str or None"),
    ],
)
def test_the_text_paths_refuse_what_a_row_read_as_text_cannot_hold(
    column: int, value: Any, message: str
) -> None:
    from eventlog_persist._audit_leaf import leaf_hash_of, leaf_hash_of_text

    row = list(TEXT_ROW)
    row[column] = value
    for leaf in (leaf_hash_of_text, lambda values: leaf_hash_of(values, as_text=True)):
        with pytest.raises(ValidationError, match=message):
            leaf(row)


@pytest.mark.parametrize(("column", "value"), [(0, uuid.UUID(TEXT_ROW[0])), (14, 7781)])
def test_the_checked_text_path_takes_ids_as_text_only(column: int, value: Any) -> None:
    from eventlog_persist._audit_leaf import leaf_hash_of

    row = list(TEXT_ROW)
    row[column] = value
    with pytest.raises(ValidationError, match="id and xid must be text here"):
        leaf_hash_of(row, as_text=True)


def test_typed_values_need_a_uuid_id() -> None:
    from eventlog_persist._audit_leaf import leaf_hash_of

    with pytest.raises(ValidationError, match="id must be a UUID, got '0193a4f0"):
        leaf_hash_of(TEXT_ROW)


@pytest.mark.parametrize("text", ['{"a": 1.5}', '{"a": -1.5}', '{"a": 0.0}', "[2.25, 100]"])
def test_verbatim_floats_take_the_fast_path(text: str) -> None:
    from eventlog_persist._audit_leaf import _fast_canonical

    fast = _fast_canonical(text)
    assert fast is not None
    assert fast == canonical_json(text)
