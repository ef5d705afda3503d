"""The notifier's tables (schema `notifier`): endpoint secrets, deliveries, attempts, the retry queue, outbox."""
from sqlalchemy import (BigInteger, Boolean, Column, DateTime, Float, Index, Integer, LargeBinary, MetaData, String,
                        Table, Text, Uuid)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

endpoints = Table(
    "endpoints", metadata,
    Column("endpoint", String(64), primary_key=True),
    Column("secret", Text, nullable=False, comment="whsec_…; never leaves the notifier but via `blonet endpoints`"),
    Column("enabled", Boolean, nullable=False, server_default="true"),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("previous_secret", Text, comment="the secret before the last rotation; also signs until previous_until"),
    Column("previous_until", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    Column("rate_per_second", Float, comment="None: the notifier's default"),
    Column("last_success_at", DateTime(timezone=True), comment="the latest attempt answered 2xx"),
    Column("last_failure_at", DateTime(timezone=True), comment="the latest attempt that failed"),
    Column("last_error", Text, comment="why that attempt failed"),
    Column("circuit_state", String(16), nullable=False, server_default="closed",
           comment="as the owning instance last recorded it: closed, open, half_open"),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("circuit_open_until", DateTime(timezone=True), comment="open: when a probe may go"),
)

endpoint_epoch = Table(
    "endpoint_epoch", metadata,
    Column("id", Integer, primary_key=True),
    Column("n", BigInteger, nullable=False, comment="bumped by a trigger whenever a secret, switch or rate changes"),
)

deliveries = Table(
    "deliveries", metadata,
    Column("delivery_id", Uuid, primary_key=True, comment="also the webhook-id: stable across retries"),
    Column("request_event_id", Uuid, nullable=False),
    Column("alert_id", Uuid, nullable=False, index=True),
    Column("thread_id", Uuid, nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("agency", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("body", JSONB, nullable=False),
    Column("traceparent", String(64)),
    Column("state", String(16), nullable=False, comment="pending, delivered, failed"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("reason", Text, comment="why the last attempt failed, or why the delivery was dead-lettered"),
    Column("schedule_start", Integer, nullable=False, server_default="0",
           comment="attempts made before the last replay: the retry schedule restarts there"),
    Column("format", String(8), nullable=False, server_default="json", comment="json or cap"),
    Column("language", String(16), comment="the endpoint's preferred language"),
    Index("deliveries_failed", "endpoint", "finished_at", postgresql_where="state = 'failed'"),
)

retries = Table(
    "retries", metadata,
    Column("delivery_id", Uuid, primary_key=True, comment="a pending delivery (its row in deliveries) to send later"),
    Column("endpoint", String(64), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("leased_until", DateTime(timezone=True), comment="claimed by an instance until then"),
    Index("retries_due", "due_at"),
)

attempts = Table(
    "attempts", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("delivery_id", Uuid, nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("http_status", Integer),
    Column("error", Text),
    Column("response_excerpt", Text),
    Column("outcome", String(16), comment="delivered, retrying or failed (None: recorded before 0004)"),
    Column("reason", Text, comment="why the attempt failed, in one line"),
    Column("next_attempt_at", DateTime(timezone=True), comment="when the retry it scheduled was due"),
)

outbox = Table(
    "outbox", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", String(128), nullable=False),
    Column("key", String(128), nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("published_at", DateTime(timezone=True)),
    Index("outbox_unpublished", "id", postgresql_where="published_at IS NULL"),
)

ack_watch = Table(
    "ack_watch", metadata,
    Column("alert_id", Uuid, primary_key=True),
    Column("agency", String(64), primary_key=True),
    Column("delivery_id", Uuid, comment="the delivery re-sent on escalation (None: ack came first)"),
    Column("deadline", DateTime(timezone=True)),
    Column("state", String(16), nullable=False, comment="waiting, acknowledged, escalated"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ack_watch_due", "deadline", postgresql_where="state = 'waiting'"),
)
