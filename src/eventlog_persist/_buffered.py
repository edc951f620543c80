"""Background writers: the request path only enqueues; a thread or task writes batches by COPY."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import repeat
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeAlias, cast, overload

from typing_extensions import Unpack

from eventlog_persist import _shutdown
from eventlog_persist._delivery import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_TCP_USER_TIMEOUT,
    AsyncConnector,
    AsyncTarget,
    Connector,
    Outcome,
    Target,
    adeliver,
    check_timeout,
    deliver,
    report_dead_letters,
)
from eventlog_persist._events import DeadLetterHook, EventBuilder, EventFields, NewEvent
from eventlog_persist._failures import Reason, is_missing_partition, write_error
from eventlog_persist._model import EventLogMixin, KeyT
from eventlog_persist._payload import DEFAULT_POLICY, PayloadPolicy
from eventlog_persist._retry import BUFFERED_RETRY, RetryPolicy
from eventlog_persist._spool import Journal, Reading, Spool, encode_event
from eventlog_persist._stats import BatchTimes, LastError, WriterCounters, WriterStats
from eventlog_persist._vocabulary import DEFAULT_FIELD_RULES, EventFieldRules
from eventlog_persist.exceptions import (
    ConfigurationError,
    EventWriteError,
    QueueFullError,
    WriterClosedError,
    WriterNotStartedError,
)

__all__ = [
    "AsyncBufferedWriter",
    "BufferedWriter",
    "WhenFull",
]

logger = logging.getLogger("eventlog_persist")

WhenFull: TypeAlias = Literal["block", "drop_newest"]
"""What `enqueue` does when the queue is at its bound; see `BufferedWriter`."""


_Dead: TypeAlias = list[tuple[NewEvent, EventWriteError]]

DEFAULT_MISSING_PARTITION_TIMEOUT = 60.0
"""Seconds the buffered writers retry an event whose ``created_at`` has no partition."""
_MISSING_PARTITION_MAX_DELAY = 5.0
"""Longest wait between two offers of an event whose ``created_at`` has no partition."""
_HAND_OVER_INTERVAL = 0.004
"""Seconds between two offers of the GIL to the writer thread by `BufferedWriter.enqueue`
while a batch is written: below the interpreter's switch interval (5 ms). Shorter writes
faster and delays more calls: at 2 ms the writer's work landed in more than one call in a
hundred; at 3 ms the p99 passed 3x `json.dumps` in five runs of six
(docs/benchmarks/write-path.md, rounds 7 and 12)."""
_EARLY_START = 1000
"""An idle writer starts a batch once this many events wait, not waiting for a full one (when
``batch_size`` is larger): under a burst the server stores the first events while producers
make the next ones, and the batches grow to what arrives during each write
(docs/benchmarks/write-path.md, round 13)."""
_CANCEL_GRACE = 1.0
"""Seconds `AsyncBufferedWriter.close` lets a cancelled write end before cancelling it again:
cancelled once, psycopg asks the server to cancel the statement and waits up to 10 s for it;
cancelled twice, it closes the connection at once."""


class _Held:
    """An event set aside because no partition held its ``created_at``: re-offered later."""

    __slots__ = ("due", "event")

    def __init__(self, event: NewEvent, since: float, tries: int, now: float, limit: float):
        self.event = event
        # ``since``: when its first write failed so; ``tries``: its offers so far (both kept
        # in `_State.missing`, by event id). Backoff 0.5, 1, 2, 4, 5, 5 ... s; the last offer
        # at the deadline.
        delay = min(_MISSING_PARTITION_MAX_DELAY, 0.5 * (1 << min(tries - 1, 8)))
        self.due = min(now + delay, since + limit)


class _State(Generic[KeyT]):
    """Settings, queue and counters shared by the thread and the asyncio writer."""

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        *,
        batch_size: int,
        flush_interval: float,
        max_queued: int,
        max_queued_bytes: int,
        when_full: WhenFull,
        block_timeout: float | None,
        retry: RetryPolicy,
        on_dead_letter: DeadLetterHook | None,
        payload_policy: PayloadPolicy,
        field_rules: EventFieldRules,
        spool: Spool | None,
        missing_partition_timeout: float = DEFAULT_MISSING_PARTITION_TIMEOUT,
    ) -> None:
        _positive_int("batch_size", batch_size)
        check_seconds("missing_partition_timeout", missing_partition_timeout, allow_none=False)
        _positive_int("max_queued", max_queued)
        _positive_int("max_queued_bytes", max_queued_bytes)
        check_seconds("flush_interval", flush_interval, allow_none=False)
        block_timeout = check_wait("block_timeout", block_timeout)
        if when_full not in ("block", "drop_newest"):
            raise ConfigurationError(
                f"when_full={when_full!r} is not valid; use 'block' or 'drop_newest'"
            )
        if on_dead_letter is not None and not callable(on_dead_letter):
            raise ConfigurationError(
                f"on_dead_letter={on_dead_letter!r} is not valid; pass a callable or None"
            )
        if not isinstance(retry, RetryPolicy):
            raise ConfigurationError(f"retry={retry!r} is not valid; pass a RetryPolicy")
        self.builder: EventBuilder[KeyT] = EventBuilder.of(
            model, payload_policy=payload_policy, field_rules=field_rules
        )
        self.batch_size = batch_size
        self.start_at = min(batch_size, _EARLY_START)
        self.flush_interval = float(flush_interval)
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.retry = retry
        self.on_dead_letter = on_dead_letter
        self.missing_partition_timeout = float(missing_partition_timeout)
        # Events whose created_at had no partition: set aside, re-offered (see `hold`).
        self.held: list[_Held] = []
        # event id -> (since its first write failed, tries, arrival of the oldest of its batch)
        self.missing: dict[object, tuple[float, int, float]] = {}
        self.queue: deque[NewEvent] = deque()
        self.inflight: list[NewEvent] | None = None  # the batch being written
        self.oldest = 0.0  # monotonic time the oldest queued event arrived
        self.pending = 0  # queued + being written
        self.pending_bytes = 0
        self.enqueued = 0  # sequence numbers, for flush()
        self.taken = 0
        self.done = 0
        self.flush_target = 0
        self.closing = False
        self.written = self.duplicates = self.retried = self.dead_lettered = 0
        self.read_only_retries = 0
        self.dropped = self.unwritten = self.errors = 0
        # -- stats (see _stats.WriterStats) --
        self.arrivals: deque[float] = deque()  # monotonic time each queued event arrived
        self.inflight_since = 0.0  # arrival of the oldest event of the batch being written
        self.batch_times = BatchTimes()
        self.last_error: LastError | None = None
        # -- the spool (see _spool.Journal) --
        self.journal: Journal | None = None
        self.feed_blocked = False  # the next spooled event did not fit: wait for a batch
        if spool is not None:
            self._open_spool(spool)

    def _open_spool(self, spool: Spool) -> None:
        if not isinstance(spool, Spool):
            raise ConfigurationError(
                f"spool={spool!r} is not valid; pass a Spool(directory) or None"
            )
        self.journal = journal = Journal(spool, self.builder.table.qualified_name)
        self.enqueued = journal.spilled  # events left by earlier writers come first

    def forget(self) -> None:
        """Start over empty, counters included: a forked child's copy of the parent's queue
        belongs to the parent, whose thread writes it."""
        self.queue = deque()
        self.held = []
        self.missing = {}
        self.inflight = None
        self.pending = self.pending_bytes = 0
        self.enqueued = self.taken = self.done = self.flush_target = 0
        self.written = self.duplicates = self.retried = self.dead_lettered = 0
        self.read_only_retries = 0
        self.dropped = self.unwritten = self.errors = 0
        self.arrivals = deque()
        self.batch_times = BatchTimes()
        self.last_error = None
        if self.journal is not None:  # the parent's files: the child's copy has no spool
            self.journal.forget()
            self.journal = None
        self.feed_blocked = False

    def counters(self) -> WriterCounters:
        return WriterCounters(
            written=self.written,
            duplicates=self.duplicates,
            retried=self.retried,
            read_only_retries=self.read_only_retries,
            dead_lettered=self.dead_lettered,
            dropped=self.dropped,
            unwritten=self.unwritten,
            queued=self.pending,
            queued_bytes=self.pending_bytes,
            errors=self.errors,
            **self._spool_counters(),
        )

    def stats(self) -> WriterStats:
        if self.inflight is not None:
            since: float | None = self.inflight_since
        else:
            since = self.arrivals[0] if self.arrivals else None
        if self.missing:  # set aside for a missing partition, or queued again: since they came
            first = min(arrived for _since, _tries, arrived in self.missing.values())
            since = first if since is None else min(since, first)
        times = self.batch_times
        p50, slowest = times.p50_and_max()
        return WriterStats(
            counters=self.counters(),
            oldest_queued_age=None if since is None else max(0.0, time.monotonic() - since),
            batches=times.count,
            batch_seconds_total=times.total,
            last_batch_seconds=times.last,
            recent_batch_seconds_p50=p50,
            recent_batch_seconds_max=slowest,
            last_error=self.last_error,
        )

    def _spool_counters(self) -> dict[str, int]:
        journal = self.journal
        if journal is None:
            return {}
        return {
            "spilled": journal.spilled,
            "replayed": journal.replayed,
            "spool_damaged": journal.damaged,
        }

    # -- the spool: enqueue journals, the writer reads spilled events back, settle trims --

    def spool_add(self, event: NewEvent, record: bytes, size: int) -> tuple[bool, _Dead | None]:
        """Journal the event, then queue it, or leave it on the spool when the queue is full.

        Returns:
            Whether the writer should wake up, and the event with its error if it was
            dropped (the spool is full or cannot be written), to report without the lock.
        """
        journal = self.journal
        if journal is None:  # pragma: no cover - callers check
            raise RuntimeError("no spool")
        pending = self.pending  # queued if it `fits`, inlined: this runs in every enqueue
        queued = not journal.spilled and (
            pending == 0
            or (pending < self.max_queued and self.pending_bytes + size <= self.max_queued_bytes)
        )
        failed = journal.append(record, queued)
        if failed is not None:
            return False, self.drop(event, spool=failed)
        if queued:
            return self.add(event, size), None
        # No wake-up for a spilled event: the queue is full, and the writer reads the spool
        # back once its next batch is written (feed_room).
        self.enqueued += 1
        return False, None

    def feed_room(self) -> tuple[int, int, bool] | None:
        """How many spooled events (and bytes) to read back into the queue now, if any, and
        whether the queue is empty (`Journal.read`)."""
        journal = self.journal
        if journal is None or not journal.spilled or self.feed_blocked or journal.closed:
            return None
        if len(self.queue) >= self.batch_size or self.pending >= self.max_queued:
            return None
        empty = self.pending == 0
        room = self.max_queued_bytes - self.pending_bytes
        if room <= 0:
            return None
        return min(self.batch_size, self.max_queued - self.pending), room, empty

    def fed(self, reading: Reading) -> None:
        """Queue the events read back from the spool (they count as enqueued already)."""
        journal = self.journal
        if journal is None or journal.closed:
            return
        if not journal.commit(reading):  # nothing fitted: wait until a batch is done
            self.feed_blocked = bool(journal.spilled)
            return
        events = reading.events
        # Records found damaged (or unreadable) were enqueued: they are given up, taken and
        # done at once, or flush() would wait for them (and the writer spin) forever.
        lost = reading.consumed - len(events)
        self.taken += lost
        self.done += lost
        if not events:
            return
        queue = self.queue
        now = time.monotonic()
        if not queue:
            self.oldest = now - self.flush_interval  # due now: more may wait
        queue.extend(events)
        self.arrivals.extend(repeat(now, len(events)))
        self.pending += len(events)
        self.pending_bytes += sum(event.size_bytes for event in events)

    def fits(self, size: int) -> bool:
        # One event always fits an empty queue, however large, so nothing waits forever.
        return self.pending == 0 or (
            self.pending < self.max_queued and self.pending_bytes + size <= self.max_queued_bytes
        )

    def add(self, event: NewEvent, size: int) -> bool:
        """Queue the event; return True when the writer should wake up now.

        That is when the queue was empty (the writer sleeps without a deadline then, and
        must start the ``flush_interval`` clock) or enough wait to start a batch.
        """
        queue = self.queue
        first = not queue
        now = time.monotonic()
        if first:
            self.oldest = now
        queue.append(event)
        self.arrivals.append(now)
        self.pending += 1
        self.pending_bytes += size
        self.enqueued += 1
        return first or len(queue) == self.start_at

    def drop(self, event: NewEvent, *, spool: str = "") -> _Dead:
        """Count a dropped event; return it with its error, to report without the lock."""
        self.dropped += 1
        dead: _Dead = [(event, self._drop_error(event, spool))]
        self.note(dead)
        return dead

    def _drop_error(self, event: NewEvent, spool: str) -> QueueFullError:
        if spool:
            message = (
                f"event {event.id} was dropped: {spool}, because the database has been "
                "down or slower than the producers for long; raise Spool(max_bytes=...), "
                "free disk space, or check the database"
            )
        else:
            message = (
                f"event {event.id} was dropped: the writer's queue held {self.pending} events "
                f"({self.pending_bytes} bytes), at its bound, because the database is down or "
                "slower than the producers; raise max_queued / max_queued_bytes, or use "
                "when_full='block' with a longer block_timeout"
            )
        return QueueFullError(message, event=event)

    def wait_time(self) -> float | None:
        """Seconds the writer may sleep before a batch is due; None: due now; inf: idle.

        Re-offers the events set aside for a missing partition whose time has come first.
        """
        if self.held:
            self.reoffer(time.monotonic())
        if self.closing or self.flush_target > self.taken or len(self.queue) >= self.start_at:
            return None
        if self.journal is not None and self.feed_room() is not None:
            return None  # spooled events to read back
        if not self.queue:
            if self.held:
                return max(0.001, min(held.due for held in self.held) - time.monotonic())
            return float("inf")
        left = self.oldest + self.flush_interval - time.monotonic()
        return None if left <= 0 else left

    def take(self) -> list[NewEvent]:
        queue = self.queue
        count = min(len(queue), self.batch_size)
        batch = [queue.popleft() for _ in range(count)]
        arrivals = self.arrivals
        self.inflight_since = arrivals[0]
        for _ in range(count):
            arrivals.popleft()
        self.taken += count
        if queue:  # the next batch is due flush_interval after its first event arrived
            self.oldest = arrivals[0]
        self.inflight = batch
        return batch

    def settle(
        self,
        batch: list[NewEvent],
        outcome: Outcome | None,
        error: BaseException | None,
        seconds: float,
    ) -> _Dead:
        """Count a finished batch; return what was not written, to report without the lock.

        ``seconds`` is how long its write took, recorded for a write that finished.

        A batch that `abandon` already reported (close gave up on it) is not counted again,
        whatever its write did: no event is ever both written and unwritten.
        """
        if self.inflight is not batch:
            return []
        self.inflight = None
        if self.journal is not None:
            self.feed_blocked = False
            if outcome is not None or isinstance(error, Exception):
                self.journal.ack(len(batch))  # written, or given to the hook
            else:  # interrupted: the events stay on the spool, and so does all after them
                self.journal.pinned = True
                self.release(batch)
                return []
        dead: _Dead
        if outcome is not None:
            self.batch_times.record(seconds)
            self.written += outcome.inserted + outcome.duplicates
            self.duplicates += outcome.duplicates
            dead, held = self.hold(batch, outcome.dead)
            if held:  # still pending: not released, not done
                batch = [event for event in batch if id(event) not in held]
            self.dead_lettered += len(dead)
        elif isinstance(error, Exception):  # a bug in the writer: not the data's fault
            dead = [
                (event, write_error(event, Reason.UNEXPECTED, error, attempts=1)) for event in batch
            ]
            self.dead_lettered += len(dead)
        else:  # cancelled or interrupted mid-write
            dead = [(event, _closed_error(event, error, in_flight=True)) for event in batch]
            self.unwritten += len(dead)
        if outcome is None and self.missing:  # given up: none of them waits any more
            for event in batch:
                self.missing.pop(event.id, None)
        self.release(batch)
        self.note(dead)
        return dead

    def spool_waiting(self) -> bool:
        """Whether spooled events wait to be read back (the writer must not stop yet)."""
        journal = self.journal
        return (
            journal is not None
            and journal.spilled > 0
            and not self.feed_blocked
            and not journal.closed  # closed by close(): they stay there for the next writer
        )

    def release(self, batch: list[NewEvent]) -> None:
        self.pending -= len(batch)
        self.pending_bytes -= sum(event.size_bytes for event in batch)
        self.done += len(batch)

    def abandon(self, *, never_started: str | None = None) -> _Dead:
        """Give up on the batch being written and the queue (the writer is closing for good).

        ``never_started``: the writer's class name when it was closed without being started.

        Returns:
            Each event with its `WriterClosedError`, to report without the lock.
        """
        inflight = self.inflight or []
        self.inflight = None
        queued = list(self.queue)
        self.queue.clear()
        self.arrivals.clear()
        self.taken += len(queued)
        queued.extend(held.event for held in self.held)  # taken already
        self.held.clear()
        self.missing.clear()
        self.release(inflight)
        self.release(queued)
        if self.journal is not None:  # they stay on the spool for the next writer
            left = self.journal.spilled  # on disk only: given up as well, for flush()
            self.taken += left
            self.done += left
            self.journal.close()
            return []
        self.unwritten += len(inflight) + len(queued)
        dead: _Dead = [(event, _closed_error(event, None, in_flight=True)) for event in inflight]
        dead.extend(
            (event, _closed_error(event, None, in_flight=False, never_started=never_started))
            for event in queued
        )
        self.note(dead)
        return dead

    def hold(self, batch: list[NewEvent], dead: _Dead) -> tuple[_Dead, set[int]]:
        """Set aside the events of a written batch that failed for a missing partition.

        Partition maintenance may be late: each such event is re-offered, in a later batch
        behind the events queued meanwhile, for ``missing_partition_timeout`` seconds, then
        dead-lettered with the fix named. Not with a spool (the batch is acknowledged on
        it as a whole) or while closing: those are dead-lettered at once.

        Returns:
            The events to dead-letter now, and the ``id()`` of each event set aside.
        """
        missing = self.missing
        limit = self.missing_partition_timeout
        held: set[int] = set()
        given_up = dead
        if dead and limit > 0 and self.journal is None:
            now = time.monotonic()
            given_up = []
            for event, error in dead:
                if is_missing_partition(error.__cause__ or error):
                    since, tries, arrived = missing.get(event.id, (now, 0, self.inflight_since))
                    if not self.closing and now - since < limit:
                        missing[event.id] = (since, tries + 1, arrived)
                        self.held.append(_Held(event, since, tries + 1, now, limit))
                        held.add(id(event))
                        self.count_retry(error, False)
                        continue
                    error = _partition_error(event, error, now - since)
                given_up.append((event, error))
        if missing:  # written or given up this time: forget when they first failed
            for event in batch:
                if id(event) not in held:
                    missing.pop(event.id, None)
        return given_up, held

    def reoffer(self, now: float) -> None:
        """Queue again the events set aside whose time has come (all of them when closing)."""
        due = [held for held in self.held if self.closing or held.due <= now]
        if not due:
            return
        self.held = [held for held in self.held if not (self.closing or held.due <= now)]
        queue = self.queue
        if not queue:
            self.oldest = now - self.flush_interval  # due now
        queue.extend(held.event for held in due)
        self.arrivals.extend(repeat(now, len(due)))
        self.taken -= len(due)  # they will be taken again

    def note(self, dead: _Dead) -> None:
        """Keep the error of the last event given up on, for `stats`."""
        if dead:
            self.last_error = LastError.of(dead[-1][1], retried=False)

    def count_write_retry(self, error: BaseException, read_only: bool) -> None:
        """Count a retry of the batch being written, unless `abandon` gave up on it: a close
        that timed out may land between a failed attempt and its retry."""
        if self.inflight is not None:
            self.count_retry(error, read_only)

    def count_retry(self, error: BaseException, read_only: bool) -> None:
        self.retried += 1
        self.read_only_retries += read_only
        self.last_error = LastError.of(error, retried=True)


def _partition_error(event: NewEvent, error: EventWriteError, waited: float) -> EventWriteError:
    """The refusal of an event with no partition, once the writer stopped retrying it."""
    retried = (
        f" The buffered writer retried it for {waited:.0f} s (missing_partition_timeout), "
        "in case partition maintenance was late; replaying it (write_events) once the "
        "partition exists is safe"
        if waited > 0
        else ""
    )
    given = EventWriteError(f"{error}.{retried}", event=event, sqlstate=error.sqlstate)
    given.__cause__ = error.__cause__
    return given


def _closed_error(
    event: NewEvent,
    cause: BaseException | None,
    *,
    in_flight: bool,
    never_started: str | None = None,
) -> WriterClosedError:
    if never_started is not None:
        using = "async with" if never_started.startswith("Async") else "with"
        message = (
            f"event {event.id} was not written: the {never_started} was closed without "
            "being started, so nothing wrote its queue; call start() before enqueueing, or "
            f"use the writer as a context manager ({using} {never_started}(...) as writer)"
        )
    elif in_flight:
        message = (
            f"event {event.id} may not have been written: the writer closed while its batch "
            "was being written (the database is down, slow or unreachable), so its commit "
            "may or may not have happened; replaying it with write_events() is safe, since "
            "ids already stored are skipped. Give close() a longer timeout"
        )
    else:
        message = (
            f"event {event.id} was not written: the writer closed before the database "
            "accepted it; give close() a longer timeout, or check the database"
        )
    error = WriterClosedError(message, event=event)
    error.__cause__ = cause
    return error


def _not_started(name: str) -> WriterNotStartedError:
    return WriterNotStartedError(
        f"{name}.flush() was called before start(): no writer is running, so it would wait "
        f"forever; call start() first (or use the writer as a context manager). Events "
        "enqueued before start() are written once it starts"
    )


def _positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name}={value!r} is not valid; use an int >= 1")


def check_seconds(name: str, value: object, *, allow_none: bool, finite: bool = False) -> None:
    """Refuse a number of seconds that is not ``>= 0`` (or None, where ``allow_none``; or
    past what a thread can wait, 292 years, where ``finite``)."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not value >= 0
        or (finite and value > threading.TIMEOUT_MAX)
    ):
        extra = ", or None to wait without limit" if allow_none else ""
        kind = " (finite)" if finite else ""
        raise ConfigurationError(f"{name}={value!r} is not valid; use seconds >= 0{kind}{extra}")


def check_wait(name: str, value: object) -> float | None:
    """A wait's limit: seconds ``>= 0``, or None for no limit (what infinity means too)."""
    check_seconds(name, value, allow_none=True)
    return None if value is None else no_limit_past_max(cast("float", value))


def no_limit_past_max(seconds: float) -> float | None:
    """None (no limit) for a wait longer than the thread locks take (292 years, infinity),
    which would raise `OverflowError` there, else ``seconds``."""
    return None if seconds > threading.TIMEOUT_MAX else seconds


class BufferedWriter(Generic[KeyT]):
    """A background thread that writes queued events in batches by binary COPY.

    `enqueue` checks the event in the caller (bad input raises there, never in the thread)
    and queues it. The thread writes a batch when ``batch_size`` events are queued (or, when
    it is idle, 1,000 of them: a burst does not wait for a full batch) or the oldest has
    waited ``flush_interval`` seconds, with the idempotent retries and bad-row isolation of
    `write_events`. Nothing is dropped silently: every event that is not
    written goes to ``on_dead_letter(event, error)`` (or the ``eventlog_persist`` logger)
    and is counted in `counters`.

    Back-pressure: the queue holds at most ``max_queued`` events and ``max_queued_bytes``
    (the batch being written included). When it is full, because the database is down or
    slower than the producers, ``when_full="block"`` (the default) makes `enqueue` wait up to
    ``block_timeout`` seconds for room, which slows producers to what the database takes
    without losing events during short outages; past the timeout the event is dropped and
    reported (`QueueFullError`), so a request never hangs on the log. ``"drop_newest"``
    drops and reports at once, for request paths that must never wait.

    Transient errors (a lost connection, a restart, a failover, a database that accepts only
    reads, a lock held past ``lock_timeout``) are retried on a new connection with
    `BUFFERED_RETRY`, until the database is back, unless ``retry`` says otherwise. The
    first writer started registers an `atexit` hook that closes every writer of the process
    together, so a process that exits normally writes what is queued first (up to each
    writer's ``exit_timeout`` seconds, all at once).

    Args:
        model: The host's ``EventLog`` model.
        target: A libpq conninfo, a URL of any PostgreSQL driver, or a SQLAlchemy
            ``Engine`` (its URL is used), as in `write_events`; the thread opens its own
            psycopg connection and reopens it after a loss.
        batch_size: Most events per COPY transaction.
        flush_interval: Most seconds an event waits in the queue before a batch is written;
            ``math.inf``: only batches of ``batch_size`` (or 1,000) events, `flush` and
            `close` write.
        max_queued: Bound on queued events.
        max_queued_bytes: Bound on the queued events' `NewEvent.size_bytes`.
        when_full: ``"block"`` or ``"drop_newest"``, see above.
        block_timeout: Most seconds `enqueue` waits under ``"block"``; None (or infinity)
            waits forever.
        retry: How transient errors are retried; when it gives up, the batch goes to
            ``on_dead_letter`` with `RetriesExhaustedError`.
        on_dead_letter: Called with each event not written and its `EventWriteError`
            (`QueueFullError`, `WriterClosedError`, `RetriesExhaustedError`, or the
            database's refusal with the driver error as ``__cause__``); exceptions it raises
            are logged. It runs without the writer's lock, so it may read `counters`, but it
            may run in several threads at once (the writer's thread; producers, for drops;
            the thread calling `close`), so it must be thread-safe.
        payload_policy: How payloads are converted, redacted and capped.
        field_rules: Which ``event_type`` and column values are allowed.
        spool: Journal every event on local disk before `enqueue` returns (`Spool`), so
            that a killed process loses nothing: a writer started later on the same
            directory writes what is left, of its own process and of processes that are
            gone. A full queue then spills to the spool instead of waiting or dropping
            (``when_full`` and ``block_timeout`` apply to nothing), and events that
            `close` gives up on stay on the spool instead of going to ``on_dead_letter``.
            Opened (locked, and earlier writers' spools adopted) by the constructor.
        exit_timeout: Seconds the exit hook waits for the queue to be written (finite).
        handle_sigterm: Close the writer on SIGTERM too (``docker stop``, Kubernetes): the
            first writer started in the main thread installs a handler that closes every
            writer, then lets the signal end the process; a handler the host installed
            before runs instead (its normal exit runs the exit hook). See docs/writing.md.
        connect_timeout: Seconds to wait for a new connection; see `write_events`.
        tcp_user_timeout: Seconds sent data may stay unacknowledged; see `write_events`.
        lock_timeout: Seconds one attempt waits for a row lock; see `write_events`.
        missing_partition_timeout: Partitioned layout: seconds an event whose ``created_at``
            has no partition is retried (partition maintenance may be late) before it goes
            to ``on_dead_letter`` with the fix named; 0 gives up at once. It is set aside
            and offered again in later batches, behind the events queued meanwhile, so it
            never holds up the queue; `flush` waits for it. ``math.inf`` retries it until
            the writer closes. Without a spool only: with one, such an event is given up at
            once. Default 60.

            .. versionadded:: 0.3.0

    Raises:
        ConfigurationError: An argument is not valid.
        SpoolInUseError: Another writer of this process uses the same ``spool`` directory.

    .. versionchanged:: 0.3.0
       A ``block_timeout`` past what a thread can wait (``math.inf``) waits without limit,
       as None does; ``exit_timeout`` must be finite. An idle writer starts a batch once
       1,000 events wait.
    """

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        target: Target,
        *,
        batch_size: int = 5000,
        flush_interval: float = 0.5,
        max_queued: int = 100_000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        when_full: WhenFull = "block",
        block_timeout: float | None = 1.0,
        retry: RetryPolicy = BUFFERED_RETRY,
        on_dead_letter: DeadLetterHook | None = None,
        payload_policy: PayloadPolicy = DEFAULT_POLICY,
        field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
        spool: Spool | None = None,
        exit_timeout: float = 10.0,
        handle_sigterm: bool = True,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        tcp_user_timeout: float | None = DEFAULT_TCP_USER_TIMEOUT,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        missing_partition_timeout: float = DEFAULT_MISSING_PARTITION_TIMEOUT,
    ) -> None:
        # The exit hook must end: a process that cannot exit is killed, and its queue lost.
        check_seconds("exit_timeout", exit_timeout, allow_none=False, finite=True)
        if not isinstance(handle_sigterm, bool):
            raise ConfigurationError(
                f"handle_sigterm={handle_sigterm!r} is not valid; use True or False"
            )
        check_timeout("connect_timeout", connect_timeout)
        check_timeout("tcp_user_timeout", tcp_user_timeout)
        check_timeout("lock_timeout", lock_timeout)
        self._state: _State[KeyT] = _State(
            model,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queued=max_queued,
            max_queued_bytes=max_queued_bytes,
            when_full=when_full,
            block_timeout=block_timeout,
            retry=retry,
            on_dead_letter=on_dead_letter,
            payload_policy=payload_policy,
            field_rules=field_rules,
            spool=spool,
            missing_partition_timeout=missing_partition_timeout,
        )
        self._connector = Connector(
            target,
            api="BufferedWriter",
            connect_timeout=connect_timeout,
            tcp_user_timeout=tcp_user_timeout,
            lock_timeout=lock_timeout,
        )
        self._exit_timeout = exit_timeout
        self._handle_sigterm = handle_sigterm
        self._restart = False  # set in a forked child whose parent had started the writer
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None
        self._hand_over_at = 0.0  # see enqueue
        _shutdown.reset_after_fork(self)

    # -- lifecycle --

    def start(self) -> Self:
        """Start the writer thread and register the exit hooks; returns the writer.

        The exit hooks close the writer (within ``exit_timeout``) when the process exits
        normally, and, unless ``handle_sigterm=False``, on SIGTERM; see the class docs.
        """
        with self._lock:
            if self._state.closing:
                raise WriterClosedError(
                    "this BufferedWriter is closed; create a new one", event=None
                )
            self._restart = False
            if self._thread is not None:
                return self
            self._thread = threading.Thread(
                target=self._run, name="eventlog-buffered-writer", daemon=True
            )
            self._thread.start()
        _shutdown.watch(self, sigterm=self._handle_sigterm)
        return self

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child: no thread, no connection, no parent's events."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._connector.forget()
        self._state.forget()
        self._restart = self._thread is not None and not self._state.closing
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _begin_close(self) -> None:
        """Have the thread write what is queued now (the first step of `close`)."""
        with self._lock:
            self._state.closing = True
            self._wake.notify()
            self._room.notify_all()

    def _close_since(self, started: float) -> None:
        """`close` within what is left of ``exit_timeout`` since ``started``."""
        self.close(max(0.0, self._exit_timeout - (time.monotonic() - started)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is written or given up.

        Args:
            timeout: Most seconds to wait; None waits as long as it takes.

        Returns:
            True if all of them were handled in time.

        Raises:
            WriterNotStartedError: `start` was not called yet.
            ConfigurationError: ``timeout`` is not seconds >= 0 or None.

        .. versionchanged:: 0.3.0
           A ``timeout`` that is not seconds >= 0 or None raises `ConfigurationError`;
           infinity waits without limit, as None does.
        """
        timeout = check_wait("timeout", timeout)
        if self._restart:
            self.start()
        state = self._state
        with self._lock:
            if self._thread is None and not state.closing:
                raise _not_started("BufferedWriter")
            target = state.enqueued
            if state.done >= target:
                return True
            state.flush_target = max(state.flush_target, target)
            self._wake.notify()
            return self._room.wait_for(lambda: state.done >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> WriterCounters:
        """Stop taking events, write what is queued, stop the thread.

        Events still unwritten after ``timeout`` seconds (the database is down, or a network
        call hangs) are given to ``on_dead_letter`` with `WriterClosedError` and counted as
        ``unwritten``: the queued ones, and the batch being written. That batch's commit
        may still happen afterwards; it is not counted again (as written or otherwise), and
        replaying its events with `write_events` is safe. Closing twice is harmless.

        Args:
            timeout: Most seconds to wait for the queue to be written; None waits as long
                as it takes.

        Returns:
            The final counters.

        Raises:
            ConfigurationError: ``timeout`` is not seconds >= 0 or None; the writer is left
                as it was.

        .. versionchanged:: 0.3.0
           A ``timeout`` that is not seconds >= 0 or None raises `ConfigurationError` before
           anything changes; infinity waits without limit, as None does.
        """
        timeout = check_wait("timeout", timeout)
        _shutdown.unwatch(self)
        state = self._state
        self._begin_close()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                self._abort.set()  # stop retrying; the thread closes its connection on exit
        with self._lock:
            # Never started, or stuck in a network call: give up on what is left.
            dead = state.abandon(never_started=None if thread else "BufferedWriter")
            self._room.notify_all()  # flushes waiting for what was just given up
        report_dead_letters(state.on_dead_letter, dead)
        return self.counters

    @property
    def counters(self) -> WriterCounters:
        """The counters now."""
        with self._lock:
            return self._state.counters()

    @property
    def stats(self) -> WriterStats:
        """The counters, queue, batch write times and last error now, as one snapshot.

        .. versionadded:: 0.3.0
        """
        with self._lock:
            return self._state.stats()

    # -- request path --

    @overload
    def enqueue(self, event: NewEvent, /) -> NewEvent: ...
    @overload
    def enqueue(self, /, **fields: Unpack[EventFields[KeyT]]) -> NewEvent: ...
    def enqueue(self, event: NewEvent | None = None, /, **fields: Any) -> NewEvent:
        """Queue an event: one built with `new_event`, or its fields as keyword arguments.

        Returns:
            The queued event (its ``id`` is final). Under back-pressure it may have been
            dropped instead: then it went to ``on_dead_letter`` and ``counters.dropped``.

        Raises:
            ValidationError: A field or key is not acceptable (nothing is queued).
            PayloadError: The payload cannot be stored (nothing is queued).
            WriterClosedError: The writer is closed.
        """
        event = self._state.builder.given(event, cast("EventFields[KeyT]", fields))
        if self._restart:
            self.start()
        state = self._state
        if state.inflight is not None and (now := time.monotonic()) >= self._hand_over_at:
            # The writer thread gives the GIL up at each round trip, and a producer that
            # never blocks hands it back only when the interpreter's switch interval (5 ms)
            # runs out. Offer it every _HAND_OVER_INTERVAL while a batch is written.
            self._hand_over_at = now + _HAND_OVER_INTERVAL
            time.sleep(0)
        size = event.size_bytes
        record = None if state.journal is None else encode_event(event)
        with self._lock:
            if state.closing:
                raise WriterClosedError(
                    f"cannot enqueue event {event.id}: the writer is closed; record it with "
                    "EventWriter.record_detached() or a new writer",
                    event=event,
                )
            if record is not None:  # with a spool: on disk before returning
                wake, dropped = state.spool_add(event, record, size)
                if wake:
                    self._wake.notify()
                if dropped is None:
                    return event
                dead = dropped
            elif state.fits(size) or (
                state.when_full == "block"
                and self._room.wait_for(
                    lambda: state.closing or state.fits(size), state.block_timeout
                )
            ):
                if state.closing:
                    raise WriterClosedError(
                        f"cannot enqueue event {event.id}: the writer closed while waiting",
                        event=event,
                    )
                if state.add(event, size):
                    self._wake.notify()
                return event
            else:
                dead = state.drop(event)
        report_dead_letters(state.on_dead_letter, dead)
        return event

    # -- the thread --

    def _run(self) -> None:
        state = self._state
        try:
            while True:
                try:
                    if state.journal is not None:
                        self._feed_spool()
                    with self._lock:
                        while (wait := state.wait_time()) is not None:
                            self._wake.wait(no_limit_past_max(wait))
                        if self._abort.is_set() or not state.queue:
                            if state.closing and (
                                self._abort.is_set() or not state.spool_waiting()
                            ):
                                return
                            continue
                        if state.feed_room() is not None:
                            continue  # fill the queue from the spool before taking a batch
                        batch = state.take()
                    self._write(batch)
                except Exception:  # a bug of the package's; keep the thread alive
                    logger.exception("unexpected error in the buffered event writer")
                    with self._lock:
                        state.errors += 1
        finally:
            self._connector.close()

    def _feed_spool(self) -> None:
        """Read spooled events back into the queue; the file reads run without the lock."""
        state = self._state
        with self._lock:
            room = state.feed_room()
            journal = state.journal
        if room is None or journal is None:
            return
        reading = journal.read(*room)
        with self._lock:
            state.fed(reading)
            self._room.notify_all()

    def _write(self, batch: list[NewEvent]) -> None:
        state = self._state
        outcome: Outcome | None = None
        error: BaseException | None = None
        started = time.monotonic()
        try:
            outcome = deliver(
                self._connector,
                state.builder.table,
                batch,
                state.retry,
                stop=self._abort,
                on_retry=self._count_retry,
            )
        except BaseException as exc:
            error = exc
            raise
        finally:
            seconds = time.monotonic() - started
            with self._lock:
                dead = state.settle(batch, outcome, error, seconds)
                self._room.notify_all()
            report_dead_letters(state.on_dead_letter, dead)

    def _count_retry(self, error: BaseException, read_only: bool) -> None:
        with self._lock:
            self._state.count_write_retry(error, read_only)


class AsyncBufferedWriter(Generic[KeyT]):
    """The asyncio twin of `BufferedWriter`: a task on the running loop writes the batches.

    Same arguments and behavior as `BufferedWriter`, with an ``AsyncEngine``, a URL of any
    PostgreSQL driver or a conninfo as ``target``; `enqueue`, `flush` and `close` are
    coroutines and must run on the writer's loop. ``when_full="block"`` awaits room without
    blocking the loop. There is no exit hook (the loop is gone by then): close the writer in
    the application's shutdown (lifespan).

    Raises:
        ConfigurationError: An argument is not valid.
    """

    def __init__(
        self,
        model: type[EventLogMixin[KeyT]],
        target: AsyncTarget,
        *,
        batch_size: int = 5000,
        flush_interval: float = 0.5,
        max_queued: int = 100_000,
        max_queued_bytes: int = 64 * 1024 * 1024,
        when_full: WhenFull = "block",
        block_timeout: float | None = 1.0,
        retry: RetryPolicy = BUFFERED_RETRY,
        on_dead_letter: DeadLetterHook | None = None,
        payload_policy: PayloadPolicy = DEFAULT_POLICY,
        field_rules: EventFieldRules = DEFAULT_FIELD_RULES,
        spool: Spool | None = None,
        connect_timeout: float | None = DEFAULT_CONNECT_TIMEOUT,
        tcp_user_timeout: float | None = DEFAULT_TCP_USER_TIMEOUT,
        lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT,
        missing_partition_timeout: float = DEFAULT_MISSING_PARTITION_TIMEOUT,
    ) -> None:
        check_timeout("connect_timeout", connect_timeout)
        check_timeout("tcp_user_timeout", tcp_user_timeout)
        check_timeout("lock_timeout", lock_timeout)
        self._state: _State[KeyT] = _State(
            model,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queued=max_queued,
            max_queued_bytes=max_queued_bytes,
            when_full=when_full,
            block_timeout=block_timeout,
            retry=retry,
            on_dead_letter=on_dead_letter,
            payload_policy=payload_policy,
            field_rules=field_rules,
            spool=spool,
            missing_partition_timeout=missing_partition_timeout,
        )
        self._connector = AsyncConnector(
            target,
            api="AsyncBufferedWriter",
            connect_timeout=connect_timeout,
            tcp_user_timeout=tcp_user_timeout,
            lock_timeout=lock_timeout,
        )
        # The task and the producers all run on the loop; the lock only makes `counters` and
        # `stats` safe to read from another thread (a metrics scrape).
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._abort = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        _shutdown.reset_after_fork(self)

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child: the parent's queue and spool are not the child's."""
        self._lock = threading.Lock()
        self._connector.forget()
        self._state.forget()

    async def start(self) -> Self:
        """Start the writer task on the running loop; returns the writer."""
        if self._state.closing:
            raise WriterClosedError(
                "this AsyncBufferedWriter is closed; create a new one", event=None
            )
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="eventlog-buffered-writer"
            )
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def counters(self) -> WriterCounters:
        """The counters now."""
        with self._lock:
            return self._state.counters()

    @property
    def stats(self) -> WriterStats:
        """The counters, queue, batch write times and last error now, as one snapshot.

        .. versionadded:: 0.3.0
        """
        with self._lock:
            return self._state.stats()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is written or given up.

        Returns:
            True if all of them were handled in time.

        Raises:
            WriterNotStartedError: `start` was not called yet.
            ConfigurationError: ``timeout`` is not seconds >= 0 or None.

        .. versionchanged:: 0.3.0
           A ``timeout`` that is not seconds >= 0 or None raises `ConfigurationError`;
           infinity waits without limit, as None does.
        """
        timeout = check_wait("timeout", timeout)
        state = self._state
        if self._task is None and not state.closing:
            raise _not_started("AsyncBufferedWriter")
        target = state.enqueued
        if state.done >= target:
            return True
        state.flush_target = max(state.flush_target, target)
        self._wake.set()
        return await self._wait_room(lambda: state.done >= target, timeout)

    async def close(self, timeout: float | None = 30.0) -> WriterCounters:
        """Stop taking events, write what is queued, stop the task; see `BufferedWriter.close`.

        After ``timeout`` the task is cancelled. A write it cannot end (a server hung
        mid-statement ignores the cancel request too) is cancelled again a second later,
        which closes its connection: `close` returns within about ``timeout`` + 1 s.

        Returns:
            The final counters.

        Raises:
            ConfigurationError: ``timeout`` is not seconds >= 0 or None; the writer is left
                as it was.

        .. versionchanged:: 0.3.0
           Returns within about ``timeout`` + 1 s on a server hung mid-statement (was up to
           10 s more). A ``timeout`` that is not seconds >= 0 or None raises
           `ConfigurationError` before anything changes; infinity waits without limit.
        """
        timeout = check_wait("timeout", timeout)
        state = self._state
        state.closing = True
        self._wake.set()
        self._room.set()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                self._abort.set()
        # Give up on the queue and the batch being written before cancelling the task, so
        # they count as unwritten once, whatever the task's last write did.
        with self._lock:
            dead = state.abandon(never_started=None if task else "AsyncBufferedWriter")
        self._room.set()
        report_dead_letters(state.on_dead_letter, dead)
        if task is not None and not task.done():
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_CANCEL_GRACE)
            if not done:  # a server that hangs mid-statement ignores the cancel request too
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task  # its exit closes the connection; a writer never started has none
        return self.counters

    @overload
    async def enqueue(self, event: NewEvent, /) -> NewEvent: ...
    @overload
    async def enqueue(self, /, **fields: Unpack[EventFields[KeyT]]) -> NewEvent: ...
    async def enqueue(self, event: NewEvent | None = None, /, **fields: Any) -> NewEvent:
        """Queue an event: one built with `new_event`, or its fields as keyword arguments.

        Returns:
            The queued event. Under back-pressure it may have been dropped instead: then it
            went to ``on_dead_letter`` and ``counters.dropped``.

        Raises:
            ValidationError: A field or key is not acceptable (nothing is queued).
            PayloadError: The payload cannot be stored (nothing is queued).
            WriterClosedError: The writer is closed.
        """
        event = self._state.builder.given(event, cast("EventFields[KeyT]", fields))
        state = self._state
        size = event.size_bytes
        if state.closing:
            raise WriterClosedError(
                f"cannot enqueue event {event.id}: the writer is closed; record it with "
                "EventWriter.arecord_detached() or a new writer",
                event=event,
            )
        if state.journal is not None:  # with a spool: on disk before returning
            record = encode_event(event)
            with self._lock:
                wake, dropped = state.spool_add(event, record, size)
            if wake:
                self._wake.set()
            if dropped:
                report_dead_letters(state.on_dead_letter, dropped)
            return event
        if not state.fits(size):
            if state.when_full == "drop_newest" or not await self._wait_room(
                lambda: state.closing or state.fits(size), state.block_timeout
            ):
                with self._lock:
                    dead = state.drop(event)
                report_dead_letters(state.on_dead_letter, dead)
                return event
            if state.closing:
                raise WriterClosedError(
                    f"cannot enqueue event {event.id}: the writer closed while waiting",
                    event=event,
                )
        with self._lock:
            wake = state.add(event, size)
        if wake:
            self._wake.set()
        return event

    async def _wait_room(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not ready():
            self._room.clear()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), left)
        return True

    async def _run(self) -> None:
        state = self._state
        try:
            while True:
                try:
                    if (journal := state.journal) is not None:
                        room = state.feed_room()
                        if room is not None:  # small local file reads, on the loop
                            reading = journal.read(*room)
                            with self._lock:
                                state.fed(reading)
                    while (wait := state.wait_time()) is not None:
                        self._wake.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), no_limit_past_max(wait))
                    if self._abort.is_set() or not state.queue:
                        if state.closing and (self._abort.is_set() or not state.spool_waiting()):
                            return
                        continue
                    if state.feed_room() is not None:
                        continue  # fill the queue from the spool before taking a batch
                    with self._lock:
                        batch = state.take()
                    await self._write(batch)
                except Exception:  # a bug of the package's; keep the task alive
                    logger.exception("unexpected error in the buffered event writer")
                    with self._lock:
                        state.errors += 1
        finally:
            await self._connector.close()

    async def _write(self, batch: list[NewEvent]) -> None:
        state = self._state
        outcome: Outcome | None = None
        error: BaseException | None = None
        started = time.monotonic()
        try:
            outcome = await adeliver(
                self._connector,
                state.builder.table,
                batch,
                state.retry,
                stop=self._abort,
                on_retry=self._count_retry,
            )
        except BaseException as exc:  # CancelledError too: the batch is settled either way
            error = exc
            raise
        finally:
            seconds = time.monotonic() - started
            with self._lock:
                dead = state.settle(batch, outcome, error, seconds)
            self._room.set()
            report_dead_letters(state.on_dead_letter, dead)

    def _count_retry(self, error: BaseException, read_only: bool) -> None:
        with self._lock:
            self._state.count_write_retry(error, read_only)
