"""Where each activation came from (bootstrap, cli, api).

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("activations", sa.Column("source", sa.String(16)))


def downgrade() -> None:
    op.drop_column("activations", "source")
