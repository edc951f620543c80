"""The application: its lifespan, its dependencies and the chat session endpoints.

Run it with ``DATABASE_URL=postgresql+psycopg://... uvicorn --factory chat_api.main:create_app``
after ``alembic upgrade heads``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from typing_extensions import Unpack

from chat_api.models import Approval, ChatSession, EventLog
from eventlog_persist import (
    MAX_PAGE_SIZE,
    ApprovalStatus,
    AsyncBufferedWriter,
    AsyncEventLogReader,
    AsyncEventTail,
    EventType,
    EventWriter,
    TailEntry,
    event_context,
)
from eventlog_persist.exceptions import ValidationError
from eventlog_persist.fastapi import (
    EventContextMiddleware,
    WriterOptions,
    event_reader,
    event_writer,
    eventlog_lifespan,
)

# -- dependencies ----------------------------------------------------------------------------

Events = Annotated[AsyncBufferedWriter[uuid.UUID], Depends(event_writer)]
Reader = Annotated[AsyncEventLogReader[uuid.UUID], Depends(event_reader)]

# For events that must commit, or roll back, with a change to the application's own tables.
in_transaction = EventWriter(EventLog)


async def database(request: Request) -> AsyncIterator[AsyncSession]:
    """A session of the application's own engine for this request."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        yield session


def current_user(x_user_id: Annotated[uuid.UUID, Header()]) -> uuid.UUID:
    """Stands in for the application's authentication: the signed-in user's id."""
    return x_user_id


Database = Annotated[AsyncSession, Depends(database)]
CurrentUser = Annotated[uuid.UUID, Depends(current_user)]


async def chat_session(
    session_id: uuid.UUID, user: CurrentUser, db: Database
) -> AsyncIterator[ChatSession]:
    """The signed-in user's chat session; the rest of the request runs in its event context.

    An ``async def`` dependency with ``yield``: FastAPI runs it in the request's own context,
    so the endpoint, and every event it records, sees the ``event_context`` it opens. (A
    plain ``def`` dependency runs in a worker thread, on a copy the endpoint never sees.)
    """
    query = select(ChatSession).where(ChatSession.id == session_id, ChatSession.user_id == user)
    chat = await db.scalar(query)
    if chat is None:
        raise HTTPException(404, "no such chat session")
    with event_context(
        session_id=chat.id,
        user_id=chat.user_id,
        project_id=chat.project_id,
        agent_id=chat.agent_id,
    ):
        yield chat


Chat = Annotated[ChatSession, Depends(chat_session)]

# Every endpoint of the router is about one chat session of the signed-in user.
router = APIRouter(prefix="/sessions/{session_id}", dependencies=[Depends(chat_session)])

# -- the agent: a deterministic stand-in for a model and its tools -----------------------------


def agent_reply(text: str) -> str:
    """Stands in for the model's answer."""
    words = len(text.split())
    return f"You wrote {words} word{'' if words == 1 else 's'}."


def word_count(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"words": len(str(arguments.get("text", "")).split())}


def reverse(arguments: dict[str, Any]) -> dict[str, Any]:
    return {"text": str(arguments.get("text", ""))[::-1]}


TOOLS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "word_count": word_count,
    "reverse": reverse,
}

# -- endpoints -------------------------------------------------------------------------------


class Message(BaseModel):
    text: str = Field(min_length=1, max_length=10_000)


class Reply(BaseModel):
    reply: str


@router.post("/messages")
async def post_message(message: Message, events: Events) -> Reply:
    """The user's message and the agent's reply; both events are only queued."""
    await events.enqueue(event_type=EventType.USER_MESSAGE, payload={"text": message.text})
    reply = agent_reply(message.text)
    await events.enqueue(event_type=EventType.AGENT_MESSAGE, payload={"text": reply})
    return Reply(reply=reply)


class ToolCall(BaseModel):
    arguments: dict[str, Any] = Field(default_factory=dict)


class ToolResult(BaseModel):
    tool_name: str
    result: dict[str, Any]


@router.post("/tools/{tool_name}")
async def call_tool(tool_name: str, call: ToolCall, events: Events) -> ToolResult:
    """Run one of the agent's tools, between a ``tool_call`` and a ``tool_result`` event."""
    tool = TOOLS.get(tool_name)
    if tool is None:
        # The name comes from the client: it goes in the payload, not the checked column.
        await events.enqueue(
            event_type=EventType.ERROR, error_code="unknown_tool", payload={"tool": tool_name}
        )
        raise HTTPException(404, f"no tool named {tool_name!r}")
    await events.enqueue(
        event_type=EventType.TOOL_CALL, tool_name=tool_name, payload=call.arguments
    )
    result = tool(call.arguments)
    await events.enqueue(event_type=EventType.TOOL_RESULT, tool_name=tool_name, payload=result)
    return ToolResult(tool_name=tool_name, result=result)


class ApprovalRequest(BaseModel):
    tool_name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ApprovalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    tool_name: str
    status: str


@router.post("/approvals", status_code=201)
async def request_approval(body: ApprovalRequest, chat: Chat, db: Database) -> ApprovalOut:
    """The agent asks to run a tool; the request and its event commit together."""
    if body.tool_name not in TOOLS:
        raise HTTPException(404, f"no tool named {body.tool_name!r}")
    approval = Approval(
        id=uuid.uuid4(),
        session_id=chat.id,
        tool_name=body.tool_name,
        arguments=body.arguments,
        status=ApprovalStatus.PENDING,
    )
    db.add(approval)
    in_transaction.record(
        db,
        event_type=EventType.APPROVAL_REQUESTED,
        tool_name=approval.tool_name,
        approval_status=ApprovalStatus.PENDING,
        payload={"approval_id": approval.id, "arguments": body.arguments},
    )
    await db.commit()
    return ApprovalOut.model_validate(approval)


@router.post("/approvals/{approval_id}/grant")
async def grant_approval(approval_id: uuid.UUID, chat: Chat, db: Database) -> ApprovalOut:
    """The user approves; the new status and its event commit together."""
    query = select(Approval).where(Approval.id == approval_id, Approval.session_id == chat.id)
    approval = await db.scalar(query.with_for_update())
    if approval is None:
        raise HTTPException(404, "no such approval")
    if approval.status != ApprovalStatus.PENDING:
        raise HTTPException(409, f"the approval is {approval.status} already")
    approval.status = ApprovalStatus.GRANTED
    in_transaction.record(
        db,
        event_type=EventType.APPROVAL_GRANTED,
        tool_name=approval.tool_name,
        approval_status=ApprovalStatus.GRANTED,
        payload={"approval_id": approval.id},
    )
    await db.commit()
    return ApprovalOut.model_validate(approval)


class Event(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    event_type: str
    payload: Any
    created_at: datetime
    tool_name: str | None
    approval_status: str | None
    error_code: str | None
    request_id: str | None


class Timeline(BaseModel):
    items: list[Event]
    next_cursor: str | None


@router.get("/events")
async def list_events(
    chat: Chat,
    reader: Reader,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: str | None = None,
) -> Timeline:
    """The session's events, oldest first, a page at a time."""
    page = await reader.session_timeline(
        chat.id, user_id=chat.user_id, order="oldest", limit=limit, cursor=cursor
    )
    return Timeline(
        items=[Event.model_validate(event) for event in page.items], next_cursor=page.next_cursor
    )


def server_sent(entry: TailEntry[uuid.UUID]) -> str:
    """One event as a server-sent event: its cursor is the ``id`` the browser sends back."""
    data = Event.model_validate(entry.event).model_dump_json()
    return f"id: {entry.cursor}\nevent: {entry.event.event_type}\ndata: {data}\n\n"


@router.get("/stream")
async def stream_events(
    chat: Chat,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """The session's events as they commit (server-sent events), from the first or from
    ``Last-Event-ID`` when the browser reconnects: none missed, none repeated."""
    tail: AsyncEventTail[uuid.UUID] = request.app.state.tail
    # Read once here, so a bad Last-Event-ID is a 422 before the stream starts.
    page = await tail.read(session_id=chat.id, user_id=chat.user_id, cursor=last_event_id)

    async def events() -> AsyncIterator[str]:
        for entry in page.entries:
            yield server_sent(entry)
        follow = tail.follow(session_id=chat.id, user_id=chat.user_id, cursor=page.cursor)
        async for entry in follow:
            yield server_sent(entry)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


async def refused(request: Request, error: Exception) -> JSONResponse:
    """A value the package refuses (a foreign cursor, say) is the client's error."""
    return JSONResponse({"detail": str(error)}, status_code=422)


# -- the application -------------------------------------------------------------------------


def create_app(database_url: str | None = None, **writer_options: Unpack[WriterOptions]) -> FastAPI:
    """The application on ``database_url`` (default: ``$DATABASE_URL``)."""
    url = database_url or os.environ["DATABASE_URL"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(url)
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        # One LISTEN connection wakes every stream when the writer commits a batch.
        app.state.tail = AsyncEventTail(EventLog, engine)
        # Starts the event writer; on shutdown, writes what is still queued.
        async with eventlog_lifespan(app, EventLog, engine, **writer_options):
            yield
        await app.state.tail.close()  # closes its LISTEN connection
        await engine.dispose()

    app = FastAPI(title="chat_api", lifespan=lifespan)
    app.add_middleware(EventContextMiddleware)  # X-Request-ID in, out, and on every event
    app.include_router(router)
    app.add_exception_handler(ValidationError, refused)
    return app
