"""The ``eventlog-persist feed list|status|register|reset|unregister`` commands (operations)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Engine, Table
from sqlalchemy.exc import SQLAlchemyError

from eventlog_persist._cli_partitions import reflect_event_logs, report_failure
from eventlog_persist._feed import EventFeed
from eventlog_persist._feed_sql import MAX_PARTS, FeedStart, consumer_option
from eventlog_persist._feed_status import (
    ConsumerStatus,
    FeedBlocker,
    feed_status,
    list_consumers,
    reset_consumer,
    unregister_consumer,
)
from eventlog_persist._schema import CONSUMER_NAME_LENGTH, TABLE_NAME, XID_COLUMN
from eventlog_persist._urls import psycopg_engine
from eventlog_persist.exceptions import ConfigurationError

__all__ = ["add_feed_parser", "run_feed"]

_START_HELP = (
    "'earliest' (every stored event, rows stored before the feed first), 'latest' (events "
    "committed from now on) or an ISO datetime with a UTC offset (events created from then "
    "on, e.g. 2026-12-01T00:00:00+00:00)"
)


def add_feed_parser(
    commands: Any, *, url: Callable[[str], str], environment: str
) -> argparse.ArgumentParser:
    """Add ``feed`` and its five subcommands to the command line's subparsers."""
    feed: argparse.ArgumentParser = commands.add_parser(
        "feed",
        help="list the feed's consumers, show their backlog and lease, register, reset or "
        "unregister one",
        description="Operate the feed's named consumers (event_log_consumers). A refusal or "
        "an error is one line on stderr and exit status 2.",
    )
    actions = feed.add_subparsers(dest="action", required=True)
    listing = actions.add_parser(
        "list",
        help="list the consumers: parts, registered, delivered, last commit, lease",
    )
    status = actions.add_parser(
        "status",
        help="each consumer's pending events, their oldest age, lag, lease, and the "
        "transactions that hold a horizon-mode feed back",
        description="One line per consumer and part: PENDING (committed events not "
        "delivered yet), HELD (of them, those a mode='horizon' feed waits for: committed "
        "after the oldest running transaction began), OLDEST (age of the oldest pending "
        "event), LAG (time since the last committed batch), DELIVERED, and the lease. Then, "
        "when an event is held, the transactions at the server's horizon: backend pid, "
        "database, application, state and transaction age (never the query); and each part "
        "that retention (purge, partitions drop) left without events it had not been "
        "delivered, which fails its fetches until it is reset.",
    )
    status.add_argument("--consumer", type=_consumer_argument, help="only this consumer")
    register = actions.add_parser(
        "register",
        help="register a consumer (does nothing if it is registered already with these parts)",
        description="Register a named consumer, as EventFeed(...).register(start=...) does. "
        "A consumer registered already keeps its checkpoint: use 'feed reset' to move it.",
    )
    register.add_argument(
        "--consumer", type=_consumer_argument, required=True, help="the consumer's name"
    )
    register.add_argument(
        "--start", type=_start_argument, default="earliest", help=f"{_START_HELP}; default earliest"
    )
    register.add_argument(
        "--parts",
        type=_parts_argument,
        default=1,
        help=f"split the consumer into this many parts, 1 to {MAX_PARTS}, each consumed by "
        "one worker at a time (EventFeed(parts=N)); default 1",
    )
    reset = actions.add_parser(
        "reset",
        help="move a consumer's checkpoint to earliest, latest or a time",
        description="Move the checkpoint of every part of a registered consumer to where "
        "'register --start' would put a new one: with --to earliest every stored event is "
        "delivered again; with latest the pending events are skipped (never delivered); "
        "with a time, the events created from then on are delivered (again). The batch in "
        "progress is dropped, the lease released and its generation raised, so a worker "
        "still holding a batch cannot commit it (LeaseLostError) and its next fetch starts "
        "from the new checkpoint; a mark of events retention removed before they were "
        "delivered is cleared; the delivered count is kept. Refused while a worker holds "
        "a live lease, unless --force.",
    )
    reset.add_argument(
        "--consumer", type=_consumer_argument, required=True, help="a registered consumer"
    )
    reset.add_argument("--to", type=_start_argument, required=True, help=_START_HELP)
    reset.add_argument(
        "--force",
        action="store_true",
        help="reset even while a worker holds the lease (its uncommitted batch is dropped)",
    )
    unregister = actions.add_parser(
        "unregister",
        help="remove a consumer: its checkpoint and lease (to change its parts, say)",
        description="Remove every part of a registered consumer, as "
        "EventFeed(...).unregister() does: its checkpoint, lease and delivered count. "
        "Register it again to start over from a chosen start, e.g. with other --parts. "
        "Refused while a worker holds a live lease, unless --force.",
    )
    unregister.add_argument(
        "--consumer", type=_consumer_argument, required=True, help="a registered consumer"
    )
    unregister.add_argument(
        "--force",
        action="store_true",
        help="unregister even while a worker holds the lease (its uncommitted batch is "
        "dropped and its next commit raises ConsumerNotFoundError)",
    )
    for action in (listing, status, register, reset, unregister):
        action.add_argument(
            "--url",
            type=url,
            help="the PostgreSQL database: a URL of any driver or a libpq conninfo; default: "
            f"${environment}",
        )
        action.add_argument("--schema", help="schema of event_logs (default: search_path)")
    return feed


def _consumer_argument(value: str) -> str:
    if not value.strip() or len(value) > CONSUMER_NAME_LENGTH:
        raise argparse.ArgumentTypeError(
            f"{value[:40]!r} is not a consumer name: 1 to {CONSUMER_NAME_LENGTH} characters, "
            "e.g. --consumer warehouse"
        )
    return value


def _parts_argument(value: str) -> int:
    try:
        parts = int(value)
    except ValueError:
        parts = 0
    if not 1 <= parts <= MAX_PARTS:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a number of parts from 1 to {MAX_PARTS}; pass e.g. --parts 4"
        )
    return parts


def _start_argument(value: str) -> FeedStart:
    if value in ("earliest", "latest"):
        return cast("FeedStart", value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not 'earliest', 'latest' or an ISO datetime; pass e.g. "
            "2026-12-01T00:00:00+00:00"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no UTC offset; add one, e.g. {moment.isoformat()}+00:00"
        )
    return moment


_HINTS = {
    "list": "check --url, and that the role may SELECT from event_log_consumers",
    "status": "check --url, and that the role may SELECT from event_logs and event_log_consumers",
    "register": "check --url, and that the role may INSERT into event_log_consumers",
    "reset": "nothing was changed; check --url, and that the role may UPDATE event_log_consumers",
    "unregister": "nothing was changed; check --url, and that the role may DELETE from "
    "event_log_consumers",
}


def run_feed(args: argparse.Namespace) -> int:
    """Run ``feed ACTION``; a database error is one line on stderr and status 2."""
    try:
        return _run(args)
    except SQLAlchemyError as exc:
        return report_failure(f"feed {args.action}", exc, _HINTS[args.action])


def _reflect(engine: Engine, schema: str | None) -> Table:
    """``event_logs`` as the database has it; the feed reads it through this table."""
    with engine.connect() as connection:
        table = reflect_event_logs(connection, schema)
    if XID_COLUMN not in table.c:
        raise ConfigurationError(
            f"{TABLE_NAME} has no {XID_COLUMN} column: the feed's migration (evlfeed_0001) "
            "has not run on that database; add 'eventlog_persist:migrations_feed' to "
            "version_locations and run 'alembic upgrade heads' (see docs/feed.md)"
        )
    return table


def _run(args: argparse.Namespace) -> int:
    engine = psycopg_engine(args.url)
    try:
        table = _reflect(engine, args.schema)
        model: Any = table  # the feed's functions take the event_logs Table as well
        if args.action == "list":
            rows = list_consumers(table, engine)
            for row in rows:
                print(_list_line(row))
            print(f"eventlog-persist: {len({row.consumer for row in rows})} consumers")
            return 0
        if args.action == "status":
            for line in _status_table(feed_status(model, engine, consumer=args.consumer)):
                print(line)
            return 0
        if args.action == "register":
            feed = EventFeed(model, engine, consumer=args.consumer, parts=args.parts)
            if feed.register(start=args.start):
                in_parts = f" in {args.parts} parts" if args.parts > 1 else ""
                print(
                    f"eventlog-persist: registered consumer {args.consumer!r}{in_parts} from "
                    f"{_start_text(args.start)}"
                )
            else:
                print(
                    f"eventlog-persist: consumer {args.consumer!r} is registered already; its "
                    "checkpoint is kept (move it with 'eventlog-persist feed reset')"
                )
            return 0
        if args.action == "unregister":
            outcome = unregister_consumer(table, engine, consumer=args.consumer, force=args.force)
        else:
            outcome = reset_consumer(
                table, engine, consumer=args.consumer, to=args.to, force=args.force
            )
    finally:
        engine.dispose()
    broke = _broken(outcome.broke_leases, args.action)
    if args.action == "unregister":
        print(
            f"eventlog-persist: unregistered consumer {args.consumer!r} ({outcome.parts} "
            f"parts){broke}; register it again to start over: eventlog-persist feed register "
            f"{consumer_option(args.consumer)} --start earliest|latest|TIME [--parts N]"
        )
        return 0
    print(
        f"eventlog-persist: reset consumer {args.consumer!r} ({outcome.parts} parts) to "
        f"{_start_text(args.to)}{broke}"
    )
    return 0


def _broken(owners: tuple[str, ...], action: str) -> str:
    """What the output says of the live leases a --force broke."""
    if not owners:
        return ""
    error = "LeaseLostError" if action == "reset" else "ConsumerNotFoundError"
    names = ", ".join(repr(owner) for owner in owners)
    if len(owners) == 1:
        return f"; the lease of {names} was broken (its next commit raises {error})"
    return f"; the leases of {names} were broken (their next commits raise {error})"


def _start_text(start: FeedStart) -> str:
    return start.isoformat() if isinstance(start, datetime) else start


def _age(value: timedelta | None) -> str:
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _lease(owner: str | None, live: bool) -> str:
    if owner is None:
        return "released"
    return f"{owner} (live)" if live else f"{owner} (expired)"


def _list_line(row: Any) -> str:
    committed = "never" if row.committed_at is None else row.committed_at.isoformat()
    return (
        f"{row.consumer}  part {row.part}/{row.parts}  registered {row.created_at.isoformat()}"
        f"  delivered {row.delivered}  last commit {committed}"
        f"  lease {_lease(row.owner, bool(row.live))}"
    )


def _blocker_line(blocker: FeedBlocker) -> str:
    who = f"pid {blocker.pid}" if blocker.pid is not None else f"prepared {blocker.gid!r}"
    return (
        f"held back by {who}: database {blocker.database or '?'}, application "
        f"{blocker.application_name or '-'}, state {blocker.state or '?'}, transaction open "
        f"{_age(blocker.transaction_age)}"
    )


def _status_table(statuses: Sequence[ConsumerStatus]) -> list[str]:
    header = ("CONSUMER", "PART", "PENDING", "HELD", "OLDEST", "LAG", "DELIVERED", "LEASE")
    rows = [
        (
            s.consumer,
            f"{s.part}/{s.parts}",
            str(s.pending),
            str(s.held),
            _age(s.oldest_pending_age),
            _age(s.lag),
            str(s.delivered),
            _lease(s.owner, s.lease_live),
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    blockers = dict.fromkeys(b for s in statuses for b in s.holding_back)
    lines.extend(_blocker_line(blocker) for blocker in blockers)
    lines.extend(_lost_line(s) for s in statuses if s.lost_events)
    return lines


def _lost_line(status: ConsumerStatus) -> str:
    lost_before = status.lost_before
    cutoff = None if lost_before is None else lost_before.astimezone(UTC).isoformat()
    before = "" if cutoff is None else f" created before {cutoff}"
    to = cutoff or "latest"
    return (
        f"lost by {status.consumer} part {status.part}/{status.parts}: {status.lost_events} "
        f"events{before}, removed by {status.lost_by or 'retention'} before they were "
        "delivered; its fetches raise FeedDataLostError until it is reset: eventlog-persist "
        f"feed reset {consumer_option(status.consumer)} --to {to}"
    )
