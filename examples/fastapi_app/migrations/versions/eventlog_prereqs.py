"""eventlog_persist prerequisites

The eventlog branch's first revision depends on this one: every table event_logs refers to
exists from here on.

Revision ID: eventlog_prereqs
Revises: c001_core
Create Date: 2026-12-01
"""

from __future__ import annotations

revision = "eventlog_prereqs"
down_revision = "c001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
