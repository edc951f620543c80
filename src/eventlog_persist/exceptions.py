"""The exception hierarchy: one root, narrow subclasses."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventlog_persist._audit_seal import Seal
    from eventlog_persist._events import NewEvent

__all__ = [
    "AnchorError",
    "AuditError",
    "ConfigurationError",
    "ConsumerNotFoundError",
    "ConversionError",
    "EventLogError",
    "EventWriteError",
    "FeedDataLostError",
    "FeedError",
    "InvalidCursorError",
    "LeaseHeldError",
    "LeaseLostError",
    "MigrationSetupError",
    "PayloadError",
    "PurgeError",
    "QueueFullError",
    "RetriesExhaustedError",
    "SpoolInUseError",
    "StaleBatchError",
    "ValidationError",
    "WriterClosedError",
    "WriterNotStartedError",
]


class EventLogError(Exception):
    """Root of every error raised by eventlog_persist."""


class ConfigurationError(EventLogError, ValueError):
    """An argument or setting has a value the package cannot use."""


class MigrationSetupError(EventLogError):
    """The host's Alembic setup cannot run the eventlog branch (location, anchor, targets)."""


class ValidationError(EventLogError, ValueError):
    """An event field (event type, denormalized column) is not acceptable."""


class PayloadError(ValidationError):
    """A payload cannot be stored as JSONB.

    Attributes:
        path: Where in the payload the problem is, as a JSON-pointer-like string
            (``"/messages/3/content"``); ``""`` for the payload itself.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class EventWriteError(EventLogError):
    """An event was not written; the message names the event, the reason and the fix.

    Raised by the detached writes, and given to every dead-letter hook (and listed in
    `BulkResult.dead_lettered`), so a hook sees one type whatever the driver.

    Attributes:
        event: The event that was not written (None only when a closed writer refuses to
            start).
        sqlstate: The database's SQLSTATE code (e.g. ``"23503"``), when a database error is
            the reason; the driver's error itself is the ``__cause__``.
    """

    def __init__(
        self, message: str, *, event: NewEvent | None, sqlstate: str | None = None
    ) -> None:
        super().__init__(message)
        self.event = event
        self.sqlstate = sqlstate


class RetriesExhaustedError(EventWriteError):
    """A write kept failing with transient errors until the retry policy gave up.

    The last error is the ``__cause__``.
    """


class WriterClosedError(EventWriteError):
    """The writer is closed: it takes no new events, or closed before writing this one."""


class QueueFullError(EventWriteError):
    """The queue stayed full (the database is down or slow), so the event was dropped."""


class SpoolInUseError(EventLogError, RuntimeError):
    """Another writer of this process holds the spool; give each writer its own directory.

    .. versionadded:: 0.3.0
    """


class WriterNotStartedError(EventLogError, RuntimeError):
    """`flush` was called before `start`: no thread or task would ever write the queue."""


class InvalidCursorError(ValidationError):
    """A cursor is garbled, was altered, or belongs to another query."""


class PurgeError(EventLogError):
    """The ``purge`` command failed in the database (connection, lock, permission).

    The message says which step failed, the database's reason, and what to check; the
    original error is its ``__cause__``. Batches committed before the error stay deleted.
    """


class ConversionError(EventLogError):
    """`convert_to_partitioned` refused a table or failed a step.

    The message names the step, the reason and the fix; a database error is its
    ``__cause__``. Steps that completed stay done: running the conversion again resumes.

    .. versionadded:: 0.3.0
    """


class FeedError(EventLogError):
    """A feed consumer cannot go on; the subclass says why, the message how to fix it.

    .. versionadded:: 0.3.0
    """


class ConsumerNotFoundError(FeedError, LookupError):
    """The named consumer is not registered: call `EventFeed.register` first.

    .. versionadded:: 0.3.0
    """


class LeaseHeldError(FeedError):
    """Another worker holds the consumer's lease: this one stands by and tries again later.

    Attributes:
        owner: The worker that holds the lease; None when another worker's transaction was
            taking it at that moment (its name is not visible until that commits).
        lease_until: When its lease ends unless it renews it (each fetch and commit does);
            None with ``owner``.

    .. versionadded:: 0.3.0
    """

    def __init__(self, message: str, *, owner: str | None, lease_until: datetime | None) -> None:
        super().__init__(message)
        self.owner = owner
        self.lease_until = lease_until


class LeaseLostError(FeedError):
    """The lease passed to another worker since the batch was fetched.

    The checkpoint was not moved (the fencing that makes this safe): the batch is delivered
    again to the worker that holds the lease now. Stop processing it, and fetch again to
    find out whether this worker may go on.

    Attributes:
        owner: The worker that holds the lease now (None: released, nobody holds it).
        generation: The lease's generation now; the batch carried an older one.

    .. versionadded:: 0.3.0
    """

    def __init__(self, message: str, *, owner: str | None, generation: int) -> None:
        super().__init__(message)
        self.owner = owner
        self.generation = generation


class StaleBatchError(FeedError):
    """The batch, or a batch fetched after it, was committed already.

    The checkpoint is past the batch's start, so it was not moved again: moving it back
    would deliver events again. A host that retries a commit whose outcome it did not learn
    (the connection dropped during COMMIT) gets this when the first one took; with
    ``commit(batch, connection=...)`` its transaction must roll back, as the rows it derived
    are there already. Fetch the next batch.

    .. versionadded:: 0.3.0
    """


class FeedDataLostError(FeedError):
    """Retention removed events before this consumer (part) was delivered them.

    `purge_events` and `drop_partitions` mark every consumer part whose checkpoint had not
    passed an event they removed; its `EventFeed.fetch` then raises this, every time, rather
    than go on without those events. Reset the consumer to go on (``eventlog-persist feed
    reset``, or `EventFeed.unregister` and `EventFeed.register` with a ``start``); the
    message names the consumer, what was removed and the commands.

    Attributes:
        consumer: The consumer's name.
        part: Its part (0 unless the consumer is in parts).
        lost_events: How many events the part had not been delivered were removed.
        lost_before: The latest cutoff: the removed events were created before it.
        lost_at: When retention first removed such events.
        lost_by: Which retention removed them: ``purge_events``, ``drop_partitions`` or
            ``drop_partitions keep_detached``, comma-separated when several did.

    .. versionadded:: 0.3.0
    """

    def __init__(
        self,
        message: str,
        *,
        consumer: str,
        part: int,
        lost_events: int,
        lost_before: datetime | None,
        lost_at: datetime | None,
        lost_by: str | None,
    ) -> None:
        super().__init__(message)
        self.consumer = consumer
        self.part = part
        self.lost_events = lost_events
        self.lost_before = lost_before
        self.lost_at = lost_at
        self.lost_by = lost_by


class AuditError(EventLogError):
    """The audit's chain cannot go on in this database as it stands; the message names the fix.

    `seal_events` raises it when the database holds a transaction id (the chain's end, or an
    event's) that the server has not given yet: the database was restored logically
    (``pg_dump`` / ``pg_restore``) into another cluster, whose ids start again from a few
    hundred (docs/audit.md, "Restoring").
    Nothing is sealed.

    .. versionadded:: 0.3.0
    """


class AnchorError(EventLogError):
    """A seal was committed, but exporting its head (the anchor) failed.

    The seal is kept: export `seal`'s head (``seal.anchor``) by hand, or let the next
    seal's export cover it (each seal chains the ones before).

    Attributes:
        seal: The committed seal.

    .. versionadded:: 0.3.0
    """

    def __init__(self, message: str, *, seal: Seal) -> None:
        super().__init__(message)
        self.seal = seal
