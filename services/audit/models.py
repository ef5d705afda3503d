"""The audit service's tables (schema `audit`, owned by `audit_owner`).

- `entries`: the log itself, append-only. `entry` holds each entry's canonical bytes (the Merkle
  leaf); the other columns are copies of fields inside it, kept only so queries can use indexes.
- `tree_nodes`: the hash of every complete subtree (level 0: the leaf hashes), append-only:
  proofs read O(log n) of them.
- `checkpoints`: every signed checkpoint, append-only.
- `payloads`: the events' payloads, salted; the only table rows leave (retention, erasure).
"""
from sqlalchemy import (
    BigInteger, Column, DateTime, Index, LargeBinary, MetaData, PrimaryKeyConstraint, SmallInteger, String,
    Table, Text, Uuid, text,
)
from sqlalchemy.dialects.postgresql import ARRAY

metadata = MetaData()

entries = Table(
    "entries", metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False, comment="0-based leaf index in the tree"),
    Column("event_id", Uuid, nullable=False, unique=True, comment="dedupe key: an event is logged once"),
    Column("type", String(64), nullable=False),
    Column("alert_id", Uuid),
    Column("causation_id", Uuid),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("agencies", ARRAY(String(64)), nullable=False),
    Column("entry", LargeBinary, nullable=False, comment="the canonical entry bytes: the Merkle leaf"),
    Index("entries_alert", "alert_id"),
    Index("entries_type_time", "type", "occurred_at"),
    Index("entries_time", "occurred_at"),
    Index("entries_agencies", "agencies", postgresql_using="gin"),
)

tree_nodes = Table(
    "tree_nodes", metadata,
    Column("level", SmallInteger, nullable=False),
    Column("idx", BigInteger, nullable=False),
    Column("hash", LargeBinary(32), nullable=False),
    PrimaryKeyConstraint("level", "idx"),
    Index("tree_nodes_leaf_hash", "hash", postgresql_where=text("level = 0")),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False, comment="the signed checkpoint, as served"),
    Column("signed_at", DateTime(timezone=True), nullable=False),
)

payloads = Table(
    "payloads", metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False, comment="the entry it belongs to"),
    Column("nonce", LargeBinary(16), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False, index=True),
)
