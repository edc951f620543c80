"""eventlog_persist prerequisites

The eventlog branch depends on this revision: everything event_logs references exists here.

Revision ID: eventlog_prereqs
Revises: h001_core
Create Date: 2026-11-25
"""

from __future__ import annotations

revision = "eventlog_prereqs"
down_revision = "h001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
