"""``EventFeed`` and ``AsyncEventFeed``: named consumers of the committed events, batch by batch.

Thin sync and async classes over `_feed_sql`: each call is one short transaction on the
engine. A consumer's row in ``event_log_consumers`` holds its checkpoint and its lease; a
batch moves the checkpoint only when it is committed, by the worker that holds the lease
under the generation it was fetched with.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Generic, Literal

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from eventlog_persist._failures import sqlstate_of
from eventlog_persist._feed_sql import (
    DEFAULT_BATCH_SIZE,
    EARLIEST,
    Checkpoint,
    FeedStart,
    FeedStatements,
    PagePlan,
    Snapshot,
    check_consumer,
    check_lease,
    check_limit,
    check_mode,
    check_owner,
    check_start,
    plan_page,
    records,
    register_values,
    since_snapshot,
)
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._read_types import EventRecord
from eventlog_persist._urls import refuse_other_flavour, shown
from eventlog_persist.exceptions import (
    ConfigurationError,
    ConsumerNotFoundError,
    FeedError,
    LeaseHeldError,
    LeaseLostError,
    MigrationSetupError,
)

__all__ = ["AsyncEventFeed", "EventFeed", "FeedBatch"]

# Undefined table, column or function: the feed's migration has not run (or PostgreSQL < 13).
_NOT_MIGRATED: Final = frozenset({"42P01", "42703", "42883"})


@dataclass(frozen=True, slots=True)
class FeedBatch(Generic[KeyT]):
    """One batch of a consumer's feed: events to deliver, then `EventFeed.commit`.

    Attributes:
        consumer: The consumer it was fetched for.
        events: The events, by transaction id, then by id within a transaction; empty when
            nothing is pending. Rows stored before the feed (no transaction id) come
            first, by id, when the consumer asked for them.
        generation: The lease generation it was fetched under; a commit under a newer one
            raises `LeaseLostError`.

    .. versionadded:: 0.3.0
    """

    consumer: str
    events: tuple[EventRecord[KeyT], ...]
    generation: int
    _owner: str = field(repr=False, compare=False)
    _next: Checkpoint = field(repr=False, compare=False)


def _default_owner() -> str:
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _FeedCore:
    """What both feeds share: settings, statements, and turning rows into batches."""

    __slots__ = ("_lease", "_mode", "_name", "_owner", "_statements")

    def __init__(
        self,
        model: type[EventLogMixin[Any]],
        *,
        consumer: str,
        owner: str | None,
        lease: float,
        mode: Literal["snapshot", "horizon"],
    ) -> None:
        self._statements = FeedStatements(model)
        self._name = check_consumer(consumer)
        self._owner = check_owner(_default_owner() if owner is None else owner)
        self._lease = check_lease(lease)
        self._mode = check_mode(mode)

    @property
    def consumer(self) -> str:
        """The consumer's name."""
        return self._name

    @property
    def owner(self) -> str:
        """This worker's name in the consumer's lease."""
        return self._owner

    def _lease_params(self) -> dict[str, Any]:
        return {"name": self._name, "me": self._owner, "lease": self._lease}

    def _plan(self, row: Sequence[Any], limit: int) -> tuple[int, PagePlan, Snapshot]:
        """The generation, the first page to read and the snapshot of now, from the lease
        statement's row."""
        generation, done, target, after_xid, after_id, backfill, since, backfill_after, now = row
        start = Checkpoint(
            done=Snapshot.parse(done),
            target=None if target is None else Snapshot.parse(target),
            after=None if after_xid is None else (int(after_xid), after_id),
            backfill=bool(backfill),
            backfill_since=since,
            backfill_after=backfill_after,
        )
        current = Snapshot.parse(now)
        return int(generation), plan_page(start, current, mode=self._mode, limit=limit), current

    def _follow(
        self, plan: PagePlan, rows: Sequence[Sequence[Any]], current: Snapshot
    ) -> PagePlan | None:
        """The page that fills the rest of a batch whose pre-feed rows ran out, if any: an
        empty batch then always means that nothing is pending."""
        if plan.kind != "backfill" or len(rows) >= plan.limit:
            return None
        rest = plan.limit - len(rows)
        return plan_page(plan.next_checkpoint(rows), current, mode=self._mode, limit=rest)

    def _batch(
        self, generation: int, pages: Sequence[tuple[PagePlan, Sequence[Sequence[Any]]]]
    ) -> FeedBatch[Any]:
        """The batch of the pages read (one, or the pre-feed rows' last and a range page)."""
        last_plan, last_rows = pages[-1]
        return FeedBatch(
            self._name,
            records([row for _, rows in pages for row in rows]),
            generation,
            self._owner,
            last_plan.next_checkpoint(last_rows),
        )

    def _commit_params(self, batch: FeedBatch[Any]) -> dict[str, Any]:
        if not isinstance(batch, FeedBatch):
            raise ConfigurationError(
                f"commit() takes a FeedBatch from fetch(), got {type(batch).__name__}"
            )
        if batch.consumer != self._name or batch._owner != self._owner:
            raise ConfigurationError(
                f"this batch was fetched by owner {batch._owner!r} for consumer "
                f"{batch.consumer!r}; commit it with the feed that fetched it (this one is "
                f"owner {self._owner!r} of {self._name!r})"
            )
        return {
            **self._lease_params(),
            **batch._next.values(),
            "gen": batch.generation,
            "count": len(batch.events),
        }

    def _refused(self, holder: Sequence[Any] | None) -> FeedError:
        """Why the lease statement found no row to update."""
        if holder is None:
            return self._missing()
        owner, lease_until, _ = holder
        return LeaseHeldError(
            f"consumer {self._name!r} is leased to {owner!r} until {lease_until.isoformat()}; "
            "one worker consumes it at a time. Fetch again later (this worker takes over "
            "when that lease ends unrenewed), or give both workers the same owner= if they "
            "are one worker restarted",
            owner=owner,
            lease_until=lease_until,
        )

    def _lost(self, batch: FeedBatch[Any], holder: Sequence[Any] | None) -> FeedError:
        """Why the commit statement found no row to update."""
        if holder is None:
            return self._missing()
        owner, _, generation = holder
        now = "nobody" if owner is None else repr(owner)
        return LeaseLostError(
            f"consumer {self._name!r}: this worker ({self._owner!r}) lost its lease since "
            f"the batch was fetched (generation {batch.generation}, now {generation}, held by "
            f"{now}); the checkpoint was not moved and the batch will be delivered again. "
            "Stop processing it; fetch again to know whether this worker may go on (a lease "
            "lasts lease= seconds from each fetch or commit: raise it when processing a "
            "batch takes longer)",
            owner=owner,
            generation=int(generation),
        )

    def _missing(self) -> ConsumerNotFoundError:
        return ConsumerNotFoundError(
            f"consumer {self._name!r} is not registered; call register() first (start="
            "'earliest', 'latest' or a datetime)"
        )

    @staticmethod
    def _translated(exc: DBAPIError) -> Exception:
        if sqlstate_of(exc) in _NOT_MIGRATED:
            return MigrationSetupError(
                f"the feed's schema is missing from this database ({exc.orig}); run its "
                "migration: add 'eventlog_persist:migrations_feed' to version_locations and "
                "'alembic upgrade heads' (linear mode: 'eventlog-persist linear-revision "
                "--feed'); the feed needs PostgreSQL 13 or later"
            )
        return exc


class EventFeed(_FeedCore, Generic[KeyT]):
    """A named consumer of the committed events, read batch by batch: the host's outbox.

    A batch holds the events of the transactions that committed since the consumer's last
    batch, none skipped: a transaction still in flight when a batch is cut has its events in
    a later batch, whatever the order transactions commit in. `fetch` the batch, deliver
    its events, then `commit` it: the checkpoint (in ``event_log_consumers``) moves only
    then, so a worker that crashes before the commit leaves the batch to be delivered again
    (at least once), and nothing else.

    One worker at a time consumes a consumer: each fetch and commit takes or renews a lease
    of ``lease`` seconds. Another worker's `fetch` raises `LeaseHeldError` until the lease
    ends unrenewed; it then takes over with a new generation, and a commit by the worker
    that lost the lease raises `LeaseLostError` without moving the checkpoint.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The engine of the host's database; each call is a short transaction.
        consumer: The consumer's name (up to 128 characters), e.g. ``"warehouse"``.
        owner: This worker's name in the lease; default: the host name, the process id and
            a random part, so that each instance is a worker of its own. A worker that
            restarts under the same name takes its lease back at once.
        lease: Seconds a fetch or commit holds the lease: longer than processing a batch
            takes, short enough for another worker to take over soon after a crash.
        mode: ``"snapshot"`` (default): a batch holds every transaction committed by now,
            and never waits for one still running. ``"horizon"``: only the transactions
            below the oldest one still running (any transaction holding an id, in any
            database of the server, holds the feed back while it runs).

    Raises:
        ConfigurationError: ``model`` did not opt in to the feed, or an argument cannot be
            used.
        ValidationError: ``consumer`` is not a usable name.

    Example:
        >>> feed = EventFeed(EventLog, engine, consumer="warehouse")  # doctest: +SKIP
        >>> feed.register(start="earliest")  # doctest: +SKIP
        >>> batch = feed.fetch()  # doctest: +SKIP
        >>> ship(batch.events); feed.commit(batch)  # doctest: +SKIP

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine",)

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        engine: Engine,
        *,
        consumer: str,
        owner: str | None = None,
        lease: float = 30.0,
        mode: Literal["snapshot", "horizon"] = "snapshot",
    ) -> None:
        if not isinstance(engine, Engine):
            refuse_other_flavour(engine, api="EventFeed", is_async=False)
            raise ConfigurationError(
                f"EventFeed needs a sqlalchemy Engine, got {shown(engine)}; pass the "
                "application's engine"
            )
        super().__init__(model, consumer=consumer, owner=owner, lease=lease, mode=mode)
        self._engine = engine

    def register(self, *, start: Literal["earliest", "latest"] | datetime = "earliest") -> bool:
        """Register the consumer, unless it is registered already.

        Args:
            start: Where the consumer starts: ``"earliest"``, every stored event (rows
                stored before the feed first, by id); ``"latest"``, the events of
                transactions not committed yet; or an aware datetime: the events created at
                or after it, with every event of a transaction that started no earlier than
                the first of them (so some older ones may come too, never fewer).

        Returns:
            True if the consumer was registered now; False if it was already (its
            checkpoint is kept, whatever ``start`` says).

        Raises:
            ValidationError: ``start`` is not one of these.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = check_start(start)
        try:
            with self._engine.begin() as connection:
                return _register(self._statements, connection, self._name, chosen)
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    def fetch(self, *, limit: int = DEFAULT_BATCH_SIZE) -> FeedBatch[KeyT]:
        """Take or renew the lease and return the consumer's next batch (maybe empty).

        Until it is committed, every fetch returns the same events again (and maybe more,
        committed since). A batch ends at ``limit`` events; a large transaction spans
        several batches.

        Args:
            limit: The most events in the batch, 1 to 10,000.

        Raises:
            ConsumerNotFoundError: The consumer is not registered.
            LeaseHeldError: Another worker holds the lease.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = check_limit(limit)
        try:
            with self._engine.begin() as connection:
                row = connection.execute(self._statements.lease(), self._lease_params()).first()
                if row is None:
                    holder = connection.execute(
                        self._statements.holder(), {"name": self._name}
                    ).first()
                    raise self._refused(holder)
                generation, plan, current = self._plan(row, chosen)
                pages = [(plan, connection.execute(self._statements.page(plan), plan.params).all())]
                follow = self._follow(plan, pages[0][1], current)
                if follow is not None:
                    page = self._statements.page(follow)
                    pages.append((follow, connection.execute(page, follow.params).all()))
        except DBAPIError as exc:
            raise self._translated(exc) from exc
        return self._batch(generation, pages)

    def commit(self, batch: FeedBatch[KeyT], /) -> None:
        """Record that ``batch`` was delivered: the checkpoint moves past it.

        Raises:
            LeaseLostError: Another worker took the lease since the batch was fetched; the
                checkpoint was not moved.
            ConsumerNotFoundError: The consumer was removed meanwhile.
            ConfigurationError: ``batch`` was fetched by another feed.
        """
        params = self._commit_params(batch)
        try:
            with self._engine.begin() as connection:
                moved = connection.execute(self._statements.commit(), params).rowcount
                if moved != 1:
                    holder = connection.execute(
                        self._statements.holder(), {"name": self._name}
                    ).first()
                    raise self._lost(batch, holder)
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    def release(self) -> None:
        """Give the lease up, so that another worker takes over at once (at shutdown).

        A batch fetched before and not committed is then delivered again.
        """
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    self._statements.release(), {"name": self._name, "me": self._owner}
                )
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    def unregister(self) -> bool:
        """Remove the consumer: its checkpoint and lease. Register it again to start over.

        Returns:
            True if it was registered.
        """
        try:
            with self._engine.begin() as connection:
                removed = connection.execute(self._statements.unregister(), {"name": self._name})
                return bool(removed.rowcount)
        except DBAPIError as exc:
            raise self._translated(exc) from exc


class AsyncEventFeed(_FeedCore, Generic[KeyT]):
    """Async `EventFeed`: a named consumer of the committed events, batch by batch.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The ``AsyncEngine`` of the host's database; each call is a short
            transaction.
        consumer: The consumer's name (up to 128 characters), e.g. ``"warehouse"``.
        owner: This worker's name in the lease; default: the host name, the process id and
            a random part, so that each instance is a worker of its own. A worker that
            restarts under the same name takes its lease back at once.
        lease: Seconds a fetch or commit holds the lease: longer than processing a batch
            takes, short enough for another worker to take over soon after a crash.
        mode: ``"snapshot"`` (default): a batch holds every transaction committed by now,
            and never waits for one still running. ``"horizon"``: only the transactions
            below the oldest one still running (any transaction holding an id, in any
            database of the server, holds the feed back while it runs).

    Raises:
        ConfigurationError: ``model`` did not opt in to the feed, or an argument cannot be
            used.
        ValidationError: ``consumer`` is not a usable name.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine",)

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        engine: AsyncEngine,
        *,
        consumer: str,
        owner: str | None = None,
        lease: float = 30.0,
        mode: Literal["snapshot", "horizon"] = "snapshot",
    ) -> None:
        if not isinstance(engine, AsyncEngine):
            refuse_other_flavour(engine, api="AsyncEventFeed", is_async=True)
            raise ConfigurationError(
                f"AsyncEventFeed needs a sqlalchemy AsyncEngine, got {shown(engine)}; pass "
                "the application's engine"
            )
        super().__init__(model, consumer=consumer, owner=owner, lease=lease, mode=mode)
        self._engine = engine

    async def register(
        self, *, start: Literal["earliest", "latest"] | datetime = "earliest"
    ) -> bool:
        """Register the consumer, unless it is registered already.

        Args:
            start: Where the consumer starts: ``"earliest"``, every stored event (rows
                stored before the feed first, by id); ``"latest"``, the events of
                transactions not committed yet; or an aware datetime: the events created at
                or after it, with every event of a transaction that started no earlier than
                the first of them (so some older ones may come too, never fewer).

        Returns:
            True if the consumer was registered now; False if it was already (its
            checkpoint is kept, whatever ``start`` says).

        Raises:
            ValidationError: ``start`` is not one of these.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = check_start(start)
        try:
            async with self._engine.begin() as connection:
                return await connection.run_sync(
                    lambda sync: _register(self._statements, sync, self._name, chosen)
                )
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    async def fetch(self, *, limit: int = DEFAULT_BATCH_SIZE) -> FeedBatch[KeyT]:
        """Take or renew the lease and return the consumer's next batch (maybe empty).

        Until it is committed, every fetch returns the same events again (and maybe more,
        committed since). A batch ends at ``limit`` events; a large transaction spans
        several batches.

        Args:
            limit: The most events in the batch, 1 to 10,000.

        Raises:
            ConsumerNotFoundError: The consumer is not registered.
            LeaseHeldError: Another worker holds the lease.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = check_limit(limit)
        try:
            async with self._engine.begin() as connection:
                result = await connection.execute(self._statements.lease(), self._lease_params())
                row = result.first()
                if row is None:
                    found = await connection.execute(
                        self._statements.holder(), {"name": self._name}
                    )
                    raise self._refused(found.first())
                generation, plan, current = self._plan(row, chosen)
                page = self._statements.page(plan)
                pages = [(plan, (await connection.execute(page, plan.params)).all())]
                follow = self._follow(plan, pages[0][1], current)
                if follow is not None:
                    page = self._statements.page(follow)
                    pages.append((follow, (await connection.execute(page, follow.params)).all()))
        except DBAPIError as exc:
            raise self._translated(exc) from exc
        return self._batch(generation, pages)

    async def commit(self, batch: FeedBatch[KeyT], /) -> None:
        """Record that ``batch`` was delivered: the checkpoint moves past it.

        Raises:
            LeaseLostError: Another worker took the lease since the batch was fetched; the
                checkpoint was not moved.
            ConsumerNotFoundError: The consumer was removed meanwhile.
            ConfigurationError: ``batch`` was fetched by another feed.
        """
        params = self._commit_params(batch)
        try:
            async with self._engine.begin() as connection:
                moved = (await connection.execute(self._statements.commit(), params)).rowcount
                if moved != 1:
                    found = await connection.execute(
                        self._statements.holder(), {"name": self._name}
                    )
                    raise self._lost(batch, found.first())
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    async def release(self) -> None:
        """Give the lease up, so that another worker takes over at once (at shutdown).

        A batch fetched before and not committed is then delivered again.
        """
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    self._statements.release(), {"name": self._name, "me": self._owner}
                )
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    async def unregister(self) -> bool:
        """Remove the consumer: its checkpoint and lease. Register it again to start over.

        Returns:
            True if it was registered.
        """
        try:
            async with self._engine.begin() as connection:
                removed = await connection.execute(
                    self._statements.unregister(), {"name": self._name}
                )
                return bool(removed.rowcount)
        except DBAPIError as exc:
            raise self._translated(exc) from exc


def _register(
    statements: FeedStatements, connection: Connection, name: str, start: FeedStart
) -> bool:
    """Insert the consumer's row (both feeds: the async one through ``run_sync``)."""
    done: Snapshot | None = None
    kind: Literal["earliest", "latest", "since"]
    if isinstance(start, datetime):
        kind = "since"
        first, now = connection.execute(statements.first_xid_since(), {"since": start}).one()
        done = since_snapshot(None if first is None else int(first), Snapshot.parse(now))
    elif start == "earliest":
        kind, done = "earliest", EARLIEST
    else:
        kind = "latest"
    created = connection.execute(
        statements.register(kind), {"name": name, **register_values(start, done)}
    ).first()
    return created is not None
