"""``EventTail`` and ``AsyncEventTail``: a session's or project's events in the feed's order,
from a cursor the client keeps (a server-sent events endpoint's ``Last-Event-ID``).

A tail is a feed without a stored checkpoint: each event's cursor is the checkpoint after
it, so the same snapshot-pair batches that make the feed miss nothing make a reconnecting
client miss nothing either, whatever order the transactions commit in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist._failures import sqlstate_of
from eventlog_persist._feed import _NOT_MIGRATED
from eventlog_persist._feed_sql import (
    EARLIEST,
    Checkpoint,
    FeedStatements,
    PagePlan,
    PageScope,
    Snapshot,
    check_limit,
    plan_page,
    records,
)
from eventlog_persist._feed_wakeup import AsyncWakeups, Wakeups, check_poll
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._read_sql import check_key
from eventlog_persist._read_types import UNSCOPED, EventRecord, Unscoped
from eventlog_persist._table import quoted_name
from eventlog_persist._urls import check_engine
from eventlog_persist.exceptions import (
    ConfigurationError,
    InvalidCursorError,
    MigrationSetupError,
    ValidationError,
)

__all__ = ["AsyncEventTail", "EventTail", "TailEntry", "TailPage"]

DEFAULT_TAIL_PAGE: Final = 100
_VERSION: Final = "t1"
_TAG_BYTES: Final = 12
_XID8_END: Final = 2**64  # one past the largest transaction id


@dataclass(frozen=True, slots=True)
class TailEntry(Generic[KeyT]):
    """One event of a tail and the cursor just after it.

    Attributes:
        event: The event.
        cursor: Where a tail resumes after this event: send it as the server-sent event's
            ``id``, and the browser sends it back as ``Last-Event-ID`` when it reconnects.

    .. versionadded:: 0.3.0
    """

    event: EventRecord[KeyT]
    cursor: str


@dataclass(frozen=True, slots=True)
class TailPage(Generic[KeyT]):
    """The events a tail read, in the feed's order, and where to resume after them.

    Attributes:
        entries: The events, each with its cursor; empty when nothing new was committed.
        cursor: Where the next read resumes (after the last entry, or, for an empty page,
            where this read stood).

    .. versionadded:: 0.3.0
    """

    entries: tuple[TailEntry[KeyT], ...]
    cursor: str


# --- cursors --------------------------------------------------------------------------------


def _snapshot_text(snapshot: Snapshot | None) -> str:
    return "" if snapshot is None else str(snapshot)


def _tag(body: str, scope_key: str) -> str:
    # A checksum, not a secret (as the readers' cursors): the scope is enforced by the query,
    # so a forged cursor can only move the start within the events the call may read anyway.
    digest = hashlib.blake2b(f"{body}\0{scope_key}".encode(), digest_size=_TAG_BYTES).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def encode_tail_cursor(checkpoint: Checkpoint, scope_key: str) -> str:
    """The url-safe token of a tail's position in the scope ``scope_key``."""
    after_xid, after_id = checkpoint.after if checkpoint.after is not None else ("", "")
    body = ";".join(
        (
            _VERSION,
            _snapshot_text(checkpoint.done),
            _snapshot_text(checkpoint.target),
            str(after_xid),
            str(after_id),
            "1" if checkpoint.backfill else "0",
            "" if checkpoint.backfill_after is None else str(checkpoint.backfill_after),
        )
    )
    token = base64.urlsafe_b64encode(body.encode("ascii")).rstrip(b"=").decode("ascii")
    return f"{token}.{_tag(body, scope_key)}"


def _xid(text: str) -> int:
    """A transaction id (``xid8``: 0 to 2**64 - 1), or `ValueError`."""
    value = int(text)
    if not 0 <= value < _XID8_END:
        raise ValueError(text)
    return value


def _parse_snapshot(text: str) -> Snapshot:
    snapshot = Snapshot.parse(text)
    if not 1 <= snapshot.xmin <= snapshot.xmax < _XID8_END or any(
        not snapshot.xmin <= x < snapshot.xmax for x in snapshot.xip
    ):
        raise ValueError(text)
    return snapshot


def decode_tail_cursor(token: object, scope_key: str) -> Checkpoint:
    """The position a token holds, after checking it was made for the same scope.

    Raises:
        InvalidCursorError: Not a tail cursor, altered, or made for another scope.
    """
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 65_536:
        raise _invalid(token)
    encoded, tag = token.split(".")
    try:
        body = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode("ascii")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _invalid(token) from None
    if tag != _tag(body, scope_key):
        raise InvalidCursorError(
            f"cursor {_show(token)} was altered or made for another tail (another session, "
            "project or user); use a cursor this same tail returned, or none to start over"
        )
    try:
        version, done, target, after_xid, after_id, backfill, backfill_after = body.split(";")
        if version != _VERSION or backfill not in ("0", "1"):
            raise ValueError(body)
        return Checkpoint(
            done=_parse_snapshot(done),
            target=_parse_snapshot(target) if target else None,
            after=(_xid(after_xid), uuid.UUID(after_id)) if after_xid else None,
            backfill=backfill == "1",
            backfill_after=uuid.UUID(backfill_after) if backfill_after else None,
        )
    except ValueError:
        raise _invalid(token) from None


def _show(token: object) -> str:
    text = repr(token)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _invalid(token: object) -> InvalidCursorError:
    return InvalidCursorError(
        f"cursor {_show(token)} is not a tail cursor; pass a TailEntry.cursor or "
        "TailPage.cursor of this tail, or none to start over"
    )


# --- what both tails share ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Read:
    """One tail read: its scope, its parameters and where it starts."""

    scope: PageScope
    scope_key: str
    params: dict[str, Any]
    start: Checkpoint | None  # None: start at the snapshot of now ("latest")
    limit: int


def _plans_done(plan: PagePlan, rows: Sequence[Sequence[Any]]) -> bool:
    """Whether a read stops after this page: it is full, or it read the newest events."""
    finishing = plan.kind == "backfill" or plan.start.target is not None
    return len(rows) >= plan.limit or not finishing


class _TailCore:
    __slots__ = ("_statements", "_table")

    def __init__(self, model: type[EventLogMixin[Any]]) -> None:
        self._statements = FeedStatements(model)
        self._table = self._statements.table

    def _read(
        self,
        *,
        session_id: object,
        project_id: object,
        user_id: object,
        cursor: object,
        start: object,
        limit: object,
    ) -> _Read:
        if (session_id is None) == (project_id is None):
            raise ValidationError(
                "a tail reads one session or one project: pass session_id=... or "
                f"project_id=..., not {'both' if session_id is not None else 'neither'}"
            )
        kind, key = ("session", session_id) if session_id is not None else ("project", project_id)
        check_key(self._table, f"{kind}_id", key)
        if user_id is None and kind == "session":
            raise ValidationError(
                "a session tail got user_id=None; pass the id of the user who owns the "
                "session, so one user can never read another's events, or user_id=UNSCOPED "
                "in operator tools that may read every user's events"
            )
        params: dict[str, Any] = {"scope_key": key}
        owned = user_id is not None and user_id is not UNSCOPED
        if owned:
            check_key(self._table, "user_id", user_id)
            params["owner"] = user_id
        scope: PageScope = f"{kind}_owner" if owned else kind  # type: ignore[assignment]
        checked = check_limit(limit)
        scope_key = f"{kind}:{key}:{user_id if owned else '*'}"
        if start not in ("earliest", "latest"):
            raise ValidationError(
                f"start must be 'earliest' (every event of the {kind}, from its first) or "
                f"'latest' (events committed from now on), got {start!r}; it applies when "
                "cursor is None"
            )
        if cursor is not None:
            return _Read(scope, scope_key, params, decode_tail_cursor(cursor, scope_key), checked)
        if start == "earliest":
            first = Checkpoint(done=EARLIEST, backfill=True)
            return _Read(scope, scope_key, params, first, checked)
        return _Read(scope, scope_key, params, None, checked)

    def _plan(self, read: _Read, start: Checkpoint, current: Snapshot, limit: int) -> PagePlan:
        plan = plan_page(start, current, mode="snapshot", limit=limit)
        plan.params.update(read.params)
        return plan

    @staticmethod
    def _entries(
        read: _Read, pages: Sequence[tuple[PagePlan, Sequence[Sequence[Any]]]]
    ) -> TailPage[Any]:
        entries: list[TailEntry[Any]] = []
        for plan, rows in pages:
            for row, event in zip(rows, records(rows), strict=True):
                if plan.kind == "backfill":
                    after = replace(plan.start, backfill_after=row[0])
                else:
                    after = replace(plan.start, target=plan.target, after=(int(row[-1]), row[0]))
                entries.append(TailEntry(event, encode_tail_cursor(after, read.scope_key)))
        last_plan, last_rows = pages[-1]
        resume = last_plan.next_checkpoint(last_rows)
        return TailPage(tuple(entries), encode_tail_cursor(resume, read.scope_key))

    def _translated(self, exc: DBAPIError) -> Exception:
        if sqlstate_of(exc) in _NOT_MIGRATED:
            return MigrationSetupError(
                f"the feed's schema is missing from this database ({exc.orig}); a tail reads "
                "the feed's transaction ids: add 'eventlog_persist:migrations_feed' to "
                "version_locations and run 'alembic upgrade heads' (linear mode: "
                "'eventlog-persist linear-revision --feed')"
            )
        return exc


def _read_sync(core: _TailCore, connection: Connection, read: _Read) -> TailPage[Any]:
    """The pages of one read in one transaction (both tails: the async one via run_sync)."""
    statements = core._statements
    current = Snapshot.parse(connection.execute(statements.now()).scalar_one())
    start = read.start if read.start is not None else Checkpoint(done=current)
    pages: list[tuple[PagePlan, Sequence[Sequence[Any]]]] = []
    limit = read.limit
    while True:
        plan = core._plan(read, start, current, limit)
        rows = connection.execute(statements.page(plan, read.scope), plan.params).all()
        pages.append((plan, rows))
        limit -= len(rows)
        if _plans_done(plan, rows) or limit <= 0:
            return core._entries(read, pages)
        start = plan.next_checkpoint(rows)


class EventTail(_TailCore, Generic[KeyT]):
    """A session's or project's events as they commit, from a cursor the client keeps.

    Built for live views: a server-sent events endpoint sends each `TailEntry.cursor` as
    the event's ``id``, and a reconnecting browser sends the last one back as
    ``Last-Event-ID``; the tail resumes there, and no event committed meanwhile is missed,
    whatever order the transactions commit in (it reads as the feed does, by transaction).
    Scoped like the readers: a session's events only for the user who owns it. Needs the
    feed's schema (``feed=True``); no consumer is registered and nothing is stored.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The engine of the host's database; each read is one short transaction.
        listen: `follow` wakes up when a bulk or buffered writer commits a batch (one
            ``LISTEN`` connection per tail, shared by every follower); False: it polls only.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine", "_wakeups")

    def __init__(
        self, model: type[EventLogMixin[KeyT]], engine: Engine, *, listen: bool = True
    ) -> None:
        check_engine(engine, api="EventTail", is_async=False)
        super().__init__(model)
        self._engine = engine
        self._wakeups = Wakeups(engine, quoted_name(self._statements.table), listen=listen)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def read(
        self,
        *,
        session_id: KeyT | None = None,
        project_id: KeyT | None = None,
        user_id: KeyT | Unscoped | None = None,
        cursor: str | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        limit: int = DEFAULT_TAIL_PAGE,
    ) -> TailPage[KeyT]:
        """Read the events committed after ``cursor`` (at most ``limit``).

        Args:
            session_id: The session to read; or give ``project_id``.
            project_id: The project to read (every session of it).
            user_id: The user who owns the session (required for a session: ``UNSCOPED``
                in operator tools); for a project, only this user's events.
            cursor: A `TailEntry.cursor` or `TailPage.cursor` of the same scope; None to
                start at ``start``.
            start: Without a cursor: ``"earliest"``, every event of the scope from its
                first; ``"latest"``, only events committed from now on (render the history
                with a reader after taking this page's cursor).
            limit: The most events, 1 to 10,000.

        Raises:
            ValidationError: A bad argument (no owner for a session, say).
            InvalidCursorError: The cursor is garbled, altered or of another scope.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = self._read(
            session_id=session_id,
            project_id=project_id,
            user_id=user_id,
            cursor=cursor,
            start=start,
            limit=limit,
        )
        return self._run(chosen)

    def _run(self, read: _Read) -> TailPage[KeyT]:
        try:
            with self._engine.begin() as connection:
                return _read_sync(self, connection, read)
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    def follow(
        self,
        *,
        session_id: KeyT | None = None,
        project_id: KeyT | None = None,
        user_id: KeyT | Unscoped | None = None,
        cursor: str | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        poll: float = 1.0,
        stop: threading.Event | None = None,
    ) -> Iterator[TailEntry[KeyT]]:
        """Yield the scope's events as they commit, without end (until ``stop`` is set).

        Reads as `read` does, then waits for a writer's notification or ``poll`` seconds
        (the latency of events recorded in the host's own transactions) and reads again.

        Args:
            session_id: As in `read`.
            project_id: As in `read`.
            user_id: As in `read`.
            cursor: As in `read`.
            start: As in `read`.
            poll: The longest wait between reads, in seconds.
            stop: Set it to end the iteration (it ends within ``poll`` seconds).

        Raises:
            ValidationError, ConfigurationError: An argument is not valid, raised by the
                call itself, before any iteration.
        """
        seconds = check_poll(poll, "poll")
        if stop is not None and not callable(getattr(stop, "is_set", None)):
            raise ConfigurationError(
                f"stop must be a threading.Event (or another event with is_set()) or None, "
                f"got {stop!r}"
            )
        read = self._read(
            session_id=session_id,
            project_id=project_id,
            user_id=user_id,
            cursor=cursor,
            start=start,
            limit=DEFAULT_TAIL_PAGE,
        )
        return self._follow(read, seconds, stop)

    def _follow(
        self, read: _Read, seconds: float, stop: threading.Event | None
    ) -> Iterator[TailEntry[KeyT]]:
        while stop is None or not stop.is_set():
            ticket = self._wakeups.ticket()
            page = self._run(read)
            yield from page.entries
            read = replace(read, start=decode_tail_cursor(page.cursor, read.scope_key))
            if len(page.entries) < read.limit:
                self._wakeups.wait(ticket, seconds)

    def close(self) -> None:
        """Stop listening (its connection closes); followers then only poll."""
        self._wakeups.close()


class AsyncEventTail(_TailCore, Generic[KeyT]):
    """Async `EventTail`: a session's or project's events as they commit, from a cursor.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The ``AsyncEngine`` of the host's database; each read is one short
            transaction.
        listen: `follow` wakes up when a bulk or buffered writer commits a batch (one
            ``LISTEN`` connection per tail, a task of the running loop shared by every
            follower); False: it polls only.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine", "_wakeups")

    def __init__(
        self, model: type[EventLogMixin[KeyT]], engine: AsyncEngine, *, listen: bool = True
    ) -> None:
        check_engine(engine, api="AsyncEventTail", is_async=True)
        super().__init__(model)
        self._engine = engine
        self._wakeups = AsyncWakeups(engine, quoted_name(self._statements.table), listen=listen)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def read(
        self,
        *,
        session_id: KeyT | None = None,
        project_id: KeyT | None = None,
        user_id: KeyT | Unscoped | None = None,
        cursor: str | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        limit: int = DEFAULT_TAIL_PAGE,
    ) -> TailPage[KeyT]:
        """Read the events committed after ``cursor`` (at most ``limit``): see
        `EventTail.read`."""
        chosen = self._read(
            session_id=session_id,
            project_id=project_id,
            user_id=user_id,
            cursor=cursor,
            start=start,
            limit=limit,
        )
        return await self._run(chosen)

    async def _run(self, read: _Read) -> TailPage[KeyT]:
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(lambda sync: _read_sync(self, sync, read))
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    def follow(
        self,
        *,
        session_id: KeyT | None = None,
        project_id: KeyT | None = None,
        user_id: KeyT | Unscoped | None = None,
        cursor: str | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        poll: float = 1.0,
    ) -> AsyncIterator[TailEntry[KeyT]]:
        """Yield the scope's events as they commit, without end: see `EventTail.follow`.

        End it by leaving the ``async for`` (or by cancelling the task: a server-sent
        events response is cancelled when its client goes away). A bad argument raises at
        the call, before any iteration.
        """
        seconds = check_poll(poll, "poll")
        read = self._read(
            session_id=session_id,
            project_id=project_id,
            user_id=user_id,
            cursor=cursor,
            start=start,
            limit=DEFAULT_TAIL_PAGE,
        )
        return self._follow(read, seconds)

    async def _follow(self, read: _Read, seconds: float) -> AsyncIterator[TailEntry[KeyT]]:
        while True:
            ticket = self._wakeups.ticket()
            page = await self._run(read)
            for entry in page.entries:
                yield entry
            read = replace(read, start=decode_tail_cursor(page.cursor, read.scope_key))
            if len(page.entries) < read.limit:
                await self._wakeups.wait(ticket, seconds)

    async def close(self) -> None:
        """Stop listening (its connection closes); followers then only poll."""
        await self._wakeups.aclose()
