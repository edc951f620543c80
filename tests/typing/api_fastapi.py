"""eventlog_persist.fastapi as a host writes it; type-checked by mypy --strict in CI, never
run. See ``api.py`` for the conventions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, assert_type

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from eventlog_persist import AsyncBufferedWriter, AsyncEventLogReader, EventLogMixin
from eventlog_persist.fastapi import (
    EventContextMiddleware,
    WriterOptions,
    event_reader,
    event_writer,
    eventlog_lifespan,
)


class Base(DeclarativeBase):
    pass


class EventLog(EventLogMixin[uuid.UUID], Base):
    pass


Events = Annotated[AsyncBufferedWriter[uuid.UUID], Depends(event_writer)]
Reader = Annotated[AsyncEventLogReader[uuid.UUID], Depends(event_reader)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine("postgresql+psycopg://app@db/app")
    async with eventlog_lifespan(
        app, EventLog, engine, batch_size=500, when_full="drop_newest"
    ) as writer:
        assert_type(writer, AsyncBufferedWriter[uuid.UUID])
        yield
    await engine.dispose()


async def misuse(app: FastAPI, engine: AsyncEngine) -> None:
    async with eventlog_lifespan(app, EventLog, engine, batch=500):  # type: ignore[call-arg]
        pass
    async with eventlog_lifespan(app, EventLog, engine, when_full="wait"):  # type: ignore[arg-type]
        pass
    async with eventlog_lifespan(app, EventLog, "postgresql://db/app"):  # type: ignore[arg-type]
        pass


async def with_options(app: FastAPI, engine: AsyncEngine) -> None:
    options: WriterOptions = {"flush_interval": 0.1, "spool": None}
    async with eventlog_lifespan(app, EventLog, engine, **options):
        pass
    wrong: WriterOptions = {"flush_interval": "fast"}  # type: ignore[typeddict-item]
    del wrong


def build() -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    app.add_middleware(EventContextMiddleware, header="X-Correlation-ID")
    app.add_middleware(EventContextMiddleware, headers="X")  # type: ignore[call-arg]
    return app
