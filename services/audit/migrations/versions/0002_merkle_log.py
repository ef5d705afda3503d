"""The Merkle log: entries, tree nodes, signed checkpoints and the payload store.

Runs as `audit_owner`, which owns every table; the service role `audit` gets INSERT and SELECT
on the log's tables (and DELETE on payloads only, for retention and erasure). Triggers refuse
UPDATE, DELETE and TRUNCATE on the log's tables even to the owner. The hash-chained table of
revision 0001 stays, renamed `chain_entries_v0`, readable by the owner only.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"

SERVICE_ROLE = "audit"  # the role the service connects as (shared/db.py: schema name = role name)
APPEND_ONLY = ("entries", "tree_nodes", "checkpoints")


def upgrade() -> None:
    op.rename_table("entries", "chain_entries_v0")
    op.create_table(
        "entries",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.Uuid, nullable=False, unique=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("alert_id", sa.Uuid),
        sa.Column("causation_id", sa.Uuid),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("agencies", postgresql.ARRAY(sa.String(64)), nullable=False),
        sa.Column("entry", sa.LargeBinary, nullable=False),
    )
    op.create_index("entries_alert", "entries", ["alert_id"])
    op.create_index("entries_type_time", "entries", ["type", "occurred_at"])
    op.create_index("entries_time", "entries", ["occurred_at"])
    op.create_index("entries_agencies", "entries", ["agencies"], postgresql_using="gin")
    op.create_table(
        "tree_nodes",
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx"),
    )
    op.create_index("tree_nodes_leaf_hash", "tree_nodes", ["hash"], postgresql_where=sa.text("level = 0"))
    op.create_table(
        "checkpoints",
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "payloads",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("nonce", sa.LargeBinary(16), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_payloads_stored_at", "payloads", ["stored_at"])
    for table in APPEND_ONLY:
        # refuse_change() comes from revision 0001: it raises "audit entries are append-only".
        op.execute(f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
                   "FOR EACH ROW EXECUTE FUNCTION refuse_change()")
        op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                   "FOR EACH STATEMENT EXECUTE FUNCTION refuse_change()")
    op.execute(f"REVOKE ALL ON chain_entries_v0 FROM {SERVICE_ROLE}")
    op.execute(f"GRANT SELECT, INSERT ON {', '.join(APPEND_ONLY)} TO {SERVICE_ROLE}")
    op.execute(f"GRANT SELECT, INSERT, DELETE ON payloads TO {SERVICE_ROLE}")
    op.execute(f"GRANT SELECT ON alembic_version TO {SERVICE_ROLE}")


def downgrade() -> None:
    raise RuntimeError("the audit log is append-only; it is never downgraded")
