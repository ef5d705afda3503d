"""An alert's audit trail as the console shows it: each entry checked by an inclusion proof
against the latest signed checkpoint, with the audit log's public verifier key only.

The verification is the auditors' own (shared/auditproof.py, pure functions shared with `blonet audit verify`): the console
trusts neither the audit service's word nor its own database for the "verified" mark.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from uuid import UUID

import orjson

from services.gateway.console.upstream import Upstream, UpstreamError
from services.gateway.console.web import Problem, problem
from shared.auditproof import VerificationError, erased_by, open_signed, verify_trail_entry
from shared.auth import Principal
from shared.checkpoint import NoteError, VerifierKey
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
    error: Problem | None = None  # what the page says instead of the entries


class NoVerifierKey(Exception):
    """No verifier key is configured: the console marks nothing verified."""


def verifier_key(settings: Settings) -> VerifierKey:
    """The log's public verifier key, pinned in the configuration (BLONET_AUDIT_VERIFIER_KEY).

    Never read from the file the audit service publishes: whoever could rewrite that file (the audit
    service, or anyone holding its host) could then sign checkpoints the console calls verified."""
    if not settings.audit_verifier_key:
        raise NoVerifierKey("no verifier key configured: set BLONET_AUDIT_VERIFIER_KEY to the log's vkey "
                            "(`blonet audit vkey`) for the verified mark")
    return VerifierKey.parse(settings.audit_verifier_key)


def _summary(fields: dict) -> str:
    bits = [fields.get(k) for k in ("agency", "endpoint", "state", "action", "target", "code") if fields.get(k)]
    return " · ".join(str(b) for b in bits)


def _shown(item: dict) -> Entry:
    """What the page shows of an entry, read from its bytes (the part the proof covers), not the JSON around them."""
    try:
        fields = orjson.loads(base64.b64decode(item["entry"], validate=True))
    except (KeyError, ValueError, binascii.Error):
        return Entry(item.get("index", -1), "?", None, "", "failed", "the entry's bytes are unreadable")
    return Entry(item["index"], str(fields.get("type")), fields.get("occurred_at"),
                 _summary(fields.get("summary") or fields), "pending")


async def verified_trail(up: Upstream, who: Principal, alert_id: UUID) -> Trail:
    """Fetch the latest checkpoint, then the trail with a proof for each entry (two audited reads), and check them.

    Before the log's first non-empty checkpoint no entry can be proven yet: each is shown as after
    the latest checkpoint, as later entries always are.
    """
    try:
        note = await up.get(who, "audit", "/v1/checkpoint")
        if not note.ok:
            return Trail(error=problem("audit", note.status, note.detail()))
        try:
            checkpoint = open_signed(note.body, verifier_key(up.settings), "the latest checkpoint")
        except NoVerifierKey:
            return Trail(error=("trail.no_verifier_key", {}))
        except (VerificationError, NoteError) as exc:
            return Trail(error=("trail.checkpoint_bad", {"detail": str(exc)}))
        proofs = {"tree_size": checkpoint.size} if checkpoint.size else {}
        found = await up.get(who, "audit", f"/v1/trail/{alert_id}", **proofs)
    except UpstreamError as exc:
        return Trail(error=problem("audit", None, exc.detail))
    if found.status == 404:
        return Trail(error=("trail.none", {}))
    if not found.ok:
        return Trail(error=problem("audit", found.status, found.detail()))
    trail = Trail(checkpoint_size=checkpoint.size)
    try:
        erased = erased_by(((e, e["proof"]) for e in found.body.get("erasures", []) if "proof" in e), checkpoint)
    except (VerificationError, KeyError, TypeError, ValueError) as exc:
        return Trail(error=("trail.erasures_bad", {"detail": str(exc)}))
    for item in found.body["entries"]:
        entry = _shown(item)
        if entry.status != "failed" and item["index"] < checkpoint.size:
            try:
                if "proof" not in item:
                    raise VerificationError("no inclusion proof was given")
                entry.remark = "; ".join(verify_trail_entry(item, item["proof"], checkpoint, erased))
                entry.status = "verified"
            except VerificationError as exc:
                entry.status, entry.remark = "failed", str(exc)
        trail.entries.append(entry)
    return trail
