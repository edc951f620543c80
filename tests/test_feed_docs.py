"""The examples of docs/feed.md run, in order, against a real database."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hostmodels import HostModels, build_host_models, seed
from sqlalchemy import Engine, text

from eventlog_persist import EventRecord, new_event, write_events

DOC = Path(__file__).resolve().parent.parent / "docs" / "feed.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


@pytest.fixture
def host_models() -> HostModels:
    return build_host_models(feed=True)


def test_the_feed_page_examples_run(host_engine: Engine, host_models: HostModels) -> None:
    user_id, session_id = seed(host_engine, host_models)

    def write(n: int) -> None:
        events = [
            new_event(session_id=session_id, user_id=user_id, event_type="chat", payload={"i": i})
            for i in range(n)
        ]
        write_events(host_models.EventLog, host_engine, events)

    shipped: list[EventRecord[Any]] = []
    namespace: dict[str, Any] = {
        "EventLog": host_models.EventLog,
        "engine": host_engine,
        "ship": shipped.extend,
    }
    blocks = BLOCK.findall(DOC.read_text())
    assert len(blocks) == 5
    write(3)
    exec(blocks[0], namespace)
    assert len(shipped) == 3
    exec(blocks[1], namespace)
    write(40)
    stop = threading.Event()
    worker = threading.Thread(target=namespace["consume"], args=(namespace["feed"], stop))
    worker.start()
    deadline = time.monotonic() + 20
    while len(shipped) < 43 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(timeout=10)
    assert len({event.id for event in shipped}) == len(shipped) == 43
    with host_engine.connect() as connection:
        owner, delivered = connection.execute(
            text("SELECT owner, delivered FROM event_log_consumers WHERE consumer = 'warehouse'")
        ).one()
    assert (owner, delivered) == (None, 43)  # released at shutdown

    shipped.clear()
    exec(blocks[2], namespace)  # four workers, four parts: every event once
    assert sorted(event.id for event in shipped) == sorted(stored(host_engine))
    assert sorted(feed.fetch().part for feed in namespace["workers"]) == [0, 1, 2, 3]

    with host_engine.begin() as connection:
        connection.execute(text("CREATE TABLE event_kinds (event_id uuid, kind text)"))
    exec(blocks[3], namespace)
    with host_engine.connect() as connection:
        kinds = connection.execute(text("SELECT event_id FROM event_kinds")).scalars().all()
        delivered = connection.execute(
            text("SELECT delivered FROM event_log_consumers WHERE consumer = 'ledger'")
        ).scalar_one()
    assert sorted(kinds) == sorted(stored(host_engine))
    assert delivered == 43

    sent: list[tuple[str, EventRecord[Any]]] = []
    namespace.update(session_id=session_id, user_id=user_id, send=lambda *a: sent.append(a))
    exec(blocks[4], namespace)  # a session's tail, then what came after
    assert [event.id for _, event in sent] == [event.id for event in shipped]
    assert namespace["later"].entries == ()


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(text("SELECT id FROM event_logs")).scalars())
