"""The live stream of a session (server-sent events), served by uvicorn as in production:
httpx's ASGI transport returns a response only once the application has finished it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2 as httpx
import pytest
import uvicorn
from conftest import Chat, new_chat
from fastapi import FastAPI
from sqlalchemy.orm import Session

pytestmark = pytest.mark.asyncio


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` with uvicorn on a free local port; a client of it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as client:
            yield client
    finally:
        server.should_exit = True
        await serving
        listener.close()


async def server_sent(
    client: httpx.AsyncClient, chat: Chat, count: int, last_event_id: str | None = None
) -> list[dict[str, Any]]:
    """Open the session's stream and read ``count`` events, then go away."""
    headers = dict(chat.headers)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    received: list[dict[str, Any]] = []
    async with client.stream("GET", f"{chat.url}/stream", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            received.append({**fields, "data": json.loads(fields["data"])})
            fields = {}
            if len(received) == count:
                break
    return received


async def say(client: httpx.AsyncClient, chat: Chat, text: str) -> None:
    response = await client.post(f"{chat.url}/messages", json={"text": text}, headers=chat.headers)
    assert response.status_code == 200, response.text


async def test_the_stream_sends_the_sessions_events_and_resumes_from_last_event_id(
    app: FastAPI, chat: Chat
) -> None:
    async with served(app) as client:
        await say(client, chat, "hello")
        first = await asyncio.wait_for(server_sent(client, chat, 2), 20)
        assert [(e["event"], e["data"]["payload"]) for e in first] == [
            ("user_message", {"text": "hello"}),
            ("agent_message", {"text": "You wrote 1 word."}),
        ]
        # The browser reconnects with the last id it saw: only what came after.
        await say(client, chat, "and again")
        resumed = await asyncio.wait_for(
            server_sent(client, chat, 2, last_event_id=first[-1]["id"]), 20
        )
        assert [e["data"]["payload"] for e in resumed] == [
            {"text": "and again"},
            {"text": "You wrote 2 words."},
        ]


async def test_the_stream_delivers_what_commits_while_it_is_open(app: FastAPI, chat: Chat) -> None:
    async with served(app) as client:
        reading = asyncio.create_task(server_sent(client, chat, 4))
        await say(client, chat, "one")
        await asyncio.sleep(0.2)
        await say(client, chat, "two")
        received = await asyncio.wait_for(reading, 20)
        assert [e["data"]["payload"]["text"] for e in received[::2]] == ["one", "two"]


async def test_another_users_stream_is_not_found_and_a_bad_id_is_refused(
    app: FastAPI, chat: Chat, eventlog_session: Session
) -> None:
    stranger = new_chat(eventlog_session, name="Eve")
    async with served(app) as client:
        response = await client.get(f"{chat.url}/stream", headers=stranger.headers)
        assert response.status_code == 404
        response = await client.get(
            f"{chat.url}/stream", headers={**chat.headers, "Last-Event-ID": "forged"}
        )
        assert response.status_code == 422
        assert "not a tail cursor" in response.json()["detail"]
