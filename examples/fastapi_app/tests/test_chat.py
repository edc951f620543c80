"""The chat API against a real PostgreSQL: what each endpoint records, with which ids."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx2 as httpx
import pytest
from chat_api.main import create_app
from chat_api.models import EventLog
from conftest import Chat, new_chat, serving
from fastapi import FastAPI
from sqlalchemy import Engine, func, select
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

pytestmark = pytest.mark.asyncio


async def timeline(client: httpx.AsyncClient, app: FastAPI, chat: Chat) -> list[dict[str, Any]]:
    """The session's events through the API, once the queued ones are written."""
    await app.state.eventlog_writer.flush()
    response = await client.get(f"{chat.url}/events", headers=chat.headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_message_and_the_agents_reply(
    client: httpx.AsyncClient, app: FastAPI, chat: Chat
) -> None:
    response = await client.post(
        f"{chat.url}/messages",
        json={"text": "hello there"},
        headers={**chat.headers, "X-Request-ID": "msg-1"},
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"reply": "You wrote 2 words."}
    assert response.headers["X-Request-ID"] == "msg-1"
    events = await timeline(client, app, chat)
    assert [(e["event_type"], e["payload"], e["request_id"]) for e in events] == [
        ("user_message", {"text": "hello there"}, "msg-1"),
        ("agent_message", {"text": "You wrote 2 words."}, "msg-1"),
    ]


async def test_a_tool_call_and_its_result(
    client: httpx.AsyncClient, app: FastAPI, chat: Chat
) -> None:
    response = await client.post(
        f"{chat.url}/tools/word_count", json={"arguments": {"text": "a b c"}}, headers=chat.headers
    )
    assert response.json() == {"tool_name": "word_count", "result": {"words": 3}}
    request_id = response.headers["X-Request-ID"]  # made by the middleware
    events = await timeline(client, app, chat)
    assert [(e["event_type"], e["tool_name"], e["payload"]) for e in events] == [
        ("tool_call", "word_count", {"text": "a b c"}),
        ("tool_result", "word_count", {"words": 3}),
    ]
    assert {e["request_id"] for e in events} == {request_id}


async def test_an_unknown_tool_is_an_error_event(
    client: httpx.AsyncClient, app: FastAPI, chat: Chat
) -> None:
    response = await client.post(f"{chat.url}/tools/rm%20-rf", json={}, headers=chat.headers)
    assert response.status_code == 404
    [event] = await timeline(client, app, chat)
    assert (event["event_type"], event["error_code"], event["tool_name"]) == (
        "error",
        "unknown_tool",
        None,
    )
    assert event["payload"] == {"tool": "rm -rf"}


async def test_an_approval_requested_then_granted(
    client: httpx.AsyncClient, app: FastAPI, chat: Chat
) -> None:
    asked = await client.post(
        f"{chat.url}/approvals",
        json={"tool_name": "reverse", "arguments": {"text": "abc"}},
        headers=chat.headers,
    )
    assert asked.status_code == 201, asked.text
    approval = asked.json()
    assert approval["status"] == "pending"
    granted = await client.post(
        f"{chat.url}/approvals/{approval['id']}/grant", headers=chat.headers
    )
    assert granted.json() == {**approval, "status": "granted"}
    again = await client.post(f"{chat.url}/approvals/{approval['id']}/grant", headers=chat.headers)
    assert again.status_code == 409
    # Recorded in the request's transaction: readable at once, without a flush.
    response = await client.get(f"{chat.url}/events", headers=chat.headers)
    events = response.json()["items"]
    assert [(e["event_type"], e["approval_status"], e["payload"]) for e in events] == [
        (
            "approval_requested",
            "pending",
            {"approval_id": approval["id"], "arguments": {"text": "abc"}},
        ),
        ("approval_granted", "granted", {"approval_id": approval["id"]}),
    ]
    assert [e["request_id"] for e in events] == [
        asked.headers["X-Request-ID"],
        granted.headers["X-Request-ID"],
    ]


async def test_every_event_carries_the_sessions_ids(
    client: httpx.AsyncClient, app: FastAPI, chat: Chat, eventlog_session: Session
) -> None:
    await client.post(f"{chat.url}/messages", json={"text": "hi"}, headers=chat.headers)
    await client.post(f"{chat.url}/approvals", json={"tool_name": "reverse"}, headers=chat.headers)
    await app.state.eventlog_writer.flush()
    rows = eventlog_session.scalars(select(EventLog)).all()
    assert len(rows) == 3
    for row in rows:
        assert (row.session_id, row.user_id, row.project_id, row.agent_id) == (
            chat.session_id,
            chat.user_id,
            chat.project_id,
            chat.agent_id,
        )


async def test_another_users_session_is_not_found_and_records_nothing(
    client: httpx.AsyncClient, app: FastAPI, chat: Chat, eventlog_session: Session
) -> None:
    other = new_chat(eventlog_session, "Grace")
    stranger = {"X-User-ID": str(other.user_id)}
    for method, path in [
        ("POST", "/messages"),
        ("POST", "/tools/word_count"),
        ("GET", "/events"),
    ]:
        response = await client.request(
            method, f"{chat.url}{path}", json={"text": "x"}, headers=stranger
        )
        assert response.status_code == 404, path
    assert await timeline(client, app, chat) == []


async def test_a_bad_cursor_is_the_clients_error(client: httpx.AsyncClient, chat: Chat) -> None:
    response = await client.get(
        f"{chat.url}/events", params={"cursor": "garbage"}, headers=chat.headers
    )
    assert response.status_code == 422
    assert "cursor" in response.json()["detail"]


async def test_the_shutdown_writes_what_is_queued(
    eventlog_database_url: URL, eventlog_engine: Engine, chat: Chat
) -> None:
    # No batch is due while the app runs (flush_interval): only the shutdown writes them.
    app = create_app(eventlog_database_url.render_as_string(hide_password=False), flush_interval=60)
    count = select(func.count()).select_from(EventLog)
    async with serving(app) as client:
        for n in range(10):
            response = await client.post(
                f"{chat.url}/messages", json={"text": f"message {n}"}, headers=chat.headers
            )
            assert response.status_code == 200
        with eventlog_engine.connect() as conn:
            assert conn.scalar(count) == 0
    with eventlog_engine.connect() as conn:
        assert conn.scalar(count) == 20


async def test_concurrent_requests_keep_their_own_ids(
    client: httpx.AsyncClient, app: FastAPI, eventlog_session: Session
) -> None:
    chats = [new_chat(eventlog_session, f"user {n}") for n in range(4)]

    async def send(n: int) -> httpx.Response:
        chat = chats[n % 4]
        return await client.post(
            f"{chat.url}/tools/reverse",
            json={"arguments": {"text": f"n{n}"}},
            headers={**chat.headers, "X-Request-ID": f"req-{n}"},
        )

    responses = await asyncio.gather(*(send(n) for n in range(20)))
    assert [r.headers["X-Request-ID"] for r in responses] == [f"req-{n}" for n in range(20)]
    await app.state.eventlog_writer.flush()
    rows = eventlog_session.scalars(select(EventLog)).all()
    assert len(rows) == 40
    for row in rows:
        text = row.payload["text"]  # type: ignore[index,call-overload]
        sent = text if row.event_type == "tool_call" else text[::-1]  # the result is reversed
        n = int(sent.removeprefix("n"))
        assert row.request_id == f"req-{n}"
        assert (row.user_id, row.session_id) == (chats[n % 4].user_id, chats[n % 4].session_id)
    assert uuid.UUID(str(rows[0].id)).version == 7
