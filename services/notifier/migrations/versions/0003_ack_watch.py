"""Acknowledgement watches: which recipient agency must acknowledge which alert by when.

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "ack_watch",
        sa.Column("alert_id", sa.Uuid, primary_key=True),
        sa.Column("agency", sa.String(64), primary_key=True),
        sa.Column("delivery_id", sa.Uuid),
        sa.Column("deadline", sa.DateTime(timezone=True)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ack_watch_due", "ack_watch", ["deadline"], postgresql_where=sa.text("state = 'waiting'"))


def downgrade() -> None:
    op.drop_table("ack_watch")
