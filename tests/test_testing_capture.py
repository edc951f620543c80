"""The capturing writers of eventlog_persist.testing: the real writers' checks, no database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from hostmodels import HostModels, build_host_models
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from eventlog_persist import BufferedWriter, EventFieldRules, EventType, EventWriter, new_event
from eventlog_persist.exceptions import (
    ConfigurationError,
    PayloadError,
    ValidationError,
    WriterClosedError,
)
from eventlog_persist.fastapi import event_writer
from eventlog_persist.testing import AsyncCapturingWriter, CapturingWriter, payload_of

SESSION, USER = uuid.uuid4(), uuid.uuid4()


@pytest.fixture
def models() -> HostModels:
    return build_host_models()


def test_every_verb_captures_the_checked_event(models: HostModels) -> None:
    writer = CapturingWriter(models.EventLog)
    row = writer.record(None, session_id=SESSION, user_id=USER, event_type="user_message")
    assert isinstance(row, models.EventLog)
    assert row.payload == {}
    writer.record_detached(
        None, session_id=SESSION, user_id=USER, event_type=EventType.ERROR, error_code="e1"
    )
    asyncio.run(
        writer.arecord_detached(None, session_id=SESSION, user_id=USER, event_type="tool_call")
    )
    built = new_event(session_id=SESSION, user_id=USER, event_type="tool_result")
    assert writer.enqueue(built) is built
    with writer:
        writer.enqueue(session_id=SESSION, user_id=USER, event_type="chat", payload={"n": 1})
        assert writer.flush() is True
    assert writer.event_types == ["user_message", "error", "tool_call", "tool_result", "chat"]
    assert [item.via for item in writer.captured] == [
        "record",
        "record_detached",
        "arecord_detached",
        "enqueue",
        "enqueue",
    ]
    assert writer.counters.written == 2
    with pytest.raises(WriterClosedError, match="the writer is closed"):
        writer.enqueue(session_id=SESSION, user_id=USER, event_type="chat")
    writer.clear()
    assert writer.events == []


def test_refuses_what_the_real_writer_refuses(models: HostModels) -> None:
    real, fake = EventWriter(models.EventLog), CapturingWriter(models.EventLog)
    bad = {"session_id": SESSION, "user_id": USER, "event_type": "chat", "tool_name": "a\tb"}
    with pytest.raises(ValidationError) as real_error:
        real.event(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as fake_error:
        fake.record_detached(None, **bad)  # type: ignore[arg-type]
    assert str(fake_error.value) == str(real_error.value)
    with pytest.raises(ValidationError, match="int"):
        fake.enqueue(session_id=1, user_id=USER, event_type="chat")
    with pytest.raises(PayloadError):
        fake.enqueue(session_id=SESSION, user_id=USER, event_type="chat", payload={"x": object()})
    strict = CapturingWriter(models.EventLog, field_rules=EventFieldRules(event_types={"chat"}))
    with pytest.raises(ValidationError, match="event_type"):
        strict.enqueue(session_id=SESSION, user_id=USER, event_type="tool_call")
    assert fake.events == []
    assert strict.events == []


def test_refuses_the_timeouts_the_real_writer_refuses(models: HostModels) -> None:
    real = BufferedWriter(models.EventLog, "host=/nonexistent-dir port=1 dbname=x")
    fake = CapturingWriter(models.EventLog)
    async_fake = AsyncCapturingWriter(models.EventLog)
    calls: list[Callable[[Any], object]] = [
        fake.flush,
        fake.close,
        lambda timeout: asyncio.run(async_fake.flush(timeout)),
        lambda timeout: asyncio.run(async_fake.close(timeout)),
    ]
    bad: Any
    for bad in ("30", -1, float("nan")):
        with pytest.raises(ConfigurationError) as real_error:
            real.close(bad)
        for call in calls:
            with pytest.raises(ConfigurationError) as fake_error:
                call(bad)
            assert str(fake_error.value) == str(real_error.value)
    fake.start().enqueue(session_id=SESSION, user_id=USER, event_type="chat")  # not closed
    assert fake.close(float("inf")).written == 1


def test_refuses_the_lifecycle_slips_the_real_writer_refuses(models: HostModels) -> None:
    """A host that forgets start() loses every event in production: its tests must fail."""
    for fake in (CapturingWriter(models.EventLog), AsyncCapturingWriter(models.EventLog)):
        run = asyncio.run if isinstance(fake, AsyncCapturingWriter) else (lambda value: value)
        result = fake.enqueue(session_id=SESSION, user_id=USER, event_type="chat")
        run(result)  # type: ignore[operator]
        # A flush is taken: the stand-in may replace a writer the application starts.
        assert run(fake.flush()) is True  # type: ignore[operator]
        counters = run(fake.close())  # type: ignore[operator]
        assert (counters.written, counters.unwritten) == (0, 1)  # as the real writer's
        with pytest.raises(WriterClosedError, match="is closed; create a new one"):
            run(fake.start())  # type: ignore[operator]
    writer = CapturingWriter(models.EventLog)
    sync_engine = create_engine("postgresql+psycopg://app@db/app")  # never connected
    async_engine = create_async_engine("postgresql+psycopg://app@db/app")
    with pytest.raises(ConfigurationError, match="record_detached got AsyncEngine"):
        writer.record_detached(async_engine, session_id=SESSION, user_id=USER, event_type="x")
    with pytest.raises(ConfigurationError, match="arecord_detached got Engine"):
        asyncio.run(
            writer.arecord_detached(sync_engine, session_id=SESSION, user_id=USER, event_type="x")
        )
    writer.record_detached(sync_engine, session_id=SESSION, user_id=USER, event_type="x")
    assert writer.event_types == ["x"]
    real = EventWriter(models.EventLog)
    assert (writer.payload_policy, writer.field_rules) == (real.payload_policy, real.field_rules)
    stats = writer.stats  # as BufferedWriter.stats: what a health endpoint reads
    assert (stats.counters, stats.batches, stats.last_error) == (writer.counters, 0, None)
    sync_engine.dispose()
    asyncio.run(async_engine.dispose())


def test_payloads_match_as_json_values_true_is_not_one(models: HostModels) -> None:
    writer = CapturingWriter(models.EventLog)
    writer.enqueue(
        session_id=SESSION, user_id=USER, event_type="chat", payload={"ok": True, "n": [1, 0]}
    )
    writer.assert_recorded(payload={"ok": True, "n": [1, 0]})
    writer.assert_not_recorded(payload={"ok": 1})
    writer.assert_not_recorded(payload={"n": [True, False]})


def test_assertions(models: HostModels) -> None:
    writer = CapturingWriter(models.EventLog)
    writer.enqueue(
        session_id=SESSION,
        user_id=USER,
        event_type="tool_call",
        tool_name="search",
        payload={"query": "pg", "api_key": "k", "n": 2},
    )
    writer.record(None, session_id=SESSION, user_id=USER, event_type="tool_call", tool_name="x")
    event = writer.assert_recorded(event_type="tool_call", payload={"query": "pg"})
    assert payload_of(event)["api_key"] == "[REDACTED]"
    assert writer.assert_recorded(event_type="tool_call", count=2) is writer.events[0]
    assert writer.matching(via="record", tool_name="x") == [writer.events[1]]
    writer.assert_not_recorded(event_type="error")

    with pytest.raises(AssertionError) as missing:
        writer.assert_recorded(event_type="tool_call", payload={"query": "mysql"})
    message = str(missing.value)
    assert (
        "expected an event matching event_type='tool_call', payload={'query': 'mysql'}" in message
    )
    assert (
        f"found 0; captured 2:\n  1. via enqueue, event_type='tool_call', session_id={SESSION!r}, "
        f"user_id={USER!r}, tool_name='search'" in message
    )
    with pytest.raises(AssertionError, match="expected 1 event"):
        writer.assert_recorded(event_type="tool_call", count=1)
    with pytest.raises(AssertionError, match="expected no event matching tool_name='x'"):
        writer.assert_not_recorded(tool_name="x")
    with pytest.raises(TypeError, match="cannot match on colour; use agent_id"):
        writer.matching(colour="red")
    with pytest.raises(ValueError, match="count=0 is not valid"):
        writer.assert_recorded(count=0)
    writer.clear()
    with pytest.raises(AssertionError, match="nothing was captured"):
        writer.assert_recorded()


def test_async_writer(models: HostModels) -> None:
    async def handler(writer: AsyncCapturingWriter[uuid.UUID]) -> None:
        async with writer:
            await writer.enqueue(session_id=SESSION, user_id=USER, event_type="agent_message")
            assert await writer.flush()
        with pytest.raises(WriterClosedError):
            await writer.enqueue(session_id=SESSION, user_id=USER, event_type="agent_message")

    writer: AsyncCapturingWriter[uuid.UUID] = AsyncCapturingWriter(models.EventLog)
    asyncio.run(handler(writer))
    writer.assert_recorded(event_type="agent_message", via="enqueue", count=1)
    assert writer.event(session_id=SESSION, user_id=USER, event_type="chat").event_type == "chat"


def test_an_override_of_the_applications_writer_is_flushed_unstarted(models: HostModels) -> None:
    """The lifespan starts the real writer; the stand-in that replaces it never is."""
    app = FastAPI()

    @app.post("/chat")
    async def chat(writer: Annotated[Any, Depends(event_writer)]) -> dict[str, bool]:
        await writer.enqueue(session_id=SESSION, user_id=USER, event_type="user_message")
        return {"flushed": await writer.flush(5)}

    capture: AsyncCapturingWriter[uuid.UUID] = AsyncCapturingWriter(models.EventLog)
    app.dependency_overrides[event_writer] = lambda: capture
    assert TestClient(app).post("/chat").json() == {"flushed": True}
    capture.assert_recorded(event_type="user_message")
