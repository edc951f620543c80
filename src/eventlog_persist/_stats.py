"""What a buffered writer reports about itself: its counters and its stats snapshot."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from eventlog_persist._failures import server_text, sqlstate_of
from eventlog_persist.exceptions import EventWriteError

__all__ = ["RECENT_BATCHES", "BatchTimes", "LastError", "WriterCounters", "WriterStats"]

RECENT_BATCHES: Final = 100
"""How many of the latest batches the recent batch durations of `WriterStats` cover."""


@dataclass(frozen=True, slots=True)
class WriterCounters:
    """A snapshot of a buffered writer's counters.

    Attributes:
        written: Events stored (inserted, or found already stored by an idempotent retry).
        duplicates: Of ``written``, events that were already stored.
        retried: Transient failures that were retried.
        read_only_retries: Of ``retried``, the failures because the database accepted only
            reads: a failover in progress, or a writer pointed at a standby by mistake
            (also logged at ERROR level, at most every 30 s).
        dead_lettered: Events given up on while writing: refused by the database, past the
            retry policy, or failing unexpectedly (sent to the dead-letter hook).
        dropped: Events refused at enqueue because the queue stayed full (sent to the hook).
        unwritten: Events still queued or being written when `close` gave up waiting (sent
            to the hook). Those of the batch being written may in fact have committed.
        queued: Events enqueued and not yet written or given up, the batch being written
            included.
        queued_bytes: Their estimated size (`NewEvent.size_bytes`).
        errors: Unexpected errors inside the writer loop (logged; the loop went on).
        spilled: With a `Spool`: events on the spool only, not in memory, waiting to be
            read back into the queue (it was full, or an earlier writer left them); after
            `close`, the events left on the spool for the next writer. Not in ``queued``.
        replayed: With a `Spool`: events read back from the spools of earlier writers
            (this process's last writer, processes that are gone).
        spool_damaged: With a `Spool`: damaged records skipped (a torn tail left by a
            crash mid-write, a record whose checksum does not match; a damaged length or
            a block of zeros over several records counts once), each logged at ERROR.
    """

    written: int
    duplicates: int
    retried: int
    read_only_retries: int
    dead_lettered: int
    dropped: int
    unwritten: int
    queued: int
    queued_bytes: int
    errors: int
    spilled: int = 0
    replayed: int = 0
    spool_damaged: int = 0


@dataclass(frozen=True, slots=True)
class LastError:
    """The latest error a buffered writer met: a failed attempt, or an event given up on.

    The message never holds an event's content: it is the package's own message (which
    names the event by its id) or the database's primary message, without the row.

    Attributes:
        type: The exception's class name: the driver's (``"OperationalError"``) for a
            failed attempt that is retried, an `EventWriteError` subclass for an event given
            up on (``"QueueFullError"``, ``"RetriesExhaustedError"``, ...).
        sqlstate: The database's SQLSTATE code (e.g. ``"23503"``), or None when the
            database did not answer.
        message: What failed, in one line.
        at: When, in UTC.
        retried: Whether the write was retried (a transient failure), rather than an
            event given up on.

    .. versionadded:: 0.3.0
    """

    type: str
    sqlstate: str | None
    message: str
    at: datetime
    retried: bool

    @classmethod
    def of(cls, error: BaseException, *, retried: bool) -> LastError:
        """Describe ``error``: the error given with an event, or a failed attempt."""
        if isinstance(error, EventWriteError):
            message = " ".join(str(error).split())
        else:
            message = server_text(error)
        return cls(
            type=type(error).__name__,
            sqlstate=sqlstate_of(error),
            message=message,
            at=datetime.now(UTC),
            retried=retried,
        )


@dataclass(frozen=True, slots=True)
class WriterStats:
    """A snapshot of a buffered writer: its counters, its queue, its batches, its last error.

    Taken at once under the writer's lock, so its values agree with each other; safe to
    read from any thread (a metrics scrape), for the asyncio writer too.

    Attributes:
        counters: The `WriterCounters`; ``counters.queued`` and ``counters.queued_bytes``
            are the queue's depth and size.
        oldest_queued_age: Seconds the oldest event in memory (queued or being written) has
            waited since `enqueue` (since it was read back, for an event from a spool), or
            None when the queue is empty.
        batches: Batches whose write finished (stored, or refused and dead-lettered).
        batch_seconds_total: Their write times added up, retries and waits for the
            database included.
        last_batch_seconds: The write time of the latest batch, or None before the first.
        recent_batch_seconds_p50: The median write time of the latest `RECENT_BATCHES`
            (100) batches, or None before the first.
        recent_batch_seconds_max: The longest of them, or None before the first.
        last_error: The latest error, or None if there was none.

    .. versionadded:: 0.3.0
    """

    counters: WriterCounters
    oldest_queued_age: float | None
    batches: int
    batch_seconds_total: float
    last_batch_seconds: float | None
    recent_batch_seconds_p50: float | None
    recent_batch_seconds_max: float | None
    last_error: LastError | None


class BatchTimes:
    """The write times of a writer's batches (kept under the writer's lock)."""

    __slots__ = ("count", "last", "recent", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.last: float | None = None
        self.recent: deque[float] = deque(maxlen=RECENT_BATCHES)

    def record(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.last = seconds
        self.recent.append(seconds)

    def p50_and_max(self) -> tuple[float | None, float | None]:
        if not self.recent:
            return None, None
        ordered = sorted(self.recent)
        return ordered[(len(ordered) - 1) // 2], ordered[-1]
