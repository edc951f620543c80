"""Waiting for what another thread or process does, without betting on how long it takes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, text


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def waits_for_a_lock(engine: Engine) -> bool:
    """Whether a session waits for a lock on event_logs (a write held by a LOCK TABLE)."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks "
                    "WHERE NOT granted AND relation = 'event_logs'::regclass"
                )
            ).scalar_one()
        )


async def cancel_the_write(engine: Engine) -> None:
    """A host's shutdown that cancels every other task, once a writer's batch waits for a
    lock on event_logs: the writer's task is cancelled mid-write."""
    while not waits_for_a_lock(engine):
        await asyncio.sleep(0.01)
    others = asyncio.all_tasks() - {asyncio.current_task()}
    for task in others:
        task.cancel()
    await asyncio.wait(others)


async def cancel_the_write_then_close(writer: Any, engine: Engine) -> Any:
    """`cancel_the_write`, then close ``writer``; its counters."""
    await cancel_the_write(engine)
    return await writer.close(timeout=0)
