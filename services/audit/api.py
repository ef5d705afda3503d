"""The auditors' HTTP API: checkpoints, raw entries, proofs, an alert's trail, search.

Every route needs the auditor role (operators may also read an alert's trail, the latest
checkpoint and inclusion proofs), and every query is itself appended to the log (type
`audit.access`) before it is answered. Proofs are only given against signed tree sizes.
"""
from __future__ import annotations

import base64
import binascii
from datetime import datetime, timezone
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse

from services.audit import entry, repository, service
from services.audit.service import ProofRequestError, b64
from services.audit.trail import causal_order
from shared.auth import Principal, Role, require_token_role
from shared.ids import new_id
from shared.merkle import leaf_hash
from shared.service import Runtime

MAX_ENTRIES = 10_000  # per /v1/entries request
NOTE = "text/plain; charset=utf-8"


def present(row: dict) -> dict:
    """Return one entry as served: its exact bytes, its leaf hash, its fields, and its payload if kept."""
    doc = entry.decode(row["entry"])
    out = {"index": row["idx"], "type": doc["type"], "event_id": doc["event_id"], "causation_id": doc.get("causation_id"),
           "leaf_hash": b64(leaf_hash(row["entry"])), "entry": b64(row["entry"]), "fields": doc}
    if "body" in row:
        body = row["body"]
        out["payload"] = None if body is None else {"nonce": b64(row["nonce"]), "body": b64(body)}
        out["payload_erased"] = body is None and "payload" in doc
        if body is not None and doc["type"] not in (entry.REJECTED, entry.DEADLETTER):
            out["event"] = orjson.loads(body)
    return out


def _leaf_param(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 32:
        raise HTTPException(400, "hash must be a SHA-256 leaf hash, in hex (64 digits) or base64")
    return raw


def router(rt: Runtime, checkpointer, head: service.Head | None = None) -> APIRouter:
    """The auditors' API; `head` is the process's appender state (shared with the consumer)."""
    head = head or service.Head()
    api = APIRouter(prefix="/v1", tags=["audit"])

    def audited(*roles: Role):
        """Dependency: a token with one of `roles`, and the query recorded in the log before it is answered."""
        check = require_token_role(*roles)

        async def dependency(request: Request, principal: Principal = Depends(check)) -> Principal:
            try:
                alert_id = UUID(request.path_params["alert_id"]) if "alert_id" in request.path_params else None
            except ValueError:
                alert_id = None
            draft = entry.access(new_id(), key_id=principal.key_id, agency=principal.agency, method=request.method,
                                 path=request.url.path, query=request.url.query, alert_id=alert_id)
            async with rt.sessions() as session:
                await service.append(session, [draft], datetime.now(timezone.utc), head)
                await session.commit()
            return principal

        return Depends(dependency)

    auditor = audited(Role.AUDITOR)
    # Operators may read what the console shows with a verified mark: an alert's trail, the latest
    # checkpoint and inclusion proofs (still each recorded with their key id).
    reader = audited(Role.AUDITOR, Role.OPERATOR)

    async def run(work):
        async with rt.sessions() as session:
            try:
                return await work(session)
            except ProofRequestError as exc:
                raise HTTPException(400, str(exc)) from None

    @api.get("/checkpoint", response_class=PlainTextResponse, dependencies=[reader])
    async def checkpoint() -> PlainTextResponse:
        """Return the latest signed checkpoint (C2SP tlog-checkpoint in a signed note)."""
        latest = await run(repository.latest_checkpoint)
        if latest is None:
            raise HTTPException(503, "no checkpoint has been signed yet")
        return PlainTextResponse(latest["note"], media_type=NOTE)

    @api.post("/checkpoint", response_class=PlainTextResponse, dependencies=[audited(Role.AUDITOR, Role.OPERATOR)])
    async def sign_now() -> PlainTextResponse:
        """Sign a checkpoint of the log as it is now (if it grew) and return it."""
        try:
            return PlainTextResponse(await checkpointer.sign(), media_type=NOTE)
        except service.TamperError as exc:
            raise HTTPException(409, f"refused to sign: {exc}") from None

    @api.get("/checkpoints", dependencies=[auditor])
    async def checkpoints(after: int = Query(-1, ge=-1), limit: int = Query(1000, ge=1, le=1000)) -> dict:
        """Return every signed checkpoint with a tree size above `after`, oldest first."""
        rows = await run(lambda s: repository.checkpoint_list(s, after, limit))
        return {"checkpoints": [{"tree_size": r["tree_size"], "signed_at": r["signed_at"], "note": r["note"]} for r in rows]}

    @api.get("/entries", dependencies=[auditor])
    async def entries(start: int = Query(0, ge=0), end: int | None = Query(None, gt=0)) -> dict:
        """Return the raw entries [start, end): each one's exact bytes in base64, at most 10,000."""
        async def work(session):
            size = await repository.size(session)
            if start >= size:
                raise ProofRequestError(f"start {start} is beyond the log's {size} entries")
            stop = min(end or size, size, start + MAX_ENTRIES)
            if stop <= start:
                raise ProofRequestError(f"end ({end}) must be larger than start ({start})")
            return {"start": start, "end": stop, "size": size,
                    "entries": [{"index": i, "entry": b64(e)} for i, e in await repository.entry_bytes(session, start, stop)]}
        return await run(work)

    @api.get("/proofs/inclusion", dependencies=[reader])
    async def inclusion(index: int | None = Query(None, ge=0), hash: str | None = Query(None),
                        tree_size: int | None = Query(None, ge=1)) -> dict:
        """Prove an entry (by index, or by its leaf hash) is in the signed tree of `tree_size` (default: latest)."""
        if (index is None) == (hash is None):
            raise HTTPException(400, "give either index or hash")
        leaf = _leaf_param(hash) if hash is not None else None
        return await run(lambda s: service.inclusion_proof(s, tree_size=tree_size, index=index, leaf=leaf))

    @api.get("/proofs/consistency", dependencies=[auditor])
    async def consistency(first: int = Query(...), second: int | None = Query(None, ge=1)) -> dict:
        """Prove the signed tree of `first` entries is a prefix of the tree of `second` (default: latest)."""
        return await run(lambda s: service.consistency_proof(s, first=first, second=second))

    @api.get("/trail/{alert_id}", dependencies=[reader])
    async def trail(alert_id: UUID, tree_size: int | None = Query(
            None, ge=1, description="also prove each entry's inclusion in the signed tree of this size")) -> dict:
        """Return an alert's whole story, causes before effects, each entry with its index and bytes.

        With `tree_size`, each entry inside that signed tree carries its inclusion `proof`: one request
        (and one `audit.access` entry) for a whole verified trail, instead of one per entry."""
        async def work(session):
            rows = await repository.trail(session, alert_id)
            events = [r for r in rows if not r["type"].startswith("audit.")]
            if not events:
                raise HTTPException(404, f"no audit entries for alert {alert_id}")
            by_index = {r["idx"]: r for r in events}
            order = causal_order([(r["idx"], r["event_id"], r["causation_id"]) for r in events])
            entries = [present(by_index[i]) for i in order]
            # The erasures that account for every missing payload, wherever they are in the log (a
            # retention sweep's names no alert): a verifier accepts a missing payload only with one.
            gone = {r["idx"] for r in events if r["body"] is None}
            erasures = [present(r) for r in await repository.erasures(session)
                        if entry.erases_any(entry.decode(r["entry"]), gone)] if gone else []
            for item in [*entries, *erasures] if tree_size is not None else ():
                if item["index"] < tree_size:
                    item["proof"] = await service.inclusion_proof(session, tree_size=tree_size, index=item["index"])
            return {"alert_id": alert_id, "entries": entries, "erasures": erasures,
                    "related": [present(r) for r in rows if r["type"].startswith("audit.")]}
        return await run(work)

    @api.get("/search", dependencies=[auditor])
    async def search(agency: str | None = None, type: list[str] | None = Query(None), since: datetime | None = None,
                     until: datetime | None = None, after: int = Query(-1, ge=-1),
                     limit: int = Query(100, ge=1, le=1000)) -> dict:
        """Search entries by agency involved, event type and time range (event time), in log order."""
        rows = await run(lambda s: repository.search(s, agency=agency, types=type, since=since, until=until,
                                                     after=after, limit=limit))
        return {"entries": [present(r) for r in rows], "next_after": rows[-1]["idx"] if len(rows) == limit else None}

    return api
