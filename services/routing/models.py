"""Routing's tables (schema `routing`)."""
from sqlalchemy import Column, DateTime, MetaData, String, Table, Uuid
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

decisions = Table(
    "decisions", metadata,
    Column("alert_id", Uuid, primary_key=True),
    Column("thread_id", Uuid, nullable=False, index=True),
    Column("event_id", Uuid, nullable=False, unique=True, comment="the alert.routed event"),
    Column("ruleset_hash", String(80), nullable=False),
    Column("decision", JSONB, nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
)
