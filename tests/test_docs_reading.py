"""The examples of docs/reading.md run, in order, against a real database: the Python
blocks, and the ``eventlog-persist purge`` commands with the output the page shows."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hostmodels import HostModels
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session
from test_write_docs import load as load_example

from eventlog_persist import MAX_OFFSET, MAX_PAGE_SIZE
from eventlog_persist._cli import main

DOC = Path(__file__).resolve().parent.parent / "docs" / "reading.md"
FASTAPI_EXAMPLE = DOC.parent / "examples" / "reading_fastapi.py"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
# The first line of a block that shows lines of the FastAPI example rather than running.
EXCERPT = "# examples/reading_fastapi.py"


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
        if match.group(1).startswith(EXCERPT):
            continue  # run by the tests of the example below
        line = text[: match.start()].count("\n") + 2
        code = compile(match.group(1), f"{DOC}:{line}", "exec")
        exec(code, namespace)
    printed = capsys.readouterr().out
    assert "belongs to another query" in printed
    assert "offset=10001 is beyond MAX_OFFSET (10000)" in printed
    assert "batch 1: 3 events deleted so far" in printed
    assert "deleted 3 events in 1 batches" in printed
    assert "gpt-4o: 600 input, 60 output tokens" in printed


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


# -- docs/examples/reading_fastapi.py: the analytics router, served against the database ----


@dataclass
class Analytics:
    client: TestClient
    alice: Any
    bob: Any
    project: Any
    chat: Any
    agent: Any
    second_agent: Any

    def get(self, path: str, *, user: Any = None, **params: Any) -> Any:
        """GET ``/analytics<path>`` as ``user`` (Alice by default); the JSON body of a 200."""
        response = self.client.get(
            f"/analytics{path}",
            params=params,
            headers={"X-User-Id": str(user or self.alice)},
        )
        assert response.status_code == 200, response.text
        return response.json()

    def refused(self, path: str, **params: Any) -> str:
        """The ``detail`` of a 422 answer, as text."""
        response = self.client.get(
            f"/analytics{path}", params=params, headers={"X-User-Id": str(self.alice)}
        )
        assert response.status_code == 422, response.text
        return str(response.json()["detail"])


@pytest.fixture
def analytics(
    host_engine: Engine, host_models: HostModels, database_url: URL
) -> Iterator[Analytics]:
    """The router of the example on the page's data, plus a second agent of Alice's and two
    events of Bob's in Alice's project (a shared project: neither may see the other's)."""
    data = host_data(host_engine, host_models)
    now = datetime.now(UTC)
    with Session(host_engine) as session:
        second_agent = host_models.UserAgent(id=host_models.new_key(), user_id=data["alice_id"])
        bobs_chat = host_models.ChatSession(id=host_models.new_key(), user_id=data["bob_id"])
        session.add_all([second_agent, bobs_chat])
        session.flush()
        shared = {"project_id": data["project_id"], "created_at": now - timedelta(hours=12)}
        session.add_all(
            [
                host_models.EventLog(
                    session_id=data["session_id"],
                    user_id=data["alice_id"],
                    agent_id=second_agent.id,
                    event_type=kind,
                    error_code="quota" if kind == "error" else None,
                    **shared,
                )
                for kind in ("tool_call", "tool_result", "error")
            ]
            + [
                host_models.EventLog(
                    session_id=bobs_chat.id,
                    user_id=data["bob_id"],
                    agent_id=data["agent_id"],
                    event_type="error",
                    error_code="bobs",
                    **shared,
                )
                for _ in range(2)
            ]
        )
        session.commit()
        second_agent_id = second_agent.id
    example = load_example("reading_fastapi.py")
    app = example.create_app(  # type: ignore[attr-defined]
        database_url.render_as_string(hide_password=False), host_models.EventLog
    )
    with TestClient(app) as client:
        yield Analytics(
            client,
            data["alice_id"],
            data["bob_id"],
            data["project_id"],
            data["session_id"],
            data["agent_id"],
            second_agent_id,
        )


def test_the_page_shows_the_fastapi_example() -> None:
    """Every line of the page's excerpts is a line of the example, so none can go stale."""
    page = DOC.read_text()
    assert "examples/reading_fastapi.py" in page
    source = {line.strip() for line in FASTAPI_EXAMPLE.read_text().splitlines()}
    excerpts = [block for block in BLOCK.findall(page) if block.startswith(EXCERPT)]
    assert len(excerpts) >= 2
    for block in excerpts:
        lines = [line.strip() for line in block.splitlines()[1:]]
        missing = [line for line in lines if line not in ("", "...") and line not in source]
        assert missing == [], "docs/reading.md shows code that the example does not have"


def test_project_events_filter_page_and_count_only_the_users_own(analytics: Analytics) -> None:
    project = f"/projects/{analytics.project}/events"
    everything = analytics.get(project, limit=MAX_PAGE_SIZE)
    assert everything["total"] == len(everything["items"]) == 17
    times = [item["created_at"] for item in everything["items"]]
    assert times == sorted(times, reverse=True)
    assert {item["error_code"] for item in everything["items"]} == {None, "timeout", "quota"}
    # Bob sees his two events of the shared project, and Alice none of them.
    bobs = analytics.get(project, user=analytics.bob)
    assert bobs["total"] == 2
    assert {item["error_code"] for item in bobs["items"]} == {"bobs"}

    typed = analytics.get(project, event_type=["tool_call", "error"])
    assert typed["total"] == len(typed["items"]) == 6
    of_agent = analytics.get(project, agent_id=str(analytics.second_agent))
    assert of_agent["total"] == 3
    assert {item["agent_id"] for item in of_agent["items"]} == {str(analytics.second_agent)}
    since = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    recent = analytics.get(project, since=since)
    assert recent["total"] == 7 + 3
    combined = analytics.get(
        project,
        event_type="error",
        agent_id=str(analytics.agent),
        since=since,
        until=datetime.now(UTC).isoformat(),
    )
    assert combined["total"] == 1
    assert [item["error_code"] for item in combined["items"]] == ["timeout"]

    # limit/offset pages are slices of the whole, each with the same total.
    paged = []
    for offset in range(0, 20, 5):
        page = analytics.get(project, limit=5, offset=offset)
        assert (page["total"], page["limit"], page["offset"]) == (17, 5, offset)
        paged += page["items"]
    assert paged == everything["items"]
    # A page's cursor continues right after it: the recommended way to page deep.
    first = analytics.get(project, limit=5, offset=5)
    following = analytics.get(project, limit=5, cursor=first["next_cursor"])
    assert following["items"] == everything["items"][10:15]


def test_session_events_oldest_first_only_for_its_owner(analytics: Analytics) -> None:
    path = f"/sessions/{analytics.chat}/events"
    events, cursor = [], None
    while True:
        page = analytics.get(path, limit=4, **({"cursor": cursor} if cursor else {}))
        events += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(events) == 14 + 3 + 3
    times = [event["created_at"] for event in events]
    assert times == sorted(times)
    assert len({event["id"] for event in events}) == len(events)
    assert analytics.get(path, user=analytics.bob) == {"items": [], "next_cursor": None}


def test_summary_counts_by_type_and_agent_and_errors(analytics: Analytics) -> None:
    everything = analytics.get("/summary")
    assert everything["total"] == 20
    by_type = {group["key"]: group["count"] for group in everything["by_event_type"]}
    assert by_type["user_message"] == 2 + 3
    assert by_type["error"] == 3
    assert sum(by_type.values()) == 20
    by_agent = {group["key"]: group["count"] for group in everything["by_agent"]}
    assert by_agent == {str(analytics.agent): 14, str(analytics.second_agent): 3, None: 3}
    assert everything["errors"] == {
        "total": 3,
        "rate": 3 / 20,
        "by_code": [{"key": "timeout", "count": 2}, {"key": "quota", "count": 1}],
    }
    recent = analytics.get(
        "/summary",
        project_id=str(analytics.project),
        since=(datetime.now(UTC) - timedelta(days=2)).isoformat(),
    )
    assert recent["total"] == 10
    assert recent["errors"]["total"] == 2
    bobs = analytics.get("/summary", user=analytics.bob)
    assert bobs["total"] == 3 + 2
    assert bobs["errors"]["by_code"] == [{"key": "bobs", "count": 2}]


def test_bad_requests_are_refused_with_the_reason(analytics: Analytics) -> None:
    project = f"/projects/{analytics.project}/events"
    # Bounds the router declares with the package's constants: FastAPI refuses them.
    for params in (
        {"offset": MAX_OFFSET + 1},
        {"offset": -1},
        {"limit": 0},
        {"limit": MAX_PAGE_SIZE + 1},
        {"agent_id": "agent-7"},
        {"offset": "ten"},
    ):
        detail = analytics.refused(project, **params)
        assert next(iter(params)) in detail, (params, detail)
    # Values only the reader can judge: its ValidationError becomes a 422 with its message.
    assert "naive datetime" in analytics.refused(project, since="2025-01-01T00:00:00")
    assert "naive datetime" in analytics.refused("/summary", until="2025-01-01T00:00:00")
    assert "since must be before until" in analytics.refused(
        project, since="2025-02-01T00:00:00Z", until="2025-01-01T00:00:00Z"
    )
    cursor = analytics.get(project, limit=2)["next_cursor"]
    assert "offset=4 was given with a cursor" in analytics.refused(
        project, limit=2, offset=4, cursor=cursor
    )
    assert "belongs to another query" in analytics.refused(project, event_type="x", cursor=cursor)
    assert "Page.next_cursor" in analytics.refused(project, cursor="not-a-cursor")
    assert "non-empty str" in analytics.refused(project, event_type="")
    response = analytics.client.get(f"/analytics{project}")  # no signed-in user
    assert response.status_code == 422
    assert "x-user-id" in response.text
