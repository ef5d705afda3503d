"""The complete edge: CAP originals, recipients' views and acknowledgements, idempotency keys,
forwards, and keys limited to posts or replaced on rotation.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("posts", sa.ARRAY(sa.String(64))))
    op.add_column("api_keys", sa.Column("replaced_by", sa.String(32)))
    op.add_column("alerts", sa.Column("cap", JSONB))
    op.add_column("alerts", sa.Column("cap_original", sa.LargeBinary))
    op.create_index("ix_alerts_received", "alerts", ["received_at", "alert_id"])
    for name, type_ in (("view", JSONB), ("ack_status", sa.String(16)), ("ack_comment", sa.Text),
                        ("acked_at", sa.DateTime(timezone=True))):
        op.add_column("recipients", sa.Column(name, type_))
    op.create_index("ix_recipients_agency", "recipients", ["agency", "alert_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("agency", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("alert_id", sa.Uuid, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("response", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "forwards",
        sa.Column("forward_id", sa.Uuid, primary_key=True),
        sa.Column("alert_id", sa.Uuid, nullable=False, index=True),
        sa.Column("agency", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(64)),
        sa.Column("to", sa.ARRAY(sa.String(64)), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("forwarded_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("forwards")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_recipients_agency", "recipients")
    for name in ("acked_at", "ack_comment", "ack_status", "view"):
        op.drop_column("recipients", name)
    op.drop_index("ix_alerts_received", "alerts")
    for name in ("cap_original", "cap"):
        op.drop_column("alerts", name)
    op.drop_column("api_keys", "replaced_by")
    op.drop_column("api_keys", "posts")
