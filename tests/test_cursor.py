"""Timeline cursors as a client sees them: opaque tokens that resume exactly, or are refused.

A cursor is a ``Page.next_cursor`` value handed back unchanged as ``cursor=``. These tests
pin the token format (a literal token for a fixed position and query), so a change of format
that would break the cursors clients hold fails here, and check that every garbled, altered
or foreign token raises `InvalidCursorError`, never another exception.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Final

import pytest
from hostmodels import HostModels
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from eventlog_persist import UNSCOPED, EventFilter, EventLogReader, EventRecord, Page
from eventlog_persist._read_sql import event_table, timeline_query
from eventlog_persist.exceptions import InvalidCursorError, ValidationError

USER: Final = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
OTHER_USER: Final = uuid.UUID("00000000-0000-4000-8000-0000000000a2")
CHAT: Final = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
OTHER_CHAT: Final = uuid.UUID("00000000-0000-4000-8000-0000000000c2")
PROJECT: Final = uuid.UUID("00000000-0000-4000-8000-0000000000b1")
AGENT: Final = uuid.UUID("00000000-0000-4000-8000-0000000000d1")

T0: Final = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
US: Final = timedelta(microseconds=1)

# Three events share one instant, so the page boundary falls between equal created_at values
# and only the id orders them. Their ids read differently if decoded in another byte order
# (reversed, or little-endian fields), and then sort after TIE_C.
TIE_A: Final = uuid.UUID("0000000a-0000-7000-8000-0000000000aa")
TIE_B: Final = uuid.UUID("0000000b-0000-7000-8000-0000000000bb")
TIE_C: Final = uuid.UUID("0000000c-0000-7000-8000-0000000000cc")

# USER's events in CHAT: (created_at, id). Instants 1 µs, 999 µs, 1 ms and 1.001 ms apart,
# so a cursor that kept milliseconds only would resume at the wrong event.
EVENTS: Final = [
    (T0, uuid.UUID("00000001-0000-7000-8000-000000000001")),
    (T0 + 1 * US, uuid.UUID("00000002-0000-7000-8000-000000000002")),
    (T0 + 999 * US, uuid.UUID("00000003-0000-7000-8000-000000000003")),
    (T0 + 1000 * US, uuid.UUID("00000004-0000-7000-8000-000000000004")),
    (T0 + 1001 * US, TIE_B),
    (T0 + 1001 * US, TIE_C),
    (T0 + 1001 * US, TIE_A),
    (T0 + timedelta(seconds=1), uuid.UUID("00000005-0000-7000-8000-000000000005")),
]
OLDEST_FIRST: Final = sorted(EVENTS)
NEWEST_FIRST: Final = OLDEST_FIRST[::-1]

# The next_cursor of user_timeline(USER, limit=3): the page ends at (T0 + 1001 µs, TIE_B).
PINNED_NEWEST: Final = "AgAGL0apmzPpAAAACwAAcACAAAAAAAAAu50j7BCTBqP0g_9ZzA"
# The next_cursor of user_timeline(USER, order="oldest", limit=5): ends at (T0 + 1001 µs, TIE_A).
PINNED_OLDEST: Final = "AgAGL0apmzPpAAAACgAAcACAAAAAAAAAqrqOCWbkk0d5lVW3Mg"

B64URL: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Format version 2: version byte, big-endian signed microseconds since 1970-01-01 UTC, the
# event id's 16 bytes, then a 12-byte BLAKE2b checksum of those and of the query.
LAYOUT: Final = struct.Struct(">Bq16s")
TAG_BYTES: Final = 12


@dataclass
class Data:
    reader: EventLogReader[Any]
    model: Any


@pytest.fixture
def data(host_engine: Engine, host_models: HostModels) -> Data:
    """Fixed keys, ids and instants, so a page's cursor is the same token on every run."""
    models = host_models
    with Session(host_engine) as session:
        session.add_all([models.User(id=USER), models.User(id=OTHER_USER)])
        session.flush()
        session.add_all(
            [
                models.ChatSession(id=CHAT, user_id=USER),
                models.ChatSession(id=OTHER_CHAT, user_id=OTHER_USER),
                models.UserProject(id=PROJECT, user_id=USER),
                models.UserAgent(id=AGENT, user_id=USER),
            ]
        )
        session.flush()
        session.add_all(
            models.EventLog(
                id=event_id,
                session_id=CHAT,
                user_id=USER,
                project_id=PROJECT if n % 2 else None,
                agent_id=AGENT,
                event_type="tool_call" if n % 3 else "user_message",
                created_at=created_at,
            )
            for n, (created_at, event_id) in enumerate(EVENTS)
        )
        # Another user's events at the same instants: never part of USER's pages.
        session.add_all(
            models.EventLog(
                session_id=OTHER_CHAT,
                user_id=OTHER_USER,
                event_type="user_message",
                created_at=created_at,
            )
            for created_at, _ in EVENTS
        )
        session.commit()
    return Data(EventLogReader(models.EventLog, host_engine), models.EventLog)


def positions(page: Page[Any]) -> list[tuple[datetime, uuid.UUID]]:
    return [(event.created_at, event.id) for event in page.items]


def decoded(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def encoded(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def refused(call: Callable[[], object], match: str) -> InvalidCursorError:
    """Run ``call``; it must raise InvalidCursorError (and nothing else) matching ``match``."""
    with pytest.raises(InvalidCursorError, match=match) as raised:
        call()
    error = raised.value
    assert isinstance(error, ValidationError)
    assert isinstance(error, ValueError)
    assert "next_cursor" in str(error)  # it says what to pass instead
    return error


def refused_token(data: Data, token: Any, match: str) -> InvalidCursorError:
    """``token`` passed back as the cursor of USER's timeline must be refused."""
    return refused(lambda: data.reader.user_timeline(USER, cursor=token), match)


def test_pinned_cursor_of_a_newest_first_page(data: Data) -> None:
    """The token for a fixed position and query never changes within format version 2.

    Clients keep cursors across deploys: if this literal changes (version byte, byte order,
    time unit, checksum, its length, or how the query is described), cursors issued by the
    previous release stop working. Such a change must bump the version byte (old tokens
    are then refused with InvalidCursorError) and update this literal and docs/reading.md.
    """
    page = data.reader.user_timeline(USER, limit=3)
    assert positions(page) == NEWEST_FIRST[:3]
    assert page.next_cursor == PINNED_NEWEST


def test_pinned_cursor_of_an_oldest_first_page(data: Data) -> None:
    page = data.reader.user_timeline(USER, order="oldest", limit=5)
    assert positions(page) == OLDEST_FIRST[:5]
    assert page.next_cursor == PINNED_OLDEST


def test_pinned_newest_first_cursor_resumes_within_a_tie_of_equal_instants(data: Data) -> None:
    """A cursor issued earlier, handed back, resumes right after (T0 + 1001 µs, TIE_B)."""
    page = data.reader.user_timeline(USER, cursor=PINNED_NEWEST)
    assert positions(page) == NEWEST_FIRST[3:]
    assert [event.id for event in page.items][:2] == [TIE_A, EVENTS[3][1]]
    assert page.next_cursor is None
    # The page size is not part of the query: a cursor may continue with another limit.
    page = data.reader.user_timeline(USER, limit=2, cursor=PINNED_NEWEST)
    assert positions(page) == NEWEST_FIRST[3:5]


def test_pinned_oldest_first_cursor_resumes_within_a_tie_of_equal_instants(data: Data) -> None:
    page = data.reader.user_timeline(USER, order="oldest", cursor=PINNED_OLDEST)
    assert positions(page) == OLDEST_FIRST[5:]
    assert [event.id for event in page.items] == [TIE_B, TIE_C, EVENTS[-1][1]]
    assert page.next_cursor is None


def test_pinned_cursor_layout_is_format_version_2(data: Data) -> None:
    """What the pinned token holds, byte by byte: the contract of format version 2."""
    query_key = timeline_query(event_table(data.model), column="user_id", key=USER).query_key
    raw = decoded(PINNED_NEWEST)
    assert encoded(raw) == PINNED_NEWEST
    assert len(raw) == LAYOUT.size + TAG_BYTES == 37
    body, tag = raw[: LAYOUT.size], raw[LAYOUT.size :]
    version, micros, id_bytes = LAYOUT.unpack(body)
    assert version == 2
    assert micros == (T0 + 1001 * US - datetime(1970, 1, 1, tzinfo=UTC)) // US
    assert micros % 1000 == 1
    assert id_bytes == TIE_B.bytes
    assert tag == hashlib.blake2b(body + b"\0" + query_key.encode(), digest_size=12).digest()


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_pages_resume_exactly_across_microseconds_and_id_ties(data: Data, order: Any) -> None:
    """With every page size, following cursors returns each event once, in order."""
    expected = NEWEST_FIRST if order == "newest" else OLDEST_FIRST
    for limit in range(1, len(EVENTS) + 1):
        seen: list[EventRecord[Any]] = []
        cursor = None
        for _ in range(len(EVENTS) + 1):
            page = data.reader.user_timeline(USER, order=order, limit=limit, cursor=cursor)
            seen.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert [(event.created_at, event.id) for event in seen] == expected, limit


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("A", id="one-char"),
        pytest.param("é", id="non-ascii"),
        pytest.param("!!!", id="not-base64"),
        pytest.param("", id="empty"),
        pytest.param("AAAA" * 20, id="too-long"),
        pytest.param("AgAG", id="too-short"),
        pytest.param("  \n", id="whitespace"),
    ],
)
def test_a_token_that_is_not_a_cursor_is_refused(data: Data, token: str) -> None:
    refused_token(data, token, r"Page\.next_cursor")


def test_a_cursor_of_the_wrong_type_is_refused(data: Data) -> None:
    for token in (PINNED_NEWEST.encode(), 42, [PINNED_NEWEST]):
        refused_token(data, token, "must be a str")


def test_a_truncated_or_extended_cursor_is_refused(data: Data) -> None:
    for token in (
        PINNED_NEWEST[:-1],
        PINNED_NEWEST[:-4],
        PINNED_NEWEST[: len(PINNED_NEWEST) // 2],
        PINNED_NEWEST + "A",
        PINNED_NEWEST + "AAAA",
    ):
        refused_token(data, token, "cursor")


def test_a_cursor_with_its_last_character_changed_is_refused(data: Data) -> None:
    """Every other base64url character in the last place is refused, even the ones that
    decode to the same bytes (the last character carries 4 unused bits)."""
    for token in (PINNED_NEWEST, PINNED_OLDEST):
        for char in B64URL.replace(token[-1], ""):
            refused_token(data, token[:-1] + char, "cursor")


def test_another_spelling_of_the_same_bytes_is_refused(data: Data) -> None:
    """Base64 reads these as the pinned token's bytes; only the token itself is a cursor."""
    assert "_" in PINNED_NEWEST
    for token, message in (
        (PINNED_NEWEST.replace("_", "/"), "altered"),
        # Of another length: refused before it is decoded.
        (PINNED_NEWEST + "==", "not a cursor made by this version"),
        (PINNED_NEWEST[:10] + "!!!!" + PINNED_NEWEST[10:], "not a cursor made by this version"),
        (PINNED_NEWEST[:10] + "\n" * 4 + PINNED_NEWEST[10:], "not a cursor made by this version"),
    ):
        assert decoded(token) == decoded(PINNED_NEWEST)
        refused_token(data, token, message)


def test_a_cursor_with_a_byte_flipped_is_refused(data: Data) -> None:
    raw = decoded(PINNED_NEWEST)
    for index in range(len(raw)):
        for bit in (0x01, 0x80):
            flipped = bytearray(raw)
            flipped[index] ^= bit
            token = encoded(bytes(flipped))
            match = "not a cursor made by this version" if index == 0 else "altered"
            refused_token(data, token, match)


def test_a_cursor_of_another_format_version_is_refused(data: Data) -> None:
    """A token of format version 1 or 3 is refused even when its checksum is right."""
    query_key = timeline_query(event_table(data.model), column="user_id", key=USER).query_key

    def token_of_version(version: int) -> str:
        body = bytes([version]) + decoded(PINNED_NEWEST)[1 : LAYOUT.size]
        tag = hashlib.blake2b(body + b"\0" + query_key.encode(), digest_size=TAG_BYTES)
        return encoded(body + tag.digest())

    # Built this way with the current version, it is the pinned token itself.
    assert token_of_version(2) == PINNED_NEWEST
    for version in (0, 1, 3, 255):
        token = token_of_version(version)
        refused_token(data, token, "not a cursor made by this version of eventlog_persist")


def test_a_cursor_from_another_query_is_refused(data: Data) -> None:
    """A cursor belongs to one scope, filter and order; any other query refuses it."""
    reader = data.reader
    since = EventFilter(since=T0)
    other_calls: list[Callable[[str], object]] = [
        lambda cursor: reader.user_timeline(OTHER_USER, cursor=cursor),
        lambda cursor: reader.user_timeline(USER, project_id=PROJECT, cursor=cursor),
        lambda cursor: reader.user_timeline(USER, order="oldest", cursor=cursor),
        lambda cursor: reader.user_timeline(USER, filters=since, cursor=cursor),
        lambda cursor: reader.user_timeline(
            USER, filters=EventFilter(event_types=frozenset({"tool_call"})), cursor=cursor
        ),
        lambda cursor: reader.project_timeline(PROJECT, cursor=cursor),
        lambda cursor: reader.project_timeline(PROJECT, user_id=USER, cursor=cursor),
        lambda cursor: reader.session_timeline(CHAT, user_id=USER, cursor=cursor),
        lambda cursor: reader.session_timeline(CHAT, user_id=UNSCOPED, cursor=cursor),
        lambda cursor: reader.agent_timeline(AGENT, user_id=USER, cursor=cursor),
    ]
    for call in other_calls:
        refused(partial(call, PINNED_NEWEST), "belongs to another query")
    # The other way round: a cursor of a filtered query does not fit the unfiltered one.
    filtered = reader.user_timeline(USER, filters=since, limit=3).next_cursor
    assert filtered is not None
    assert reader.user_timeline(USER, filters=since, cursor=filtered).items
    refused(lambda: reader.user_timeline(USER, cursor=filtered), "belongs to another query")


def test_the_error_quotes_a_short_token_whole_and_a_long_one_cut_at_24_characters(
    data: Data,
) -> None:
    # The message must let an operator recognise the token, without pasting a whole one.
    short = "B" * 24
    quoted = str(refused_token(data, short, "not a cursor"))
    assert repr(short) in quoted
    assert "..." not in quoted.split(" is not a cursor")[0]
    long = "C" * 25
    message = str(refused_token(data, long, "not a cursor"))
    assert f"{'C' * 24!r}..." in message
    assert repr(long) not in message


def forged(position: tuple[datetime, uuid.UUID], query_key: str) -> str:
    """A cursor built by hand, as anyone can: the format is public and the tag a checksum."""
    micros = (position[0] - datetime(1970, 1, 1, tzinfo=UTC)) // US
    body = LAYOUT.pack(2, micros, position[1].bytes)
    return encoded(
        body + hashlib.blake2b(body + b"\0" + query_key.encode(), digest_size=12).digest()
    )


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_a_forged_cursor_at_a_bound_tells_nothing_of_events_outside_the_query(
    data: Data, host_engine: Engine, host_models: HostModels, order: Any
) -> None:
    """A position at a bound resumes from the stored time of the event it names, but only
    of an event the query returns: naming another user's event in a shared agent, or one
    of the user's own that the filter leaves out, starts the page at the bound."""
    with Session(host_engine) as session:
        theirs = host_models.EventLog(
            session_id=OTHER_CHAT,
            user_id=OTHER_USER,
            agent_id=AGENT,
            event_type="user_message",
            created_at=T0 + 500 * US,  # between USER's events
        )
        session.add(theirs)
        session.commit()
        their_id = theirs.id
    filtered_out = EVENTS[1][1]  # a tool_call, stored at T0 + 1 µs
    table = event_table(data.model)
    bound = (
        datetime.max.replace(tzinfo=UTC) if order == "newest" else datetime.min.replace(tzinfo=UTC)
    )
    messages = EventFilter(event_types=frozenset({"user_message"}))
    calls: list[tuple[uuid.UUID, Callable[..., Page[Any]], dict[str, Any]]] = [
        (
            their_id,
            data.reader.agent_timeline,
            {"agent_id": AGENT, "user_id": USER},
        ),
        (
            filtered_out,
            data.reader.user_timeline,
            {"user_id": USER, "filters": messages},
        ),
    ]
    for event_id, timeline, arguments in calls:
        column = "agent_id" if "agent_id" in arguments else "user_id"
        options = {name: value for name, value in arguments.items() if name != column}
        query_key = timeline_query(
            table, column=column, key=arguments[column], order=order, **options
        ).query_key
        everything = timeline(arguments[column], order=order, **options)
        resumed = timeline(
            arguments[column], order=order, cursor=forged((bound, event_id), query_key), **options
        )
        assert positions(resumed) == positions(everything)
        assert everything.items
