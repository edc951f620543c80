"""The README's Python examples are real: one is the example host's model, the other runs."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from hostkit import EXAMPLE_HOST, make_host
from sqlalchemy.engine import URL

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)

_PRELUDE = """
import uuid
from sqlalchemy.orm import Session
from app.database import Base, make_engine
from app.models import ChatSession, EventLog, User

engine = make_engine()
Base.metadata.create_all(engine)
session = Session(engine)
user = User(id=uuid.uuid4(), name="alice")
session.add(user)
session.flush()
chat = ChatSession(id=uuid.uuid4(), user_id=user.id, title="")
session.add(chat)
session.commit()
"""

_CHECK = """
assert [e.event_type for e in page.items] == ["tool_call", "user_message"], page.items
assert page.items[0].tool_name == "search"
print("readme ok")
"""


def test_model_block_is_the_example_hosts_model() -> None:
    model = (EXAMPLE_HOST / "app" / "models" / "event_log.py").read_text()
    for line in BLOCKS[0].splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split("  #")[0].rstrip() in model, line


def test_writing_and_reading_block_runs(tmp_path: Path, database_url: URL) -> None:
    host = make_host(tmp_path / "host", database_url)
    code = textwrap.dedent(_PRELUDE) + BLOCKS[1] + textwrap.dedent(_CHECK)
    assert host.run_cli("python", "-c", code).stdout.strip() == "readme ok"
