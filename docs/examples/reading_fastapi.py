"""A host's analytics API over the event log: a FastAPI router for the signed-in user."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import create_async_engine

from eventlog_persist import (
    ANY_ERROR,
    MAX_OFFSET,
    MAX_PAGE_SIZE,
    AsyncEventLogReader,
    EventFilter,
    EventLogMixin,
    GroupCount,
    exceptions,
)


class Event(BaseModel):
    """One event as the API returns it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    session_id: uuid.UUID
    project_id: uuid.UUID | None
    agent_id: uuid.UUID | None
    event_type: str
    payload: Any
    created_at: datetime
    error_code: str | None
    tool_name: str | None
    approval_status: str | None


class ProjectEvents(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[Event]
    next_cursor: str | None


class SessionEvents(BaseModel):
    items: list[Event]
    next_cursor: str | None


class Count(BaseModel):
    key: str | None
    count: int


class ErrorStats(BaseModel):
    total: int
    rate: float
    by_code: list[Count]


class Summary(BaseModel):
    total: int
    by_event_type: list[Count]
    by_agent: list[Count]
    errors: ErrorStats


def current_user(x_user_id: Annotated[uuid.UUID, Header()]) -> uuid.UUID:
    """Stands in for the host's authentication: return the signed-in user's id."""
    return x_user_id


def event_reader(request: Request) -> AsyncEventLogReader[uuid.UUID]:
    reader: AsyncEventLogReader[uuid.UUID] = request.app.state.event_reader
    return reader


User = Annotated[uuid.UUID, Depends(current_user)]
Reader = Annotated[AsyncEventLogReader[uuid.UUID], Depends(event_reader)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]

router = APIRouter(prefix="/analytics")


@router.get("/projects/{project_id}/events")
async def project_events(
    project_id: uuid.UUID,
    user: User,
    reader: Reader,
    event_type: Annotated[list[str] | None, Query()] = None,
    agent_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    cursor: str | None = None,
) -> ProjectEvents:
    """The project's events of the signed-in user, newest first, with their total."""
    filters = EventFilter(event_types=event_type, since=since, until=until)
    page = await reader.project_timeline(
        project_id,
        user_id=user,  # only the signed-in user's events
        agent_id=agent_id,
        filters=filters,
        limit=limit,
        offset=offset,
        cursor=cursor,
    )
    # The same scope and filters as keywords: the total of every page.
    total = await reader.count(
        project_id=project_id, user_id=user, agent_id=agent_id, filters=filters
    )
    items = [Event.model_validate(event) for event in page.items]
    return ProjectEvents(
        total=total, limit=limit, offset=offset, items=items, next_cursor=page.next_cursor
    )


@router.get("/sessions/{session_id}/events")
async def session_events(
    session_id: uuid.UUID,
    user: User,
    reader: Reader,
    limit: Limit = 50,
    cursor: str | None = None,
) -> SessionEvents:
    """One chat session of the signed-in user, oldest first; another user's reads empty."""
    page = await reader.session_timeline(
        session_id, user_id=user, order="oldest", limit=limit, cursor=cursor
    )
    items = [Event.model_validate(event) for event in page.items]
    return SessionEvents(items=items, next_cursor=page.next_cursor)


def counts(groups: list[GroupCount]) -> list[Count]:
    return [Count(key=None if g.key is None else str(g.key), count=g.count) for g in groups]


@router.get("/summary")
async def summary(
    user: User,
    reader: Reader,
    project_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Summary:
    """Counts by event type and by agent, and error statistics, of the signed-in user."""
    # Without since/until the counts cover all time: every index entry of the scope is read.
    count_by = partial(
        reader.count_by, user_id=user, project_id=project_id, since=since, until=until
    )
    by_type = await count_by("event_type")
    by_agent = await count_by("agent_id")
    by_code = await count_by("error_code", filters=EventFilter(error_code=ANY_ERROR))
    total = sum(group.count for group in by_type)
    failed = sum(group.count for group in by_code)
    return Summary(
        total=total,
        by_event_type=counts(by_type),
        by_agent=counts(by_agent),
        errors=ErrorStats(
            total=failed, rate=failed / total if total else 0.0, by_code=counts(by_code)
        ),
    )


async def refused(request: Request, error: Exception) -> JSONResponse:
    """A value the reader refuses (a naive datetime, a foreign cursor) is the client's error."""
    return JSONResponse({"detail": str(error)}, status_code=422)


def create_app(database_url: str, event_log: type[EventLogMixin[uuid.UUID]]) -> FastAPI:
    """The host's app: one engine and one reader for its lifetime, and the router."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        app.state.event_reader = AsyncEventLogReader(event_log, engine)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(exceptions.ValidationError, refused)
    return app
