"""Routing's HTTP API for operators: explain (dry run), stored decisions, and the active rules."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Depends, HTTPException
from pydantic import AwareDatetime, BaseModel, Field

from services.routing import repository
from services.routing.compiled import Compiled
from services.routing.network import NetworkConfigError, network_from
from services.routing.policy import Thread, decide, differences
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
    content: dict | None = Field(None, description="a candidate {directory, rules} to decide under instead of the "
                                                    "active version (as PUT /v1/routing/rules takes); nothing is activated")


class Compare(Explain):
    content: dict = Field(description="the candidate {directory, rules}")


class Change(BaseModel):
    target: str = Field(description="the unit (or agency) id")
    before: str | None = Field(description="its outcome under the active version, e.g. 'full view', 'denied: tlp_red'")
    after: str | None = Field(description="its outcome under the candidate (None: not a candidate there)")


class Comparison(BaseModel):
    candidate: AlertRouted
    active: AlertRouted
    changes: list[Change]


class Activated(BaseModel):
    ruleset_hash: str
    changed: bool


class Version(BaseModel):
    ruleset_hash: str
    content: dict
    created_at: datetime
    created_by: str


def candidate(content: dict) -> Compiled:
    """Validate a candidate version; refuse it with 422 and every problem."""
    try:
        return Compiled(network_from(content, "content"))
    except NetworkConfigError as exc:
        raise HTTPException(422, {"problems": exc.problems}) from None


def router(rt: Runtime, active: ActiveNetwork) -> APIRouter:
    api = APIRouter(prefix="/v1")

    def explained(body: Explain, net: Compiled) -> AlertRouted:
        return decide(body.alert, Thread(), net, body.at or datetime.now(timezone.utc))

    @api.post("/routing/explain", responses={422: {"description": "the alert, or the candidate version, does not validate"}})
    async def explain(body: Explain, _: Operator) -> AlertRouted:
        """Return what the active rules (or a candidate version, if `content` is given) would decide for a
        new alert, and why, without sending or activating anything."""
        return explained(body, candidate(body.content) if body.content is not None else active.current)

    @api.post("/routing/explain/compare", responses={422: {"description": "the candidate version does not validate"}})
    async def compare(body: Compare, _: Operator) -> Comparison:
        """Return the decisions under a candidate version and under the active one, and every outcome that differs."""
        mine, theirs = explained(body, candidate(body.content)), explained(body, active.current)
        return Comparison(candidate=mine, active=theirs, changes=differences(theirs, mine))

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

    @api.get("/routing/rules/{ruleset_hash}", responses={404: {}})
    async def version(ruleset_hash: str, _: Reader) -> Version:
        """Return the content of any stored version (active or from the history), e.g. to roll back to it."""
        async with rt.sessions() as session:
            found = await repository.version(session, ruleset_hash)
        if found is None:
            raise HTTPException(404, f"no stored version {ruleset_hash}")
        return Version(ruleset_hash=found["hash"], content=found["content"], created_at=found["created_at"],
                       created_by=found["created_by"])

    @api.put("/routing/rules")
    async def put_rules(content: Annotated[dict, Body()], caller: Operator) -> Activated:
        """Validate and activate a {directory, rules} — a new one, or a past one to roll back to; a refused
        version leaves the active one serving."""
        try:
            network = network_from(content, "body")
        except NetworkConfigError as exc:
            raise HTTPException(422, {"problems": exc.problems}) from None
        changed = await active.apply(network, by=f"key:{caller.key_id}", source="api")
        return Activated(ruleset_hash=network.hash, changed=changed)

    return api
