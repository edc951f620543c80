"""Schema changes after the first release: data kept on upgrade and downgrade, rolling deploys.

Revision evl_0002 adds ``request_id``, ``trace_id`` and ``span_id``. A host upgrades a
database that holds events; during a rolling deploy the previous release keeps running
against the new schema, which these tests run for real (its code comes from git history).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
import uuid
from pathlib import Path

import pytest
from catalog import UUID_KEYS, expected_event_logs, of_table, snapshot
from hostkit import HostProject, make_host
from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from eventlog_persist import UNSCOPED, EventLogReader, EventWriter, event_context, new_event
from eventlog_persist.exceptions import EventWriteError

REPOSITORY = Path(__file__).resolve().parent.parent
RELEASE_0_2_0 = "2cabced"
"""The commit of release 0.2.0, the last one whose schema is evl_0001 alone."""

ROWS_SQL = """
INSERT INTO event_logs (id, session_id, user_id, event_type, payload, created_at, tool_name)
SELECT gen_random_uuid(), :session, :user, 'tool_call', jsonb_build_object('n', n),
       now() - make_interval(secs => n), 'search'
FROM generate_series(1, 500) AS n
"""


@pytest.fixture
def host(tmp_path: Path, database_url: URL) -> HostProject:
    return make_host(tmp_path / "host", database_url)


def seed_host(engine: Engine) -> tuple[uuid.UUID, uuid.UUID]:
    user, chat = uuid.uuid4(), uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO users (id, name) VALUES (:u, 'Ada')"), {"u": user})
        conn.execute(
            text("INSERT INTO chat_sessions (id, user_id, title) VALUES (:c, :u, 't')"),
            {"c": chat, "u": user},
        )
    return user, chat


def rows(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT id, session_id, user_id, event_type, payload, created_at, tool_name "
                    "FROM event_logs ORDER BY id"
                )
            )
        )


def test_upgrade_of_a_database_with_events_keeps_every_row_and_downgrade_too(
    host: HostProject, engine: Engine
) -> None:
    host.run("upgrade", "evl_0001")  # what 0.1 and 0.2 created
    user, chat = seed_host(engine)
    with engine.begin() as conn:
        conn.execute(text(ROWS_SQL), {"session": chat, "user": user})
    before = rows(engine)
    host.run("upgrade", "heads")
    with engine.connect() as conn:
        assert of_table(snapshot(conn), "event_logs") == expected_event_logs(UUID_KEYS)
        assert conn.scalar(
            text("SELECT count(*) FROM event_logs WHERE request_id IS NULL AND trace_id IS NULL")
        ) == len(before)
    assert rows(engine) == before
    assert "No new upgrade operations detected." in host.run("check").stdout
    result = host.run("downgrade", "eventlog@-1")
    assert "Running downgrade evl_0002 -> evl_0001" in result.stderr
    with engine.connect() as conn:
        columns = set(of_table(snapshot(conn), "event_logs")["columns"])
    assert columns.isdisjoint({"request_id", "trace_id", "span_id"})
    assert rows(engine) == before


def test_this_release_on_the_older_schema_names_the_upgrade(
    host: HostProject, engine: Engine
) -> None:
    # Code deployed before its migration ran: the write fails in the caller, with the fix.
    host.run("upgrade", "evl_0001")
    user, chat = seed_host(engine)
    model = _host_event_log(host)
    with pytest.raises(EventWriteError, match="alembic upgrade"):
        EventWriter(model).record_detached(
            engine, new_event(session_id=chat, user_id=user, event_type="chat")
        )


def _host_event_log(host: HostProject) -> type:
    sys.path.insert(0, str(host.root))
    try:
        for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
            del sys.modules[name]
        from app.models import EventLog  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(host.root))
    return EventLog  # type: ignore[no-any-return]


_PREVIOUS = textwrap.dedent(
    """
    import sys, uuid
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session
    import eventlog_persist
    from eventlog_persist import UNSCOPED, BufferedWriter, EventLogReader, EventWriter
    from eventlog_persist import new_event, write_events
    from app.models import EventLog

    assert eventlog_persist.__file__.startswith(sys.argv[2]), eventlog_persist.__file__
    assert not hasattr(EventLog, "trace_id")  # the model of the previous release
    engine = create_engine(sys.argv[1])
    chat, user = uuid.UUID(sys.argv[3]), uuid.UUID(sys.argv[4])
    keys = {"session_id": chat, "user_id": user}
    with Session(engine) as session:
        EventWriter(EventLog).record(session, event_type="old_record", **keys)
        session.commit()
    write_events(EventLog, engine, [new_event(event_type="old_bulk", **keys)])
    with BufferedWriter(EventLog, engine) as writer:
        writer.enqueue(event_type="old_buffered", **keys)
    page = EventLogReader(EventLog, engine).session_timeline(chat, user_id=UNSCOPED, order="oldest")
    print(" ".join(record.event_type for record in page.items))
    """
)


def previous_release(target: Path) -> Path:
    """The package and example host of release 0.2.0, unpacked from git under ``target``."""
    if not (REPOSITORY / ".git").exists():
        pytest.skip("not a git checkout: the previous release's code comes from git history")
    archive = subprocess.run(
        [
            "git",
            "-C",
            str(REPOSITORY),
            "archive",
            "--format=tar",
            RELEASE_0_2_0,
            "src",
            "examples/host_app/app",
        ],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(
            f"cannot read release 0.2.0 ({RELEASE_0_2_0}) from git: "
            f"{archive.stderr.decode().strip()}; fetch the full history (git fetch --unshallow)"
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


def test_the_previous_release_keeps_working_on_the_new_schema(
    host: HostProject, engine: Engine, tmp_path: Path
) -> None:
    host.run("upgrade", "heads")  # the migration runs first, then pods are replaced one by one
    user, chat = seed_host(engine)
    model = _host_event_log(host)
    with event_context(session_id=chat, user_id=user, request_id="new-pod"):
        EventWriter(model).record_detached(engine, event_type="new_record")
    old = previous_release(tmp_path / "old")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(old / "src"), str(old / "examples/host_app")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _PREVIOUS,
            engine.url.render_as_string(hide_password=False),
            str(old / "src"),
            str(chat),
            str(user),
        ],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # The old reader reads the new pod's event too; it just does not see the new columns.
    assert result.stdout.split() == ["new_record", "old_record", "old_bulk", "old_buffered"]
    page = EventLogReader(model, engine).session_timeline(chat, user_id=UNSCOPED, order="oldest")
    assert [(r.event_type, r.request_id) for r in page.items] == [
        ("new_record", "new-pod"),
        ("old_record", None),
        ("old_bulk", None),
        ("old_buffered", None),
    ]
    with Session(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM event_logs")) == 4
