"""Endpoint state (secret rotation overlap, disabled reason, rate limit); delivery reasons, format, language.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("previous_secret", sa.Text))
    op.add_column("endpoints", sa.Column("previous_until", sa.DateTime(timezone=True)))
    op.add_column("endpoints", sa.Column("disabled_reason", sa.Text))
    op.add_column("endpoints", sa.Column("rate_per_second", sa.Float))
    op.add_column("deliveries", sa.Column("reason", sa.Text))
    op.add_column("deliveries", sa.Column("schedule_start", sa.Integer, nullable=False, server_default="0"))
    op.add_column("deliveries", sa.Column("format", sa.String(8), nullable=False, server_default="json"))
    op.add_column("deliveries", sa.Column("language", sa.String(16)))
    op.create_index("deliveries_failed", "deliveries", ["endpoint", "finished_at"], postgresql_where=sa.text("state = 'failed'"))


def downgrade() -> None:
    op.drop_index("deliveries_failed", "deliveries")
    for column in ("reason", "schedule_start", "format", "language"):
        op.drop_column("deliveries", column)
    for column in ("previous_secret", "previous_until", "disabled_reason", "rate_per_second"):
        op.drop_column("endpoints", column)
