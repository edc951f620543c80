"""The audit's guard triggers: what they refuse (with what message) and what they record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from auditkit import add_session, audited_engine, audited_template, leaves, tombstones
from pgserver import ServerInfo
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError


@pytest.fixture(scope="module")
def template(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with audited_template(pg_server, tmp_path_factory.mktemp("audit")) as name:
        yield name


@pytest.fixture
def db(pg_server: ServerInfo, template: str) -> Iterator[Engine]:
    with audited_engine(pg_server, template) as engine:
        yield engine


@pytest.fixture
def app_role(db: Engine) -> str:
    """A role with every privilege on the host's tables, as a careless host grants them."""
    name = f"app_{db.url.database}"
    with db.begin() as connection:
        connection.execute(text(f'CREATE ROLE "{name}"'))
        connection.execute(
            text(
                f"GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA "
                f'public TO "{name}"'
            )
        )
    return name


def refusal(db: Engine, *statements: str, role: str | None = None) -> str:
    """The error message of the last statement, run after the others in one transaction."""
    with db.connect() as connection:
        if role:
            connection.execute(text(f'SET ROLE "{role}"'))
        for statement in statements[:-1]:
            connection.execute(text(statement))
        with pytest.raises(DBAPIError) as caught:
            connection.execute(text(statements[-1]))
        connection.rollback()
    return str(caught.value.orig.diag.message_primary)  # type: ignore[union-attr]


def count(db: Engine, table: str) -> int:
    with db.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- refusals ----------------------------------------------------------------------------


def test_update_of_a_payload_is_refused_for_the_application_role(db: Engine, app_role: str) -> None:
    with db.begin() as connection:
        add_session(connection, events=2)
    message = refusal(db, "UPDATE event_logs SET payload = '{}'", role=app_role)
    assert message.startswith(
        "eventlog_persist: UPDATE of event_logs refused (2 of 2 rows are not ON DELETE SET NULL "
        "of their project or agent): events are append-only;"
    )
    assert "delete it after SET LOCAL eventlog.erasure = 'erasure'" in message
    assert count(db, "event_log_erasures") == 0


@pytest.mark.parametrize(
    "change",
    [
        "project_id = NULL",  # its project still exists
        "agent_id = NULL, payload = '{}'",
        "created_at = created_at - interval '1 day'",
        "xid = '1'",
        "payload = payload",  # no change at all is no SET NULL either
    ],
)
def test_updates_other_than_set_null_are_refused(db: Engine, change: str) -> None:
    with db.begin() as connection:
        add_session(connection)
    assert "UPDATE of event_logs refused (1 of 1 rows" in refusal(
        db, f"UPDATE event_logs SET {change}"
    )


def test_set_null_mixed_with_another_change_is_refused(db: Engine) -> None:
    with db.begin() as connection:
        ids = add_session(connection)
    # Without the foreign key, the project can go first: the row may then lose project_id,
    # but nothing else.
    message = refusal(
        db,
        "ALTER TABLE event_logs DROP CONSTRAINT fk_event_logs_project_id",
        f"DELETE FROM user_projects WHERE id = '{ids['project']}'",
        "UPDATE event_logs SET project_id = NULL, tool_name = 'other'",
    )
    assert "UPDATE of event_logs refused (1 of 1 rows" in message


def test_delete_is_refused_for_the_application_role(db: Engine, app_role: str) -> None:
    with db.begin() as connection:
        add_session(connection, events=3)
    message = refusal(db, "DELETE FROM event_logs WHERE tool_name = 'search'", role=app_role)
    assert message == (
        "eventlog_persist: DELETE from event_logs refused (3 of 3 events still have their chat "
        "session and user): events are deleted only by ON DELETE CASCADE from chat_sessions or "
        "users, or after a declared erasure: run SET LOCAL eventlog.erasure = 'retention' (or "
        "'erasure') in the same transaction first; each deleted event is then recorded in "
        "event_log_erasures"
    )
    assert count(db, "event_logs") == 3


@pytest.mark.parametrize(
    "statement", ["TRUNCATE event_logs", "TRUNCATE chat_sessions, users CASCADE"]
)
def test_truncate_is_refused_for_the_application_role(
    db: Engine, app_role: str, statement: str
) -> None:
    with db.begin() as connection:
        add_session(connection)
    message = refusal(db, statement, role=app_role)
    assert message == (
        "eventlog_persist: TRUNCATE of event_logs refused: it would erase events without "
        "recording them. Delete them instead after SET LOCAL eventlog.erasure = 'retention' "
        "(or 'erasure'), which records each in event_log_erasures; to remove the audit "
        "schema, downgrade the audit revisions (alembic downgrade eventlog_audit@base; in "
        "linear mode, alembic downgrade to the revision of your history before the one that "
        "added them)"
    )
    assert count(db, "event_logs") == 1


def test_an_unknown_kind_of_erasure_is_refused(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection)
    message = refusal(db, "SET LOCAL eventlog.erasure = 'cleanup'", "DELETE FROM event_logs")
    assert message == (
        "eventlog_persist: DELETE from event_logs refused: eventlog.erasure = 'cleanup' is not "
        "a kind of erasure; use SET LOCAL eventlog.erasure = 'retention' or 'erasure'"
    )


@pytest.mark.parametrize("table", ["event_log_erasures", "event_log_seals"])
@pytest.mark.parametrize(
    ("operation", "statement"),
    [
        ("UPDATE", "UPDATE {} SET sealed_at = now()"),
        ("DELETE", "DELETE FROM {}"),
        ("TRUNCATE", "TRUNCATE {}"),
    ],
)
def test_the_audit_records_are_append_only(
    db: Engine, table: str, operation: str, statement: str
) -> None:
    statement = statement.replace("sealed_at", "erased_at" if "erasures" in table else "sealed_at")
    assert refusal(db, statement.format(table)) == (
        f"eventlog_persist: {operation} of {table} refused: the audit records are append-only; "
        "to remove them all, downgrade the audit revisions (alembic downgrade "
        "eventlog_audit@base; in linear mode, alembic downgrade to the revision of your history "
        "before the one that added them)"
    )


def test_an_empty_delete_or_update_needs_no_declaration(db: Engine) -> None:
    with db.begin() as connection:
        add_session(connection)
        connection.execute(text("DELETE FROM event_logs WHERE false"))
        connection.execute(text("UPDATE event_logs SET payload = '{}' WHERE false"))
    assert count(db, "event_logs") == 1


# -- legitimate erasures and their tombstones -------------------------------------------


def test_cascade_from_a_chat_session_records_each_event(db: Engine, app_role: str) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=3)
        other = add_session(connection, user=ids["user"], project=ids["project"], events=1)
        before = leaves(connection)
    with db.begin() as connection:
        connection.execute(text(f'SET LOCAL ROLE "{app_role}"'))  # no privilege on erasures
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": ids["session"]})
    with db.connect() as connection:
        stones = tombstones(connection)
        remaining = leaves(connection)
    assert set(remaining) == set(other["events"])
    assert [stone["kind"] for stone in stones] == ["cascade"] * 3
    assert {stone["event_id"]: stone["leaf"] for stone in stones} == {
        event: before[event] for event in ids["events"]
    }
    stone = stones[0]
    assert stone["session_id"] == str(ids["session"])
    assert stone["user_id"] == str(ids["user"])
    assert stone["project_id"] == str(ids["project"])
    assert stone["agent_id"] == str(ids["agent"])
    assert stone["event_xid"] is not None
    assert stone["erased_xid"] is not None


def test_cascade_from_a_user_records_each_event_once(db: Engine) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=2)
        add_session(connection, user=ids["user"], events=2)  # a second session, project, agent
        kept = add_session(connection, events=1)
        before = leaves(connection)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM users WHERE id = :u"), {"u": ids["user"]})
    with db.connect() as connection:
        stones = tombstones(connection)
        assert set(leaves(connection)) == set(kept["events"])
    # Both sessions' events, each once: by chat_sessions' or by users' cascade, whichever ran
    # first; the projects' and agents' SET NULL may run before and record set_null first.
    deleted = [stone for stone in stones if stone["kind"] == "cascade"]
    assert sorted(str(stone["event_id"]) for stone in deleted) == sorted(
        str(event) for event in before if event not in kept["events"]
    )
    for stone in stones:
        assert stone["kind"] in ("cascade", "set_null")
        assert stone["leaf"] == before[stone["event_id"]]


def test_set_null_from_projects_and_agents_records_the_old_keys(db: Engine) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=2)
        first = leaves(connection)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_projects WHERE id = :p"), {"p": ids["project"]})
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_agents WHERE id = :a"), {"a": ids["agent"]})
    with db.connect() as connection:
        stones = tombstones(connection)
        now = leaves(connection)
        keys = connection.execute(text("SELECT project_id, agent_id FROM event_logs")).all()
    assert keys == [(None, None), (None, None)]
    assert [stone["kind"] for stone in stones] == ["set_null"] * 4
    by_event: dict[Any, list[dict[str, Any]]] = {}
    for stone in stones:
        by_event.setdefault(stone["event_id"], []).append(stone)
    for event, (project, agent) in by_event.items():
        # Both carry the leaf as first written, which the current row no longer gives.
        assert project["leaf"] == agent["leaf"] == first[event] != now[event]
        assert (project["project_id"], project["agent_id"]) == (
            str(ids["project"]),
            str(ids["agent"]),
        )
        assert (agent["project_id"], agent["agent_id"]) == (None, str(ids["agent"]))
    # Deleted later, each event's tombstone still carries its first-written leaf.
    with db.begin() as connection:
        connection.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": ids["session"]})
    with db.connect() as connection:
        last = tombstones(connection)[4:]
    assert [stone["kind"] for stone in last] == ["cascade", "cascade"]
    assert {stone["event_id"]: stone["leaf"] for stone in last} == first


def test_set_null_of_many_events_in_one_statement(db: Engine) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=500)
    with db.begin() as connection:
        connection.execute(text("DELETE FROM user_projects WHERE id = :p"), {"p": ids["project"]})
    assert count(db, "event_log_erasures") == 500
    assert count(db, "event_logs WHERE project_id IS NULL") == 500


@pytest.mark.parametrize("kind", ["retention", "erasure"])
def test_a_declared_erasure_deletes_and_records(db: Engine, kind: str) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=3)
        before = leaves(connection)
    with db.begin() as connection:
        connection.execute(text(f"SET LOCAL eventlog.erasure = '{kind}'"))
        connection.execute(text("DELETE FROM event_logs WHERE id = :e"), {"e": ids["events"][0]})
    with db.connect() as connection:
        stones = tombstones(connection)
    assert [(s["kind"], s["event_id"], s["leaf"]) for s in stones] == [
        (kind, ids["events"][0], before[ids["events"][0]])
    ]
    # SET LOCAL ends with its transaction: the next DELETE is refused again.
    assert "DELETE from event_logs refused (2 of 2" in refusal(db, "DELETE FROM event_logs")


def test_inserts_are_not_guarded(db: Engine, tmp_path: Path) -> None:
    with db.begin() as connection:
        ids = add_session(connection, events=50)
        copied = connection.execute(
            text(
                "INSERT INTO event_logs (id, session_id, user_id, event_type, payload) "
                "SELECT gen_random_uuid(), session_id, user_id, event_type, payload "
                "FROM event_logs RETURNING id"
            )
        ).all()
    assert len(copied) == len(ids["events"])
    assert count(db, "event_log_erasures") == 0
