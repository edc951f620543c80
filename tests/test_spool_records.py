"""The spool's record parser on bytes made by hand: whole, damaged, torn, and the room after.

The replay tests (test_spool.py) go through a writer; these pin each case of the parser the
replay relies on, with the exact offsets it reports.
"""

from __future__ import annotations

import zlib

import pytest

from eventlog_persist._spool import _FRAME, _records


def record(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def damaged(body: bytes) -> bytes:
    """A record whose body changed after its checksum was written (its length holds)."""
    whole = bytearray(record(body))
    whole[-1] ^= 0xFF
    return bytes(whole)


def parsed(data: bytes, limit: int = 100, *, resync: bool = True) -> list[tuple[int, int, bool]]:
    """``(offset, end, whole)`` of each item."""
    return [
        (start, end, body is not None)
        for start, end, body in _records(data, 0, limit, resync=resync)
    ]


BODIES = [b"a" * 10, b"bb" * 7, b"c" * 30, b"d" * 3, b"e" * 21]
RECORDS = [record(body) for body in BODIES]
ENDS = [sum(map(len, RECORDS[: i + 1])) for i in range(len(RECORDS))]
STARTS = [0, *ENDS[:-1]]


def test_whole_records_are_read_with_their_bodies_up_to_the_limit() -> None:
    data = b"".join(RECORDS)
    items = list(_records(data, 0, 100))
    assert [(start, end) for start, end, _ in items] == list(zip(STARTS, ENDS, strict=True))
    assert [bytes(body) for _, _, body in items if body is not None] == BODIES
    assert parsed(data, limit=2) == [(0, ENDS[0], True), (ENDS[0], ENDS[1], True)]
    assert parsed(data, limit=0) == []
    assert [start for start, _, _ in _records(data, ENDS[1], 100)] == STARTS[2:]


@pytest.mark.parametrize("room", [1, 7, 8, 9, 100])
def test_zeros_after_the_last_record_are_room_however_few(room: int) -> None:
    assert parsed(b"".join(RECORDS) + bytes(room)) == [
        (s, e, True) for s, e in zip(STARTS, ENDS, strict=True)
    ]
    assert parsed(bytes(room)) == []


def test_a_body_that_ends_in_zero_bytes_is_a_record_not_room() -> None:
    data = b"".join(RECORDS) + record(b"z\x00\x00\x00")
    assert parsed(data)[-1] == (ENDS[-1], len(data), True)


def test_a_damaged_body_is_skipped_by_its_length_and_the_parse_goes_on() -> None:
    data = RECORDS[0] + damaged(BODIES[1]) + b"".join(RECORDS[2:])
    assert parsed(data) == [
        (0, ENDS[0], True),
        (ENDS[0], ENDS[1], False),
        *[(s, e, True) for s, e in zip(STARTS[2:], ENDS[2:], strict=True)],
    ]


def test_damaged_bodies_in_a_row_are_each_skipped_by_its_length() -> None:
    data = b"".join(damaged(body) for body in BODIES[:4]) + RECORDS[4]
    assert parsed(data) == [
        *[(s, e, False) for s, e in zip(STARTS[:4], ENDS[:4], strict=True)],
        (STARTS[4], ENDS[4], True),
    ]
    # The last one damaged too: the chain ends at the end of the data, or at the room.
    everything = b"".join(damaged(body) for body in BODIES)
    expected = [(s, e, False) for s, e in zip(STARTS, ENDS, strict=True)]
    assert parsed(everything) == expected
    assert parsed(everything + bytes(50)) == expected


@pytest.mark.parametrize("where", ["past the end", "inside the next record", "zero"])
def test_a_damaged_length_skips_to_the_next_whole_record(where: str) -> None:
    second = bytearray(RECORDS[1])
    if where == "past the end":
        second[2] ^= 0x01  # 65,536 bytes more
    elif where == "inside the next record":
        second[0] += 3  # ends 3 bytes into the third record, whose bytes are no frame
    else:
        second[0:4] = bytes(4)
    data = RECORDS[0] + bytes(second) + b"".join(RECORDS[2:])
    assert (
        parsed(data)
        == [
            (0, ENDS[0], True),
            (ENDS[0], ENDS[1], False),  # one stretch, up to the third record
            *[(s, e, True) for s, e in zip(STARTS[2:], ENDS[2:], strict=True)],
        ]
    )
    # Without resync (a writer's own file): the parse ends there, as a torn tail, unless
    # the length still fits (the body is then taken as damaged, by that length).
    own = parsed(data, resync=False)
    assert own[0] == (0, ENDS[0], True)
    if where == "inside the next record":
        assert own[1] == (ENDS[0], ENDS[1] + 3, False)
    else:
        assert own[1:] == [(ENDS[0], -1, False)]


def test_a_stretch_of_zeros_over_records_is_one_damaged_stretch() -> None:
    data = bytearray(b"".join(RECORDS))
    data[STARTS[1] + 2 : ENDS[2] + 2] = bytes(ENDS[2] - STARTS[1])
    assert parsed(bytes(data)) == [
        (0, ENDS[0], True),
        (ENDS[0], ENDS[3], False),
        (ENDS[3], ENDS[4], True),
    ]


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 10])  # of 11 bytes
def test_a_torn_last_record_ends_the_parse(cut: int) -> None:
    data = b"".join(RECORDS[:3]) + RECORDS[3][:cut]
    assert parsed(data) == [
        *[(s, e, True) for s, e in zip(STARTS[:3], ENDS[:3], strict=True)],
        (ENDS[2], -1, False),
    ]
    assert parsed(data, resync=False)[-1] == (ENDS[2], -1, False)


def test_the_limit_counts_damaged_items_too() -> None:
    data = RECORDS[0] + damaged(BODIES[1]) + RECORDS[2]
    assert parsed(data, limit=2) == [(0, ENDS[0], True), (ENDS[0], ENDS[1], False)]
    second = bytearray(RECORDS[1])
    second[2] ^= 0x01
    stretched = RECORDS[0] + bytes(second) + b"".join(RECORDS[2:])
    assert parsed(stretched, limit=2) == [(0, ENDS[0], True), (ENDS[0], ENDS[1], False)]


def test_a_damaged_record_before_a_torn_tail_is_one_torn_stretch() -> None:
    """The chain from the damaged record runs into fewer bytes than a header: no whole record
    after it, so the two are one stretch that ends the parse."""
    data = RECORDS[0] + damaged(BODIES[1]) + RECORDS[2][:5]
    assert parsed(data) == [(0, ENDS[0], True), (ENDS[0], -1, False)]


def test_the_resync_finds_a_last_record_of_one_byte() -> None:
    second = bytearray(RECORDS[1])
    second[2] ^= 0x01
    last = record(b"x")
    data = RECORDS[0] + bytes(second) + last
    assert parsed(data) == [
        (0, ENDS[0], True),
        (ENDS[0], ENDS[1], False),
        (ENDS[1], ENDS[1] + len(last), True),
    ]
