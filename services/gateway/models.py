"""The gateway's tables (schema `gateway`): credentials and the per-alert status view."""
from sqlalchemy import ARRAY, Column, DateTime, Integer, MetaData, String, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

api_keys = Table(
    "api_keys", metadata,
    Column("key_id", String(32), primary_key=True),
    Column("agency", String(64), nullable=False),
    Column("roles", ARRAY(String(16)), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("label", Text, nullable=False, server_default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
)

alerts = Table(
    "alerts", metadata,
    Column("alert_id", Uuid, primary_key=True),
    Column("thread_id", Uuid, nullable=False, index=True),
    Column("sender_agency", String(64), nullable=False, index=True),
    Column("submitted_by", String(32), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("alert", JSONB, nullable=False),
    Column("routing", JSONB, comment="ruleset hash and denials, once routed"),
)

recipients = Table(
    "recipients", metadata,
    Column("alert_id", Uuid, primary_key=True),
    Column("endpoint", String(64), primary_key=True),
    Column("agency", String(64), nullable=False),
    Column("unit", String(64)),
    Column("profile", String(16)),
    Column("rule", String(64)),
    Column("reason", Text),
    Column("state", String(16), nullable=False, comment="routed, delivered, retrying, failed"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("http_status", Integer),
    Column("error", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
