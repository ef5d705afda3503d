"""The log's entries and their canonical bytes, defined here once (docs/audit.md, "Entries").

An entry is one JSON object serialised canonically: keys sorted, no insignificant whitespace,
UTF-8, and only strings, integers, booleans, null, arrays and objects (never a float) — for
these types that is RFC 8785 (JCS). Its Merkle leaf hash is SHA-256(0x00 || those bytes).

An entry keeps an event's metadata and a salted digest of its payload, never the payload:
the payload goes to the payload store, where retention and erasure can remove it while the
entry, and so every proof, stays as it was. The salt (`nonce`) is erased with the payload, so
the digest left behind cannot be used to confirm a guess of what was erased.
"""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import UUID

import orjson
from pydantic import ValidationError

from shared.auditproof import ERASURE, payload_digest  # defined beside the verifier that recomputes them
from shared.events import Envelope

FORMAT = 1
REJECTED = "audit.rejected"  # a record on a topic that is not a valid event
DEADLETTER = "audit.deadletter"  # a record a service could not handle, moved to its dead-letter topic
ACCESS = "audit.access"  # an auditor's query
NONCE_SIZE = 16
_REJECTED_NS = uuid.UUID("6f1d7d0e-6a55-4c1b-9a63-0c2b3a0e51a1")  # names the ids of rejected records
_DEADLETTER_NS = uuid.UUID("0b0e5d2c-52a8-4d4e-8f3e-4f1c9a6d7b20")  # names the ids of dead letters
DEADLETTER_FIELDS = ("group", "topic", "partition", "offset", "error_class", "error")


def canonical(doc: dict) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def timestamp(t: datetime) -> str:
    """Return the entry's form of a time: UTC, microseconds, a trailing Z."""
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Draft:
    """An entry waiting for its place in the log: everything but its index and recording time."""

    event_id: UUID
    type: str
    fields: dict  # the entry's type-specific fields
    payload: bytes | None = None  # goes to the payload store; the entry gets its digest
    alert_id: UUID | None = None
    causation_id: UUID | None = None
    occurred_at: datetime | None = None
    agencies: tuple[str, ...] = field(default=())


def seal(draft: Draft, index: int, recorded_at: datetime, nonce: bytes | None) -> bytes:
    """Return the canonical bytes of `draft` as the log's entry number `index`."""
    doc = {"format": FORMAT, "index": index, "recorded_at": timestamp(recorded_at),
           "event_id": str(draft.event_id), "type": draft.type, **draft.fields}
    if draft.payload is not None:
        doc["payload"] = {"sha256": payload_digest(nonce, draft.payload), "size": len(draft.payload)}
    return canonical(doc)


# --- what an entry keeps of each event: metadata an auditor needs, no personal data ------------

def _plain(value):
    """Keep an entry canonical: a float (never meant in these fields) is kept as its text."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return [repr(v) if isinstance(v, float) else v for v in value]
    return value


def _pick(d: dict, *keys: str) -> dict:
    return {k: _plain(d.get(k)) for k in keys}


def _submitted(p: dict) -> dict:
    alert = p.get("alert") or {}
    return {**_pick(alert, "sender_agency", "sender_post", "msg_type", "references", "category", "severity", "urgency",
                    "certainty", "tlp", "handling", "addressees", "effective", "expires"),
            "submitted_by": p.get("submitted_by"), "has_personal_data": bool(alert.get("personal_data"))}


def _routed(p: dict) -> dict:
    return {"ruleset_hash": p.get("ruleset_hash"),
            "recipients": [_pick(r, "agency", "unit", "endpoint", "profile", "rule", "redacted") for r in p.get("recipients") or []],
            "denied": [_pick(d, "agency", "unit", "code") for d in p.get("denied") or []]}


SUMMARIES: dict[str, Callable[[dict], dict]] = {
    "alert.submitted": _submitted,
    "alert.routed": _routed,
    "delivery.requested": lambda p: _pick(p, "delivery_id", "endpoint", "agency", "unit", "profile", "channel", "format"),
    "delivery.status": lambda p: _pick(p, "delivery_id", "endpoint", "agency", "state", "attempt", "http_status"),
    "alert.acknowledged": lambda p: _pick(p, "agency", "unit", "status", "acknowledged_by"),
    "alert.forwarded": lambda p: _pick(p, "forward_id", "agency", "unit", "to", "forwarded_by"),
}
AGENCY_KEYS = ("agency", "sender_agency")


def _agencies(kept: dict) -> list[str]:
    found = {kept.get(k) for k in AGENCY_KEYS}
    for group in ("recipients", "denied"):
        found |= {r.get("agency") for r in kept.get(group) or ()}
    return sorted(a for a in found if isinstance(a, str))


def summary(event_type: str, payload: dict) -> dict:
    """Return what the entry keeps of a payload: ids, parties, codes and states, no narrative."""
    pick = SUMMARIES.get(event_type)
    return pick(payload) if pick else _pick(payload, *(k for k in AGENCY_KEYS if k in payload))


# --- drafts ---------------------------------------------------------------------------------

def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()[:5])[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


def _uuid(text: str | None) -> UUID | None:
    try:
        return UUID(text) if text else None
    except ValueError:
        return None


def from_deadletter(source: dict, raw: bytes, facts: dict[str, str]) -> Draft:
    """Return the entry of a dead letter: which group gave up on which record, and why (no data quoted)."""
    original = {k: facts.get(k) for k in DEADLETTER_FIELDS}
    for k in ("partition", "offset"):
        original[k] = int(original[k]) if (original[k] or "").isdigit() else None
    # Named by the group and the source record, so the same record dead-lettered again is logged once.
    name = f"{original['group']}/{original['topic']}/{original['partition']}/{original['offset']}"
    alert_id = _uuid(facts.get("alert-id"))
    return Draft(uuid.uuid5(_DEADLETTER_NS, name), DEADLETTER,
                 {"source": source, "deadletter": original, "alert_id": str(alert_id) if alert_id else None},
                 payload=raw, alert_id=alert_id)


def from_record(topic: str, partition: int, offset: int, value: bytes | None,
                deadletter: dict[str, str] | None = None) -> Draft:
    """Return the draft entry of one Kafka record: an event, a dead letter (`deadletter`: its
    headers, see shared/kafka.py), or a rejected record with the reason."""
    source = {"topic": topic, "partition": partition, "offset": offset}
    raw = value or b""
    if deadletter is not None:
        return from_deadletter(source, raw, deadletter)
    try:
        env = Envelope.from_bytes(raw)
    except (ValidationError, ValueError) as exc:
        # Named by its coordinates and bytes, so a redelivered bad record is logged once too.
        name = f"{topic}/{partition}/{offset}/{hashlib.sha256(raw).hexdigest()}"
        return Draft(uuid.uuid5(_REJECTED_NS, name), REJECTED, {"source": source, "reason": _reason(exc)}, payload=raw)
    meta = env.model_dump(mode="json", include={"schema_version", "occurred_at", "origin_node", "alert_id", "thread_id",
                                                "causation_id"})
    kept = summary(env.type.value, env.payload)
    agencies = tuple(_agencies(kept))
    return Draft(env.event_id, env.type.value, {**meta, "source": source, "agencies": list(agencies), "summary": kept},
                 payload=raw, alert_id=env.alert_id, causation_id=env.causation_id, occurred_at=env.occurred_at,
                 agencies=agencies)


def access(event_id: UUID, *, key_id: str, agency: str, method: str, path: str, query: str,
           alert_id: UUID | None = None) -> Draft:
    """Return the draft entry recording one auditor query."""
    return Draft(event_id, ACCESS, {"actor": {"key_id": key_id, "agency": agency},
                                    "request": {"method": method, "path": path, "query": query},
                                    "alert_id": str(alert_id) if alert_id else None},
                 alert_id=alert_id, agencies=(agency,))


def erasure(event_id: UUID, *, reason: str, actor: str, indexes: list[int], alert_id: UUID | None = None,
            stored_before: datetime | None = None) -> Draft:
    """Return the draft entry recording that the payloads of `indexes` were erased."""
    return Draft(event_id, ERASURE, {
        "reason": reason, "actor": actor, "alert_id": str(alert_id) if alert_id else None,
        "stored_before": timestamp(stored_before) if stored_before else None,
        "erased": {"count": len(indexes), "indexes": _runs(indexes)},
    }, alert_id=alert_id)


def erases_any(doc: dict, indexes: set[int]) -> bool:
    """Return whether an erasure entry's document lists any of `indexes`."""
    return any(first <= i <= last for first, last in doc["erased"]["indexes"] for i in indexes)


def _runs(indexes: list[int]) -> list[list[int]]:
    """Compress indexes into [first, last] runs: a retention sweep may erase thousands."""
    runs: list[list[int]] = []
    for i in sorted(indexes):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


def decode(entry: bytes) -> dict:
    return orjson.loads(entry)
