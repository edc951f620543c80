"""The host's models."""

from app.models.core import ChatSession, User, UserAgent, UserProject
from app.models.event_log import EventLog

__all__ = ["ChatSession", "EventLog", "User", "UserAgent", "UserProject"]
