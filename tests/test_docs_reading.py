"""The Python examples of docs/reading.md run, in order, against a real database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hostmodels import HostModels
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

DOC = Path(__file__).resolve().parent.parent / "docs" / "reading.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def host_data(engine: Engine, models: HostModels) -> dict[str, Any]:
    """Alice's chat with recent events (two timeouts among them) and old ones; Bob's old ones."""
    now = datetime.now(UTC)
    with Session(engine) as session:
        alice, bob = models.User(id=models.new_key()), models.User(id=models.new_key())
        session.add_all([alice, bob])
        session.flush()
        chat = models.ChatSession(id=models.new_key(), user_id=alice.id)
        bobs_chat = models.ChatSession(id=models.new_key(), user_id=bob.id)
        project = models.UserProject(id=models.new_key(), user_id=alice.id)
        agent = models.UserAgent(id=models.new_key(), user_id=alice.id)
        session.add_all([chat, bobs_chat, project, agent])
        session.flush()
        steps = [
            ("user_message", {}),
            ("tool_call", {"tool_name": "web_search"}),
            ("tool_result", {"tool_name": "web_search"}),
            ("approval_requested", {"tool_name": "send_mail", "approval_status": "pending"}),
            ("approval_granted", {"tool_name": "send_mail", "approval_status": "granted"}),
            ("error", {"error_code": "timeout"}),
            ("agent_message", {}),
        ]
        events = []
        for day in (1, 3):
            for n, (kind, columns) in enumerate(steps):
                events.append(
                    models.EventLog(
                        session_id=chat.id,
                        user_id=alice.id,
                        project_id=project.id,
                        agent_id=agent.id,
                        event_type=kind,
                        payload={"step": n},
                        created_at=now - timedelta(days=day, minutes=-n),
                        **columns,
                    )
                )
        for owner, where in ((alice.id, chat.id), (bob.id, bobs_chat.id)):
            events += [
                models.EventLog(
                    session_id=where,
                    user_id=owner,
                    event_type="user_message",
                    created_at=now - timedelta(days=200 + n),
                )
                for n in range(3)
            ]
        session.add_all(events)
        session.commit()
        return {
            "alice_id": alice.id,
            "bob_id": bob.id,
            "session_id": chat.id,
            "project_id": project.id,
            "agent_id": agent.id,
        }


def test_doc_has_examples() -> None:
    assert len(BLOCK.findall(DOC.read_text())) >= 8


def test_reading_examples_run(
    host_engine: Engine,
    host_models: HostModels,
    database_url: URL,
    capsys: pytest.CaptureFixture[str],
) -> None:
    namespace: dict[str, Any] = {
        "__name__": "docs_reading",
        "engine": host_engine,
        "EventLog": host_models.EventLog,
        "database_url": database_url,
        **host_data(host_engine, host_models),
    }
    text = DOC.read_text()
    for match in BLOCK.finditer(text):
        line = text[: match.start()].count("\n") + 2
        code = compile(match.group(1), f"{DOC}:{line}", "exec")
        exec(code, namespace)
    printed = capsys.readouterr().out
    assert "belongs to another query" in printed
    assert "deleted 3 events in 1 batches" in printed
