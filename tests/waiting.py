"""Waiting for what another thread or process does, without betting on how long it takes."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Engine, text


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail the test if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.01)


def waits_for_a_lock(engine: Engine, table: str = "event_logs") -> bool:
    """Whether a session waits for a lock on ``table`` (a write held by a test's LOCK TABLE)."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks "
                    "WHERE NOT granted AND relation = to_regclass(:table)"
                ),
                {"table": table},
            ).scalar_one()
        )
