"""An alert's audit trail as the console shows it: each entry checked by an inclusion proof
against the latest signed checkpoint, with the audit log's public verifier key only.

The verification is the auditors' own (services/audit/verify.py, pure functions): the console
trusts neither the audit service's word nor its own database for the "verified" mark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from services.audit import keys
from services.audit.note import NoteError, SignerKey, VerifierKey
from services.audit.verify import VerificationError, open_signed, verify_trail_entry
from services.gateway.console.upstream import Upstream
from shared.auth import Principal
from shared.settings import Settings


@dataclass
class Entry:
    index: int
    type: str
    occurred_at: str | None
    summary: str
    status: str  # verified, failed, pending
    remark: str = ""


@dataclass
class Trail:
    entries: list[Entry] = field(default_factory=list)
    checkpoint_size: int | None = None
    error: str | None = None


def verifier_key(settings: Settings) -> VerifierKey:
    """The configured verifier key; outside production, the local log's own (development convenience)."""
    if settings.audit_verifier_key:
        return VerifierKey.parse(settings.audit_verifier_key)
    if settings.environment == "production":
        raise NoteError("BLONET_AUDIT_VERIFIER_KEY is not set")
    return SignerKey.parse(keys.key_file(settings).read_text()).verifier


def _summary(fields: dict) -> str:
    bits = [fields.get(k) for k in ("agency", "endpoint", "state", "action", "target", "code") if fields.get(k)]
    return " · ".join(str(b) for b in bits)


async def verified_trail(up: Upstream, who: Principal, alert_id: UUID) -> Trail:
    found = await up.get(who, "audit", f"/v1/trail/{alert_id}")
    if found.status == 404:
        return Trail(error="no audit entries yet")
    if not found.ok:
        return Trail(error=f"{found.status}: {found.detail()}")
    note = await up.get(who, "audit", "/v1/checkpoint")
    if not note.ok:
        return Trail(error=f"no checkpoint: {note.detail()}")
    try:
        checkpoint = open_signed(note.body, verifier_key(up.settings), "the latest checkpoint")
    except (VerificationError, NoteError, OSError) as exc:
        return Trail(error=str(exc))
    trail = Trail(checkpoint_size=checkpoint.size)
    for item in found.body["entries"]:
        fields = item["fields"]
        entry = Entry(item["index"], item["type"], fields.get("occurred_at"), _summary(fields.get("summary") or fields), "pending")
        if item["index"] < checkpoint.size:
            proof = await up.get(who, "audit", "/v1/proofs/inclusion", index=item["index"], tree_size=checkpoint.size)
            try:
                if not proof.ok:
                    raise VerificationError(f"no proof: {proof.detail()}")
                entry.remark = "; ".join(verify_trail_entry(item, proof.body, checkpoint))
                entry.status = "verified"
            except VerificationError as exc:
                entry.status, entry.remark = "failed", str(exc)
        trail.entries.append(entry)
    return trail
