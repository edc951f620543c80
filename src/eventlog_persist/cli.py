"""The ``eventlog-persist`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from alembic.config import Config
from sqlalchemy import create_engine

from eventlog_persist.alembic_setup import check_setup, write_linear_revisions
from eventlog_persist.exceptions import EventLogError

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

    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            return _check(args.config, args.url)
        if args.command == "linear-revision":
            return _linear(args.config, args.version_path)
        from eventlog_persist.demo import run_demo

        return run_demo(url=args.url)
    except EventLogError as exc:
        print(f"eventlog-persist: error: {exc}", file=sys.stderr)
        return 2


def _check(config_path: str, url: str | None) -> int:
    config = Config(config_path)
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
    written = write_linear_revisions(Config(config_path), version_path=version_path)
    for path in written:
        print(f"eventlog-persist: wrote {path}")
    if not written:
        print("eventlog-persist: the host history already has every package revision")
    return 0


if __name__ == "__main__":
    sys.exit(main())
