"""The notifier's operator API: delivery state, dead letters, replay, recovery, endpoint switches.

Every state-changing call is recorded as an `operator.action` event (topic operations.actions)
in the same transaction as the change, with the operator's credential id.
"""
from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, HTTPException
from pydantic import AwareDatetime, BaseModel, Field

from services.notifier import repository, service
from shared.auth import Principal, Role, require_token_role
from shared.service import Runtime

Operator = Annotated[Principal, Depends(require_token_role(Role.OPERATOR))]


class Recover(BaseModel):
    since: AwareDatetime = Field(description="replay every delivery to the endpoint that failed at or after this time")


class Switch(BaseModel):
    reason: str | None = Field(None, max_length=2_000)


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token_role(Role.OPERATOR))])

    @api.get("/deliveries")
    async def of_alert(alert_id: UUID) -> list[dict]:
        """Return every delivery of one alert (escalations included), each with its attempts and the
        recipient agency's acknowledgement state."""
        async with rt.sessions() as session:
            return [service.present_delivery(r) for r in await repository.deliveries_of_alert(session, alert_id)]

    @api.get("/deliveries/summary")
    async def summary() -> dict[str, int]:
        """Return how many deliveries are pending, delivered and failed."""
        async with rt.sessions() as session:
            return await repository.delivery_counts(session)

    @api.get("/deliveries/failed")
    async def failed(endpoint: str | None = None, limit: int = 100) -> list[dict]:
        """Return the newest dead-lettered deliveries with their reasons, optionally of one endpoint."""
        async with rt.sessions() as session:
            return await repository.failed_deliveries(session, min(limit, 1000), endpoint)

    @api.get("/deliveries/{delivery_id}")
    async def delivery(delivery_id: UUID) -> dict:
        """Return one delivery and every attempt made."""
        async with rt.sessions() as session:
            found = await repository.delivery_with_attempts(session, delivery_id)
        if found is None:
            raise HTTPException(404, "no such delivery")
        return service.present_delivery(found)

    @api.post("/deliveries/{delivery_id}/replay", status_code=202, responses={404: {}, 409: {}})
    async def replay(delivery_id: UUID, who: Operator) -> dict:
        """Send a dead-lettered delivery again, with the same webhook-id and a fresh retry schedule.

        404 if there is no such delivery; 409 if it is not dead-lettered, saying why (delivered when, or pending).
        """
        async with rt.sessions() as session:
            try:
                await service.replay_delivery(session, rt.settings, delivery_id, actor=who.key_id)
            except service.Refused as exc:
                raise HTTPException(exc.status, exc.reason) from None
            await session.commit()
        return {"delivery_id": str(delivery_id), "state": "pending"}

    @api.post("/endpoints/{endpoint}/recover", status_code=202, responses={404: {}})
    async def recover(endpoint: str, body: Recover, who: Operator) -> dict:
        """Send again every delivery to the endpoint that failed since a time; with none, `reason` says why."""
        async with rt.sessions() as session:
            try:
                count, reason = await service.recover_endpoint(session, rt.settings, endpoint, body.since, actor=who.key_id)
            except service.Refused as exc:
                raise HTTPException(exc.status, exc.reason) from None
            await session.commit()
        return {"endpoint": endpoint, "replayed": count, **({"reason": reason} if reason else {})}

    @api.get("/endpoints")
    async def list_endpoints() -> list[dict]:
        """Return every endpoint's state and health — never secrets.

        Health: the circuit as the instance owning the endpoint last recorded it (the same answer
        from every instance), how many of its deliveries are pending, delivered and failed, and its
        last success and last failure.
        """
        async with rt.sessions() as session:
            rows = await repository.list_endpoints(session)
            counts = await repository.counts_by_endpoint(session)
        return [service.endpoint_health(r, counts.get(r["endpoint"])) for r in rows]

    async def switch(endpoint: str, enabled: bool, body: Switch, who: Principal) -> dict:
        async with rt.sessions() as session:
            found = await service.set_enabled(session, rt.settings, endpoint, enabled, actor=who.key_id, reason=body.reason)
            await session.commit()
        if not found:
            raise HTTPException(404, "no such endpoint")
        return {"endpoint": endpoint, "enabled": enabled}

    @api.post("/endpoints/{endpoint}/enable")
    async def enable(endpoint: str, who: Operator, body: Switch | None = None) -> dict:
        """Enable an endpoint: its waiting deliveries go out again."""
        return await switch(endpoint, True, body or Switch(), who)

    @api.post("/endpoints/{endpoint}/disable")
    async def disable(endpoint: str, who: Operator, body: Switch | None = None) -> dict:
        """Disable an endpoint: its deliveries wait (nothing is lost) until it is enabled."""
        return await switch(endpoint, False, body or Switch(), who)

    return api
