"""The gateway's tables (schema `gateway`): credentials, idempotency keys and the per-alert status view."""
from sqlalchemy import ARRAY, Column, Index, text, DateTime, Integer, LargeBinary, MetaData, String, Table, Text, Uuid
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
    Column("posts", ARRAY(String(64)), comment="submit only for these posts; NULL: any post of the agency"),
    Column("replaced_by", String(32), comment="the key that replaced this one on rotation"),
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
    Column("cap", JSONB, comment="CAP origin: sender, identifier, sent, signed"),
    Column("cap_original", LargeBinary, comment="the CAP document exactly as received (signatures intact)"),
    Column("trace_id", String(32), comment="W3C trace id the alert's events carry"),
    Index("alerts_cap_identifier", text("(cap ->> 'identifier')")),
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
    Column("view", JSONB, comment="the view routing shaped for this recipient"),
    Column("ack_status", String(16)),
    Column("ack_comment", Text),
    Column("acked_at", DateTime(timezone=True)),
    Column("delivered_at", DateTime(timezone=True), comment="first successful delivery (end-to-end latency)"),
    Column("escalated_at", DateTime(timezone=True), comment="last escalation for not being acknowledged"),
)

idempotency_keys = Table(
    "idempotency_keys", metadata,
    Column("agency", String(64), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("request_hash", String(64), nullable=False, comment="SHA-256 of method, path and body"),
    Column("alert_id", Uuid, nullable=False),
    Column("state", String(16), nullable=False, comment="in_flight, done or failed"),
    Column("status_code", Integer),
    Column("response", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, index=True),
    Index("idempotency_keys_alert_id", "alert_id"),
)

forwards = Table(
    "forwards", metadata,
    Column("forward_id", Uuid, primary_key=True),
    Column("alert_id", Uuid, nullable=False, index=True),
    Column("agency", String(64), nullable=False),
    Column("unit", String(64)),
    Column("to", ARRAY(String(64)), nullable=False),
    Column("comment", Text),
    Column("forwarded_at", DateTime(timezone=True), nullable=False),
)
