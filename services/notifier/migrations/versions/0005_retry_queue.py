"""Deliveries go out straight from the consumed batch: the SKIP LOCKED queue holds only what must be
retried later (table `retries`), and live rows are carried into it.

Every pending delivery (due or leased by a worker of the old code) becomes a retry row due at its
old due time, its lease dropped: upgrade is stop, migrate, start, so no worker holds it any more.
Endpoints get the circuit their owner last recorded (one truth for every instance's API) and an
epoch bumped whenever a secret, switch or rate changes (instances reload their cached copy).

Revision ID: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "retries",
        sa.Column("delivery_id", sa.Uuid, primary_key=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("leased_until", sa.DateTime(timezone=True)),
    )
    op.create_index("retries_due", "retries", ["due_at"])
    op.execute("INSERT INTO retries (delivery_id, endpoint, due_at) "
               "SELECT delivery_id, endpoint, due_at FROM deliveries WHERE state = 'pending'")
    op.drop_index("deliveries_due", "deliveries")
    op.drop_column("deliveries", "leased_until")

    op.add_column("endpoints", sa.Column("circuit_state", sa.String(16), nullable=False, server_default="closed"))
    op.add_column("endpoints", sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"))
    op.add_column("endpoints", sa.Column("circuit_open_until", sa.DateTime(timezone=True)))
    op.create_table("endpoint_epoch", sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.BigInteger, nullable=False))
    op.execute("INSERT INTO endpoint_epoch (id, n) VALUES (1, 0)")
    op.execute("""
        CREATE FUNCTION bump_endpoint_epoch() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
        BEGIN UPDATE endpoint_epoch SET n = n + 1; RETURN NULL; END $$""")
    op.execute("""
        CREATE TRIGGER endpoints_changed
        AFTER INSERT OR DELETE OR UPDATE OF secret, previous_secret, previous_until, enabled, rate_per_second ON endpoints
        FOR EACH STATEMENT EXECUTE FUNCTION bump_endpoint_epoch()""")


def downgrade() -> None:
    op.execute("DROP TRIGGER endpoints_changed ON endpoints")
    op.execute("DROP FUNCTION bump_endpoint_epoch()")
    op.drop_table("endpoint_epoch")
    for column in ("circuit_state", "consecutive_failures", "circuit_open_until"):
        op.drop_column("endpoints", column)
    op.add_column("deliveries", sa.Column("leased_until", sa.DateTime(timezone=True)))
    op.create_index("deliveries_due", "deliveries", ["due_at"], postgresql_where=sa.text("state = 'pending'"))
    op.execute("UPDATE deliveries d SET due_at = r.due_at FROM retries r WHERE r.delivery_id = d.delivery_id")
    op.drop_table("retries")
