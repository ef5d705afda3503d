"""Identifiers: UUIDv7 everywhere, and deterministic UUIDv7s for derived events."""
from __future__ import annotations

import hashlib
import uuid

import uuid6


def new_id() -> uuid.UUID:
    """Return a fresh, time-ordered UUIDv7."""
    return uuid.UUID(int=uuid6.uuid7().int)


def derived_id(cause: uuid.UUID, *parts: object) -> uuid.UUID:
    """Return a UUIDv7 determined by its cause, so reprocessing an event re-creates the same ids.

    The 48-bit timestamp is the cause's (when the cause is a UUIDv7), the other 74 bits come from
    SHA-256 of the cause and the parts: duplicates produced by at-least-once redelivery collide
    on purpose and are absorbed by unique keys downstream.
    """
    digest = int.from_bytes(hashlib.sha256("|".join([str(cause), *map(str, parts)]).encode()).digest()[:16])
    ts = cause.int >> 80 if cause.version == 7 else digest >> 80
    rand_a = (digest >> 64) & 0xFFF
    rand_b = digest & ((1 << 62) - 1)
    value = (ts << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)
