"""Routing's HTTP API for operators: explain (dry run), stored decisions, and the active rules."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import AwareDatetime, BaseModel

from services.routing import repository
from services.routing.network import NetworkConfigError, network_from
from services.routing.policy import Thread, decide
from services.routing.state import ActiveNetwork
from shared.alerts import Alert
from shared.auth import Principal, Role, require_token_role
from shared.events import AlertRouted
from shared.service import Runtime

Operator = Annotated[Principal, Depends(require_token_role(Role.OPERATOR))]
Reader = Annotated[Principal, Depends(require_token_role(Role.OPERATOR, Role.AUDITOR))]


class Explain(BaseModel):
    alert: Alert
    at: AwareDatetime | None = None


class Activated(BaseModel):
    ruleset_hash: str
    changed: bool


def router(rt: Runtime, active: ActiveNetwork) -> APIRouter:
    api = APIRouter(prefix="/v1")

    @api.post("/routing/explain")
    async def explain(body: Explain, _: Operator) -> AlertRouted:
        """Return what the active rules would decide for a new alert, and why, without sending anything."""
        return decide(body.alert, Thread(), active.current, body.at or datetime.now(timezone.utc))

    @api.get("/decisions/{alert_id}")
    async def decisions(alert_id: UUID, _: Reader) -> list[dict]:
        """Return every stored decision for an alert (the alert itself, updates, forwards)."""
        async with rt.sessions() as session:
            rows = await repository.decisions_for(session, alert_id)
        if not rows:
            raise HTTPException(404, f"no decision for alert {alert_id}")
        return rows

    @api.get("/routing/rules")
    async def rules(_: Reader) -> dict:
        """Return the active directory and rules with their hash, and the activation history."""
        async with rt.sessions() as session:
            history = await repository.history(session)
        return {"ruleset_hash": active.current.hash, "content": active.current.network.content(), "history": history}

    @api.put("/routing/rules")
    async def put_rules(content: Annotated[dict, Body()], caller: Operator) -> Activated:
        """Validate and activate a new {directory, rules}; a refused version leaves the active one serving."""
        try:
            network = network_from(content, "body")
        except NetworkConfigError as exc:
            raise HTTPException(422, {"problems": exc.problems}) from None
        changed = await active.apply(network, by=f"key:{caller.key_id}", source="api")
        return Activated(ruleset_hash=network.hash, changed=changed)

    return api
