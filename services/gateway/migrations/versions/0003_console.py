"""The operations console: trace ids, first-delivery times (latency), escalations.

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("alerts", sa.Column("trace_id", sa.String(32)))
    op.add_column("recipients", sa.Column("delivered_at", sa.DateTime(timezone=True)))
    op.add_column("recipients", sa.Column("escalated_at", sa.DateTime(timezone=True)))
    op.create_index("ix_recipients_delivered", "recipients", ["delivered_at"])


def downgrade() -> None:
    op.drop_index("ix_recipients_delivered", "recipients")
    for table, column in (("recipients", "escalated_at"), ("recipients", "delivered_at"), ("alerts", "trace_id")):
        op.drop_column(table, column)
