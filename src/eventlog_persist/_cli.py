"""The ``eventlog-persist`` command line."""

from __future__ import annotations

import argparse
import configparser
import os
import re
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from alembic.config import Config
from alembic.util import CommandError
from sqlalchemy import Table
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from eventlog_persist._alembic_setup import check_setup, write_linear_revisions
from eventlog_persist._cli_audit import add_audit_parser, run_audit
from eventlog_persist._cli_feed import add_feed_parser, run_feed
from eventlog_persist._cli_partitions import (
    add_partitions_parser,
    ahead_argument,
    reflect_event_logs,
    run_partitions,
)
from eventlog_persist._partitions import MAX_AHEAD
from eventlog_persist._retention import (
    DEFAULT_BATCH_SIZE,
    MAX_SLEEP,
    PurgeResult,
    count_purgeable,
    purge_events,
)
from eventlog_persist._schema import TABLE_NAME
from eventlog_persist._table import check_key_fits, key_sql_type
from eventlog_persist._urls import EXAMPLE, conninfo, psycopg_engine
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventLogError,
    MigrationSetupError,
    PurgeError,
    ValidationError,
)

__all__ = ["main"]

_ENVIRONMENT = "DATABASE_URL"
"""The variable ``check``, ``purge``, ``partitions``, ``feed`` and ``audit`` take ``--url`` from
when it is not given."""


_NO_VALUE = re.compile(r"argument (?:-{1,2}[\w-]+/)*(-{1,2}[\w-]+): expected one argument")


class _Parser(argparse.ArgumentParser):
    """argparse, with each refusal on one line: ``PROG: error: WHAT; FIX`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        # Our own checks name the fix after "; "; argparse's own messages get a pointer to --help.
        hint = "" if "; " in message else f"; see '{self.prog} --help'"
        missing = _NO_VALUE.fullmatch(message)
        if missing:
            # argparse reads a value such as -5d as the next option and says only this.
            hint = (
                f"; give {missing[1]} a value (one that starts with '-' is written "
                f"{missing[1]}=VALUE)"
            )
        self.exit(2, f"{self.prog}: error: {message}{hint}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    now = datetime.now(UTC)
    parser = _Parser(prog="eventlog-persist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="check the host's Alembic setup for the event log")
    check.add_argument("-c", "--config", default="alembic.ini", help="alembic.ini of the host")
    database = check.add_mutually_exclusive_group()
    database.add_argument(
        "--url",
        type=_url_argument,
        help="also check that the FK target tables exist in this database: a PostgreSQL URL "
        f"of any driver, or a libpq conninfo (default: ${_ENVIRONMENT}, when set)",
    )
    database.add_argument(
        "--offline",
        action="store_true",
        help=f"check the files only, even with ${_ENVIRONMENT} set (before the first upgrade)",
    )

    linear = commands.add_parser(
        "linear-revision",
        help="copy the package's revisions into the host's history (single-head hosts)",
    )
    linear.add_argument("-c", "--config", default="alembic.ini", help="alembic.ini of the host")
    linear.add_argument("--version-path", help="folder to write into (default: host versions)")
    linear.add_argument(
        "--partitioned",
        action="store_true",
        help="also copy the opt-in partitioned layout's revision (event_logs partitioned by "
        "created_at; see docs/adoption.md)",
    )
    linear.add_argument(
        "--feed",
        action="store_true",
        help="also copy the opt-in feed's revision (the xid column, its index and the "
        "consumers table; see docs/feed.md)",
    )
    linear.add_argument(
        "--audit",
        action="store_true",
        help="also copy the opt-in audit's revision (guard triggers, erasures and seals "
        "tables; needs the feed's; see docs/audit.md)",
    )

    demo = commands.add_parser("demo", help="run the demo on an embedded PostgreSQL")
    demo.add_argument(
        "--url",
        type=_url_argument,
        help="use this PostgreSQL database, whose search path holds no table, instead of an "
        f"embedded one (never ${_ENVIRONMENT}: the demo creates its tables and drops them)",
    )

    purge = commands.add_parser(
        "purge",
        help="delete events older than a cutoff in short batches (for a cron job)",
        description="Delete events created before a cutoff, each batch in its own transaction. "
        "Arguments are checked before anything is deleted; a refusal is one line on stderr "
        "and exit status 2.",
    )
    purge.add_argument(
        "--url",
        type=_url_argument,
        help="the PostgreSQL database: a URL of any driver (postgresql+asyncpg://... too) or a "
        f"libpq conninfo; default: ${_ENVIRONMENT}",
    )
    purge.add_argument(
        "--older-than",
        required=True,
        type=lambda value: _cutoff_argument(value, now),
        help="an age such as 30d, 12h, 2w, 90m, 3600s (back from now) or an ISO datetime "
        "with a UTC offset",
    )
    purge.add_argument(
        "--all",
        action="store_true",
        help="allow a cutoff of now (--older-than 0d): every event goes; a cutoff in the "
        "future is refused",
    )
    purge.add_argument(
        "--batch-size",
        type=_count_argument,
        default=DEFAULT_BATCH_SIZE,
        help=f"most events per batch (default {DEFAULT_BATCH_SIZE})",
    )
    purge.add_argument("--max-batches", type=_count_argument, help="stop after this many batches")
    purge.add_argument(
        "--sleep",
        type=_seconds_argument,
        default=0.0,
        help=f"seconds between batches, 0 to {MAX_SLEEP:.0f} (default 0)",
    )
    purge.add_argument("--user-id", type=_key_argument, help="only this user's events")
    purge.add_argument("--project-id", type=_key_argument, help="only this project's events")
    purge.add_argument("--schema", help="schema of event_logs (default: search_path)")
    purge.add_argument("--dry-run", action="store_true", help="count, do not delete")
    purge.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines on stderr, only the summary"
    )

    convert = commands.add_parser(
        "convert",
        help="convert a filled event_logs to the partitioned layout online (short lock)",
        description="Convert a plain event_logs that holds rows into the partitioned layout "
        "while writers go on: a CHECK bounding created_at, its validation, a unique index on "
        "(id, created_at) built concurrently, then one short swap transaction under "
        "--lock-timeout, retried. Resumes where an interrupted run stopped. Then run "
        "'alembic upgrade': revision evlpart_0001 finds the table partitioned.",
    )
    convert.add_argument(
        "--url",
        type=_url_argument,
        help="the PostgreSQL database: a URL of any driver or a libpq conninfo; "
        f"default: ${_ENVIRONMENT}",
    )
    convert.add_argument("--schema", help="schema of event_logs (default: search_path)")
    convert.add_argument(
        "--interval",
        choices=("week", "month"),
        help="partition interval (default: the one the table already has, else week)",
    )
    convert.add_argument(
        "--ahead",
        type=ahead_argument(1),
        default=4,
        help=f"partitions ahead (1 to {MAX_AHEAD}; default 4)",
    )
    convert.add_argument(
        "--lock-timeout",
        type=_swap_lock_timeout_argument,
        default=0.05,
        help="seconds the swap waits for its locks before it retries (0.001 to 3600; default 0.05)",
    )
    convert.add_argument(
        "--attempts", type=_count_argument, default=50, help="swap attempts (default 50)"
    )
    convert.add_argument(
        "--prepare",
        action="store_true",
        help="run the online steps only; deploy the model with partitioned=True, then run "
        "convert again to swap without losing a write",
    )
    partitions = add_partitions_parser(
        commands,
        url=_url_argument,
        cutoff=lambda value: _cutoff_argument(value, now),
        environment=_ENVIRONMENT,
    )
    feed = add_feed_parser(commands, url=_url_argument, environment=_ENVIRONMENT)
    audit = add_audit_parser(commands, url=_url_argument, environment=_ENVIRONMENT)

    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # a refusal (status 2), or --help (status 0)
        return exit_.code if isinstance(exit_.code, int) else 2
    if (
        args.command in ("check", "purge", "convert", "partitions", "feed", "audit")
        and args.url is None
    ):
        command = {
            "check": check,
            "purge": purge,
            "convert": convert,
            "partitions": partitions,
            "feed": feed,
            "audit": audit,
        }[args.command]
        try:
            if not getattr(args, "offline", False):
                args.url = _url_from_environment(required=args.command != "check")
        except argparse.ArgumentTypeError as exc:
            return _refuse(command, str(exc))
    try:
        if args.command == "purge":
            if args.older_than > now:
                return _refuse(
                    purge,
                    f"argument --older-than: the cutoff {args.older_than.isoformat()} is in "
                    "the future, so every event would be deleted, those being written too; "
                    "give an age such as 90d (0d with --all deletes every event)",
                )
            if args.older_than >= now and not args.all:
                return _refuse(
                    purge,
                    f"argument --older-than: the cutoff {args.older_than.isoformat()} is not "
                    "before now, so every event would be deleted, those being written too; "
                    "add --all if that is what you mean, else give an age such as 90d",
                )
            try:
                return _purge(args)
            except _BadArgument as exc:
                return _refuse(purge, str(exc))
        if args.command == "partitions":
            if args.action == "drop" and args.older_than >= now:
                return _refuse(
                    partitions,
                    f"argument --older-than: the cutoff {args.older_than.isoformat()} is not "
                    "before now, so partitions being written would go; give an age such as 90d",
                )
            return run_partitions(args)
        if args.command == "feed":
            return run_feed(args)
        if args.command == "audit":
            return run_audit(args)
        if args.command == "check":
            return _check(args.config, args.url)
        if args.command == "convert":
            return _convert(args)
        if args.command == "linear-revision":
            return _linear(
                args.config,
                args.version_path,
                partitioned=args.partitioned,
                feed=args.feed,
                audit=args.audit,
            )
        from eventlog_persist._demo import run_demo

        return run_demo(url=args.url)
    except SQLAlchemyError as exc:
        print(f"eventlog-persist: error: {_one_line(exc)}; check --url", file=sys.stderr)
        return 2
    except (EventLogError, CommandError, OSError) as exc:
        # Exit status 2 means "could not run"; 1 is reserved for "check found problems".
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        print(f"eventlog-persist: error: {message}", file=sys.stderr)
        return 2


def _url_from_environment(*, required: bool) -> str | None:
    """``--url`` when not given: the conninfo of ``$DATABASE_URL``, if set."""
    value = os.environ.get(_ENVIRONMENT, "")
    if value:
        try:
            return _url_argument(value)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"{_ENVIRONMENT}: {exc}") from None
    if required:
        raise argparse.ArgumentTypeError(
            f"argument --url: required unless {_ENVIRONMENT} is set; pass --url {EXAMPLE}"
        )
    return None


def _refuse(parser: argparse.ArgumentParser, message: str) -> int:
    """Refuse an argument found wrong after parsing, as argparse does: one line, status 2."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return 2


# -- argument types: each returns the value or raises ArgumentTypeError naming the fix --------

_MAX_COUNT = 2**63 - 1  # PostgreSQL's LIMIT is a bigint


def _url_argument(value: str) -> str:
    """The libpq conninfo of a PostgreSQL URL (any driver) or conninfo.

    The commands connect with psycopg whatever driver the URL names, so an asyncpg URL
    works where asyncpg is not installed.
    """
    try:
        return conninfo(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count_argument(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= _MAX_COUNT:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a whole number from 1 to {_MAX_COUNT}; pass e.g. 1000"
        )
    return count


def _seconds_argument(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    # The chained comparison refuses nan and inf too.
    if not 0 <= seconds <= MAX_SLEEP:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds from 0 to {MAX_SLEEP:.0f}; pass e.g. 0.5"
        )
    return seconds


def _swap_lock_timeout_argument(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.001 <= seconds <= 3600:  # refuses nan and inf too
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds from 0.001 to 3600; pass e.g. 0.05"
        )
    return seconds


def _key_argument(value: str) -> str:
    """A UUID or an integer; which one the column holds is checked once it is reflected."""
    for parse in (uuid.UUID, int):
        try:
            parse(value)
        except ValueError:
            continue
        return value
    raise argparse.ArgumentTypeError(
        f"{value!r} is neither a UUID nor an integer; pass the id as event_logs stores it, "
        "e.g. 0195f1d2-7c4e-7a3b-9f00-3c2a1b0d9e8f or 42"
    )


def _cutoff_argument(value: str, now: datetime) -> datetime:
    try:
        return parse_cutoff(value, now=now)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _config(config_path: str) -> Config:
    """The host's Alembic config, with ``[tool.alembic]`` of a pyproject.toml beside it.

    Both files are read here, so that a syntax error is one line naming the file, not a
    traceback from deep inside Alembic.
    """
    path = Path(config_path)
    toml = path.parent / "pyproject.toml"
    # Alembic itself runs without alembic.ini when pyproject.toml has a [tool.alembic] table.
    if not path.is_file() and not (path.name == "alembic.ini" and _has_tool_alembic(toml)):
        what = (
            "is a folder, not a file"
            if path.is_dir()
            else "does not exist, and no pyproject.toml beside it has a [tool.alembic] table"
        )
        raise MigrationSetupError(
            f"{config_path} {what}; run in the folder of alembic.ini or pass -c PATH"
        )
    config = Config(str(path), toml_file=str(toml) if toml.is_file() else None)
    for name, read in (
        (str(path), lambda: config.file_config),
        (str(toml), lambda: config.toml_alembic_config),
        (str(path), config.get_version_locations_list),
    ):
        try:
            read()
        except (configparser.Error, ValueError) as exc:  # TOMLDecodeError is a ValueError
            detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise MigrationSetupError(f"{name} cannot be used: {detail}; correct it") from None
    return config


def _has_tool_alembic(toml: Path) -> bool:
    try:
        with toml.open("rb") as file:
            return "alembic" in tomllib.load(file).get("tool", {})
    except (OSError, ValueError):  # no file, or one _config reports as unreadable later
        return toml.is_file()


def _check(config_path: str, url: str | None) -> int:
    config = _config(config_path)
    if url is None:
        report = check_setup(config)
    else:
        engine = psycopg_engine(url)
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


def _linear(
    config_path: str,
    version_path: str | None,
    *,
    partitioned: bool = False,
    feed: bool = False,
    audit: bool = False,
) -> int:
    written = write_linear_revisions(
        _config(config_path),
        version_path=version_path,
        partitioned=partitioned,
        feed=feed,
        audit=audit,
    )
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
        ValidationError: The value is neither, the datetime has no UTC offset, or the age
            reaches back before the year 1.
    """
    now = now or datetime.now(UTC)
    match = _AGE.fullmatch(value.strip())
    if match is None and (negative := _AGE.fullmatch(value.strip().removeprefix("-"))):
        raise ValidationError(
            f"{value!r} is a negative age; an age counts back from now, so write "
            f"{negative[0]} (a cutoff in the future is refused)"
        )
    if match:
        try:
            return now - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except (OverflowError, ValueError):  # past timedelta's or datetime's range
            oldest = (now - datetime.min.replace(tzinfo=UTC)).days - 1
            raise ValidationError(
                f"{value!r} reaches back before the year 1, which no datetime can hold; "
                f"give an age of at most {oldest}d, or an ISO datetime"
            ) from None
    try:
        cutoff = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{value!r} is neither an age (30d, 12h, 2w, 90m, 3600s) nor an ISO "
            "datetime; write e.g. 90d or 2025-01-31T00:00:00+00:00"
        ) from None
    if cutoff.utcoffset() is None:
        raise ValidationError(
            f"{value!r} has no UTC offset; add one, e.g. {cutoff.isoformat()}+00:00"
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
    "--batch-size); check that the role may DELETE from event_logs (and, with the feed, "
    "UPDATE event_log_consumers)",
}


def _purge(args: argparse.Namespace) -> int:
    """Run ``purge``, turning any database error into one `PurgeError` (exit status 2)."""
    stage = ["connect"]
    try:
        return _purge_at(args, args.older_than, stage)
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
    engine = psycopg_engine(args.url)
    try:
        with engine.connect() as connection:
            stage[0] = "reflect"
            table = reflect_event_logs(connection, args.schema)
        user_id = None if args.user_id is None else _key(table, "user_id", args.user_id)
        project_id = None if args.project_id is None else _key(table, "project_id", args.project_id)
        if args.dry_run:
            stage[0] = "count"
            count = count_purgeable(
                table, engine, older_than=cutoff, user_id=user_id, project_id=project_id
            )
            most = None if args.max_batches is None else args.batch_size * args.max_batches
            stops = (
                ""
                if most is None or count <= most
                else f" (of {count}: --max-batches {args.max_batches} stops the run there)"
            )
            print(
                f"eventlog-persist: would purge {count if not stops else most} events older "
                f"than {cutoff.isoformat()}{stops}"
            )
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
            on_batch=None if args.quiet else _progress(),
        )
    finally:
        engine.dispose()
    print(
        f"eventlog-persist: purged {result.deleted} events older than {cutoff.isoformat()} "
        f"in {result.batches} batches"
    )
    return 0


def _progress() -> Callable[[PurgeResult], None]:
    """A progress line on stderr per committed batch: batches, events so far, time taken."""
    started = time.monotonic()

    def report(done: PurgeResult) -> None:
        print(
            f"eventlog-persist: batch {done.batches} done, {done.deleted} events deleted so "
            f"far, {time.monotonic() - started:.1f} s elapsed",
            file=sys.stderr,
            flush=True,
        )

    return report


class _BadArgument(Exception):
    """An argument refused once the table is known; reported like argparse's refusals."""


def _key(table: Table, column: str, value: str) -> uuid.UUID | int:
    python_type = table.c[column].type.python_type
    try:
        key = uuid.UUID(value) if python_type is uuid.UUID else int(value)
    except ValueError:
        kind = "a UUID" if python_type is uuid.UUID else "an integer"
        raise _BadArgument(
            f"argument --{column.replace('_', '-')}: {TABLE_NAME}.{column} holds "
            f"{python_type.__name__} keys and {value!r} is not one; pass {kind}"
        ) from None
    try:
        check_key_fits(column, key_sql_type(table.c[column].type), key)
    except ValidationError as exc:
        raise _BadArgument(f"argument --{column.replace('_', '-')}: {exc}") from None
    return key


def _convert(args: argparse.Namespace) -> int:
    from eventlog_persist._conversion import convert_to_partitioned

    engine = psycopg_engine(args.url)
    try:
        result = convert_to_partitioned(
            engine,
            schema=args.schema,
            partition_interval=args.interval,
            partitions_ahead=args.ahead,
            lock_timeout=args.lock_timeout,
            swap_attempts=args.attempts,
            stop_before_swap=args.prepare,
            on_progress=lambda line: print(f"eventlog-persist: {line}", file=sys.stderr),
        )
    finally:
        engine.dispose()
    if result.state == "converted":
        print(
            f"eventlog-persist: converted; {TABLE_NAME}_legacy holds the rows before "
            f"{result.boundary.isoformat() if result.boundary else '?'}; now opt in to the "
            "partitioned layout if not yet (add 'eventlog_persist:migrations_partitioned' to "
            "version_locations; linear mode: 'eventlog-persist linear-revision "
            "--partitioned'), run 'alembic upgrade heads' (it records evlpart_0001) and "
            "deploy the model with partitioned=True"
        )
    elif result.state == "prepared":
        print(
            "eventlog-persist: prepared; deploy the model with partitioned=True, then run "
            "'eventlog-persist convert' again to swap"
        )
    elif result.partitions:
        print(
            f"eventlog-persist: {TABLE_NAME} is already partitioned; added the missing "
            f"partitions {', '.join(result.partitions)}"
        )
    else:
        print(f"eventlog-persist: {TABLE_NAME} is already partitioned; nothing to do")
    return 0
