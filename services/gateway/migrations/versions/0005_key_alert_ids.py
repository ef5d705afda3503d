"""Idempotency keys by alert id: a gateway asked for an id the status projection has not stored yet
waits for it only if it may be in flight (services/gateway/lookup.py), which a key row tells.
CAP alerts by identifier: every CAP submission looks its (sender, identifier, sent) up.

Revision ID: 0005
"""
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_index("idempotency_keys_alert_id", "idempotency_keys", ["alert_id"])
    op.execute("CREATE INDEX alerts_cap_identifier ON alerts ((cap ->> 'identifier'))")


def downgrade() -> None:
    op.drop_index("alerts_cap_identifier", "alerts")
    op.drop_index("idempotency_keys_alert_id", "idempotency_keys")
