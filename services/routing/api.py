"""Routing's HTTP API for operators: a stored decision, and a dry run of the rules."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException
from pydantic import AwareDatetime, BaseModel

from services.routing import repository
from services.routing.directory import Directory, RuleSet
from services.routing.policy import decide
from shared.alerts import Alert
from shared.auth import Role, require_token_role
from shared.events import AlertRouted
from shared.service import Runtime


class DryRun(BaseModel):
    alert: Alert
    at: AwareDatetime | None = None


def router(rt: Runtime, directory: Directory, rules: RuleSet, ruleset_hash: str) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token_role(Role.OPERATOR, Role.AUDITOR))])

    @api.get("/decisions/{alert_id}")
    async def get_decision(alert_id: UUID) -> dict:
        """Return the stored decision for an alert, with the rule-set hash it was made under."""
        async with rt.sessions() as session:
            row = await repository.get_decision(session, alert_id)
        if row is None:
            raise HTTPException(404, f"no decision for alert {alert_id}")
        return row

    @api.post("/dry-run")
    async def dry_run(body: DryRun) -> AlertRouted:
        """Return what the active rules would decide for an alert, without sending anything."""
        if body.alert.sender_agency not in {a.id for a in directory.agencies}:
            raise HTTPException(422, f"unknown sender agency {body.alert.sender_agency}")
        return decide(body.alert, directory, rules, ruleset_hash, body.at or datetime.now(timezone.utc))

    return api
