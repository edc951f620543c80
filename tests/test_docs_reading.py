"""The examples of docs/reading.md run, in order, against a real database: the Python
blocks, and the ``eventlog-persist purge`` commands with the output the page shows."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hostmodels import HostModels
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from eventlog_persist._cli import main

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
    assert "batch 1: 3 events deleted so far" in printed
    assert "deleted 3 events in 1 batches" in printed


CONSOLE = re.compile(r"^```console\n(.*?)^```", re.DOTALL | re.MULTILINE)
SHELL = re.compile(r"^```sh\n(.*?)^```", re.DOTALL | re.MULTILINE)


def purge_section() -> str:
    text = DOC.read_text()
    start = text.index("### From cron: `eventlog-persist purge`")
    return text[start : text.index("\n## ", start)]


def run_command(command: str, variables: dict[str, str]) -> tuple[int, list[str]]:
    """Run an ``eventlog-persist ...`` line as a shell would, in this process.

    Returns the exit status and the lines of stdout and stderr, interleaved as printed.
    """
    program, *argv = (string.Template(arg).substitute(variables) for arg in shlex.split(command))
    assert program == "eventlog-persist", command
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = main(argv)
    return status, output.getvalue().splitlines()


def test_purge_command_examples_run_and_print_what_the_page_shows(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> None:
    """Each ``$ command`` of the console blocks, in order, prints the lines below it (``…``
    stands for a time or a count that varies) and exits 2 when they are a refusal, else 0.
    Then every command of the sh blocks (comments dropped, a cron schedule cut off) exits 0.
    """
    data = host_data(host_engine, host_models)
    variables = {
        "DATABASE_URL": database_url.render_as_string(hide_password=False),
        "PROJECT_ID": str(data["project_id"]),
        "USER_ID": str(data["alice_id"]),
    }
    section = purge_section()
    runs = 0
    for block in CONSOLE.findall(section):
        for session in block.split("$ ")[1:]:
            command, *expected = session.rstrip("\n").split("\n")
            status, lines = run_command(command, variables)
            patterns = [re.escape(line).replace("…", ".+") for line in expected]
            assert len(lines) == len(patterns), (command, lines)
            for pattern, line in zip(patterns, lines, strict=True):
                assert re.fullmatch(pattern, line), (command, line)
            assert status == (2 if any(": error: " in line for line in expected) else 0), command
            runs += 1
    for block in SHELL.findall(section):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                command = line[line.index("eventlog-persist") :]
                status, lines = run_command(command, variables)
                assert status == 0, (command, lines)
                runs += 1
    assert runs == 11
