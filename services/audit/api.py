"""The auditors' HTTP API: an alert's whole story, and raw log ranges with chain verification."""
from __future__ import annotations

from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query

from services.audit import repository
from services.audit.chain import GENESIS, ChainEntry, causal_order, first_break
from shared.auth import Role, require_token_role
from shared.service import Runtime


def _public(row: dict) -> dict:
    return {
        "index": row["idx"], "event_id": row["event_id"], "type": row["event_type"], "occurred_at": row["occurred_at"],
        "causation_id": row["causation_id"], "topic": row["topic"], "entry_hash": row["entry_hash"].hex(),
        "event": orjson.loads(row["payload"]),
    }


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token_role(Role.AUDITOR))])

    @api.get("/trail/{alert_id}")
    async def trail(alert_id: UUID) -> dict:
        """Return every logged event of an alert, causes before effects, each with its log index."""
        async with rt.sessions() as session:
            rows = await repository.trail(session, alert_id)
        if not rows:
            raise HTTPException(404, f"no audit entries for alert {alert_id}")
        by_index = {r["idx"]: r for r in rows}
        order = causal_order([(r["idx"], r["event_id"], r["causation_id"]) for r in rows])
        return {"alert_id": alert_id, "entries": [_public(by_index[i]) for i in order]}

    @api.get("/entries")
    async def entries(start: int = Query(0, ge=0), end: int = Query(..., gt=0)) -> dict:
        """Return log entries [start, end) and whether their chain verifies from `start`."""
        if end - start > 1000:
            raise HTTPException(422, "at most 1000 entries per request")
        async with rt.sessions() as session:
            rows = await repository.range_(session, max(start - 1, 0), end)
        prev = GENESIS
        if start > 0 and rows and rows[0]["idx"] == start - 1:
            prev = rows.pop(0)["entry_hash"]
        chain = [ChainEntry(r["idx"], r["payload"], r["prev_hash"], r["entry_hash"]) for r in rows]
        broken = first_break(chain, prev=prev, start=start)
        return {"start": start, "entries": [_public(r) for r in rows], "chain_ok": broken is None, "first_break": broken}

    return api
