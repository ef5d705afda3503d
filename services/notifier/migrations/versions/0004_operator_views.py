"""What operators see: each attempt's outcome, reason and next retry; each endpoint's last success and failure.

Revision ID: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("attempts", sa.Column("outcome", sa.String(16)))
    op.add_column("attempts", sa.Column("reason", sa.Text))
    op.add_column("attempts", sa.Column("next_attempt_at", sa.DateTime(timezone=True)))
    op.add_column("endpoints", sa.Column("last_success_at", sa.DateTime(timezone=True)))
    op.add_column("endpoints", sa.Column("last_failure_at", sa.DateTime(timezone=True)))
    op.add_column("endpoints", sa.Column("last_error", sa.Text))


def downgrade() -> None:
    for column in ("outcome", "reason", "next_attempt_at"):
        op.drop_column("attempts", column)
    for column in ("last_success_at", "last_failure_at", "last_error"):
        op.drop_column("endpoints", column)
