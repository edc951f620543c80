"""The ``eventlog-persist partitions ensure|list|drop`` commands (for cron jobs)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, MetaData, Table
from sqlalchemy.exc import DBAPIError, NoSuchTableError, SQLAlchemyError

from eventlog_persist._feed_schema import register_feed_types
from eventlog_persist._partitions import (
    DEFAULT_AHEAD,
    DEFAULT_PARTITION_LOCK_TIMEOUT,
    MAX_AHEAD,
    PartitionInfo,
    drop_partitions,
    ensure_partitions,
    list_partitions,
    planned_drop,
)
from eventlog_persist._schema import TABLE_NAME
from eventlog_persist._urls import psycopg_engine
from eventlog_persist.exceptions import ConfigurationError

__all__ = ["add_partitions_parser", "run_partitions"]


def add_partitions_parser(
    commands: Any,
    *,
    url: Callable[[str], str],
    cutoff: Callable[[str], datetime],
    environment: str,
) -> argparse.ArgumentParser:
    """Add ``partitions`` and its three subcommands to the command line's subparsers."""
    partitions: argparse.ArgumentParser = commands.add_parser(
        "partitions",
        help="create partitions ahead, list them, drop old ones (partitioned layout; for cron)",
        description="Maintain the partitions of a partitioned event_logs. A refusal or an "
        "error is one line on stderr and exit status 2.",
    )
    actions = partitions.add_subparsers(dest="action", required=True)
    ensure = actions.add_parser(
        "ensure",
        help="create the current partition and those ahead, if missing (idempotent)",
    )
    ensure.add_argument(
        "--ahead",
        type=ahead_argument(0),
        default=DEFAULT_AHEAD,
        help=f"partitions after the current one, 0 to {MAX_AHEAD} (default {DEFAULT_AHEAD})",
    )
    ensure.add_argument(
        "--interval",
        choices=("week", "month"),
        help="partition length (default: that of the newest partition, else week)",
    )
    listing = actions.add_parser("list", help="list the partitions: bounds, rows, size")
    drop = actions.add_parser(
        "drop",
        help="detach and drop partitions wholly older than a cutoff",
        description="Detach (CONCURRENTLY by default) and drop every partition whose upper "
        "bound is at or before the cutoff; a detach an earlier run left pending is finished "
        "first. The partition straddling the cutoff stays: 'eventlog-persist purge' deletes "
        "its older events.",
    )
    drop.add_argument(
        "--older-than",
        required=True,
        type=cutoff,
        help="an age such as 90d, 12w (back from now) or an ISO datetime with a UTC offset",
    )
    drop.add_argument(
        "--keep-detached",
        action="store_true",
        help="detach only; keep each partition as a table of its own (to archive it)",
    )
    drop.add_argument(
        "--no-concurrently",
        dest="concurrently",
        action="store_false",
        help="a plain DETACH (locks event_logs for a moment; needed beside a DEFAULT partition)",
    )
    drop.add_argument("--dry-run", action="store_true", help="list what would go, change nothing")
    for action in (ensure, listing, drop):
        action.add_argument(
            "--url",
            type=url,
            help="the PostgreSQL database: a URL of any driver or a libpq conninfo; default: "
            f"${environment}",
        )
        action.add_argument("--schema", help="schema of event_logs (default: search_path)")
    for action in (ensure, drop):
        action.add_argument(
            "--lock-timeout",
            type=_lock_timeout_argument,
            default=DEFAULT_PARTITION_LOCK_TIMEOUT,
            help="seconds to wait for locks before failing (run again later), 0.001 to 3600 "
            f"(default {DEFAULT_PARTITION_LOCK_TIMEOUT:g})",
        )
    return partitions


def ahead_argument(least: int) -> Callable[[str], int]:
    """The argparse type of ``--ahead``: a whole number from ``least`` to `MAX_AHEAD`."""

    def ahead(value: str) -> int:
        if not value.isdecimal() or not least <= int(value) <= MAX_AHEAD:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a whole number from {least} to {MAX_AHEAD}; pass e.g. 4"
            )
        return int(value)

    return ahead


def _lock_timeout_argument(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:  # refuses nan and inf too
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds above 0 and at most 3600; pass e.g. 5"
        )
    return seconds


def _when(moment: datetime | None, unbounded: str) -> str:
    return unbounded if moment is None else moment.isoformat()


def _line(partition: PartitionInfo) -> str:
    rows = "?" if partition.estimated_rows is None else f"~{partition.estimated_rows}"
    bounds = (
        "DEFAULT"
        if partition.default
        else f"{_when(partition.lower, 'MINVALUE')} .. {_when(partition.upper, 'MAXVALUE')}"
    )
    state = "  detach pending" if partition.detach_pending else ""
    return f"{partition.name}  {bounds}  rows {rows}  {partition.total_bytes} bytes{state}"


_HINTS = {
    "ensure": "nothing was created; on a lock timeout run it again later (or raise "
    "--lock-timeout); check that the role may create tables in the schema of event_logs",
    "list": "check --url, and that the role may read the catalog",
    "drop": "a detach left pending, or a partition detached but not dropped, is finished by "
    "the next run; on a lock timeout run it again later; check that the role owns event_logs",
}


def run_partitions(args: argparse.Namespace) -> int:
    """Run ``partitions ACTION``; a database error is one line on stderr and status 2."""
    try:
        return _run(args)
    except SQLAlchemyError as exc:
        return report_failure(f"partitions {args.action}", exc, _HINTS[args.action])


def reflect_event_logs(connection: Connection, schema: str | None) -> Table:
    """``event_logs`` as the database has it (the feed's ``xid8`` known, so no warning), or
    a `ConfigurationError` naming where it looked."""
    register_feed_types()
    try:
        return Table(
            TABLE_NAME, MetaData(schema=schema), autoload_with=connection, resolve_fks=False
        )
    except NoSuchTableError:
        where = f"schema {schema!r}" if schema else "the search_path"
        raise ConfigurationError(
            f"there is no {TABLE_NAME} table in {where} of that database; check --url, "
            "or pass the schema that holds it as --schema"
        ) from None


def report_failure(command: str, exc: SQLAlchemyError, hint: str) -> int:
    """Print a database error as one line on stderr, with ``hint``; return status 2."""
    error = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    print(
        f"eventlog-persist: error: {command} failed: "
        f"{type(error).__name__}: {text or 'no message'}; {hint}",
        file=sys.stderr,
    )
    return 2


def _run(args: argparse.Namespace) -> int:
    engine = psycopg_engine(args.url)
    try:
        with engine.connect() as connection:
            table = reflect_event_logs(connection, args.schema)
        if args.action == "ensure":
            created = ensure_partitions(
                table,
                engine,
                ahead=args.ahead,
                interval=args.interval,
                lock_timeout=args.lock_timeout,
            )
            for name in created:
                print(f"eventlog-persist: created partition {name}")
            found = list_partitions(table, engine)
            ends = max((p.upper for p in found if p.upper is not None), default=None)
            print(
                f"eventlog-persist: {len(created)} partitions created; partitions exist "
                f"through {_when(ends, 'MAXVALUE')}"
            )
            return 0
        if args.action == "list":
            for partition in list_partitions(table, engine):
                print(_line(partition))
            return 0
        if args.dry_run:
            plan = planned_drop(
                table,
                engine,
                older_than=args.older_than,
                keep_detached=args.keep_detached,
                concurrently=args.concurrently,
            )
            shown = {p.name: p for p in list_partitions(table, engine)}
            for name in plan.finalized:
                print(f"eventlog-persist: would finish the pending detach of {name}")
            for verb, names in (("drop", plan.dropped), ("detach and keep", plan.detached)):
                for name in names:
                    what = _line(shown[name]) if name in shown else f"{name} (already detached)"
                    print(f"eventlog-persist: would {verb} {what}")
            print(
                f"eventlog-persist: would drop {len(plan.dropped)} partitions and detach and "
                f"keep {len(plan.detached)}, older than {args.older_than.isoformat()}"
            )
            return 0
        result = drop_partitions(
            table,
            engine,
            older_than=args.older_than,
            keep_detached=args.keep_detached,
            concurrently=args.concurrently,
            lock_timeout=args.lock_timeout,
        )
    finally:
        engine.dispose()
    for name in result.finalized:
        print(f"eventlog-persist: finished the pending detach of {name}")
    for name in result.detached:
        print(f"eventlog-persist: detached {name} (kept as a table)")
    for name in result.dropped:
        print(f"eventlog-persist: dropped {name}")
    print(
        f"eventlog-persist: {len(result.dropped)} partitions dropped, {len(result.detached)} "
        f"detached and kept, older than {args.older_than.isoformat()}"
    )
    if result.erasures:
        print(
            f"eventlog-persist: audit: {result.erasures} retention tombstones written "
            "(one per event removed)"
        )
    return 0
