"""The exception hierarchy: one root, narrow subclasses."""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "EventLogError",
    "MigrationSetupError",
    "PayloadError",
    "ValidationError",
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
