"""Helpers for hosts adopting the ``eventlog`` Alembic branch: setup checks, linear mode,
and the autogenerate hook."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any, Final, Literal

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from alembic.util.pyfiles import coerce_resource_to_filename
from sqlalchemy import Column, MetaData, Table, inspect, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeEngine

from eventlog_persist._audit_schema import ERASURES_TABLE, SEALS_TABLE
from eventlog_persist._conversion import LEGACY_KEY, PREPARED_BOUND
from eventlog_persist._model import event_log_model
from eventlog_persist._schema import CONSUMERS_TABLE, TABLE_NAME, XID_COLUMN, quote_identifier
from eventlog_persist._targets import ForeignKeyTargets
from eventlog_persist.exceptions import ConfigurationError, MigrationSetupError

__all__ = [
    "ANCHOR_REVISION",
    "AUDIT_BRANCH_LABEL",
    "AUDIT_LOCATION",
    "BRANCH_LABEL",
    "FEED_BRANCH_LABEL",
    "FEED_LOCATION",
    "MIGRATIONS_LOCATION",
    "PARTITIONED_BRANCH_LABEL",
    "PARTITIONED_LOCATION",
    "SetupReport",
    "check_setup",
    "include_name",
    "include_object",
    "package_revisions",
    "refuse_cut_location",
    "skip_partitions",
    "write_linear_revisions",
]

MIGRATIONS_LOCATION: Final = "eventlog_persist:migrations"
"""What hosts add to Alembic's ``version_locations`` (branch mode)."""
BRANCH_LABEL: Final = "eventlog"
"""Branch label of the package's revisions: ``alembic downgrade eventlog@-1``."""
PARTITIONED_LOCATION: Final = "eventlog_persist:migrations_partitioned"
"""What hosts opting in to the partitioned layout add to ``version_locations`` as well."""
PARTITIONED_BRANCH_LABEL: Final = "eventlog_partitioned"
"""Branch label of the partitioned layout's revisions (they depend on ``evl_0002``)."""
FEED_LOCATION: Final = "eventlog_persist:migrations_feed"
"""What hosts opting in to the feed add to ``version_locations`` as well."""
FEED_BRANCH_LABEL: Final = "eventlog_feed"
"""Branch label of the feed's revisions (they depend on ``evl_0002``)."""
AUDIT_LOCATION: Final = "eventlog_persist:migrations_audit"
"""What hosts opting in to the audit add to ``version_locations`` (with the feed's)."""
AUDIT_BRANCH_LABEL: Final = "eventlog_audit"
"""Branch label of the audit's revisions (they depend on the feed's ``evlfeed_0001``)."""
ANCHOR_REVISION: Final = "eventlog_prereqs"
"""Revision id (or branch label) the host declares after the tables ``event_logs`` references."""
LINEAR_MARKER: Final = "eventlog_persist_revision"
"""Module attribute naming the package revision a linear-mode host revision was written from."""

_REVISION_FILE = re.compile(r"^(evl_\d{4})_\w+\.py$")
_PARTITIONED_FILE = re.compile(r"^(evlpart_\d{4})_\w+\.py$")
_FEED_FILE = re.compile(r"^(evlfeed_\d{4})_\w+\.py$")
_AUDIT_FILE = re.compile(r"^(evlaudit_\d{4})_\w+\.py$")
# Revision id prefix in the package -> in a linear-mode copy.
_LINEAR_PREFIXES: Final = {
    "evlpart_": "eventlog_part_",
    "evlfeed_": "eventlog_feed_",
    "evlaudit_": "eventlog_audit_",
    "evl_": "eventlog_",
}
_OPT_IN_LOCATIONS: Final = (PARTITIONED_LOCATION, FEED_LOCATION, AUDIT_LOCATION)
# The package's tables besides event_logs (opt-in): hidden from autogenerate like it.
_OWN_TABLES: Final = frozenset({TABLE_NAME, CONSUMERS_TABLE, ERASURES_TABLE, SEALS_TABLE})
# The partitions the partitioned revision creates: event_logs_pYYYYMMDD (pg_partman's default
# suffix for weekly and monthly partitions too).
_PARTITION_NAME = re.compile(rf"^{TABLE_NAME}_(p\d{{8}}|legacy)$")
_SECTION: Final = "eventlog_persist"
"""The optional alembic.ini section the package's revisions read their settings from."""
_TARGET_KEYS: Final = ("users", "chat_sessions", "user_projects", "user_agents")


@dataclass(frozen=True, slots=True)
class SetupReport:
    """What `check_setup` found.

    Attributes:
        mode: ``"branch"`` (package location in ``version_locations``), ``"linear"``
            (package revisions copied into the host history) or ``None`` (not adopted yet).
        problems: One message per problem, each naming the fix; empty when all is well.
    """

    mode: Literal["branch", "linear"] | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic ``include_name`` hook: autogenerate does not reflect ``event_logs``.

    The package's revisions own the table. Pass it with `include_object`, which hides the
    model's side, as ``context.configure(..., include_name=include_name,
    include_object=include_object)``; then ``alembic revision --autogenerate`` never creates,
    alters or drops ``event_logs``, its indexes or constraints, whether or not ``EventLog``
    is in ``target_metadata``. A host with its own hook returns ``False`` when either does.
    The feed's ``event_log_consumers`` table and the audit's ``event_log_erasures`` and
    ``event_log_seals`` are hidden the same way.
    """
    return not (
        (type_ == "table" and name in _OWN_TABLES)
        or parent_names.get("table_name") in _OWN_TABLES
        or not skip_partitions(name, type_, parent_names)
    )


def skip_partitions(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic ``include_name`` hook for the partitioned layout: partitions are not reflected.

    PostgreSQL lists each partition of ``event_logs`` as a table of its own, which is not in
    the host's models, so autogenerate would propose dropping it. With
    ``context.configure(..., include_name=skip_partitions)`` it compares ``event_logs``
    itself with the ``EventLog`` model and leaves the partitions (``event_logs_pYYYYMMDD``,
    their indexes and constraints) alone. `include_name` skips them too. A host with its own
    hook returns ``False`` when either does; partitions named otherwise need the host's own.

    .. versionadded:: 0.3.0
    """
    table = name if type_ == "table" else parent_names.get("table_name")
    return not (table is not None and _PARTITION_NAME.match(table))


def include_object(
    obj: Any,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: Any,
) -> bool:
    """Alembic ``include_object`` hook: autogenerate leaves the ``EventLog`` model alone.

    The metadata side of `include_name`: without it, a host whose ``target_metadata`` holds
    ``EventLog`` gets ``create_table('event_logs')`` in its own autogenerated revision,
    which the package's branch then creates again. The feed's ``event_log_consumers``
    table is left alone the same way.

    .. versionadded:: 0.3.0
    """
    if type_ == "table":
        return name not in _OWN_TABLES
    table = getattr(obj, "table", None)
    return getattr(table, "name", None) not in _OWN_TABLES


def package_revisions(
    *, partitioned: bool = False, feed: bool = False, audit: bool = False
) -> list[tuple[str, Path]]:
    """Return the package's revision ids and files, oldest first.

    Args:
        partitioned: The revisions of the opt-in partitioned layout instead of the main ones.
        feed: The revisions of the opt-in feed instead of the main ones.
        audit: The revisions of the opt-in audit instead of the main ones.

            .. versionadded:: 0.3.0
    """
    if partitioned + feed + audit > 1:
        raise ValueError(
            "package_revisions lists one branch: partitioned, feed or audit, not several"
        )
    if audit:
        folder_name, pattern = "migrations_audit", _AUDIT_FILE
    elif partitioned:
        folder_name, pattern = "migrations_partitioned", _PARTITIONED_FILE
    elif feed:
        folder_name, pattern = "migrations_feed", _FEED_FILE
    else:
        folder_name, pattern = "migrations", _REVISION_FILE
    folder = resources.files("eventlog_persist") / folder_name
    found = []
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match:
            found.append((match.group(1), Path(str(entry))))
    return sorted(found)


def check_setup(config: Config, *, connection: Connection | None = None) -> SetupReport:
    """Check a host's Alembic configuration for the event log, without changing anything.

    The ``[eventlog_persist]`` section of alembic.ini is optional: without it the revisions'
    defaults apply. Both ``path_separator`` and its pre-1.16 name ``version_path_separator``
    are understood, as Alembic does.

    Args:
        config: The host's Alembic ``Config`` (``Config("alembic.ini")``).
        connection: Optional connection to the host database; when given, the foreign-key
            target tables must exist there (after the host's migrations ran), and an
            existing ``event_logs`` must match the package's model (no drift).

    Returns:
        A report with the adoption mode and the problems found, each with its fix.
    """
    problems: list[str] = []
    locations = config.get_version_locations_list() or []
    cut = _cut_location(config)
    if cut is not None:
        return SetupReport(None, (cut,))

    host_locations = [
        loc for loc in locations if loc not in (MIGRATIONS_LOCATION, *_OPT_IN_LOCATIONS)
    ]
    if locations and not host_locations:
        problems.append(
            f"version_locations lists only {MIGRATIONS_LOCATION!r}: Alembic then no longer "
            "reads the host's own versions folder. List it too, e.g. "
            f"'version_locations = %(here)s/migrations/versions {MIGRATIONS_LOCATION}'"
        )
        return SetupReport(None, tuple(problems))
    try:
        host = _host_script(config, host_locations)
        host_revisions = {rev.revision: rev for rev in host.walk_revisions()}
    except Exception as exc:  # any failure to load the history is a finding, not a crash
        problems.append(
            f"the host's own Alembic history does not load: {type(exc).__name__}: {exc}"
        )
        return SetupReport(None, tuple(problems))

    linear = sorted(
        str(getattr(rev.module, LINEAR_MARKER))
        for rev in host_revisions.values()
        if hasattr(rev.module, LINEAR_MARKER)
    )
    mode: Literal["branch", "linear"] | None = None
    if MIGRATIONS_LOCATION in locations:
        mode = "branch"
        anchored = ANCHOR_REVISION in host_revisions or any(
            ANCHOR_REVISION in rev.branch_labels for rev in host_revisions.values()
        )
        if not anchored:
            problems.append(
                f"no host revision is named {ANCHOR_REVISION!r}, which the eventlog branch "
                "depends on, so every alembic command fails with KeyError. Remove "
                f"{MIGRATIONS_LOCATION!r} from version_locations, run 'alembic revision -m "
                f'"eventlog_persist prerequisites" --rev-id {ANCHOR_REVISION}\' (it must come '
                "after the revisions that create the referenced tables), then add it back"
            )
        if PARTITIONED_LOCATION in locations and any(rev.startswith("evlpart_") for rev in linear):
            problems.append(
                f"the host history holds a linear-mode copy of the partitioned layout and "
                f"{PARTITIONED_LOCATION!r} is in version_locations too; use one mode"
            )
        if FEED_LOCATION in locations and any(rev.startswith("evlfeed_") for rev in linear):
            problems.append(
                f"the host history holds a linear-mode copy of the feed and "
                f"{FEED_LOCATION!r} is in version_locations too; use one mode"
            )
        if AUDIT_LOCATION in locations and any(rev.startswith("evlaudit_") for rev in linear):
            problems.append(
                f"the host history holds a linear-mode copy of the audit and "
                f"{AUDIT_LOCATION!r} is in version_locations too; use one mode"
            )
        if AUDIT_LOCATION in locations and FEED_LOCATION not in locations:
            problems.append(
                f"{AUDIT_LOCATION!r} is in version_locations without {FEED_LOCATION!r}, "
                "whose evlfeed_0001 the audit depends on (every alembic command fails with "
                "KeyError); add the feed's location too"
            )
        if linear:
            problems.append(
                f"the host history already holds linear-mode copies ({', '.join(linear)}) and "
                f"{MIGRATIONS_LOCATION!r} is in version_locations too: event_logs would be "
                "created twice. Use one mode: remove the location, or the copies"
            )
    elif any(location in locations for location in _OPT_IN_LOCATIONS):
        location, flag = next(
            (location, flag)
            for location, flag in (
                (PARTITIONED_LOCATION, "--partitioned"),
                (FEED_LOCATION, "--feed"),
                (AUDIT_LOCATION, "--feed --audit"),
            )
            if location in locations
        )
        problems.append(
            f"{location!r} is in version_locations without "
            f"{MIGRATIONS_LOCATION!r}, whose evl_0002 it depends on (every alembic command "
            f"fails with KeyError); list both, or neither. In linear mode, remove it from "
            f"version_locations and run 'eventlog-persist linear-revision {flag}' instead"
        )
    elif linear:
        mode = "linear"
        missing = [rev for rev, _ in package_revisions() if rev not in linear]
        # An opt-in branch the history holds a copy of: all of its revisions, too.
        for prefix, branch in (
            ("evlpart_", {"partitioned": True}),
            ("evlfeed_", {"feed": True}),
            ("evlaudit_", {"audit": True}),
        ):
            if any(rev.startswith(prefix) for rev in linear):
                missing += [rev for rev, _ in package_revisions(**branch) if rev not in linear]
        if missing:
            problems.append(
                f"package revisions {', '.join(missing)} are not in the host history yet; run "
                "'eventlog-persist linear-revision' (with --partitioned, --feed, --audit for "
                "the branches opted in to) to write them"
            )
    else:
        problems.append(
            "the event log is not adopted: add "
            f"{MIGRATIONS_LOCATION!r} to version_locations (branch mode) or run "
            "'eventlog-persist linear-revision' (linear mode); see docs/adoption.md"
        )

    if connection is not None:
        problems.extend(_read_only(connection))
        problems.extend(_recorded_problems(config, connection, mode, locations, linear))
        problems.extend(_database_problems(config, connection, mode))
    return SetupReport(mode, tuple(problems))


# Each package branch's revision prefix, location and linear-revision flags.
_BRANCHES: Final = (
    ("evlpart_", PARTITIONED_LOCATION, "--partitioned"),
    ("evlfeed_", FEED_LOCATION, "--feed"),
    ("evlaudit_", AUDIT_LOCATION, "--feed --audit"),
    ("evl_", MIGRATIONS_LOCATION, ""),
)


def _opt_in(revision: str) -> str:
    """How a configuration gets a package revision: its location, or its linear copy."""
    for prefix, location, flag in _BRANCHES:
        if revision.startswith(prefix):
            return (
                f"add {location!r} to version_locations (linear mode: 'eventlog-persist "
                f"linear-revision{' ' + flag if flag else ''}')"
            )
    return "add the folder that holds its file to version_locations, or put the file back"


def _recorded_problems(
    config: Config,
    connection: Connection,
    mode: str | None,
    locations: list[str],
    linear: list[str],
) -> list[str]:
    """What the database holds that this configuration cannot see: a revision recorded in
    ``alembic_version`` that no version location holds (every alembic command then fails),
    and a partitioned ``event_logs`` (made by 'eventlog-persist convert') without the
    partitioned opt-in, whose upgrade would record nothing."""
    problems: list[str] = []
    if connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL")):
        recorded = connection.scalars(text("SELECT version_num FROM alembic_version")).all()
        script = ScriptDirectory.from_config(config)  # check_setup loaded it already
        for revision in sorted(map(str, recorded)):
            if not revision.startswith(("evl", "eventlog_")):
                # The package's revisions and their linear copies only: another application
                # sharing the database may keep its own history in an alembic_version.
                continue
            try:
                found = script.get_revision(revision)
            except Exception:
                found = None
            if found is None:
                problems.append(
                    f"the database records revision {revision!r}, which this configuration "
                    'cannot find, so every alembic command fails ("Can\'t locate revision"): '
                    f"{_opt_in(revision)}"
                )
    partitioned_opted = PARTITIONED_LOCATION in locations or any(
        revision.startswith("evlpart_") for revision in linear
    )
    if mode is not None and not partitioned_opted:
        try:
            targets = _targets(config)
        except ConfigurationError:  # reported by _database_problems
            return problems
        qualified = _event_logs_name(targets)
        kind = connection.execute(
            text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": qualified},
        ).scalar()
        if kind == "p":
            problems.append(
                f"{TABLE_NAME} is partitioned (by 'eventlog-persist convert'), but this "
                f"configuration does not opt in to the partitioned layout: "
                f"{_opt_in('evlpart_0001')}, then run 'alembic upgrade heads', which records "
                "evlpart_0001 and changes nothing else"
            )
    return problems


def write_linear_revisions(
    config: Config,
    *,
    version_path: str | Path | None = None,
    partitioned: bool = False,
    feed: bool = False,
    audit: bool = False,
) -> list[Path]:
    """Copy the package revisions the host lacks into its own history, chained on its head.

    Linear mode, for hosts that want a single head (``alembic upgrade head`` and
    ``alembic downgrade -1`` as usual). Each written file is self-contained and frozen like
    the package's own revision; ``LINEAR_MARKER`` records which one it copies.

    Args:
        config: The host's Alembic ``Config``; the package location must not be in its
            ``version_locations``.
        version_path: Folder to write into; default: the first of the host's
            ``version_locations``, else ``<script_location>/versions``.
        partitioned: Also copy the partitioned layout's revisions (opt-in), after the main
            ones; their copies are named ``eventlog_part_NNNN``.

            .. versionadded:: 0.3.0
        feed: Also copy the feed's revisions (opt-in), after the main ones and those of
            the partitioned layout; their copies are named ``eventlog_feed_NNNN``.

            .. versionadded:: 0.3.0
        audit: Also copy the audit's revisions (opt-in), after the feed's, which they need
            (copied before, or now with ``feed=True``); their copies are named
            ``eventlog_audit_NNNN``.

            .. versionadded:: 0.3.0

    Returns:
        The files written, oldest first (empty when the host is up to date).

    Raises:
        MigrationSetupError: The host is in branch mode, its history has several heads,
            ``version_path`` is not a folder Alembic reads, or ``audit`` is asked without the
            feed.
    """
    locations = config.get_version_locations_list() or []
    listed = [loc for loc in (MIGRATIONS_LOCATION, *_OPT_IN_LOCATIONS) if loc in locations]
    if listed:
        names = " and ".join(repr(loc) for loc in listed)
        raise MigrationSetupError(
            f"{names} {'is' if len(listed) == 1 else 'are'} in version_locations (branch "
            "mode); linear mode copies the revisions instead. Remove "
            f"{'it' if len(listed) == 1 else 'them'} from version_locations first"
        )
    host = _host_script(config, locations)
    heads = host.get_heads()
    if len(heads) > 1:
        raise MigrationSetupError(
            f"the host history has several heads ({', '.join(heads)}); linear mode chains on "
            "one head. Merge them first ('alembic merge heads')"
        )
    present = {
        str(getattr(rev.module, LINEAR_MARKER))
        for rev in host.walk_revisions()
        if hasattr(rev.module, LINEAR_MARKER)
    }
    if version_path is not None:
        target = Path(version_path)
        read = [coerce_resource_to_filename(loc) for loc in locations] or [
            Path(host.dir, "versions")
        ]
        if target.resolve() not in {Path(folder).resolve() for folder in read}:
            raise MigrationSetupError(
                f"{target} is not a folder Alembic reads revisions from "
                f"({', '.join(map(str, read))}): it would never see the copies. Pass one of "
                "those, or add the folder to version_locations first"
            )
    elif locations:
        target = coerce_resource_to_filename(locations[0])
    else:
        target = Path(host.dir, "versions")
    head = heads[0] if heads else None
    written = []
    wanted = package_revisions()
    if partitioned:
        wanted += package_revisions(partitioned=True)
    if feed:
        wanted += package_revisions(feed=True)
    if audit:
        if not feed and not any(rev.startswith("evlfeed_") for rev in present):
            raise MigrationSetupError(
                "the audit needs the feed (evlaudit_0001 depends on the feed's xid column); "
                "run 'eventlog-persist linear-revision --feed --audit'"
            )
        wanted += package_revisions(audit=True)
    for package_rev, source in wanted:
        if package_rev in present:
            continue
        prefix = next(prefix for prefix in _LINEAR_PREFIXES if package_rev.startswith(prefix))
        new_rev = _LINEAR_PREFIXES[prefix] + package_rev.removeprefix(prefix)
        path = target / f"{new_rev}_{source.stem.split('_', 2)[2]}.py"
        if path.exists():
            raise MigrationSetupError(
                f"{path} exists but is not a linear copy of {package_rev} in the host "
                "history (no eventlog_persist_revision marker); move it away and run again"
            )
        path.write_text(_linearize(source.read_text(), package_rev, new_rev, head))
        written.append(path)
        head = new_rev
    return written


def _linearize(text: str, package_rev: str, new_rev: str, down: str | None) -> str:
    replacements = {
        r"^revision = .*$": f"revision = {new_rev!r}",
        r"^down_revision = .*$": f"down_revision = {down!r}",
        r"^branch_labels = .*$": "branch_labels = None",
        r"^depends_on = .*$": f"depends_on = None\n{LINEAR_MARKER} = {package_rev!r}",
        r"^Revision ID: .*$": f"Revision ID: {new_rev}",
        r"^Revises:.*$": f"Revises: {down or ''}",
    }
    for pattern, replacement in replacements.items():
        text, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
        if count != 1:  # guards the layout of the shipped revision files
            raise MigrationSetupError(f"cannot rewrite {pattern!r} in revision {package_rev}")
    return text


class _CutLocationError(MigrationSetupError, CommandError):
    """`MigrationSetupError` that the ``alembic`` command prints as one ``FAILED:`` line."""


def refuse_cut_location(config: Config) -> None:
    """Raise if ``version_locations`` holds the package location cut at its colon.

    The package runs this on import inside a running Alembic environment (``env.py``
    importing the host's models): with the location cut, ``alembic upgrade`` would otherwise
    never create ``event_logs``, or load the host's ``migrations/env.py`` as a revision, which
    then waits forever on the outer run's own transaction.

    Raises:
        MigrationSetupError: The location is cut; the message names the fix.
    """
    problem = _cut_location(config)
    if problem is not None:
        raise _CutLocationError(f"eventlog_persist: {problem}")


def _cut_location(config: Config) -> str | None:
    """The problem (with its fix) when the path separator cut the package location apart."""
    locations = config.get_version_locations_list() or []
    if MIGRATIONS_LOCATION in locations or not _split_location(locations):
        return None
    # Alembic splits version_locations on path_separator, else on the pre-1.16 key.
    key = next(
        (
            key
            for key in ("path_separator", "version_path_separator")
            if config.get_main_option(key) is not None
        ),
        "path_separator",
    )
    setting = f"{key} = {config.get_main_option(key)}"
    fix = (
        f"Replace '{setting}' with 'path_separator = space' (or newline) in alembic.ini"
        if key == "version_path_separator"
        else "Set 'path_separator = space' (or newline) in alembic.ini"
    )
    return (
        f"version_locations was split into {locations!r}: {setting} cuts "
        f"{MIGRATIONS_LOCATION!r} at its colon: Alembic never finds the package's revisions, "
        "and loads a 'migrations' folder of the working directory as revisions, env.py "
        f"included, which hangs 'alembic upgrade'. {fix}, or use the list form of "
        "version_locations in pyproject.toml"
    )


def _split_location(locations: Iterable[str]) -> bool:
    # Split at its colon, the location leaves "...eventlog_persist" then "migrations...".
    package, _, folder = MIGRATIONS_LOCATION.partition(":")
    items = [loc.strip() for loc in locations]
    return any(
        first.endswith(package) and second.startswith(folder) for first, second in pairwise(items)
    )


def _host_script(config: Config, locations: list[str]) -> ScriptDirectory:
    script = ScriptDirectory.from_config(config)
    return ScriptDirectory(
        script.dir,
        file_template=script.file_template,
        version_locations=locations or None,
        recursive_version_locations=script.recursive_version_locations,
    )


def _read_only(connection: Connection) -> list[str]:
    in_recovery, read_only = connection.execute(
        text("SELECT pg_is_in_recovery(), current_setting('transaction_read_only')")
    ).one()
    if in_recovery:
        why = "it is a standby (in recovery)"
    elif read_only == "on":
        why = "its transactions are read-only (default_transaction_read_only = on)"
    else:
        return []
    return [
        f"the database accepts only reads: {why}. The writers would retry their events "
        "until it accepts writes; point them and --url at the primary, or use a multi-host "
        "conninfo with target_session_attrs=read-write"
    ]


def _targets(config: Config) -> ForeignKeyTargets:
    """The FK targets the revisions use: the optional ``[eventlog_persist]`` section, else defaults.

    Raises:
        ConfigurationError: A name in the section is not a plain SQL identifier.
    """
    parser = config.file_config
    given = {
        key: parser.get(_SECTION, key)
        for key in (*_TARGET_KEYS, "schema")
        if parser.has_option(_SECTION, key) and parser.get(_SECTION, key).strip()
    }
    return ForeignKeyTargets(**given)


def _database_problems(config: Config, connection: Connection, mode: str | None) -> list[str]:
    try:
        targets = _targets(config)
    except ConfigurationError as exc:
        return [f"the [{_SECTION}] settings in alembic.ini are not valid: {exc}"]
    inspector = inspect(connection)
    where = f"schema {targets.schema!r}" if targets.schema else "the search_path"
    missing = [
        getattr(targets, key)
        for key in _TARGET_KEYS
        if not inspector.has_table(getattr(targets, key), schema=targets.schema)
    ]
    if missing:
        tables = "table" if len(missing) == 1 else "tables"
        exist = "does not exist" if len(missing) == 1 else "do not exist"
        return [
            f"FK target {tables} {', '.join(map(repr, missing))} {exist} in {where} of "
            "that database; run the host's migrations up to "
            + (
                "the revision before the copy of evl_0001 (eventlog_0001)"
                if mode == "linear"
                else repr(ANCHOR_REVISION)
            )
            + " first, "
            f"check --url, or name your tables in the [{_SECTION}] section of alembic.ini "
            "(e.g. 'users = accounts')"
        ]
    if not inspector.has_table(TABLE_NAME, schema=targets.schema):
        return []  # not created yet: 'alembic upgrade heads' will
    differences = _drift(connection, targets)
    if differences and _conversion_prepared(connection, targets):
        # 'convert --prepare' built the swap's key; the host deploys meanwhile (adoption.md).
        differences = [d for d in differences if d != f"index {LEGACY_KEY} is not in the model"]
    if not differences:
        return []
    return [
        f"{TABLE_NAME} in the database differs from the package's model: "
        f"{'; '.join(differences)}. Run 'alembic upgrade heads' if a package revision is "
        f"pending; otherwise {TABLE_NAME} was altered outside the package's revisions: "
        "undo that change by hand"
    ]


def _event_logs_name(targets: ForeignKeyTargets) -> str:
    """``event_logs``, schema-qualified when the settings name a schema, quoted for SQL."""
    name = quote_identifier(TABLE_NAME)
    return f"{quote_identifier(targets.schema)}.{name}" if targets.schema else name


def _conversion_prepared(connection: Connection, targets: ForeignKeyTargets) -> bool:
    """Whether a conversion stopped before its swap (``convert --prepare``) holds the table."""
    qualified = _event_logs_name(targets)
    return bool(
        connection.scalar(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = "
                "to_regclass(:table) AND conname = :bound)"
            ),
            {"table": qualified, "bound": PREPARED_BOUND},
        )
    )


def _drift(connection: Connection, targets: ForeignKeyTargets) -> list[str]:
    """How the live ``event_logs`` differs from the model, as Alembic autogenerate sees it."""
    inspector = inspect(connection)
    model_metadata = MetaData()
    for key in _TARGET_KEYS:
        # The referenced tables, reduced to the key column whose type the FK columns copy.
        name = getattr(targets, key)
        key_type = next(
            (
                column["type"]
                for column in inspector.get_columns(name, schema=targets.schema)
                if column["name"] == "id"
            ),
            None,
        )
        Table(name, model_metadata, Column("id", key_type, primary_key=True), schema=targets.schema)

    class Base(DeclarativeBase):
        metadata = model_metadata

    qualified = _event_logs_name(targets)
    partitioned = connection.execute(
        text("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass(:name)"),
        {"name": qualified},
    ).scalar()
    # The feed (evlfeed_0001) is opt-in: its column says whether this database opted in.
    feed = bool(
        connection.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:name) "
                "AND attname = :column AND attnum > 0 AND NOT attisdropped)"
            ),
            {"name": qualified, "column": XID_COLUMN},
        ).scalar()
    )
    # The audit (evlaudit_0001) likewise: its erasures table says so.
    audit = feed and inspector.has_table(ERASURES_TABLE, schema=targets.schema)
    event_log_model(Base, targets=targets, partitioned=bool(partitioned), feed=feed, audit=audit)
    compared = {TABLE_NAME}
    if feed:
        compared.add(CONSUMERS_TABLE)
    if audit:
        compared |= {ERASURES_TABLE, SEALS_TABLE}

    def only_event_logs(name: str | None, type_: str, parents: Mapping[str, str | None]) -> bool:
        if type_ == "schema":
            return name == targets.schema
        return type_ != "table" or name in compared

    context = MigrationContext.configure(
        connection,
        opts={
            "include_name": only_event_logs,
            "include_object": lambda obj, name, type_, reflected, compare_to: (
                type_ != "table" or name in compared
            ),
            "include_schemas": targets.schema is not None,
        },
    )
    return [
        _describe(diff, connection.dialect) for diff in compare_metadata(context, model_metadata)
    ]


def _describe(diff: Any, dialect: Dialect) -> str:
    """One autogenerate difference in words: what the database has, what the model says."""
    if isinstance(diff, list):  # column modifications come as a list of tuples
        return "; ".join(_describe(item, dialect) for item in diff)
    kind = diff[0]
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        state = "is missing" if kind == "add_index" else "is not in the model"
        return f"index {index.name} {state}"
    if kind in ("add_column", "remove_column"):
        column = diff[3]
        state = "is missing" if kind == "add_column" else "is not in the model"
        return f"column {column.name} {state}"
    if kind in ("add_fk", "remove_fk", "add_constraint", "remove_constraint"):
        constraint = diff[1]
        state = "is missing" if kind.startswith("add") else "is not in the model"
        return f"constraint {constraint.name or constraint} {state}"
    if kind.startswith("modify_"):
        _, _, _, column, _, existing, wanted = diff
        what = kind.removeprefix("modify_").replace("_", " ")
        return (
            f"column {column} {what} is {_sql(existing, dialect)}, the model says "
            f"{_sql(wanted, dialect)}"
        )
    return repr(diff)


def _sql(value: Any, dialect: Dialect) -> Any:
    """A type as PostgreSQL names it (a Uuid column is ``UUID``, not its generic CHAR(32))."""
    if isinstance(value, TypeEngine):
        return value.compile(dialect=dialect)
    return value
