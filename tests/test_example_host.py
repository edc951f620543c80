"""The example host project imports and exports EventLog exactly as the spec says."""

from __future__ import annotations

from pathlib import Path

from hostkit import make_host
from sqlalchemy.engine import URL

_PROBE = """
import app.models
from app.models import EventLog
from app.database import Base
assert "EventLog" in app.models.__all__, app.models.__all__
assert issubclass(EventLog, Base)
assert EventLog.__table__ is Base.metadata.tables["event_logs"]
print(sorted(c.name for c in EventLog.__table__.columns))
print(type(EventLog.__table__.c.session_id.type).__name__)
"""


def test_host_imports_event_log_from_app_models(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "host", database_url)
    lines = host.run_cli("python", "-c", _PROBE).stdout.splitlines()
    assert lines == [
        "['agent_id', 'approval_status', 'created_at', 'error_code', 'event_type', 'id', "
        "'payload', 'project_id', 'request_id', 'session_id', 'span_id', 'tool_name', "
        "'trace_id', 'user_id']",
        "Uuid",
    ]
