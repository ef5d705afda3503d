"""The notifier's operator API: delivery counts and the dead-letter list."""
from __future__ import annotations

from fastapi import APIRouter, Depends

from services.notifier import repository
from shared.auth import Role, require_token_role
from shared.service import Runtime


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/v1", dependencies=[Depends(require_token_role(Role.OPERATOR))])

    @api.get("/deliveries/summary")
    async def summary() -> dict[str, int]:
        """Return how many deliveries are pending, delivered and failed."""
        async with rt.sessions() as session:
            return await repository.delivery_counts(session)

    @api.get("/deliveries/failed")
    async def failed() -> list[dict]:
        """Return the newest dead-lettered deliveries."""
        async with rt.sessions() as session:
            return await repository.failed_deliveries(session)

    return api
