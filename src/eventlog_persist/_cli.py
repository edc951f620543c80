"""The ``eventlog-persist`` command line."""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import MetaData, Table, create_engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError, SQLAlchemyError

from eventlog_persist._alembic_setup import check_setup, write_linear_revisions
from eventlog_persist._retention import (
    DEFAULT_BATCH_SIZE,
    count_purgeable,
    purge_events,
)
from eventlog_persist._schema import TABLE_NAME
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventLogError,
    MigrationSetupError,
    PurgeError,
    ValidationError,
)

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(prog="eventlog-persist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check the host's Alembic setup for the event log")
    check.add_argument("-c", "--config", default="alembic.ini", help="alembic.ini of the host")
    check.add_argument("--url", help="also check that the FK target tables exist in this database")

    linear = commands.add_parser(
        "linear-revision",
        help="copy the package's revisions into the host's history (single-head hosts)",
    )
    linear.add_argument("-c", "--config", default="alembic.ini", help="alembic.ini of the host")
    linear.add_argument("--version-path", help="folder to write into (default: host versions)")

    demo = commands.add_parser("demo", help="run the demo on an embedded PostgreSQL")
    demo.add_argument("--url", help="use this PostgreSQL database instead of an embedded one")

    purge = commands.add_parser(
        "purge",
        help="delete events older than a cutoff in short batches (for a cron job)",
        description="Delete events created before a cutoff, each batch in its own transaction.",
    )
    purge.add_argument("--url", required=True, help="SQLAlchemy URL of the database")
    purge.add_argument(
        "--older-than",
        required=True,
        help="an age such as 30d, 12h, 2w, 90m (from now) or an ISO datetime with offset",
    )
    purge.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    purge.add_argument("--max-batches", type=int, help="stop after this many batches")
    purge.add_argument("--sleep", type=float, default=0.0, help="seconds between batches")
    purge.add_argument("--user-id", help="only this user's events")
    purge.add_argument("--project-id", help="only this project's events")
    purge.add_argument("--schema", help="schema of event_logs (default: search_path)")
    purge.add_argument("--dry-run", action="store_true", help="count, do not delete")

    args = parser.parse_args(argv)
    try:
        if args.command == "purge":
            return _purge(args)
        if args.command == "check":
            return _check(args.config, args.url)
        if args.command == "linear-revision":
            return _linear(args.config, args.version_path)
        from eventlog_persist._demo import run_demo

        return run_demo(url=args.url)
    except (EventLogError, CommandError, SQLAlchemyError, OSError) as exc:
        # Exit status 2 means "could not run"; 1 is reserved for "check found problems".
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"eventlog-persist: error: {message}", file=sys.stderr)
        return 2


def _config(config_path: str) -> Config:
    """The host's Alembic config, with ``[tool.alembic]`` of a pyproject.toml beside it."""
    path = Path(config_path)
    if not path.is_file():
        raise MigrationSetupError(
            f"{config_path} does not exist; run in the folder of alembic.ini or pass -c PATH"
        )
    toml = path.parent / "pyproject.toml"
    return Config(str(path), toml_file=str(toml) if toml.is_file() else None)


def _check(config_path: str, url: str | None) -> int:
    config = _config(config_path)
    if url is None:
        report = check_setup(config)
    else:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                report = check_setup(config, connection=connection)
        finally:
            engine.dispose()
    if report.ok:
        print(f"eventlog-persist: setup OK ({report.mode} mode)")
        return 0
    for problem in report.problems:
        print(f"eventlog-persist: problem: {problem}", file=sys.stderr)
    return 1


def _linear(config_path: str, version_path: str | None) -> int:
    written = write_linear_revisions(_config(config_path), version_path=version_path)
    for path in written:
        print(f"eventlog-persist: wrote {path}")
    if not written:
        print("eventlog-persist: the host history already has every package revision")
    return 0


_AGE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_cutoff(value: str, *, now: datetime | None = None) -> datetime:
    """Return the instant ``--older-than`` names: ``now`` minus an age, or an ISO datetime.

    Raises:
        ValidationError: The value is neither, or the datetime has no UTC offset.
    """
    match = _AGE.fullmatch(value.strip())
    if match:
        age = timedelta(**{_UNITS[match[2]]: int(match[1])})
        return (now or datetime.now(UTC)) - age
    try:
        cutoff = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"--older-than {value!r} is neither an age (30d, 12h, 2w, 90m, 3600s) nor an ISO "
            "datetime such as 2025-01-31T00:00:00+00:00"
        ) from None
    if cutoff.utcoffset() is None:
        raise ValidationError(
            f"--older-than {value!r} has no UTC offset; add one, e.g. {value}+00:00"
        )
    return cutoff


_PURGE_HINTS = {
    "connect": "check --url (driver, host, port, database, user, password) and that the "
    "server accepts connections from here",
    "reflect": "check that --url names the database that holds event_logs and that the "
    "role may read its catalog; on a lock timeout, run it again when no migration holds "
    "the table",
    "count": "check that the role may SELECT from event_logs",
    "purge": "batches committed before the error stay deleted; if a lock or statement "
    "timeout expired, run it again when the table is less busy (or with a smaller "
    "--batch-size); check that the role may DELETE from event_logs",
}


def _purge(args: argparse.Namespace) -> int:
    """Run ``purge``, turning any database error into one `PurgeError` (exit status 2)."""
    cutoff = parse_cutoff(args.older_than)
    stage = ["connect"]
    try:
        return _purge_at(args, cutoff, stage)
    except SQLAlchemyError as exc:
        step = {
            "connect": "connecting to the database",
            "reflect": "reading the event_logs table definition",
            "count": "counting events",
            "purge": "deleting events",
        }[stage[0]]
        raise PurgeError(
            f"purge failed while {step}: {_one_line(exc)}; {_PURGE_HINTS[stage[0]]}"
        ) from exc


def _one_line(exc: SQLAlchemyError) -> str:
    """The database's own message, on one line, without SQLAlchemy's SQL and link."""
    error = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {' '.join(lines) or 'no message'}"


def _purge_at(args: argparse.Namespace, cutoff: datetime, stage: list[str]) -> int:
    engine = create_engine(args.url)
    try:
        with engine.connect() as connection:
            stage[0] = "reflect"
            try:
                table = Table(
                    TABLE_NAME,
                    MetaData(schema=args.schema),
                    autoload_with=connection,
                    resolve_fks=False,
                )
            except NoSuchTableError:
                where = f"schema {args.schema!r}" if args.schema else "the search_path"
                raise ConfigurationError(
                    f"there is no {TABLE_NAME} table in {where} of that database; check --url, "
                    "or pass the schema that holds it as --schema"
                ) from None
        user_id = None if args.user_id is None else _key(table, "user_id", args.user_id)
        project_id = None if args.project_id is None else _key(table, "project_id", args.project_id)
        if args.dry_run:
            stage[0] = "count"
            count = count_purgeable(
                table, engine, older_than=cutoff, user_id=user_id, project_id=project_id
            )
            print(f"eventlog-persist: would purge {count} events older than {cutoff.isoformat()}")
            return 0
        stage[0] = "purge"
        result = purge_events(
            table,
            engine,
            older_than=cutoff,
            batch_size=args.batch_size,
            max_batches=args.max_batches,
            sleep=args.sleep,
            user_id=user_id,
            project_id=project_id,
        )
    finally:
        engine.dispose()
    print(
        f"eventlog-persist: purged {result.deleted} events older than {cutoff.isoformat()} "
        f"in {result.batches} batches"
    )
    return 0


def _key(table: Table, column: str, value: str) -> uuid.UUID | int:
    python_type = table.c[column].type.python_type
    try:
        return uuid.UUID(value) if python_type is uuid.UUID else int(value)
    except ValueError:
        raise ValidationError(
            f"--{column.replace('_', '-')} {value!r} is not a valid {python_type.__name__} "
            f"key for {TABLE_NAME}.{column}"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
