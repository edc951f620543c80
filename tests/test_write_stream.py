"""Bulk writes pull their events while the COPY runs: batch bounds, a failing iterable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hostmodels import HostModels, seed
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

import eventlog_persist._delivery as delivery
from eventlog_persist import NewEvent, awrite_events, new_event, write_events
from eventlog_persist._delivery import SourceError, Stream


def make(user_id: Any, session_id: Any, i: int) -> NewEvent:
    return new_event(
        session_id=session_id, user_id=user_id, event_type="tool_call", payload={"i": i}
    )


def transactions(engine: Engine) -> list[int]:
    """Events per writing transaction, in the order the transactions ran."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT count(*) FROM event_logs GROUP BY xmin::text::bigint "
                "ORDER BY xmin::text::bigint"
            )
        )
        return [int(count) for (count,) in rows]


def test_a_stream_takes_events_as_it_is_iterated_then_replays_them() -> None:
    pulled: list[int] = []

    def source() -> Iterator[NewEvent]:
        for i in range(1, 10):
            pulled.append(i)
            yield make(1, 1, i)

    it = source()
    stream = Stream(next(it), it, 5)
    copying = iter(stream)
    next(copying), next(copying)
    assert pulled == [1, 2]  # one ahead of the COPY at most: nothing is read in advance
    rest = list(copying)
    assert len(rest) == 3
    assert pulled == [1, 2, 3, 4, 5]
    assert list(stream) == stream.taken
    assert len(stream) == 5
    assert [e.payload_json for e in stream[1:3]] == ['{"i":2}', '{"i":3}']
    assert next(it).payload_json == '{"i":6}'  # the next batch starts where this one ended


def test_a_stream_whose_attempt_failed_is_filled_to_its_size() -> None:
    it = iter([make(1, 1, i) for i in range(8)])
    stream = Stream(next(it), it, 5)
    copying = iter(stream)
    next(copying)  # the attempt fails after one row
    assert len(stream) == 5  # the batch is what a list of 5 would have been
    assert [e.payload_json for e in stream] == [f'{{"i":{i}}}' for i in range(5)]
    assert len(list(it)) == 3


def test_a_stream_wraps_the_iterables_error() -> None:
    boom = ValueError("bad input")

    def source() -> Iterator[NewEvent]:
        yield make(1, 1, 1)
        raise boom

    it = source()
    stream = Stream(next(it), it, 5)
    with pytest.raises(SourceError) as caught:
        list(stream)
    assert caught.value.error is boom


def test_batches_hold_batch_size_events_each(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    made = (make(user_id, session_id, i) for i in range(25))
    result = write_events(host_models.EventLog, host_engine, made, batch_size=10)
    assert (result.written, result.duplicates, result.dead_lettered) == (25, 0, [])
    assert transactions(host_engine) == [10, 10, 5]


def test_a_slow_iterable_ends_its_batch_early(
    host_engine: Engine, host_models: HostModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    monkeypatch.setattr(delivery, "STREAM_SECONDS", 0.0)  # every event comes "too late"
    made = (make(user_id, session_id, i) for i in range(4))
    result = write_events(host_models.EventLog, host_engine, made, batch_size=10)
    assert result.written == 4
    assert transactions(host_engine) == [1, 1, 1, 1]


def test_an_iterable_that_raises_rolls_back_only_its_batch(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    boom = ValueError("the host's own error")

    def made() -> Iterator[NewEvent]:
        for i in range(15):
            yield make(user_id, session_id, i)
        raise boom

    with pytest.raises(ValueError, match="own error") as caught:
        write_events(host_models.EventLog, host_engine, made(), batch_size=10)
    assert caught.value is boom
    assert not isinstance(caught.value.__context__, SourceError)
    assert transactions(host_engine) == [10]  # the first batch is committed, not the second


def test_an_empty_iterable_connects_to_nothing(host_models: HostModels) -> None:
    unreachable = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
    result = write_events(host_models.EventLog, unreachable, iter(()))
    assert (result.written, result.dead_lettered, result.retries) == (0, [], 0)


@pytest.mark.asyncio
async def test_async_streams_and_raises_the_same_way(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    engine = create_async_engine(database_url)
    boom = KeyError("gone")

    def made(n: int, fail: bool) -> Iterator[NewEvent]:
        for i in range(n):
            yield make(user_id, session_id, i)
        if fail:
            raise boom

    try:
        result = await awrite_events(
            host_models.EventLog, engine, made(25, fail=False), batch_size=10
        )
        assert result.written == 25
        with pytest.raises(KeyError) as caught:
            await awrite_events(host_models.EventLog, engine, made(3, fail=True), batch_size=10)
        assert caught.value is boom
    finally:
        await engine.dispose()
    assert transactions(host_engine) == [10, 10, 5]
