"""The host's declarative base and engine."""

from __future__ import annotations

import os

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base of every host model, ``EventLog`` included."""


def make_engine(url: str | None = None) -> Engine:
    """Engine for ``url``, or for the ``DATABASE_URL`` environment variable."""
    return create_engine(url or os.environ["DATABASE_URL"])
