"""Gateway's first schema: API keys and the alert status view.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("agency", sa.String(64), nullable=False),
        sa.Column("roles", sa.ARRAY(sa.String(16)), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("label", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.Uuid, primary_key=True),
        sa.Column("thread_id", sa.Uuid, nullable=False, index=True),
        sa.Column("sender_agency", sa.String(64), nullable=False, index=True),
        sa.Column("submitted_by", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("alert", JSONB, nullable=False),
        sa.Column("routing", JSONB),
    )
    op.create_table(
        "recipients",
        sa.Column("alert_id", sa.Uuid, primary_key=True),
        sa.Column("endpoint", sa.String(64), primary_key=True),
        sa.Column("agency", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(64)),
        sa.Column("profile", sa.String(16)),
        sa.Column("rule", sa.String(64)),
        sa.Column("reason", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("http_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recipients")
    op.drop_table("alerts")
    op.drop_table("api_keys")
