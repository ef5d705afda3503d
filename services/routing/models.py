"""Routing's tables (schema `routing`): decisions per thread, and versioned network configurations."""
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, Uuid
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

decisions = Table(
    "decisions", metadata,
    Column("event_id", Uuid, primary_key=True, comment="the alert.routed event"),
    Column("alert_id", Uuid, nullable=False, index=True),
    Column("thread_id", Uuid, nullable=False, index=True),
    Column("kind", String(16), nullable=False, comment="alert, update, cancel or forward"),
    Column("alert", JSONB, comment="the alert decided on (alerts, updates and cancels)"),
    Column("ruleset_hash", String(80), nullable=False),
    Column("decision", JSONB, nullable=False),
    Column("decided_at", DateTime(timezone=True), nullable=False),
)

rulesets = Table(
    "rulesets", metadata,
    Column("hash", String(80), primary_key=True),
    Column("content", JSONB, nullable=False, comment="{directory, rules}: enough to recompute any decision"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", Text, nullable=False),
)

activations = Table(
    "activations", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("hash", String(80), nullable=False),
    Column("activated_at", DateTime(timezone=True), nullable=False),
    Column("activated_by", Text, nullable=False),
    Column("source", String(16), comment="bootstrap, cli or api (None: activated before 0003)"),
)
