"""Helpers for hosts adopting the ``eventlog`` Alembic branch: setup checks, linear mode,
and the autogenerate hook."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Final, Literal

from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from alembic.util.pyfiles import coerce_resource_to_filename
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from eventlog_persist._schema import TABLE_NAME
from eventlog_persist._targets import ForeignKeyTargets
from eventlog_persist.exceptions import ConfigurationError, MigrationSetupError

__all__ = [
    "ANCHOR_REVISION",
    "BRANCH_LABEL",
    "MIGRATIONS_LOCATION",
    "SetupReport",
    "check_setup",
    "include_name",
    "package_revisions",
    "refuse_cut_location",
    "write_linear_revisions",
]

MIGRATIONS_LOCATION: Final = "eventlog_persist:migrations"
"""What hosts add to Alembic's ``version_locations`` (branch mode)."""
BRANCH_LABEL: Final = "eventlog"
"""Branch label of the package's revisions: ``alembic downgrade eventlog@-1``."""
ANCHOR_REVISION: Final = "eventlog_prereqs"
"""Revision id (or branch label) the host declares after the tables ``event_logs`` references."""
LINEAR_MARKER: Final = "eventlog_persist_revision"
"""Module attribute naming the package revision a linear-mode host revision was written from."""

_REVISION_FILE = re.compile(r"^(evl_\d{4})_\w+\.py$")


@dataclass(frozen=True, slots=True)
class SetupReport:
    """What :func:`check_setup` found.

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
    """Alembic ``include_name`` hook that hides ``event_logs`` from autogenerate.

    For hosts that do not register the ``EventLog`` model in ``target_metadata``: without it,
    ``alembic revision --autogenerate`` and ``alembic check`` propose dropping the table.
    Pass it as ``context.configure(..., include_name=include_name)``; a host with its own hook
    calls this one first and returns ``False`` when it does.
    """
    return not (type_ == "table" and name == TABLE_NAME)


def package_revisions() -> list[tuple[str, Path]]:
    """Return the package's revision ids and files, oldest first."""
    folder = resources.files("eventlog_persist") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _REVISION_FILE.match(entry.name)
        if match:
            found.append((match.group(1), Path(str(entry))))
    return sorted(found)


def check_setup(config: Config, *, connection: Connection | None = None) -> SetupReport:
    """Check a host's Alembic configuration for the event log, without changing anything.

    Args:
        config: The host's Alembic ``Config`` (``Config("alembic.ini")``).
        connection: Optional connection to the host database; when given, the foreign-key
            target tables must exist there (after the host's migrations ran).

    Returns:
        A report with the adoption mode and the problems found, each with its fix.
    """
    problems: list[str] = []
    locations = config.get_version_locations_list() or []
    cut = _cut_location(config)
    if cut is not None:
        return SetupReport(None, (cut,))

    host_locations = [loc for loc in locations if loc != MIGRATIONS_LOCATION]
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
        if linear:
            problems.append(
                f"the host history already holds linear-mode copies ({', '.join(linear)}) and "
                f"{MIGRATIONS_LOCATION!r} is in version_locations too: event_logs would be "
                "created twice. Use one mode: remove the location, or the copies"
            )
    elif linear:
        mode = "linear"
        missing = [rev for rev, _ in package_revisions() if rev not in linear]
        if missing:
            problems.append(
                f"package revisions {', '.join(missing)} are not in the host history yet; run "
                "'eventlog-persist linear-revision' to write them"
            )
    else:
        problems.append(
            "the event log is not adopted: add "
            f"{MIGRATIONS_LOCATION!r} to version_locations (branch mode) or run "
            "'eventlog-persist linear-revision' (linear mode); see docs/adoption.md"
        )

    if connection is not None:
        problems.extend(_read_only(connection))
        problems.extend(_missing_targets(config, connection))
    return SetupReport(mode, tuple(problems))


def write_linear_revisions(config: Config, *, version_path: str | Path | None = None) -> list[Path]:
    """Copy the package revisions the host lacks into its own history, chained on its head.

    Linear mode, for hosts that want a single head (``alembic upgrade head`` and
    ``alembic downgrade -1`` as usual). Each written file is self-contained and frozen like
    the package's own revision; ``LINEAR_MARKER`` records which one it copies.

    Args:
        config: The host's Alembic ``Config``; the package location must not be in its
            ``version_locations``.
        version_path: Folder to write into; default: the first of the host's
            ``version_locations``, else ``<script_location>/versions``.

    Returns:
        The files written, oldest first (empty when the host is up to date).

    Raises:
        MigrationSetupError: The host is in branch mode, or its history has several heads.
    """
    locations = config.get_version_locations_list() or []
    if MIGRATIONS_LOCATION in locations:
        raise MigrationSetupError(
            f"{MIGRATIONS_LOCATION!r} is in version_locations (branch mode); linear mode copies "
            "the revisions instead. Remove it from version_locations first"
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
    elif locations:
        target = coerce_resource_to_filename(locations[0])
    else:
        target = Path(host.dir, "versions")
    head = heads[0] if heads else None
    written = []
    for package_rev, source in package_revisions():
        if package_rev in present:
            continue
        new_rev = package_rev.replace("evl_", "eventlog_", 1)
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
    """The problem (with its fix) when ``path_separator`` cut the package location apart."""
    locations = config.get_version_locations_list() or []
    if MIGRATIONS_LOCATION in locations or not _split_location(locations):
        return None
    separator = config.get_alembic_option("path_separator")
    return (
        f"version_locations was split into {locations!r}: path_separator = "
        f"{separator or 'os'} cuts {MIGRATIONS_LOCATION!r} at its colon: Alembic never "
        "finds the package's revisions, and loads a 'migrations' folder of the working "
        "directory as revisions, env.py included, which hangs 'alembic upgrade'. "
        "Set 'path_separator = space' (or newline) in alembic.ini, or use the list form of "
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


def _missing_targets(config: Config, connection: Connection) -> list[str]:
    section = "eventlog_persist"
    names = {
        key: config.get_section_option(section, key) or key
        for key in ("users", "chat_sessions", "user_projects", "user_agents")
    }
    schema = config.get_section_option(section, "schema")
    try:
        ForeignKeyTargets(schema=schema, **names)  # validates the names
    except ConfigurationError as exc:
        return [f"the [{section}] settings in alembic.ini are not valid: {exc}"]
    inspector = inspect(connection)
    return [
        f"FK target table {actual!r} does not exist in the database"
        + (f" (schema {schema!r})" if schema else "")
        + f"; run the host's migrations up to {ANCHOR_REVISION!r} first, or set "
        f"'{logical} = <your table>' in the [{section}] section of alembic.ini"
        for logical, actual in names.items()
        if not inspector.has_table(actual, schema=schema)
    ]
