"""chat_api tables

Revision ID: c001_core
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "c001_core"
down_revision = None
branch_labels = ("chat_api",)
depends_on = None


def _owner() -> sa.Column[object]:
    return sa.Column(
        "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )
    for table in ("user_projects", "user_agents"):
        op.create_table(
            table,
            sa.Column("id", sa.Uuid(), primary_key=True),
            _owner(),
            sa.Column("name", sa.String(100), nullable=False),
        )
    op.create_table(
        "chat_sessions",
        sa.Column("id", sa.Uuid(), primary_key=True),
        _owner(),
        sa.Column("project_id", sa.Uuid(), sa.ForeignKey("user_projects.id", ondelete="SET NULL")),
        sa.Column("agent_id", sa.Uuid(), sa.ForeignKey("user_agents.id", ondelete="SET NULL")),
        sa.Column("title", sa.String(200), nullable=False),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "session_id",
            sa.Uuid(),
            sa.ForeignKey("chat_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tool_name", sa.String(128), nullable=False),
        sa.Column("arguments", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    for table in ("approvals", "chat_sessions", "user_agents", "user_projects", "users"):
        op.drop_table(table)
