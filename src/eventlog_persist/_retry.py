"""How transient write errors are retried: `RetryPolicy` and the writers' defaults."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from eventlog_persist.exceptions import ConfigurationError

__all__ = ["BUFFERED_RETRY", "DEFAULT_RETRY", "DETACHED_RETRY", "RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter for transient write errors, within a deadline.

    The n-th retry (0-based) waits a random time between 0 and
    ``min(max_delay, initial_delay * multiplier ** n)`` seconds, never past the deadline:
    the last attempt starts at ``max_elapsed`` seconds at the latest. Retrying stops at the
    deadline or after ``max_attempts``; ``None`` disables that limit.

    Attributes:
        max_attempts: Most attempts in all, the first included (default ``None``: as many
            as the deadline allows).
        max_elapsed: The deadline: most seconds from the first attempt to the start of the
            last (default 30); ``None`` for no deadline.
        initial_delay: Cap of the first wait, in seconds (default 0.05), at most a day.
        max_delay: Largest cap of any wait, in seconds (default 2), at most a day. A
            policy whose waits never reach a millisecond needs ``max_attempts``: without
            it, it would retry over and over while the database is down.
        multiplier: Growth of the cap per retry (default 2).

    .. versionchanged:: 0.3.0
       ``initial_delay`` and ``max_delay`` above a day, and waits that never reach a
       millisecond without ``max_attempts``, raise `ConfigurationError`.
    """

    max_attempts: int | None = None
    max_elapsed: float | None = 30.0
    initial_delay: float = 0.05
    max_delay: float = 2.0
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
            value = getattr(self, name)
            if not _non_negative(value) or value > _MAX_DELAY:
                raise ConfigurationError(
                    f"RetryPolicy({name}={value!r}) is not valid; use seconds from 0 to "
                    f"{_MAX_DELAY:g}"
                )
        if not _non_negative(self.multiplier) or self.multiplier < 1:
            raise ConfigurationError(
                f"RetryPolicy(multiplier={self.multiplier!r}) is not valid; use a number >= 1"
            )
        if self.max_attempts is None and self._longest_cap() < _MIN_CAP:
            raise ConfigurationError(
                f"RetryPolicy(initial_delay={self.initial_delay!r}, max_delay="
                f"{self.max_delay!r}, multiplier={self.multiplier!r}) never waits as long as "
                f"{_MIN_CAP:g} s, so it retries over and over while the database is down; let "
                "the waits grow past that, or set max_attempts"
            )

    def _longest_cap(self) -> float:
        """The cap the waits grow to: ``max_delay``, unless they cannot grow."""
        if self.initial_delay == 0 or self.multiplier == 1:
            return min(self.initial_delay, self.max_delay)
        return self.max_delay

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
        remaining = math.inf if self.max_elapsed is None else self.max_elapsed - elapsed
        if remaining <= 0:
            return None
        try:
            cap = min(self.max_delay, self.initial_delay * self.multiplier**retry)
        except OverflowError:  # grown past any float: long past max_delay
            cap = self.max_delay
        return min(random.uniform(0.0, cap), remaining)


_MIN_CAP: Final = 0.001
"""Without ``max_attempts``, the waits must grow to at least this (a millisecond)."""
_MAX_DELAY: Final = 86_400.0
"""Longest wait between two attempts: a day (a thread's sleep overflows past 292 years)."""


def _non_negative(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and value >= 0
    )


DEFAULT_RETRY: Final = RetryPolicy()
"""Retry for 30 s, waits capped at 2 s: the bulk writers' default (rides out a restart)."""

DETACHED_RETRY: Final = RetryPolicy(max_elapsed=10.0)
"""Retry for 10 s: `EventWriter`'s default for detached writes, which a request waits for.

Long enough for a server restart or a managed failover of a few seconds; short enough that
a request does not hang on a database that is down for good.
"""

BUFFERED_RETRY: Final = RetryPolicy(max_elapsed=None)
"""Retry until the database is back, waits capped at 2 s: the buffered writers' default."""
