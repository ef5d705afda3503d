"""Every change to an API key row (revocation, whatever makes it) notifies the gateways, whose key
caches drop that key at once.

Revision ID: 0004
"""
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION notify_api_key_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('gateway_keys', OLD.key_hash);
            RETURN NULL;
        END $$
    """)
    op.execute("""
        CREATE TRIGGER api_key_changed AFTER UPDATE OR DELETE ON api_keys
        FOR EACH ROW EXECUTE FUNCTION notify_api_key_change()
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER api_key_changed ON api_keys")
    op.execute("DROP FUNCTION notify_api_key_change()")
