"""Host application projects for the tests: the example host and variants of it.

``HostProject.run`` drives the ``alembic`` and ``eventlog-persist`` command lines inside the
test process (no interpreter start, no re-import of SQLAlchemy per command); ``run_cli`` runs
them, or ``python``, as real subprocesses. Both return a ``CompletedProcess``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import traceback
from argparse import Namespace
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from alembic.config import CommandLine, Config
from sqlalchemy.engine import URL

from eventlog_persist._cli import main as eventlog_persist_main

EXAMPLE_HOST = Path(__file__).resolve().parent.parent / "examples" / "host_app"
HOST_PACKAGE = "app"
"""Top-level package of every host copy; each copy is imported afresh (see ``run``)."""

NAMING_CONVENTION = """{
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }"""


@dataclass
class HostProject:
    """A host project on disk, driven through the ``alembic`` and ``eventlog-persist`` CLIs."""

    root: Path
    url: URL

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``alembic ARGV`` (or ``eventlog-persist ARGV``) in the project, in this process.

        The same code as the console scripts (``alembic.config.CommandLine().main`` and
        ``eventlog_persist._cli.main``) with what a fresh process would have: the project
        folder as working directory and first on ``sys.path``, ``DATABASE_URL`` set, its own
        ``app`` package, logging configured by ``env.py`` from ``alembic.ini`` and written to
        the captured stderr. The exit status of ``SystemExit`` or an uncaught exception (its
        traceback on stderr) becomes the return code, as for a process.
        """
        if argv[0] == "eventlog-persist":
            program, args = "eventlog-persist", list(argv[1:])
        elif argv[0] == "python":
            raise ValueError("run_cli('python', ...) runs Python code in a subprocess")
        else:
            program, args = "alembic", list(argv)
        out, err = _Output(), _Output()
        with _in_project(self.root, self.url, out, err):
            try:
                if program == "alembic":
                    _AlembicCommandLine(prog="alembic").main(args)
                    code = 0
                else:
                    code = eventlog_persist_main(args)
            except SystemExit as exit_:
                code = _exit_status(exit_.code, err)
            except Exception:
                traceback.print_exc(file=err)
                code = 1
        result = subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())
        return _checked(result, check)

    def run_cli(
        self, *argv: str, check: bool = True, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``alembic ARGV`` (or ``eventlog-persist``, ``python``) as a real subprocess.

        With ``timeout`` (seconds), a process still running then is killed and
        ``subprocess.TimeoutExpired`` raised: a hang fails the test and leaves nothing behind.
        """
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
            # The host root first, then what the test process was given (a source checkout).
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.root), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONWARNINGS": "error::DeprecationWarning,ignore::UserWarning:platformdirs.api",
        }
        result = subprocess.run(
            [*executable, *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return _checked(result, check)

    def edit(self, relative: str, old: str, new: str, count: int = 1) -> None:
        """Replace ``old`` by ``new`` in a project file; fail if it is not there."""
        path = self.root / relative
        text = path.read_text()
        if text.count(old) < count:
            raise AssertionError(f"{old!r} not found {count}x in {relative}")
        path.write_text(text.replace(old, new))


def _checked(
    result: subprocess.CompletedProcess[str], check: bool
) -> subprocess.CompletedProcess[str]:
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(result.args)} exited {result.returncode}\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}"
        )
    return result


class _AlembicCommandLine(CommandLine):
    """``alembic``'s command line; its output goes to the current ``sys.stdout``."""

    def run_cmd(self, config: Config, options: Namespace) -> None:
        # Config's stdout defaults to the sys.stdout of import time, not the redirected one.
        config.stdout = sys.stdout
        super().run_cmd(config, options)


class _Output(io.StringIO):
    """Captured stdout or stderr; UTF-8 like a process's pipes (Alembic encodes with it)."""

    @property
    def encoding(self) -> str:
        return "utf-8"


def _exit_status(code: object, err: io.StringIO) -> int:
    """The return code a process would have after ``sys.exit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code % 256  # alembic's sys.exit(-1) is 255
    print(code, file=err)
    return 1


@contextlib.contextmanager
def _in_project(root: Path, url: URL, out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """What a fresh process started in ``root`` would see, undone afterwards."""
    saved_logging = _logging_state()
    _forget_host_modules()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(root))
        stack.enter_context(
            mock.patch.dict(os.environ, {"DATABASE_URL": url.render_as_string(hide_password=False)})
        )
        stack.enter_context(mock.patch.object(sys, "path", [str(root), *sys.path]))
        stack.enter_context(mock.patch.object(sys, "dont_write_bytecode", True))
        # Alembic wraps its messages to the terminal width; a process with pipes has none.
        stack.enter_context(mock.patch("alembic.util.messaging.TERMWIDTH", None))
        # env.py's fileConfig() would close every handler (pytest's too) before installing its own.
        stack.enter_context(mock.patch.object(logging, "shutdown", return_value=None))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        try:
            yield
        finally:
            _restore_logging(saved_logging)
            _forget_host_modules()


def _forget_host_modules() -> None:
    """Drop every imported copy of the host package, so the next run imports its own."""
    for name in [n for n in sys.modules if n == HOST_PACKAGE or n.startswith(HOST_PACKAGE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


_LoggerState = tuple[int, list[logging.Handler], list[Any], bool, bool]


def _logging_state() -> dict[str, _LoggerState]:
    loggers: dict[str, logging.Logger] = {
        name: logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    loggers[""] = logging.getLogger()
    return {
        name: (
            logger.level,
            logger.handlers[:],
            logger.filters[:],
            logger.propagate,
            logger.disabled,
        )
        for name, logger in loggers.items()
    }


def _restore_logging(saved: dict[str, _LoggerState]) -> None:
    """Undo ``logging.config.fileConfig``: levels, handlers, disabled loggers."""
    current = _logging_state()
    for name in current:
        logger = logging.getLogger(name or None)
        level, handlers, filters, propagate, disabled = saved.get(
            name, (logging.NOTSET, [], [], True, False)
        )
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.handlers[:] = handlers
        logger.filters[:] = filters
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


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
