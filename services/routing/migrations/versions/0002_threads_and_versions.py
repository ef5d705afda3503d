"""Decisions per thread (forwards share the alert id), versioned network configurations.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.drop_constraint("decisions_pkey", "decisions")
    op.drop_constraint("decisions_event_id_key", "decisions")
    op.create_primary_key("decisions_pkey", "decisions", ["event_id"])
    op.create_index("ix_decisions_alert_id", "decisions", ["alert_id"])
    op.add_column("decisions", sa.Column("kind", sa.String(16), nullable=False, server_default="alert"))
    op.add_column("decisions", sa.Column("alert", JSONB))
    op.create_table(
        "rulesets",
        sa.Column("hash", sa.String(80), primary_key=True),
        sa.Column("content", JSONB, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.Text, nullable=False),
    )
    op.create_table(
        "activations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("hash", sa.String(80), sa.ForeignKey("rulesets.hash"), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_by", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("activations")
    op.drop_table("rulesets")
    op.drop_column("decisions", "alert")
    op.drop_column("decisions", "kind")
    op.drop_index("ix_decisions_alert_id", "decisions")
    op.drop_constraint("decisions_pkey", "decisions")
    op.create_primary_key("decisions_pkey", "decisions", ["alert_id"])
    op.create_unique_constraint("decisions_event_id_key", "decisions", ["event_id"])
