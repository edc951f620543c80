"""Sealing: `seal_events`, the `AuditSealer` / `AsyncAuditSealer` that run it at an
interval, and the anchors that export each seal head (`SealAnchor`, `LogAnchor`,
`FileAnchor`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeAlias, cast

import sqlalchemy as sa
from sqlalchemy import Connection, Engine, insert, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventlog_persist._audit_chain import (
    DEFAULT_CHUNK_SIZE,
    AuditTables,
    SealRow,
    audit_tables_of,
    chunk_end,
    merkle_root,
    read_seals,
    seal_hash,
    tombstone_hash,
    transaction_ids,
    translated,
    window_entries,
    window_tombstones,
)
from eventlog_persist._isolation import in_autocommit
from eventlog_persist._model import EventLogMixin
from eventlog_persist._partitions import unfinished_removal
from eventlog_persist._urls import check_engine, shown
from eventlog_persist.exceptions import AnchorError, AuditError, ConfigurationError

__all__ = [
    "Anchor",
    "AsyncAuditSealer",
    "AuditSealer",
    "FileAnchor",
    "LogAnchor",
    "Seal",
    "SealAnchor",
    "seal_events",
]

logger = logging.getLogger("eventlog_persist")

_MAX_CHUNK_SIZE: Final = 1 << 20
_MAX_INTERVAL: Final = 86400.0
_ANCHOR_TEXT: Final = re.compile(r"\s*(\d{1,19}):([0-9a-fA-F]{64})\s*")
_LOCK_NAMESPACE: Final = "eventlog_persist seals"


@dataclass(frozen=True, slots=True)
class SealAnchor:
    """A seal head kept outside the database: the seal's number and its hash.

    Written ``SEQ:HASH`` (the hash in 64 hex digits), as `LogAnchor` and `FileAnchor` write
    it and ``eventlog-persist audit verify --anchor`` reads it.

    Attributes:
        seq: The seal's number (1, 2, ...).
        seal_hash: Its 32-byte hash.

    .. versionadded:: 0.3.0
    """

    seq: int
    seal_hash: bytes

    def __post_init__(self) -> None:
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise ConfigurationError(
                f"SealAnchor(seq={self.seq!r}) is not valid; the seal's number is an int from 1"
            )
        if not isinstance(self.seal_hash, bytes) or len(self.seal_hash) != 32:
            raise ConfigurationError(
                f"SealAnchor(seal_hash={self.seal_hash!r}) is not valid; pass the seal's 32-byte "
                "hash, or read SEQ:HASH text with SealAnchor.parse"
            )

    @classmethod
    def parse(cls, value: str) -> SealAnchor:
        """Read ``SEQ:HASH``, e.g. ``"12:9f86d0...0f00a08"`` (64 hex digits).

        Raises:
            ConfigurationError: ``value`` is not of that form.
        """
        match = _ANCHOR_TEXT.fullmatch(value) if isinstance(value, str) else None
        if match is None or int(match[1]) < 1:
            raise ConfigurationError(
                f"{str(value)[:80]!r} is not a seal anchor; write SEQ:HASH, the seal's number "
                "(from 1) and its 64 hex digits, as the anchor exported it, e.g. "
                "12:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            )
        return cls(int(match[1]), bytes.fromhex(match[2]))

    def __str__(self) -> str:
        return f"{self.seq}:{self.seal_hash.hex()}"


@dataclass(frozen=True, slots=True)
class Seal:
    """One seal, as `seal_events` committed it.

    Attributes:
        seq: Its number: 1, 2, ... (the chain's order).
        xid_from: The first transaction id of its window; None for seal 1, which also
            covers events written before the feed (no xid).
        xid_to: The end of its window (excluded): the horizon when it was sealed.
        events: Events it covers (erased ones included, with their first-written leaf).
        erasures: Tombstones it covers (those written in its window).
        chunks: Chunks of ``chunk_size`` events (the last one shorter).
        chunk_size: Events per chunk.
        seal_hash: Its hash, chained to the previous seal's; export it with `anchor`.
        prev_hash: The previous seal's hash; None for seal 1.
        sealed_at: When it was committed (the sealing transaction's start).

    .. versionadded:: 0.3.0
    """

    seq: int
    xid_from: int | None
    xid_to: int
    events: int
    erasures: int
    chunks: int
    chunk_size: int
    seal_hash: bytes
    prev_hash: bytes | None
    sealed_at: datetime

    @property
    def anchor(self) -> SealAnchor:
        """``SEQ:HASH``, the head to keep where the database owner cannot rewrite it."""
        return SealAnchor(self.seq, self.seal_hash)


Anchor: TypeAlias = Callable[[Seal], object]
"""Exports a committed seal's head (`Seal.anchor`); its return value is ignored."""


class LogAnchor:
    """Export each seal head as one INFO line on a logger, for a log pipeline that ships
    the lines off the database host (where its owner cannot rewrite them).

    The line: ``audit seal SEQ:HASH (N events, M erasures, xid window [A, B))``.

    Args:
        logger: The logger, or its name; default ``"eventlog_persist_seals"``.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_logger",)

    def __init__(self, logger: str | logging.Logger = "eventlog_persist_seals") -> None:
        if not isinstance(logger, (str, logging.Logger)):
            raise ConfigurationError(
                f"logger must be a logging.Logger or a logger name, got {logger!r}"
            )
        self._logger = logging.getLogger(logger) if isinstance(logger, str) else logger

    def __call__(self, seal: Seal) -> None:
        """Log the seal head at INFO."""
        start = "-" if seal.xid_from is None else str(seal.xid_from)
        self._logger.info(
            "audit seal %s (%d events, %d erasures, xid window [%s, %d))",
            seal.anchor,
            seal.events,
            seal.erasures,
            start,
            seal.xid_to,
        )


class FileAnchor:
    """Export each seal head as one line appended to a file, flushed and fsynced: for a
    file on another machine's mount, a WORM volume, or a folder a job commits to git.

    The line: ``SEQ:HASH SEALED_AT`` (ISO 8601); ``eventlog-persist audit verify
    --anchors-from FILE`` reads it back.

    Args:
        path: The file (created if missing).

    Raises:
        ConfigurationError: ``path`` is not a path, or names a directory.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        if (
            not isinstance(path, (str, os.PathLike))
            or not os.fspath(path)
            or "\x00" in os.fsdecode(os.fspath(path))
            or Path(path).is_dir()
        ):
            raise ConfigurationError(
                f"FileAnchor({path!r}) is not valid; pass the path of a file (created if "
                "missing) in a directory this process may write"
            )
        self._path = Path(path)

    def __call__(self, seal: Seal) -> None:
        """Append the seal head and wait until it is on disk."""
        with self._path.open("a", encoding="ascii") as file:
            file.write(f"{seal.anchor} {seal.sealed_at.isoformat()}\n")
            file.flush()
            os.fsync(file.fileno())


def _check_chunk_size(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_CHUNK_SIZE:
        raise ConfigurationError(
            f"chunk_size must be a whole number from 1 to {_MAX_CHUNK_SIZE}, got {value!r}; "
            f"the default {DEFAULT_CHUNK_SIZE} localizes a problem to 1,024 events"
        )
    return value


def _check_anchor(value: object) -> Anchor | None:
    if value is not None and not callable(value):
        raise ConfigurationError(
            f"anchor must be a callable taking the Seal (e.g. LogAnchor() or "
            f"FileAnchor(path)) or None, got {value!r}"
        )
    return cast("Anchor | None", value)


def _check_interval(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= _MAX_INTERVAL
    ):
        raise ConfigurationError(
            f"interval must be a number of seconds above 0 and at most {_MAX_INTERVAL:g}, "
            f"got {value!r}; it is how long the newest events stay unsealed, e.g. 60"
        )
    return float(value)


def _lock_key(tables: AuditTables) -> dict[str, str]:
    seals = tables.seals
    name = f"{seals.schema}.{seals.name}" if seals.schema else seals.name
    return {"space": _LOCK_NAMESPACE, "name": name}


def _seal_on(connection: Connection, tables: AuditTables, chunk_size: int) -> Seal | None:
    """Seal what is settled, in one REPEATABLE READ transaction on ``connection``."""
    with connection.begin():
        connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        # One sealer at a time per seals table; the snapshot is taken by this statement,
        # so a seal committed meanwhile by another sealer surfaces as a duplicate seq below.
        locked = connection.execute(
            text("SELECT pg_try_advisory_xact_lock(hashtext(:space), hashtext(:name))"),
            _lock_key(tables),
        ).scalar_one()
        if not locked:
            logger.info("audit: another sealer is sealing now; nothing sealed")
            return None
        unfinished = unfinished_removal(connection, tables.events)
        if unfinished is not None:
            # Its events have left event_logs and their tombstones are not written yet: a
            # window sealed now would lack them, and the tombstones would add them back.
            partition, running = unfinished
            if running:
                logger.info(
                    "audit: partition maintenance is running (removing %s); nothing sealed",
                    partition,
                )
            else:
                logger.warning(
                    "audit: the removal of partition %s is unfinished (a drop_partitions run "
                    "stopped after its detach), so its events' tombstones are not written yet; "
                    "nothing is sealed until it is: run 'eventlog-persist partitions drop' "
                    "again to finish it",
                    partition,
                )
            return None
        last = read_seals(connection, tables, last_only=True)
        previous = last[0] if last else None
        xid_from = None if previous is None else previous.xid_to
        xid_to, following, highest = transaction_ids(connection, tables)
        # On a healthy server every id stored is below the next one it gives: not so after a
        # logical restore into another cluster, which counts its ids from a few hundred. A
        # horizon that has not moved is no reason to stop: the empty window's queries still
        # run, so a database without the audit's columns is named whatever the server's load.
        stored = max(xid_from or 0, highest or 0)
        if stored >= following:
            raise _behind(connection, tables, stored, following, chain=xid_from or 0)
        roots: list[bytes] = []
        ends: list[bytes] = []
        chunk: list[bytes] = []
        events = 0
        entry = None
        for entry in window_entries(connection, tables, xid_from, xid_to):
            chunk.append(entry.leaf)
            events += 1
            if len(chunk) == chunk_size:
                roots.append(merkle_root(chunk))
                ends.append(chunk_end(entry.xid, entry.id))
                chunk = []
        if chunk and entry is not None:
            roots.append(merkle_root(chunk))
            ends.append(chunk_end(entry.xid, entry.id))
        stones = window_tombstones(connection, tables, xid_from, xid_to, by="erased_xid")
        if not events and not stones:
            return None
        row = SealRow(
            seq=1 if previous is None else previous.seq + 1,
            xid_from=xid_from,
            xid_to=xid_to,
            chunk_size=chunk_size,
            events=events,
            erasures=len(stones),
            chunk_roots=b"".join(roots),
            chunk_ends=b"".join(ends),
            events_root=merkle_root(roots),
            erasures_root=merkle_root([tombstone_hash(stone) for stone in stones]),
            prev_hash=None if previous is None else previous.seal_hash,
            seal_hash=b"",
        )
        digest = seal_hash(row)
        values = {name: getattr(row, name) for name in SealRow.__slots__ if name != "sealed_at"}
        values["seal_hash"] = digest
        sealed_at = connection.execute(
            insert(tables.seals).values(values).returning(tables.seals.c.sealed_at)
        ).scalar_one()
    seal = Seal(
        seq=row.seq,
        xid_from=xid_from,
        xid_to=xid_to,
        events=events,
        erasures=row.erasures,
        chunks=len(roots),
        chunk_size=chunk_size,
        seal_hash=digest,
        prev_hash=row.prev_hash,
        sealed_at=sealed_at,
    )
    logger.info(
        "audit: sealed seal %d: %d events in %d chunks, %d erasures, xid window [%s, %d)",
        seal.seq,
        seal.events,
        seal.chunks,
        seal.erasures,
        "-" if xid_from is None else xid_from,
        xid_to,
    )
    return seal


def _behind(
    connection: Connection, tables: AuditTables, stored: int, following: int, *, chain: int
) -> AuditError:
    """The server's transaction ids are below those the database holds: a logical restore,
    or (when only events hold them) rows inserted with a hand-set ``xid``."""
    epoch = (stored >> 32) + 1  # the ids from this epoch on pass every one stored
    restore = (
        "Transaction ids belong to a cluster, so this database was restored logically "
        "(pg_dump / pg_restore) into another one; events written here now would take ids "
        "inside the windows sealed or to be sealed. Stop the server and advance its ids past "
        f"them with 'pg_resetwal -e {epoch} PGDATA' (docs/audit.md, \"Restoring\"), then "
        "seal again"
    )
    erased = connection.execute(sa.select(sa.func.max(tables.erasures.c.erased_xid))).scalar()
    if chain < following and (erased is None or int(erased) < following):
        # Only events: a restore before the first seal, or rows whose xid a role that may
        # INSERT set by hand (it is only a default). The restore's fix is no fix for those.
        events = tables.events.c
        past = events.xid >= sa.literal(following, type_=events.xid.type)
        count, example = connection.execute(
            sa.select(sa.func.count(), sa.func.min(sa.cast(events.id, sa.Text()))).where(past)
        ).one()
        return AuditError(
            "the server's transaction ids are behind the ones this database holds: "
            f"{count} events hold transaction ids at or past the server's next one "
            f"({following}), e.g. event {example}, and the seals and tombstones do not. "
            "Either they were inserted with a hand-set xid (a role that may INSERT into "
            "event_logs can set it, and one such row holds every seal back): erase them "
            "(SET LOCAL eventlog.erasure = 'erasure'; DELETE FROM event_logs WHERE xid >= "
            f"'{following}'), never with pg_resetwal. Or {restore[0].lower()}{restore[1:]}"
        )
    return AuditError(
        "the server's transaction ids are behind the ones this database holds: the audit "
        f"chain, an event or a tombstone holds transaction id {stored}, and the server's next "
        f"one is {following}. {restore}"
    )


def _seal_safely(connection: Connection, tables: AuditTables, chunk_size: int) -> Seal | None:
    try:
        return _seal_on(connection, tables, chunk_size)
    except IntegrityError as exc:
        if "pk_event_log_seals" in str(exc.orig) or "uq_event_log_seals" in str(exc.orig):
            logger.info("audit: another sealer committed this seal first; nothing sealed")
            return None
        raise translated(exc) from exc
    except DBAPIError as exc:
        raise translated(exc) from exc


def _export(anchor: Anchor, seal: Seal) -> None:
    try:
        anchor(seal)
    except Exception as exc:
        raise AnchorError(
            f"seal {seal.seq} is committed, but exporting its head failed: "
            f"{type(exc).__name__}: {exc}; fix the anchor and export {seal.anchor} by "
            "hand (or let the next seal's export cover it: each seal chains the ones "
            "before)",
            seal=seal,
        ) from exc


def seal_events(
    model: type[EventLogMixin[Any]],
    bind: Engine | Connection,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    anchor: Anchor | None = None,
) -> Seal | None:
    """Seal every settled event and tombstone not sealed yet, as the next seal of the chain.

    The seal covers the transaction ids from the previous seal's end to the horizon (the
    oldest transaction still running anywhere on the server): every transaction below it
    has ended, so nothing can be added to the window later. Its events, by (xid, id), are
    cut into chunks of ``chunk_size`` leaves; each chunk's Merkle root and last (xid, id)
    are stored, with the root over the chunks, the root over the window's tombstones, the
    previous seal's hash and the seal's own hash (docs/audit.md, "Seals"). An event erased
    before it is sealed is sealed with its first-written leaf, from its tombstone, so
    sealing before or after an erasure gives the same seal.

    The seal is committed first, then ``anchor`` exports its head.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed and the audit.
        bind: An Engine, or a Connection with no transaction begun: the seal is one
            REPEATABLE READ transaction of its own, committed before the anchor runs.
        chunk_size: Leaves per chunk: a changed event is reported with its chunk.
        anchor: Called with the committed `Seal` (e.g. `LogAnchor`, `FileAnchor`, or a
            function of your own that writes ``seal.anchor`` somewhere safe).

    Returns:
        The new seal; None when there was nothing to seal (no event or tombstone settled
        since the last seal) or another sealer was sealing at the same time.

    Raises:
        AnchorError: The seal was committed but ``anchor`` failed (its ``seal`` attribute
            is the seal).
        AuditError: The server's transaction ids are behind the chain: the database was
            restored logically into another cluster (docs/audit.md, "Restoring").
        ConfigurationError: ``model`` lacks the feed, or an argument cannot be used.
        MigrationSetupError: The database lacks the audit's schema.

    Example:
        >>> seal_events(EventLog, engine, anchor=LogAnchor())  # doctest: +SKIP
        Seal(seq=1, ..., events=3072, ...)

    .. versionadded:: 0.3.0
    """
    tables = audit_tables_of(model, api="seal_events")
    size = _check_chunk_size(chunk_size)
    hook = _check_anchor(anchor)
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            seal = _seal_safely(connection.execution_options(**IN_TRANSACTIONS), tables, size)
    else:
        _check_connection(bind, "seal_events")
        seal = _seal_safely(bind, tables, size)
    if seal is not None and hook is not None:
        _export(hook, seal)
    return seal


# The audit's reads must share one snapshot (a tombstone and the row it records, a window's
# events): its own connections leave an engine's autocommit mode, where each statement
# reads a snapshot of its own (and BEGIN is never sent).
IN_TRANSACTIONS: Final = {"isolation_level": "REPEATABLE READ"}


def refuse_autocommit(connection: Connection, api: str) -> None:
    if in_autocommit(connection):
        raise ConfigurationError(
            f"the connection is in autocommit mode, so each of {api}'s statements would read "
            "a snapshot of its own; pass the Engine (its connection leaves that mode), or a "
            "connection of an engine without isolation_level='AUTOCOMMIT'"
        )


def _check_connection(bind: object, api: str) -> None:
    if isinstance(bind, (AsyncEngine, AsyncConnection)):
        raise ConfigurationError(
            f"{api} needs a sync sqlalchemy Engine or Connection, got {shown(bind)}; from "
            "async code use AsyncAuditSealer, or run it in a thread (asyncio.to_thread) "
            "with an Engine of a sync driver"
        )
    if not isinstance(bind, Connection):
        raise ConfigurationError(
            f"{api} needs a sqlalchemy Engine or Connection, got {shown(bind)}; pass "
            "create_engine(url)"
        )
    if bind.in_transaction():
        raise ConfigurationError(
            f"the connection is already in a transaction; {api} commits a transaction of "
            "its own, so pass an Engine or a connection with no transaction begun"
        )
    refuse_autocommit(bind, api)


class _SealerCore:
    """What both sealers share: settings, and the export retried until it succeeds."""

    __slots__ = ("_anchor", "_chunk_size", "_interval", "_tables", "_unexported")

    def __init__(
        self,
        model: type[EventLogMixin[Any]],
        *,
        interval: float,
        chunk_size: int,
        anchor: Anchor | None,
        api: str,
    ) -> None:
        self._tables = audit_tables_of(model, api=api)
        self._interval = _check_interval(interval)
        self._chunk_size = _check_chunk_size(chunk_size)
        self._anchor = _check_anchor(anchor)
        self._unexported: Seal | None = None

    def _sealed(self, seal: Seal | None) -> tuple[Anchor, Seal] | None:
        """The anchor and the seal whose head it exports now: the new one, else one whose
        export failed."""
        if seal is not None:
            self._unexported = seal
        if self._anchor is None or self._unexported is None:
            return None
        return self._anchor, self._unexported

    def _export(self, anchor: Anchor, seal: Seal) -> None:
        try:
            anchor(seal)
        except Exception as exc:
            logger.warning(
                "audit: seal %d is committed, but exporting its head %s failed (%s: %s); "
                "retried at the next interval (each seal chains the ones before, so the "
                "next export covers it)",
                seal.seq,
                seal.anchor,
                type(exc).__name__,
                exc,
            )
        else:
            if self._unexported is seal:  # not a newer one sealed meanwhile
                self._unexported = None

    @staticmethod
    def _failed(exc: Exception) -> None:
        logger.warning(
            "audit: sealing failed (%s: %s); retried at the next interval; the events stay "
            "unsealed meanwhile ('eventlog-persist audit status' shows the seal age)",
            type(exc).__name__,
            exc,
        )


class AuditSealer(_SealerCore):
    """Seal the settled events at an interval, in a daemon thread, and export each head.

    Each interval it runs `seal_events` (nothing is sealed when nothing settled since),
    then calls ``anchor`` with the new seal. A failed seal (database down) is logged as a
    warning and tried again at the next interval; a failed export too, and the head is
    exported again until it succeeds (or a newer seal's head replaces it: each seal chains
    the ones before). Several sealers on one database are safe: one seals at a time.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed and the audit.
        engine: The engine of the host's database.
        interval: Seconds between seals: how long the newest events stay unsealed.
        chunk_size: Leaves per chunk (see `seal_events`).
        anchor: Called with each committed `Seal` (e.g. `LogAnchor`, `FileAnchor`).

    Raises:
        ConfigurationError: ``model`` lacks the feed, or an argument cannot be used.

    Example:
        >>> with AuditSealer(EventLog, engine, anchor=LogAnchor()):  # doctest: +SKIP
        ...     serve()

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine", "_stop", "_thread")

    def __init__(
        self,
        model: type[EventLogMixin[Any]],
        engine: Engine,
        *,
        interval: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        anchor: Anchor | None = None,
    ) -> None:
        check_engine(engine, api="AuditSealer", is_async=False)
        super().__init__(
            model, interval=interval, chunk_size=chunk_size, anchor=anchor, api="AuditSealer"
        )
        self._engine = engine
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> Self:
        """Start sealing: the first seal at once, then one each interval."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="eventlog-sealer", daemon=True)
            self._thread.start()
        return self

    def seal(self) -> Seal | None:
        """Seal now, in the caller's thread, and export the head (or a failed one's).

        Returns:
            The new seal, or None when there was nothing to seal.
        """
        with self._engine.connect() as connection:
            own = connection.execution_options(**IN_TRANSACTIONS)
            seal = _seal_safely(own, self._tables, self._chunk_size)
        pending = self._sealed(seal)
        if pending is not None:
            self._export(*pending)
        return seal

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seal()
            except Exception as exc:  # a sealer that died would leave events unsealed
                self._failed(exc)
            self._stop.wait(self._interval)

    def close(self) -> None:
        """Stop sealing (a seal in progress finishes first)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class AsyncAuditSealer(_SealerCore):
    """Async `AuditSealer`: seal the settled events at an interval, in an asyncio task.

    Each interval it runs `seal_events` on a connection of the ``AsyncEngine`` (the
    statements are the same), then calls ``anchor`` with the new seal in a worker thread
    (``asyncio.to_thread``). A failed seal (database down) is logged as a warning and
    tried again at the next interval; a failed export too, and the head is exported
    again until it succeeds (or a newer seal's head replaces it: each seal chains the
    ones before). Several sealers on one database are safe: one seals at a time.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed and the audit.
        engine: The ``AsyncEngine`` of the host's database.
        interval: Seconds between seals: how long the newest events stay unsealed.
        chunk_size: Leaves per chunk (see `seal_events`).
        anchor: Called with each committed `Seal` (e.g. `LogAnchor`, `FileAnchor`).

    Raises:
        ConfigurationError: ``model`` lacks the feed, or an argument cannot be used.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine", "_task")

    def __init__(
        self,
        model: type[EventLogMixin[Any]],
        engine: AsyncEngine,
        *,
        interval: float = 60.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        anchor: Anchor | None = None,
    ) -> None:
        check_engine(engine, api="AsyncAuditSealer", is_async=True)
        super().__init__(
            model,
            interval=interval,
            chunk_size=chunk_size,
            anchor=anchor,
            api="AsyncAuditSealer",
        )
        self._engine = engine
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> Self:
        """Start sealing: the first seal at once, then one each interval."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="eventlog-sealer")
        return self

    async def seal(self) -> Seal | None:
        """Seal now, in the caller's task, and export the head (or a failed one's).

        Returns:
            The new seal, or None when there was nothing to seal.
        """
        async with self._engine.connect() as connection:
            own = await connection.execution_options(**IN_TRANSACTIONS)
            seal = await own.run_sync(_seal_safely, self._tables, self._chunk_size)
        pending = self._sealed(seal)
        if pending is not None:
            await asyncio.to_thread(self._export, *pending)
        return seal

    async def _run(self) -> None:
        while True:
            try:
                await self.seal()
            except Exception as exc:  # a sealer that died would leave events unsealed
                self._failed(exc)
            await asyncio.sleep(self._interval)

    async def close(self) -> None:
        """Stop sealing (a seal in progress is cancelled: its transaction rolls back)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
