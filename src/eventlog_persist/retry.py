"""Which write errors are worth retrying, and how long to wait between attempts."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from enum import Enum
from typing import Final

import psycopg
from sqlalchemy.exc import DBAPIError

from eventlog_persist.exceptions import ConfigurationError, EventLogError
from eventlog_persist.schema import PK_NAME

__all__ = ["DEFAULT_RETRY", "ErrorKind", "RetriesExhaustedError", "RetryPolicy", "classify_error"]


class RetriesExhaustedError(EventLogError):
    """A write kept failing with transient errors until the retry policy gave up.

    The last error is the ``__cause__``.
    """


class ErrorKind(Enum):
    """What a failed write means for the events in it."""

    TRANSIENT = "transient"
    """The server or the connection failed; the same write may succeed later."""
    DUPLICATE = "duplicate"
    """An event id is already stored: an earlier attempt committed after all."""
    ROW = "row"
    """Some row's data was refused (foreign key, check, value); the other rows are fine."""
    BATCH = "batch"
    """The write can never work as set up (missing table, no permission); retrying won't help."""


# SQLSTATE classes and codes after which the same statement may succeed on a new attempt:
# connection exceptions, transaction rollbacks (serialization, deadlock), insufficient
# resources, operator intervention (shutdown, cancel), system errors, lock not available.
_TRANSIENT_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})
_TRANSIENT_CODES: Final = frozenset({"55P03", "55006", "XX000"})
# Data exceptions, integrity violations and program limits (e.g. a value too large): one
# row's content is to blame.
_ROW_CLASSES: Final = frozenset({"22", "23", "54"})


def classify_error(exc: BaseException) -> ErrorKind:
    """Say whether a write error is transient, a duplicate id, a bad row or a bad setup.

    SQLAlchemy's ``DBAPIError`` is looked through to the psycopg error it wraps. Errors that
    are not database errors (e.g. a value psycopg cannot convert) count as ``ROW``, so the
    writer isolates the row that raised them instead of failing every event.

    Args:
        exc: The exception raised by a write.

    Returns:
        The error's kind.
    """
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if not isinstance(exc, psycopg.Error):
        return ErrorKind.ROW
    state = exc.sqlstate
    if state is None:
        # Raised by the client (libpq): connection lost, refused, closed.
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            return ErrorKind.TRANSIENT
        return ErrorKind.BATCH
    if state == "23505" and exc.diag.constraint_name == PK_NAME:
        return ErrorKind.DUPLICATE
    if state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_CODES:
        return ErrorKind.TRANSIENT
    if state[:2] in _ROW_CLASSES:
        return ErrorKind.ROW
    return ErrorKind.BATCH


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient write errors.

    The n-th retry (0-based) waits a random time between 0 and
    ``min(max_delay, initial_delay * multiplier ** n)`` seconds. Retrying stops when either
    limit is reached; ``None`` disables that limit.

    Attributes:
        max_attempts: Most attempts in all, the first included (default 6); ``None`` for
            no limit.
        max_elapsed: Most seconds from the first attempt to the start of the last (default
            30); ``None`` for no limit.
        initial_delay: Cap of the first wait, in seconds (default 0.05).
        max_delay: Largest cap of any wait, in seconds (default 5).
        multiplier: Growth of the cap per retry (default 2).
    """

    max_attempts: int | None = 6
    max_elapsed: float | None = 30.0
    initial_delay: float = 0.05
    max_delay: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (
            type(self.max_attempts) is not int or self.max_attempts < 1
        ):
            raise ConfigurationError(
                f"RetryPolicy(max_attempts={self.max_attempts!r}) is not valid; use an int of "
                "at least 1, or None for no limit"
            )
        if self.max_elapsed is not None and not _non_negative(self.max_elapsed):
            raise ConfigurationError(
                f"RetryPolicy(max_elapsed={self.max_elapsed!r}) is not valid; use seconds "
                "(a number >= 0), or None for no limit"
            )
        for name in ("initial_delay", "max_delay"):
            if not _non_negative(getattr(self, name)):
                raise ConfigurationError(
                    f"RetryPolicy({name}={getattr(self, name)!r}) is not valid; use seconds "
                    "(a number >= 0)"
                )
        if not _non_negative(self.multiplier) or self.multiplier < 1:
            raise ConfigurationError(
                f"RetryPolicy(multiplier={self.multiplier!r}) is not valid; use a number >= 1"
            )

    def delay(self, retry: int, elapsed: float) -> float | None:
        """Return how long to wait before retry number ``retry``, or None to give up.

        Args:
            retry: How many retries were made already (0 before the first retry).
            elapsed: Seconds since the first attempt started.

        Returns:
            Seconds to sleep, or ``None`` when a limit is reached.
        """
        if self.max_attempts is not None and retry + 1 >= self.max_attempts:
            return None
        if self.max_elapsed is not None and elapsed >= self.max_elapsed:
            return None
        cap = min(self.max_delay, self.initial_delay * self.multiplier ** min(retry, 64))
        return random.uniform(0.0, cap)


def _non_negative(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value >= 0


DEFAULT_RETRY: Final = RetryPolicy()
"""Six attempts within 30 s: the default of the detached and bulk writers."""
