"""The ``eventlog-persist audit seal|verify|status`` commands (operations)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from eventlog_persist._audit_chain import audit_tables_of, read_seals, translated
from eventlog_persist._audit_seal import FileAnchor, SealAnchor, seal_events
from eventlog_persist._audit_verify import verify_audit
from eventlog_persist._cli_feed import _age, _reflect
from eventlog_persist._cli_partitions import report_failure
from eventlog_persist._urls import psycopg_engine
from eventlog_persist.exceptions import ConfigurationError

__all__ = ["add_audit_parser", "run_audit"]

_MAX_AGE = 10 * 365 * 86400.0


def add_audit_parser(
    commands: Any, *, url: Callable[[str], str], environment: str
) -> argparse.ArgumentParser:
    """Add ``audit`` and its three subcommands to the command line's subparsers."""
    audit: argparse.ArgumentParser = commands.add_parser(
        "audit",
        help="seal the settled events, verify the seals, show the newest seal's age",
        description="Tamper evidence (docs/audit.md): seal the settled events into the "
        "hash-chained event_log_seals, verify every seal against the rows, tombstones and "
        "external anchors, or show how old the newest seal is. A refusal or an error is one "
        "line on stderr and exit status 2.",
    )
    actions = audit.add_subparsers(dest="action", required=True)
    seal = actions.add_parser(
        "seal",
        help="seal what settled since the last seal; print its head SEQ:HASH",
        description="Seal every event and tombstone settled since the last seal (the "
        "transactions below the server's horizon), as the next seal of the chain, and print "
        "its head SEQ:HASH on stdout: keep it where the database owner cannot rewrite it. "
        "Prints nothing on stdout when there was nothing to seal.",
    )
    seal.add_argument(
        "--chunk-size",
        type=_chunk_argument,
        default=1024,
        help="events per chunk, the unit a problem is localized to (default 1024)",
    )
    seal.add_argument(
        "--anchor-file",
        type=Path,
        help="also append the head to this file (flushed and fsynced), as FileAnchor does",
    )
    verify = actions.add_parser(
        "verify",
        help="verify every seal; exit 0 when OK, 1 when problems were found",
        description="Recompute every seal from the rows and tombstones (each leaf in "
        "Python), check the chain, the tombstones whose parent still exists, and the "
        "anchors given. One line per problem on stdout, then a summary with the erasures by "
        "kind; exit status 0 when OK, 1 when a problem was found, 2 when it could not run.",
    )
    verify.add_argument(
        "--anchor",
        action="append",
        default=[],
        type=_anchor_argument,
        metavar="SEQ:HASH",
        help="a seal head kept outside the database (repeat for several)",
    )
    verify.add_argument(
        "--anchors-from",
        type=Path,
        metavar="FILE",
        help="read seal heads from FILE, one SEQ:HASH at the start of each line (as "
        "FileAnchor and 'audit seal --anchor-file' write them)",
    )
    status = actions.add_parser(
        "status",
        help="the newest seal's head and age, and how many events are unsealed",
        description="The newest seal's head SEQ:HASH, when it was sealed and its age, and "
        "the events written after it (unsealed). With --max-age, exit status 1 when the "
        "newest seal is older (or there is none): for a monitoring check.",
    )
    status.add_argument(
        "--max-age",
        type=_age_argument,
        metavar="SECONDS",
        help="exit 1 when the newest seal is older than this many seconds",
    )
    for action in (seal, verify, status):
        action.add_argument(
            "--url",
            type=url,
            help="the PostgreSQL database: a URL of any driver or a libpq conninfo; default: "
            f"${environment}",
        )
        action.add_argument("--schema", help="schema of event_logs (default: search_path)")
    return audit


def _chunk_argument(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        size = 0
    if not 1 <= size <= 1 << 20:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a chunk size from 1 to {1 << 20}; pass e.g. 1024"
        )
    return size


def _anchor_argument(value: str) -> SealAnchor:
    try:
        return SealAnchor.parse(value)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _age_argument(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= _MAX_AGE:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of seconds above 0 and at most {_MAX_AGE:.0f} (10 "
            "years); pass e.g. 3600"
        )
    return seconds


def _anchors_from(path: Path) -> list[SealAnchor]:
    anchors = []
    try:
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not an anchor file: it is not ASCII ({exc.reason} at byte "
            f"{exc.start}); it holds SEQ:HASH lines, as 'eventlog-persist audit seal' prints "
            "them"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"--anchors-from {path}: {exc.strerror or exc}; give the file 'eventlog-persist "
            "audit seal --anchor-file' writes (or pass each anchor with --anchor SEQ:HASH)"
        ) from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            anchors.append(SealAnchor.parse(line.split()[0]))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{path}, line {number}: {exc}") from None
    return anchors


_HINTS = {
    "seal": "nothing was sealed; check --url, and that the role may SELECT from event_logs "
    "and event_log_erasures and INSERT into event_log_seals",
    "verify": "check --url, and that the role may SELECT from event_logs, event_log_erasures, "
    "event_log_seals and the host's chat_sessions, users, projects and agents",
    "status": "check --url, and that the role may SELECT from event_logs and event_log_seals",
}


def run_audit(args: argparse.Namespace) -> int:
    """Run ``audit ACTION``; a database error is one line on stderr and status 2."""
    try:
        anchors = list(args.anchor) if args.action == "verify" else []
        if args.action == "verify" and args.anchors_from is not None:
            anchors += _anchors_from(args.anchors_from)
        engine = psycopg_engine(args.url)
        try:
            return _run(args, engine, anchors)
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        return report_failure(f"audit {args.action}", exc, _HINTS[args.action])


def _run(args: argparse.Namespace, engine: Engine, anchors: list[SealAnchor]) -> int:
    model: Any = _reflect(engine, args.schema)  # the audit's functions take the Table too
    if args.action == "seal":
        anchor = None if args.anchor_file is None else FileAnchor(args.anchor_file)
        seal = seal_events(model, engine, chunk_size=args.chunk_size, anchor=anchor)
        if seal is None:
            print(
                "eventlog-persist: nothing to seal (no event or tombstone settled since the "
                "last seal, or another sealer is sealing)",
                file=sys.stderr,
            )
            return 0
        print(seal.anchor)
        print(
            f"eventlog-persist: sealed seal {seal.seq}: {seal.events} events in "
            f"{seal.chunks} chunks, {seal.erasures} erasures",
            file=sys.stderr,
        )
        return 0
    if args.action == "verify":
        report = verify_audit(model, engine, anchors=anchors)
        for problem in report.problems:
            print(f"eventlog-persist: problem: {problem}")
        erasures = ", ".join(f"{kind} {count}" for kind, count in report.erasures.items())
        head = "none" if report.last_seal is None else str(report.last_seal)
        summary = (
            f"{report.seals} seals, {report.events} events verified, {len(anchors)} anchors; "
            f"erasures: {erasures}; {report.unsealed} events unsealed; newest seal {head}"
        )
        if report.ok:
            print(f"eventlog-persist: audit OK: {summary}")
            return 0
        print(f"eventlog-persist: audit found {len(report.problems)} problems: {summary}")
        return 1
    return _status(args, engine, model)


def _status(args: argparse.Namespace, engine: Engine, model: Any) -> int:
    tables = audit_tables_of(model, api="audit status")
    c = tables.events.c
    try:
        with engine.connect() as connection:
            last = read_seals(connection, tables, last_only=True)
            query = select(c.id).select_from(tables.events)
            if last:
                query = query.where(c.xid >= last[0].xid_to)
            unsealed = int(
                connection.execute(select(func.count()).select_from(query.subquery())).scalar_one()
            )
    except DBAPIError as exc:
        error = translated(exc)  # the audit's schema missing: named, with the fix
        if error is exc:
            raise
        raise error from exc
    if not last:
        print(f"eventlog-persist: no seal yet; {unsealed} events unsealed")
        return 1 if args.max_age is not None else 0
    newest = last[0]
    sealed_at = newest.sealed_at or datetime.now(UTC)
    age = datetime.now(UTC) - sealed_at
    print(
        f"eventlog-persist: newest seal {newest.seq}:{newest.seal_hash.hex()} sealed "
        f"{sealed_at.astimezone(UTC).isoformat()} ({_age(age)} ago); {unsealed} events unsealed"
    )
    if args.max_age is not None and age.total_seconds() > args.max_age:
        print(
            f"eventlog-persist: the newest seal is older than {args.max_age:g} s; check that "
            "the sealer runs (AuditSealer, or 'eventlog-persist audit seal' from cron)",
            file=sys.stderr,
        )
        return 1
    return 0
