"""Host application projects for the tests: the example host and variants of it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

EXAMPLE_HOST = Path(__file__).resolve().parent.parent / "examples" / "host_app"

NAMING_CONVENTION = """{
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }"""


@dataclass
class HostProject:
    """A host project on disk, driven through the real ``alembic`` command line."""

    root: Path
    url: URL

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``alembic ARGV`` (or another console script) in the project folder."""
        program = argv[0] if argv[0] in ("eventlog-persist", "python") else "alembic"
        args = argv[1:] if program != "alembic" else argv
        executable = (
            [sys.executable, "-m", "eventlog_persist"]
            if program == "eventlog-persist"
            else [sys.executable]
            if program == "python"
            else [sys.executable, "-m", "alembic"]
        )
        env = {
            **os.environ,
            "DATABASE_URL": self.url.render_as_string(hide_password=False),
            "PYTHONPATH": str(self.root),
            "PYTHONWARNINGS": "error::DeprecationWarning,ignore::UserWarning:platformdirs.api",
        }
        result = subprocess.run(
            [*executable, *args], cwd=self.root, env=env, capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n--- stdout\n{result.stdout}"
                f"\n--- stderr\n{result.stderr}"
            )
        return result

    def edit(self, relative: str, old: str, new: str, count: int = 1) -> None:
        """Replace ``old`` by ``new`` in a project file; fail if it is not there."""
        path = self.root / relative
        text = path.read_text()
        if text.count(old) < count:
            raise AssertionError(f"{old!r} not found {count}x in {relative}")
        path.write_text(text.replace(old, new))


def make_host(
    target: Path,
    url: URL,
    *,
    keys: str = "uuid",
    naming_convention: bool = False,
    mode: str = "branch",
) -> HostProject:
    """Copy the example host to ``target``, then reshape it.

    Args:
        keys: ``"uuid"`` (as the example), or ``"integer"``: INTEGER keys, with a BIGINT
            ``chat_sessions.id`` so mixed key types are covered too.
        naming_convention: Give the host's ``MetaData`` a naming convention for every kind.
        mode: ``"branch"`` (as the example) or ``"linear"``: no package location and no anchor;
            the caller runs ``eventlog-persist linear-revision``.
    """
    shutil.copytree(EXAMPLE_HOST, target, ignore=shutil.ignore_patterns("__pycache__"))
    host = HostProject(target, url)
    if keys == "integer":
        _integer_keys(host)
    if naming_convention:
        host.edit(
            "app/database.py",
            "from sqlalchemy import Engine, create_engine",
            "from sqlalchemy import Engine, MetaData, create_engine",
        )
        host.edit(
            "app/database.py",
            '    """Declarative base of every host model, ``EventLog`` included."""\n',
            '    """Declarative base of every host model, ``EventLog`` included."""\n\n'
            f"    metadata = MetaData(naming_convention={NAMING_CONVENTION})\n",
        )
    if mode == "linear":
        host.edit("alembic.ini", " eventlog_persist:migrations", "")
        (target / "migrations" / "versions" / "eventlog_prereqs.py").unlink()
    return host


def _integer_keys(host: HostProject) -> None:
    models = "app/models/core.py"
    host.edit(
        models,
        "Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)",
        "Mapped[int] = mapped_column(primary_key=True)",
        count=4,
    )
    host.edit(models, "user_id: Mapped[uuid.UUID]", "user_id: Mapped[int]", count=3)
    host.edit(
        models, "from sqlalchemy import ForeignKey", "from sqlalchemy import BigInteger, ForeignKey"
    )
    path = host.root / models
    text = path.read_text()
    text = re.sub(
        r'(__tablename__ = "chat_sessions"\n\n    id: Mapped\[int\] = mapped_column\()',
        r"\1BigInteger, ",
        text,
    )
    path.write_text(text)
    host.edit("app/models/event_log.py", "EventLogMixin[uuid.UUID]", "EventLogMixin[int]")
    revision = "migrations/versions/h001_core.py"
    host.edit(
        revision,
        'sa.Column("id", sa.Uuid(), primary_key=True)',
        'sa.Column("id", sa.Integer(), primary_key=True)',
        count=3,
    )
    host.edit(revision, '"user_id", sa.Uuid()', '"user_id", sa.Integer()', count=2)
    path = host.root / revision
    text = path.read_text()
    text = text.replace(
        '"chat_sessions",\n        sa.Column("id", sa.Integer(), primary_key=True)',
        '"chat_sessions",\n        sa.Column("id", sa.BigInteger(), primary_key=True)',
    )
    path.write_text(text)
