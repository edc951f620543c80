"""Event context: defaults for every event recorded inside ``event_context``, by any writer."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from typing import Any

import pytest
from hostmodels import HostModels, seed
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from eventlog_persist import (
    UNSCOPED,
    AsyncBufferedWriter,
    BufferedWriter,
    EventLogReader,
    EventWriter,
    current_event_context,
    event_context,
    new_event,
    write_events,
)
from eventlog_persist.exceptions import ConfigurationError, ValidationError

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def test_context_supplies_keys_request_id_and_payload_keys() -> None:
    session_id, user_id, agent_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    project_id = uuid.uuid4()
    with event_context(
        session_id=session_id,
        user_id=user_id,
        project_id=project_id,
        request_id="req-1",
        tenant="t1",
    ):
        event = new_event(event_type="chat", payload={"text": "hi"})
        with event_context(agent_id=agent_id, request_id="req-2", tenant="t2", step=3) as inner:
            nested = new_event(event_type="chat", payload={"step": 4})
    assert (event.session_id, event.user_id, event.project_id, event.request_id) == (
        session_id,
        user_id,
        project_id,
        "req-1",
    )
    assert event.agent_id is None
    assert event.payload_json == '{"tenant":"t1","text":"hi"}'
    # The inner block keeps what it does not set; the payload's own keys win over the context.
    assert (nested.session_id, nested.project_id, nested.agent_id, nested.request_id) == (
        session_id,
        project_id,
        agent_id,
        "req-2",
    )
    assert nested.payload_json == '{"tenant":"t2","step":4}'
    assert dict(inner.extra) == {"tenant": "t2", "step": 3}
    assert current_event_context() is None


def test_explicit_fields_win_over_the_context() -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    with event_context(session_id=theirs, user_id=theirs, project_id=theirs, request_id="ctx"):
        event = new_event(
            event_type="chat", session_id=mine, user_id=mine, project_id=mine, request_id="own"
        )
    assert (event.session_id, event.user_id, event.project_id, event.request_id) == (
        mine,
        mine,
        mine,
        "own",
    )


def test_missing_keys_name_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"session_id is missing: pass session_id=.*"):
        new_event(event_type="chat", user_id=1)
    missing_user = r"user_id is missing: .*event_context\(user_id"
    with event_context(session_id=1), pytest.raises(ValidationError, match=missing_user):
        new_event(event_type="chat")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"session_id": "abc"}, "session_id must be a uuid.UUID, int or None"),
        ({"user_id": True}, "user_id must be a uuid.UUID, int or None"),
        ({"request_id": ""}, "request_id is empty"),
        ({"request_id": "r" * 129}, "over the limit of 128"),
        ({"request_id": "a\nb"}, "line feed"),
        ({"request_id": "a\ud800"}, "lone surrogate"),
        ({"request_id": " r"}, "whitespace"),
        ({"request_id": 7}, "request_id must be a str or None"),
    ],
)
def test_bad_context_values_are_refused_at_the_block(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message), event_context(**arguments):
        pass
    assert current_event_context() is None


def test_extra_keys_need_a_mapping_payload() -> None:
    with event_context(session_id=1, user_id=2, tenant="t"):
        assert new_event(event_type="chat").payload_json == '{"tenant":"t"}'
        with pytest.raises(ValidationError, match=r"adds the payload keys \['tenant'\].*list"):
            new_event(event_type="chat", payload=[1, 2])


def test_extra_keys_are_redacted_like_the_payload() -> None:
    with event_context(session_id=1, user_id=2, api_key="sk-live-123"):
        event = new_event(event_type="chat")
    assert "sk-live-123" not in event.payload_json
    assert event.redacted_paths == ("/api_key",)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("trace_id", "4BF92F3577B34DA6A3CE929D0E0E4736", "32 lowercase hex digits"),
        ("trace_id", "abc", "32 lowercase hex digits"),
        ("trace_id", "0" * 32, "all zeros"),
        ("span_id", TRACE_ID, "16 lowercase hex digits"),
        ("span_id", 123, "16 lowercase hex digits"),
        ("span_id", "0" * 16, "all zeros"),
    ],
)
def test_bad_trace_ids_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        new_event(event_type="chat", session_id=1, user_id=2, **{field: value})


def test_context_follows_tasks_and_copied_threads_and_never_leaks() -> None:
    async def record(session: int) -> tuple[int, int]:
        with event_context(session_id=session, user_id=session):
            await asyncio.sleep(0)
            in_task = await asyncio.create_task(_built())
            in_thread = await asyncio.to_thread(new_event, event_type="chat")
            return in_task.session_id, in_thread.session_id  # type: ignore[return-value]

    async def _built() -> Any:
        await asyncio.sleep(0)
        return new_event(event_type="chat")

    async def main() -> list[tuple[int, int]]:
        return await asyncio.gather(*(record(n) for n in range(1, 51)))

    assert asyncio.run(main()) == [(n, n) for n in range(1, 51)]

    seen: list[object] = []
    with event_context(session_id=1, user_id=1):
        plain = threading.Thread(target=lambda: seen.append(current_event_context()))
        copied = contextvars.copy_context()
        plain.start()
        plain.join()
    assert seen == [None]  # a plain thread starts with an empty context
    assert copied.run(lambda: new_event(event_type="chat").session_id) == 1


def test_a_block_ended_in_another_context_says_where_to_open_it() -> None:
    def enter_here_exit_elsewhere() -> None:
        block = event_context(session_id=1)
        block.__enter__()
        with pytest.raises(ConfigurationError, match=r"another context.*'async def' dependency"):
            contextvars.copy_context().run(block.__exit__, None, None, None)

    contextvars.copy_context().run(enter_here_exit_elsewhere)
    assert current_event_context() is None


def test_current_span_ids_are_recorded_and_explicit_ids_win() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert new_event(event_type="chat", session_id=1, user_id=2).trace_id is None
    with tracer.start_as_current_span("agent run") as span:
        ids = span.get_span_context()
        event = new_event(event_type="chat", session_id=1, user_id=2)
        own = new_event(event_type="chat", session_id=1, user_id=2, trace_id=TRACE_ID)
    assert event.trace_id == format(ids.trace_id, "032x")
    assert event.span_id == format(ids.span_id, "016x")
    assert (own.trace_id, own.span_id) == (TRACE_ID, None)
    assert new_event(event_type="chat", session_id=1, user_id=2).span_id is None


def test_every_writer_stores_the_context_and_the_reader_returns_it(
    host_engine: Engine, host_models: HostModels
) -> None:
    user_id, session_id = seed(host_engine, host_models)
    tracer = TracerProvider().get_tracer("test")
    model = host_models.EventLog
    with (
        event_context(session_id=session_id, user_id=user_id, request_id="req-7", turn=1),
        tracer.start_as_current_span("turn") as span,
    ):
        with Session(host_engine) as session:
            EventWriter(model).record(session, event_type="record")
            session.commit()
        EventWriter(model).record_detached(host_engine, event_type="detached")
        write_events(model, host_engine, [new_event(event_type="bulk")])
        with BufferedWriter(model, host_engine) as writer:
            writer.enqueue(event_type="buffered")
        asyncio.run(_enqueue_async(model, host_engine.url))
        trace_id = format(span.get_span_context().trace_id, "032x")
    page = EventLogReader(model, host_engine).session_timeline(
        session_id, user_id=UNSCOPED, order="oldest"
    )
    assert [r.event_type for r in page.items] == [
        "record",
        "detached",
        "bulk",
        "buffered",
        "async_buffered",
    ]
    for record in page.items:
        assert (record.request_id, record.trace_id) == ("req-7", trace_id), record
        assert len(record.span_id or "") == 16
        assert record.payload == {"turn": 1}


async def _enqueue_async(model: Any, url: Any) -> None:
    engine = create_async_engine(url.set(drivername="postgresql+psycopg"))
    try:
        async with AsyncBufferedWriter(model, engine) as writer:
            await writer.enqueue(event_type="async_buffered")
    finally:
        await engine.dispose()


def test_context_ids_fit_their_columns(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)
    longest = "r" * 128
    event = new_event(
        event_type="chat",
        session_id=session_id,
        user_id=user_id,
        request_id=longest,
        trace_id="f" * 32,
        span_id="f" * 16,
    )
    write_events(host_models.EventLog, create_engine(host_engine.url), [event])
    page = EventLogReader(host_models.EventLog, host_engine).session_timeline(
        session_id, user_id=user_id
    )
    assert (page.items[0].request_id, page.items[0].trace_id) == (longest, "f" * 32)
