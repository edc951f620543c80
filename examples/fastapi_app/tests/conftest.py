"""Test setup: a fresh migrated PostgreSQL database per test (eventlog_persist.testing), the
application served on it through its real ASGI lifespan, and an httpx client."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx2 as httpx
import pytest
import pytest_asyncio
from chat_api.main import create_app
from chat_api.models import ChatSession, User, UserAgent, UserProject
from fastapi import FastAPI
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from starlette.types import Message

pytest_plugins = ["eventlog_persist.testing"]


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app as an ASGI server does, and stop it (its lifespan shutdown) on leaving.

    httpx's ASGITransport sends requests only; the lifespan runs here, in a task of its own.
    """
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(scope, to_app.get, from_app.put))
    await to_app.put({"type": "lifespan.startup"})
    assert (await from_app.get())["type"] == "lifespan.startup.complete"
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        await to_app.put({"type": "lifespan.shutdown"})
        assert (await from_app.get())["type"] == "lifespan.shutdown.complete"
        await lifespan


@pytest.fixture
def app(eventlog_database_url: URL) -> FastAPI:
    return create_app(eventlog_database_url.render_as_string(hide_password=False))


@pytest_asyncio.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(app) as client:
        yield client


@dataclass(frozen=True)
class Chat:
    """A stored user and one of their chat sessions, with a project and an agent."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    project_id: uuid.UUID
    agent_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"X-User-ID": str(self.user_id)}

    @property
    def url(self) -> str:
        return f"/sessions/{self.session_id}"


def new_chat(session: Session, name: str = "Ada") -> Chat:
    user = User(id=uuid.uuid4(), name=name)
    project = UserProject(id=uuid.uuid4(), user_id=user.id, name="docs")
    agent = UserAgent(id=uuid.uuid4(), user_id=user.id, name="writer")
    chat = ChatSession(
        id=uuid.uuid4(), user_id=user.id, project_id=project.id, agent_id=agent.id, title=""
    )
    session.add(user)
    session.flush()
    session.add_all([project, agent])
    session.flush()
    session.add(chat)
    session.commit()
    return Chat(user.id, chat.id, project.id, agent.id)


@pytest.fixture
def chat(eventlog_session: Session) -> Chat:
    return new_chat(eventlog_session)
