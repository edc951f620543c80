"""Background writers: the request path only enqueues; a thread or task writes batches by COPY."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Generic, Literal, Self, TypeAlias

from typing_extensions import Unpack

from eventlog_persist.bulk import (
    AsyncTarget,
    Target,
    _adeliver,
    _AsyncConnector,
    _Connector,
    _deliver,
    _Outcome,
    _report,
)
from eventlog_persist.events import DeadLetterHook, EventFields, NewEvent
from eventlog_persist.exceptions import ConfigurationError, EventLogError
from eventlog_persist.model import EventLogMixin, KeyT
from eventlog_persist.payload import DEFAULT_POLICY, PayloadPolicy
from eventlog_persist.retry import RetryPolicy
from eventlog_persist.vocabulary import DEFAULT_FIELD_RULES, EventFieldRules
from eventlog_persist.writer import EventWriter

__all__ = [
    "BUFFERED_RETRY",
    "AsyncBufferedWriter",
    "BufferedWriter",
    "QueueFullError",
    "WhenFull",
    "WriterClosedError",
    "WriterCounters",
]

logger = logging.getLogger("eventlog_persist")

WhenFull: TypeAlias = Literal["block", "drop_newest"]
"""What `enqueue` does when the queue is at its bound; see `BufferedWriter`."""

BUFFERED_RETRY: Final = RetryPolicy(max_attempts=None, max_elapsed=None, max_delay=2.0)
"""The buffered writers' default: retry transient errors until the database is back."""


class WriterClosedError(EventLogError):
    """The writer is closed: it takes no new events, or closed before writing this one."""


class QueueFullError(EventLogError):
    """The queue stayed full (the database is down or slow), so the event was dropped."""


@dataclass(frozen=True, slots=True)
class WriterCounters:
    """A snapshot of a buffered writer's counters.

    Attributes:
        written: Events stored (inserted, or found already stored by an idempotent retry).
        duplicates: Of ``written``, events that were already stored.
        retried: Transient failures that were retried.
        dead_lettered: Events the database refused for good (sent to the dead-letter hook).
        dropped: Events refused at enqueue because the queue stayed full (sent to the hook).
        unwritten: Events still queued when `close` gave up waiting (sent to the hook).
        queued: Events enqueued and not yet written or given up, the batch being written
            included.
        queued_bytes: Their estimated size (`NewEvent.size_bytes`).
        errors: Unexpected errors inside the writer loop (logged; the loop went on).
    """

    written: int
    duplicates: int
    retried: int
    dead_lettered: int
    dropped: int
    unwritten: int
    queued: int
    queued_bytes: int
    errors: int


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
    ) -> None:
        _positive_int("batch_size", batch_size)
        _positive_int("max_queued", max_queued)
        _positive_int("max_queued_bytes", max_queued_bytes)
        _seconds("flush_interval", flush_interval, allow_none=False)
        _seconds("block_timeout", block_timeout, allow_none=True)
        if when_full not in ("block", "drop_newest"):
            raise ConfigurationError(
                f"when_full={when_full!r} is not valid; use 'block' or 'drop_newest'"
            )
        if on_dead_letter is not None and not callable(on_dead_letter):
            raise ConfigurationError(
                f"on_dead_letter={on_dead_letter!r} is not valid; pass a callable or None"
            )
        self.builder: EventWriter[KeyT] = EventWriter(
            model, payload_policy=payload_policy, field_rules=field_rules, retry=retry
        )
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.retry = retry
        self.on_dead_letter = on_dead_letter
        self.queue: deque[NewEvent] = deque()
        self.oldest = 0.0  # monotonic time the oldest queued event arrived
        self.pending = 0  # queued + being written
        self.pending_bytes = 0
        self.enqueued = 0  # sequence numbers, for flush()
        self.taken = 0
        self.done = 0
        self.flush_target = 0
        self.closing = False
        self.written = self.duplicates = self.retried = self.dead_lettered = 0
        self.dropped = self.unwritten = self.errors = 0

    def counters(self) -> WriterCounters:
        return WriterCounters(
            written=self.written,
            duplicates=self.duplicates,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            dropped=self.dropped,
            unwritten=self.unwritten,
            queued=self.pending,
            queued_bytes=self.pending_bytes,
            errors=self.errors,
        )

    def fits(self, size: int) -> bool:
        # One event always fits an empty queue, however large, so nothing waits forever.
        return self.pending == 0 or (
            self.pending < self.max_queued and self.pending_bytes + size <= self.max_queued_bytes
        )

    def add(self, event: NewEvent, size: int) -> bool:
        """Queue the event; return True when the writer should wake up now.

        That is when the queue was empty (the writer sleeps without a deadline then, and
        must start the ``flush_interval`` clock) or a batch is full.
        """
        queue = self.queue
        first = not queue
        if first:
            self.oldest = time.monotonic()
        queue.append(event)
        self.pending += 1
        self.pending_bytes += size
        self.enqueued += 1
        return first or len(queue) == self.batch_size

    def drop(self, event: NewEvent) -> None:
        self.dropped += 1
        _report(
            self.on_dead_letter,
            event,
            QueueFullError(
                f"event {event.id} was dropped: the writer's queue held {self.pending} events "
                f"({self.pending_bytes} bytes), at its bound, because the database is down or "
                "slower than the producers; raise max_queued / max_queued_bytes, or use "
                "when_full='block' with a longer block_timeout"
            ),
        )

    def wait_time(self) -> float | None:
        """Seconds the writer may sleep before a batch is due; None: due now; inf: idle."""
        if self.closing or self.flush_target > self.taken or len(self.queue) >= self.batch_size:
            return None
        if not self.queue:
            return float("inf")
        left = self.oldest + self.flush_interval - time.monotonic()
        return None if left <= 0 else left

    def take(self) -> list[NewEvent]:
        queue = self.queue
        count = min(len(queue), self.batch_size)
        batch = [queue.popleft() for _ in range(count)]
        self.taken += count
        if queue:
            self.oldest = time.monotonic()
        return batch

    def settle(
        self, batch: list[NewEvent], outcome: _Outcome | None, error: BaseException | None
    ) -> None:
        """Count a finished batch and report what was not written; never raises."""
        if outcome is not None:
            self.written += outcome.inserted + outcome.duplicates
            self.duplicates += outcome.duplicates
            dead: list[tuple[NewEvent, BaseException]] = outcome.dead
        else:
            dead = [(event, error or WriterClosedError("not written")) for event in batch]
        self.dead_lettered += len(dead)
        for event, exc in dead:
            _report(self.on_dead_letter, event, exc)
        self.release(batch)

    def release(self, batch: list[NewEvent]) -> None:
        self.pending -= len(batch)
        self.pending_bytes -= sum(event.size_bytes for event in batch)
        self.done += len(batch)

    def abandon(self) -> None:
        """Report every still-queued event as unwritten (the writer is closing for good)."""
        batch = list(self.queue)
        self.queue.clear()
        self.taken += len(batch)
        self.unwritten += len(batch)
        for event in batch:
            _report(
                self.on_dead_letter,
                event,
                WriterClosedError(
                    f"event {event.id} was not written: the writer closed before the database "
                    "accepted it; give close() a longer timeout, or check the database"
                ),
            )
        self.release(batch)

    def count_retry(self) -> None:
        self.retried += 1


def _positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"{name}={value!r} is not valid; use an int >= 1")


def _seconds(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        extra = ", or None to wait without limit" if allow_none else ""
        raise ConfigurationError(f"{name}={value!r} is not valid; use seconds >= 0{extra}")


class BufferedWriter(Generic[KeyT]):
    """A background thread that writes queued events in batches by binary COPY.

    `enqueue` checks the event in the caller (bad input raises there, never in the thread)
    and queues it. The thread writes a batch when ``batch_size`` events are queued or the
    oldest has waited ``flush_interval`` seconds, with the idempotent retries and bad-row
    isolation of `write_events`. Nothing is dropped silently: every event that is not
    written goes to ``on_dead_letter(event, error)`` (or the ``eventlog_persist`` logger)
    and is counted in `counters`.

    Back-pressure: the queue holds at most ``max_queued`` events and ``max_queued_bytes``
    (the batch being written included). When it is full, because the database is down or
    slower than the producers, ``when_full="block"`` (the default) makes `enqueue` wait up to
    ``block_timeout`` seconds for room, which slows producers to what the database takes
    without losing events during short outages; past the timeout the event is dropped and
    reported (`QueueFullError`), so a request never hangs on the log. ``"drop_newest"``
    drops and reports at once, for request paths that must never wait.

    Transient errors are retried with `BUFFERED_RETRY` (until the database is back) unless
    ``retry`` says otherwise. The writer registers `close` with `atexit`, so a process that
    exits normally writes what is queued first (up to ``exit_timeout`` seconds).

    Args:
        model: The host's ``EventLog`` model.
        target: A libpq conninfo or URL, or a SQLAlchemy ``Engine`` (its URL is used); the
            thread opens its own connection and reopens it after a loss.
        batch_size: Most events per COPY transaction.
        flush_interval: Most seconds an event waits in the queue before a batch is written.
        max_queued: Bound on queued events.
        max_queued_bytes: Bound on the queued events' `NewEvent.size_bytes`.
        when_full: ``"block"`` or ``"drop_newest"``, see above.
        block_timeout: Most seconds `enqueue` waits under ``"block"``; None waits forever.
        retry: How transient errors are retried; when it gives up, the batch goes to
            ``on_dead_letter`` with `RetriesExhaustedError`.
        on_dead_letter: Called (from the writer's thread, or from `enqueue` for drops) with
            each event not written and the reason; exceptions it raises are logged.
        payload_policy: How payloads are converted, redacted and capped.
        field_rules: Which ``event_type`` and column values are allowed.
        exit_timeout: Seconds the exit hook waits for the queue to be written.

    Raises:
        ConfigurationError: An argument is not valid.
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
        exit_timeout: float = 10.0,
    ) -> None:
        _seconds("exit_timeout", exit_timeout, allow_none=False)
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
        )
        self._connector = _Connector(target)
        self._exit_timeout = exit_timeout
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._room = threading.Condition(self._lock)
        self._abort = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> Self:
        """Start the writer thread and register the exit hook; returns the writer."""
        with self._lock:
            if self._state.closing:
                raise WriterClosedError("this BufferedWriter is closed; create a new one")
            if self._thread is not None:
                return self
            self._thread = threading.Thread(
                target=self._run, name="eventlog-buffered-writer", daemon=True
            )
            self._thread.start()
        atexit.register(self._close_at_exit)
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _close_at_exit(self) -> None:
        self.close(self._exit_timeout)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is written or given up.

        Args:
            timeout: Most seconds to wait; None waits as long as it takes.

        Returns:
            True if all of them were handled in time.
        """
        state = self._state
        with self._lock:
            target = state.enqueued
            if state.done >= target:
                return True
            state.flush_target = max(state.flush_target, target)
            self._wake.notify()
            return self._room.wait_for(lambda: state.done >= target, timeout)

    def close(self, timeout: float | None = 30.0) -> WriterCounters:
        """Stop taking events, write what is queued, stop the thread.

        Events still unwritten after ``timeout`` seconds (the database is down) are given to
        ``on_dead_letter`` with `WriterClosedError` and counted as ``unwritten``. Closing
        twice is harmless.

        Args:
            timeout: Most seconds to wait for the queue to be written.

        Returns:
            The final counters.
        """
        atexit.unregister(self._close_at_exit)
        state = self._state
        with self._lock:
            state.closing = True
            self._wake.notify()
            self._room.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                self._abort.set()
                with self._lock:
                    self._wake.notify()
                thread.join(5.0)
        with self._lock:
            # Never started, or stuck in a network call: report what is left in the queue.
            state.abandon()
            self._room.notify_all()
        if thread is None or not thread.is_alive():
            self._connector.close()
        return self.counters

    @property
    def counters(self) -> WriterCounters:
        """The counters now."""
        with self._lock:
            return self._state.counters()

    # -- request path --

    def enqueue(self, **fields: Unpack[EventFields[KeyT]]) -> NewEvent:
        """Check an event and queue it; takes the keyword arguments of `new_event`.

        Returns:
            The queued event (its ``id`` is final). Under back-pressure it may have been
            dropped instead: then it went to ``on_dead_letter`` and ``counters.dropped``.

        Raises:
            ValidationError: A field or key is not acceptable (nothing is queued).
            PayloadError: The payload cannot be stored (nothing is queued).
            WriterClosedError: The writer is closed.
        """
        event = self._state.builder.event(**fields)
        self.enqueue_event(event)
        return event

    def enqueue_event(self, event: NewEvent) -> bool:
        """Queue an event built with `new_event` (or `EventWriter.event`).

        Returns:
            True if queued, False if dropped under back-pressure (and reported).

        Raises:
            WriterClosedError: The writer is closed.
        """
        state = self._state
        size = event.size_bytes
        with self._lock:
            if state.closing:
                raise WriterClosedError(
                    f"cannot enqueue event {event.id}: the writer is closed; record it with "
                    "EventWriter.record_detached() or a new writer"
                )
            if not state.fits(size):
                if state.when_full == "drop_newest" or not self._room.wait_for(
                    lambda: state.closing or state.fits(size), state.block_timeout
                ):
                    state.drop(event)
                    return False
                if state.closing:
                    raise WriterClosedError(
                        f"cannot enqueue event {event.id}: the writer closed while waiting"
                    )
            if state.add(event, size):
                self._wake.notify()
        return True

    # -- the thread --

    def _run(self) -> None:
        state = self._state
        while True:
            try:
                with self._lock:
                    while (wait := state.wait_time()) is not None:
                        self._wake.wait(None if wait == float("inf") else wait)
                    if self._abort.is_set() or not state.queue:
                        if state.closing:
                            return
                        continue
                    batch = state.take()
                self._write(batch)
            except Exception:  # pragma: no cover - a bug; keep the thread alive
                logger.exception("unexpected error in the buffered event writer")
                with self._lock:
                    state.errors += 1

    def _write(self, batch: list[NewEvent]) -> None:
        state = self._state
        outcome: _Outcome | None = None
        error: BaseException | None = None
        try:
            outcome = _deliver(
                self._connector,
                state.builder.table,
                batch,
                state.retry,
                stop=self._abort,
                on_retry=self._count_retry,
            )
        except Exception as exc:
            error = exc
        with self._lock:
            state.settle(batch, outcome, error)
            self._room.notify_all()

    def _count_retry(self) -> None:
        with self._lock:
            self._state.count_retry()


class AsyncBufferedWriter(Generic[KeyT]):
    """The asyncio twin of `BufferedWriter`: a task on the running loop writes the batches.

    Same arguments and behavior as `BufferedWriter`, with an ``AsyncEngine`` or conninfo as
    ``target``; `enqueue`, `flush` and `close` are coroutines and must run on the writer's
    loop. ``when_full="block"`` awaits room without blocking the loop. There is no exit hook
    (the loop is gone by then): close the writer in the application's shutdown (lifespan).

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
    ) -> None:
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
        )
        self._connector = _AsyncConnector(target)
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._abort = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Self:
        """Start the writer task on the running loop; returns the writer."""
        if self._state.closing:
            raise WriterClosedError("this AsyncBufferedWriter is closed; create a new one")
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
        return self._state.counters()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event enqueued so far is written or given up.

        Returns:
            True if all of them were handled in time.
        """
        state = self._state
        target = state.enqueued
        if state.done >= target:
            return True
        state.flush_target = max(state.flush_target, target)
        self._wake.set()
        return await self._wait_room(lambda: state.done >= target, timeout)

    async def close(self, timeout: float | None = 30.0) -> WriterCounters:
        """Stop taking events, write what is queued, stop the task; see `BufferedWriter.close`.

        Returns:
            The final counters.
        """
        state = self._state
        state.closing = True
        self._wake.set()
        self._room.set()
        task = self._task
        if task is not None and not task.done():
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                self._abort.set()
                self._wake.set()
                done, _ = await asyncio.wait({task}, timeout=5.0)
                if not done:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        state.abandon()
        self._room.set()
        await self._connector.close()
        return state.counters()

    async def enqueue(self, **fields: Unpack[EventFields[KeyT]]) -> NewEvent:
        """Check an event and queue it; takes the keyword arguments of `new_event`.

        Returns:
            The queued event. Under back-pressure it may have been dropped instead: then it
            went to ``on_dead_letter`` and ``counters.dropped``.

        Raises:
            ValidationError: A field or key is not acceptable (nothing is queued).
            PayloadError: The payload cannot be stored (nothing is queued).
            WriterClosedError: The writer is closed.
        """
        event = self._state.builder.event(**fields)
        await self.enqueue_event(event)
        return event

    async def enqueue_event(self, event: NewEvent) -> bool:
        """Queue an event built with `new_event`.

        Returns:
            True if queued, False if dropped under back-pressure (and reported).

        Raises:
            WriterClosedError: The writer is closed.
        """
        state = self._state
        size = event.size_bytes
        if state.closing:
            raise WriterClosedError(
                f"cannot enqueue event {event.id}: the writer is closed; record it with "
                "EventWriter.arecord_detached() or a new writer"
            )
        if not state.fits(size):
            if state.when_full == "drop_newest" or not await self._wait_room(
                lambda: state.closing or state.fits(size), state.block_timeout
            ):
                state.drop(event)
                return False
            if state.closing:
                raise WriterClosedError(
                    f"cannot enqueue event {event.id}: the writer closed while waiting"
                )
        if state.add(event, size):
            self._wake.set()
        return True

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
        while True:
            try:
                while (wait := state.wait_time()) is not None:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._wake.wait(), None if wait == float("inf") else wait
                        )
                if self._abort.is_set() or not state.queue:
                    if state.closing:
                        return
                    continue
                await self._write(state.take())
            except Exception:  # pragma: no cover - a bug; keep the task alive
                logger.exception("unexpected error in the buffered event writer")
                state.errors += 1

    async def _write(self, batch: list[NewEvent]) -> None:
        state = self._state
        outcome: _Outcome | None = None
        error: BaseException | None = None
        try:
            outcome = await _adeliver(
                self._connector,
                state.builder.table,
                batch,
                state.retry,
                stop=self._abort,
                on_retry=state.count_retry,
            )
        except Exception as exc:
            error = exc
        state.settle(batch, outcome, error)
        self._room.set()
