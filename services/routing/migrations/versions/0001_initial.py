"""Routing's first schema: stored decisions.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("alert_id", sa.Uuid, primary_key=True),
        sa.Column("thread_id", sa.Uuid, nullable=False, index=True),
        sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("ruleset_hash", sa.String(80), nullable=False),
        sa.Column("decision", JSONB, nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("decisions")
