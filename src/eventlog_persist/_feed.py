"""``EventFeed`` and ``AsyncEventFeed``: named consumers of the committed events, batch by batch.

Thin sync and async classes over `_feed_sql`: each call is one short transaction on the
engine. A consumer's row in ``event_log_consumers`` holds its checkpoint and its lease; a
batch moves the checkpoint only when it is committed, by the worker that holds the lease
under the generation it was fetched with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from eventlog_persist._failures import sqlstate_of
from eventlog_persist._feed_claims import claiming
from eventlog_persist._feed_retention import data_lost
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
    check_parts,
    check_start,
    consumer_option,
    plan_page,
    records,
    register_values,
    since_snapshot,
)
from eventlog_persist._feed_wakeup import AsyncWakeups, Wakeups, check_poll
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._partitions import mark_new_claim
from eventlog_persist._read_types import EventRecord
from eventlog_persist._table import quoted_name
from eventlog_persist._urls import check_engine, shown
from eventlog_persist.exceptions import (
    ConfigurationError,
    ConsumerNotFoundError,
    FeedError,
    LeaseHeldError,
    LeaseLostError,
    MigrationSetupError,
    StaleBatchError,
)

__all__ = ["AsyncEventFeed", "EventFeed", "FeedBatch"]

# A feed's own transactions run at READ COMMITTED whatever the engine's level: a registration
# waits for any other one of its consumer (a lock), then reads whether it exists, and that
# read must see the other one's rows; and on an engine in autocommit mode (where BEGIN is
# never sent) a fetch's lease would commit before the fetch could still fail and roll it back.
OWN_TRANSACTION: Final = {"isolation_level": "READ COMMITTED"}


@contextlib.contextmanager
def own_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction of the feed's own, at `OWN_TRANSACTION`'s level whatever the engine's."""
    with (
        engine.connect() as own,
        own.execution_options(**OWN_TRANSACTION) as connection,
        connection.begin(),
    ):
        yield connection


@contextlib.asynccontextmanager
async def aown_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """`own_transaction` of an ``AsyncEngine``."""
    async with engine.connect() as own:
        connection = await own.execution_options(**OWN_TRANSACTION)
        async with connection.begin():
            yield connection


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
        part: The part of the consumer it belongs to (0 unless the consumer is in
            ``parts``): its events are those of the sessions of that part.

    .. versionadded:: 0.3.0
    """

    consumer: str
    events: tuple[EventRecord[KeyT], ...]
    generation: int
    part: int
    _owner: str = field(repr=False, compare=False)
    _next: Checkpoint = field(repr=False, compare=False)
    _start: Checkpoint = field(repr=False, compare=False)


def _default_owner() -> str:
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _FeedCore:
    """What both feeds share: settings, statements, and turning rows into batches."""

    __slots__ = ("_lease", "_mode", "_name", "_owner", "_part", "_parts", "_statements")

    def __init__(
        self,
        model: type[EventLogMixin[Any]],
        *,
        consumer: str,
        owner: str | None,
        lease: float,
        mode: Literal["snapshot", "horizon"],
        parts: int,
        part: int | None,
    ) -> None:
        self._parts, self._part = check_parts(parts, part)
        self._statements = FeedStatements(model, parts=self._parts)
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

    @property
    def parts(self) -> int:
        """How many parts the consumer is split into (1: one worker at a time)."""
        return self._parts

    def _lease_params(self) -> dict[str, Any]:
        params = {"name": self._name, "me": self._owner, "lease": self._lease}
        if self._part is not None:
            params["the_part"] = self._part
        return params

    def _with_part(self, plan: PagePlan, part: int) -> PagePlan:
        if self._parts > 1:
            plan.params["the_part"] = part
        return plan

    def _plan(self, row: Sequence[Any], limit: int) -> tuple[int, int, PagePlan, Snapshot]:
        """The part, the generation, the first page to read and the snapshot of now, from
        the lease statement's row; `FeedDataLostError` if retention removed events the part
        had not been delivered (raised in the fetch's transaction, so the lease is not taken)."""
        part, generation, done, target, after_xid, after_id = row[:6]
        backfill, since, backfill_after, now = row[6:10]
        if row[10] is not None:
            raise data_lost(self._name, int(part), self._parts, *row[10:14])
        start = Checkpoint(
            done=Snapshot.parse(done),
            target=None if target is None else Snapshot.parse(target),
            after=None if after_xid is None else (int(after_xid), after_id),
            backfill=bool(backfill),
            backfill_since=since,
            backfill_after=backfill_after,
        )
        current = Snapshot.parse(now)
        plan = plan_page(start, current, mode=self._mode, limit=limit)
        return int(part), int(generation), self._with_part(plan, int(part)), current

    def _follow(
        self, part: int, plan: PagePlan, rows: Sequence[Sequence[Any]], current: Snapshot
    ) -> PagePlan | None:
        """The page that fills the rest of a batch whose first page ended a phase, if any:
        the pre-feed rows ran out (the feed's events follow them), or the batch kept in the
        checkpoint (its target) had no rows left. An empty batch then always means that
        nothing is pending, so a worker need not commit it: the target of a batch that
        ended exactly at ``limit`` would otherwise stay in the checkpoint until an empty
        batch is committed. The last rows of a kept target are a batch on their own: the
        next target's rows may have lower transaction ids, and a batch keeps ``(xid, id)``
        order."""
        if plan.kind == "backfill":
            if len(rows) >= plan.limit:
                return None
        elif plan.start.target is None or rows:
            return None
        rest = plan.limit - len(rows)
        follow = plan_page(plan.next_checkpoint(rows), current, mode=self._mode, limit=rest)
        return self._with_part(follow, part)

    def _batch(
        self,
        part: int,
        generation: int,
        pages: Sequence[tuple[PagePlan, Sequence[Sequence[Any]]]],
    ) -> FeedBatch[Any]:
        """The batch of the pages read (one, or the pre-feed rows' last and a range page)."""
        last_plan, last_rows = pages[-1]
        return FeedBatch(
            self._name,
            records([row for _, rows in pages for row in rows]),
            generation,
            part,
            self._owner,
            last_plan.next_checkpoint(last_rows),
            pages[0][0].start,
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
            **{f"start_{name}": value for name, value in batch._start.values().items()},
            "the_part": batch.part,
            "gen": batch.generation,
            "count": len(batch.events),
        }

    @staticmethod
    def _check_connection(connection: object, kind: type[Any]) -> None:
        if not isinstance(connection, kind):
            raise ConfigurationError(
                f"commit(connection=...) takes a sqlalchemy {kind.__name__} in the host's "
                f"transaction, got {shown(connection)}; with an ORM session pass "
                "session.connection()"
            )

    def _reshaped(self, registered: int) -> ConfigurationError:
        return ConfigurationError(
            f"consumer {self._name!r} is registered with parts={registered}, this feed has "
            f"parts={self._parts}; the parts of a consumer cannot change, as each part's "
            "checkpoint belongs to its sessions. Use parts="
            f"{registered}, or unregister the consumer (unregister(), or eventlog-persist "
            f"feed unregister {consumer_option(self._name)}) and register it again "
            "with the new parts: it starts over from its start, so to keep what it was not "
            "delivered yet, start it at or before its oldest pending event (feed_status(): "
            "now minus oldest_pending_age) or at 'earliest', and deduplicate on event.id"
        )

    def _refused(self, holders: Sequence[Row[Any]]) -> FeedError | ConfigurationError:
        """Why the lease statement found no row to update."""
        if not holders:
            return self._missing()
        if holders[0].parts != self._parts:
            return self._reshaped(int(holders[0].parts))
        if self._part is not None:
            holders = [row for row in holders if row.part == self._part]
        held = sorted((row for row in holders if row.live), key=lambda row: row.lease_until)
        if not held:
            # Every lease was free or ended, yet the lease statement took none: it skips the
            # rows another transaction is updating, a worker taking the lease at this moment.
            return LeaseHeldError(
                f"another worker is taking the lease of consumer {self._name!r} at this "
                "moment; fetch again",
                owner=None,
                lease_until=None,
            )
        owner, lease_until, part = held[0].owner, held[0].lease_until, held[0].part
        if self._parts > 1:
            which = f"part {part} of consumer" if self._part is not None else "every part of"
            return LeaseHeldError(
                f"{which} {self._name!r} (parts={self._parts}) is leased to another worker; "
                f"{owner!r} holds part {part} until {lease_until.isoformat()}. Fetch again "
                "later (this worker takes a part over when its lease ends unrenewed), or "
                "give the consumer more parts (unregister and register again)",
                owner=owner,
                lease_until=lease_until,
            )
        return LeaseHeldError(
            f"consumer {self._name!r} is leased to {owner!r} until {lease_until.isoformat()}; "
            "one worker consumes it at a time. Fetch again later (this worker takes over "
            "when that lease ends unrenewed), or give both workers the same owner= if they "
            "are one worker restarted",
            owner=owner,
            lease_until=lease_until,
        )

    def _lost(self, batch: FeedBatch[Any], holders: Sequence[Row[Any]]) -> FeedError:
        """Why the commit statement found no row to update."""
        holder = next((row for row in holders if row.part == batch.part), None)
        if holder is None:
            return self._missing()
        owner, generation = holder.owner, holder.generation
        if owner == self._owner and generation == batch.generation:
            return StaleBatchError(
                f"consumer {self._name!r}{f' part {batch.part}' if self._parts > 1 else ''}: "
                "this batch, or one fetched after it, was committed already; the checkpoint "
                "is past its start and was not moved again (it would deliver events twice). "
                "With commit(batch, connection=...), roll your transaction back: the rows "
                "derived from it are there already. Fetch the next batch"
            )
        now = "nobody" if owner is None else repr(owner)
        return LeaseLostError(
            f"consumer {self._name!r}{f' part {batch.part}' if self._parts > 1 else ''}: "
            f"this worker ({self._owner!r}) lost its lease since "
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
    that lost the lease raises `LeaseLostError` without moving the checkpoint. A consumer
    split into ``parts`` has one such lease and checkpoint per part, and as many workers at
    once, each with the sessions of its part. ``commit(batch, connection=...)`` moves the
    checkpoint in the host's own transaction: exactly once within the same database.

    Args:
        model: The host's ``EventLog`` model, opted in to the feed (``feed=True``).
        engine: The engine of the host's database; each call is a short transaction.
        consumer: The consumer's name (up to 128 characters), e.g. ``"warehouse"``.
        owner: This worker's name in the lease; default: the host name, the process id and
            a random part, so that each instance is a worker of its own. A worker that
            restarts under the same name takes its lease back at once.
        lease: Seconds a fetch or commit holds the lease (0.001 to 86400): longer than
            processing a batch takes, short enough for another worker to take over soon
            after a crash.
        mode: ``"snapshot"`` (default): a batch holds every transaction committed by now,
            and never waits for one still running. ``"horizon"``: only the transactions
            below the oldest one still running (any transaction holding an id, in any
            database of the server, holds the feed back while it runs).
        parts: Split the consumer into this many parts, each with its own checkpoint and
            lease, so that as many workers consume it at once; an event belongs to the part
            of its session (a hash of ``session_id``), so a session's events keep their
            order. Registration fixes it: every feed of the consumer must give the same.
        part: The part this worker consumes; None (default): the part it holds already,
            or else any part whose lease is free (a part that retention left behind only
            when no other is).
        listen: `wait` wakes up when a bulk or buffered writer commits a batch (PostgreSQL
            ``LISTEN``, on a connection of its own opened at the first wait); False: `wait`
            only sleeps its timeout (e.g. behind PgBouncer in transaction mode, where
            ``LISTEN`` does not work).

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

    __slots__ = ("_engine", "_ticket", "_wakeups")

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        engine: Engine,
        *,
        consumer: str,
        owner: str | None = None,
        lease: float = 30.0,
        mode: Literal["snapshot", "horizon"] = "snapshot",
        parts: int = 1,
        part: int | None = None,
        listen: bool = True,
    ) -> None:
        check_engine(engine, api="EventFeed", is_async=False)
        super().__init__(
            model, consumer=consumer, owner=owner, lease=lease, mode=mode, parts=parts, part=part
        )
        self._engine = engine
        self._wakeups = Wakeups(engine, quoted_name(self._statements.table), listen=listen)
        self._ticket = self._wakeups.ticket()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def register(self, *, start: Literal["earliest", "latest"] | datetime = "earliest") -> bool:
        """Register the consumer, unless it is registered already.

        A new consumer that claims stored events (``start`` other than ``"latest"``) waits
        for a `purge_events` batch or a `drop_partitions` run in progress, so that
        retention never removes events it claims without marking it.

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
            with self._engine.connect() as connection:
                read_committed = connection.execution_options(**OWN_TRANSACTION)
                with read_committed.begin():
                    return _register(self, read_committed, chosen)
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
            FeedDataLostError: Retention (`purge_events`, `drop_partitions`) removed events
                before this part was delivered them; reset the consumer to go on.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = check_limit(limit)
        self._ticket = self._wakeups.ticket()
        try:
            with own_transaction(self._engine) as connection:
                lease = self._statements.lease(fixed=self._part is not None)
                row = connection.execute(lease, self._lease_params()).first()
                if row is None:
                    holders = connection.execute(
                        self._statements.holder(), {"name": self._name}
                    ).all()
                    raise self._refused(holders)
                part, generation, plan, current = self._plan(row, chosen)
                pages = [(plan, connection.execute(self._statements.page(plan), plan.params).all())]
                follow = self._follow(part, plan, pages[0][1], current)
                if follow is not None:
                    page = self._statements.page(follow)
                    pages.append((follow, connection.execute(page, follow.params).all()))
        except DBAPIError as exc:
            raise self._translated(exc) from exc
        return self._batch(part, generation, pages)

    def commit(self, batch: FeedBatch[KeyT], /, *, connection: Connection | None = None) -> None:
        """Record that ``batch`` was delivered: the checkpoint moves past it.

        Args:
            batch: The batch from this feed's `fetch`.
            connection: Move the checkpoint in the host's transaction on this connection
                (same database), together with what the host writes for the batch: exactly
                once. The host commits it; on `LeaseLostError` it must roll it back. None
                (default): in a transaction of its own.

        Raises:
            LeaseLostError: Another worker took the lease since the batch was fetched; the
                checkpoint was not moved.
            StaleBatchError: The batch, or one fetched after it, was committed already;
                the checkpoint was not moved again (roll the host's transaction back).
            ConsumerNotFoundError: The consumer was removed meanwhile.
            ConfigurationError: ``batch`` was fetched by another feed, or ``connection`` is
                not a ``Connection``.
        """
        params = self._commit_params(batch)
        if connection is not None:
            self._check_connection(connection, Connection)
            try:
                self._commit_on(connection, batch, params)
            except DBAPIError as exc:
                raise self._translated(exc) from exc
            return
        try:
            with own_transaction(self._engine) as own:
                self._commit_on(own, batch, params)
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    def _commit_on(
        self, connection: Connection, batch: FeedBatch[KeyT], params: dict[str, Any]
    ) -> None:
        moved = connection.execute(self._statements.commit(), params).rowcount
        if moved != 1:
            holders = connection.execute(self._statements.holder(), {"name": self._name}).all()
            raise self._lost(batch, holders)

    def wait(self, timeout: float = 1.0) -> bool:
        """Sleep until a writer commits events, at most ``timeout`` seconds; then `fetch`.

        Bulk and buffered writers notify once per batch they commit; events recorded in
        the host's own transactions notify nothing, so ``timeout`` is their delivery
        latency. A notification that arrived since the last `fetch` began returns at once.
        The first wait starts listening and returns as soon as it listens.

        Args:
            timeout: The longest sleep, in seconds (above 0, at most an hour).

        Returns:
            True when woken (by a notification, or by the listening connection failing:
            read now, as nothing will wake it until it is back); False when the timeout
            ran out.

        .. versionadded:: 0.3.0
        """
        seconds = check_poll(timeout)
        return self._wakeups.wait(self._ticket, seconds)

    def close(self) -> None:
        """Stop listening (its connection closes); the lease is kept: see `release`."""
        self._wakeups.close()

    def release(self) -> None:
        """Give the lease up, so that another worker takes over at once (at shutdown).

        A batch fetched before and not committed is then delivered again.
        """
        try:
            with own_transaction(self._engine) as connection:
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
            with own_transaction(self._engine) as connection:
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
        lease: Seconds a fetch or commit holds the lease (0.001 to 86400): longer than
            processing a batch takes, short enough for another worker to take over soon
            after a crash.
        mode: ``"snapshot"`` (default): a batch holds every transaction committed by now,
            and never waits for one still running. ``"horizon"``: only the transactions
            below the oldest one still running (any transaction holding an id, in any
            database of the server, holds the feed back while it runs).
        parts: Split the consumer into this many parts, each with its own checkpoint and
            lease, so that as many workers consume it at once; an event belongs to the part
            of its session (a hash of ``session_id``), so a session's events keep their
            order. Registration fixes it: every feed of the consumer must give the same.
        part: The part this worker consumes; None (default): the part it holds already,
            or else any part whose lease is free (a part that retention left behind only
            when no other is).
        listen: `wait` wakes up when a bulk or buffered writer commits a batch (PostgreSQL
            ``LISTEN``, on a connection of its own opened at the first wait); False: `wait`
            only sleeps its timeout (e.g. behind PgBouncer in transaction mode, where
            ``LISTEN`` does not work).

    Raises:
        ConfigurationError: ``model`` did not opt in to the feed, or an argument cannot be
            used.
        ValidationError: ``consumer`` is not a usable name.

    .. versionadded:: 0.3.0
    """

    __slots__ = ("_engine", "_ticket", "_wakeups")

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        engine: AsyncEngine,
        *,
        consumer: str,
        owner: str | None = None,
        lease: float = 30.0,
        mode: Literal["snapshot", "horizon"] = "snapshot",
        parts: int = 1,
        part: int | None = None,
        listen: bool = True,
    ) -> None:
        check_engine(engine, api="AsyncEventFeed", is_async=True)
        super().__init__(
            model, consumer=consumer, owner=owner, lease=lease, mode=mode, parts=parts, part=part
        )
        self._engine = engine
        self._wakeups = AsyncWakeups(engine, quoted_name(self._statements.table), listen=listen)
        self._ticket: asyncio.Event | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def register(
        self, *, start: Literal["earliest", "latest"] | datetime = "earliest"
    ) -> bool:
        """Register the consumer, unless it is registered already.

        A new consumer that claims stored events (``start`` other than ``"latest"``) waits
        for a `purge_events` batch or a `drop_partitions` run in progress, so that
        retention never removes events it claims without marking it.

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
            async with self._engine.connect() as connection:
                read_committed = await connection.execution_options(**OWN_TRANSACTION)
                async with read_committed.begin():
                    return await read_committed.run_sync(lambda sync: _register(self, sync, chosen))
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
            FeedDataLostError: Retention (`purge_events`, `drop_partitions`) removed events
                before this part was delivered them; reset the consumer to go on.
            MigrationSetupError: The database lacks the feed's schema.
        """
        chosen = check_limit(limit)
        self._ticket = self._wakeups.ticket()
        try:
            async with aown_transaction(self._engine) as connection:
                lease = self._statements.lease(fixed=self._part is not None)
                row = (await connection.execute(lease, self._lease_params())).first()
                if row is None:
                    found = await connection.execute(
                        self._statements.holder(), {"name": self._name}
                    )
                    raise self._refused(found.all())
                part, generation, plan, current = self._plan(row, chosen)
                page = self._statements.page(plan)
                pages = [(plan, (await connection.execute(page, plan.params)).all())]
                follow = self._follow(part, plan, pages[0][1], current)
                if follow is not None:
                    page = self._statements.page(follow)
                    rows = (await connection.execute(page, follow.params)).all()
                    pages.append((follow, rows))
        except DBAPIError as exc:
            raise self._translated(exc) from exc
        return self._batch(part, generation, pages)

    async def commit(
        self, batch: FeedBatch[KeyT], /, *, connection: AsyncConnection | None = None
    ) -> None:
        """Record that ``batch`` was delivered: the checkpoint moves past it.

        Args:
            batch: The batch from this feed's `fetch`.
            connection: Move the checkpoint in the host's transaction on this connection
                (same database), together with what the host writes for the batch: exactly
                once. The host commits it; on `LeaseLostError` it must roll it back. None
                (default): in a transaction of its own.

        Raises:
            LeaseLostError: Another worker took the lease since the batch was fetched; the
                checkpoint was not moved.
            StaleBatchError: The batch, or one fetched after it, was committed already;
                the checkpoint was not moved again (roll the host's transaction back).
            ConsumerNotFoundError: The consumer was removed meanwhile.
            ConfigurationError: ``batch`` was fetched by another feed, or ``connection`` is
                not an ``AsyncConnection``.
        """
        params = self._commit_params(batch)
        if connection is not None:
            self._check_connection(connection, AsyncConnection)
            try:
                await self._commit_on(connection, batch, params)
            except DBAPIError as exc:
                raise self._translated(exc) from exc
            return
        try:
            async with aown_transaction(self._engine) as own:
                await self._commit_on(own, batch, params)
        except DBAPIError as exc:
            raise self._translated(exc) from exc

    async def _commit_on(
        self, connection: AsyncConnection, batch: FeedBatch[KeyT], params: dict[str, Any]
    ) -> None:
        moved = (await connection.execute(self._statements.commit(), params)).rowcount
        if moved != 1:
            found = await connection.execute(self._statements.holder(), {"name": self._name})
            raise self._lost(batch, found.all())

    async def wait(self, timeout: float = 1.0) -> bool:
        """Sleep until a writer commits events, at most ``timeout`` seconds; then `fetch`.

        Bulk and buffered writers notify once per batch they commit; events recorded in
        the host's own transactions notify nothing, so ``timeout`` is their delivery
        latency. A notification that arrived since the last `fetch` began returns at once.
        The first wait starts listening (a task of the running loop) and returns as soon
        as it listens.

        Args:
            timeout: The longest sleep, in seconds (above 0, at most an hour).

        Returns:
            True when woken (by a notification, or by the listening connection failing:
            read now, as nothing will wake it until it is back); False when the timeout
            ran out.

        .. versionadded:: 0.3.0
        """
        seconds = check_poll(timeout)
        ticket = self._ticket if self._ticket is not None else self._wakeups.ticket()
        return await self._wakeups.wait(ticket, seconds)

    async def close(self) -> None:
        """Stop listening (its connection closes); the lease is kept: see `release`."""
        await self._wakeups.aclose()

    async def release(self) -> None:
        """Give the lease up, so that another worker takes over at once (at shutdown).

        A batch fetched before and not committed is then delivered again.
        """
        try:
            async with aown_transaction(self._engine) as connection:
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
            async with aown_transaction(self._engine) as connection:
                removed = await connection.execute(
                    self._statements.unregister(), {"name": self._name}
                )
                return bool(removed.rowcount)
        except DBAPIError as exc:
            raise self._translated(exc) from exc


def _register(core: _FeedCore, connection: Connection, start: FeedStart) -> bool:
    """Insert the consumer's rows (both feeds: the async one through ``run_sync``)."""
    statements, name = core._statements, core._name
    connection.execute(statements.registration_lock(), {"name": name})
    registered = connection.execute(statements.registered_parts(), {"name": name}).scalar()
    if registered is not None:
        if registered != statements.parts:
            raise core._reshaped(int(registered))
        return False
    if start != "latest":  # a claim on stored events: not while retention removes some
        connection.execute(claiming(statements.consumers))
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
    if created is None:
        return False
    if kind != "latest":
        since = start if isinstance(start, datetime) else None
        mark_new_claim(connection, statements.table, statements.consumers, name, since)
    return True
