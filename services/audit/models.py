"""The audit service's table (schema `audit`): the append-only entry log."""
from sqlalchemy import BigInteger, Column, DateTime, Integer, LargeBinary, MetaData, String, Table, Uuid

metadata = MetaData()

entries = Table(
    "entries", metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False, comment="0-based position in the log"),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("event_type", String(64), nullable=False, index=True),
    Column("alert_id", Uuid, index=True),
    Column("thread_id", Uuid),
    Column("causation_id", Uuid),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("topic", String(128), nullable=False),
    Column("kafka_partition", Integer, nullable=False),
    Column("kafka_offset", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False, comment="the Kafka record value, byte for byte"),
    Column("prev_hash", LargeBinary(32), nullable=False),
    Column("entry_hash", LargeBinary(32), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
