"""The host's test setup: real, migrated PostgreSQL databases from eventlog_persist.testing."""

from __future__ import annotations

import uuid

import pytest
from app.models import User
from sqlalchemy.orm import Session

pytest_plugins = ["eventlog_persist.testing"]


@pytest.fixture
def user(eventlog_session: Session) -> User:
    """A stored user in this test's own database."""
    user = User(id=uuid.uuid4(), name="Ada")
    eventlog_session.add(user)
    eventlog_session.commit()
    return user
