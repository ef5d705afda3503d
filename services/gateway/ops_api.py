"""Operators' JSON view of the whole flow (what `blonet tail` and `blonet status` read).

Operator role only: unlike /v1/alerts, which shows an agency its own alerts, this shows every
alert and every recipient. The console serves the same data as pages.
"""

from typing import Annotated
from uuid import UUID

import orjson

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import AwareDatetime

from services.gateway import ops, repository
from services.gateway.service import ApiError, Caller
from shared.auth import Role
from shared.service import Runtime

Text = Annotated[str | None, Query(max_length=64)]


def router(rt: Runtime, hub: ops.FlowHub, authenticate, open_stream) -> APIRouter:
    api = APIRouter(prefix="/v1/ops", tags=["operations"])

    async def operator(who: Annotated[Caller, Depends(authenticate)]) -> Caller:
        if not who.has(Role.OPERATOR):
            raise ApiError(403, "forbidden", "needs the operator role")
        return who

    Operator = Annotated[Caller, Depends(operator)]

    def filters(agency: Text = None, post: Text = None, category: Text = None, tlp: Text = None,
                since: AwareDatetime | None = None) -> ops.Filters:
        return ops.Filters(agency, post, category, tlp, since)

    Filtered = Annotated[ops.Filters, Depends(filters)]

    @api.get("/alerts")
    async def list_alerts(_: Operator, f: Filtered, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                          before: UUID | None = None) -> Response:
        """Every alert (newest first) with each recipient's state and every denial, filtered."""
        async with rt.sessions() as session:
            found = await ops.summaries(session, f, limit, before)
        return Response(_dumps({"alerts": found}), media_type="application/json")

    @api.get("/alerts/{alert_id}")
    async def one_alert(alert_id: UUID, _: Operator) -> Response:
        """One alert's summary, its forwards and its thread."""
        async with rt.sessions() as session:
            found = await ops.summary(session, alert_id)
            if found is None:
                raise ApiError(404, "not_found", f"no alert {alert_id}")
            found["forwards"] = await ops.forwards_of(session, alert_id)
            found["thread"] = await ops.thread(session, found["thread_id"])
        return Response(_dumps(found), media_type="application/json")

    @api.get("/stream")
    async def stream(who: Operator, f: Filtered,
                     until_seconds: Annotated[float, Query(gt=0, le=3600)] = 3600) -> StreamingResponse:
        """Server-Sent Events: `event: alert` with a summary each time a matching alert appears or changes.

        The stream ends after `until_seconds` (reconnect for more), and soon after the key is revoked. It
        takes one of the key's `max_streams_per_key` stream slots (429 when none is free)."""
        async def allowed() -> bool:
            async with rt.sessions() as session:
                key = await repository.get_key(session, who.key_id)
            return key is not None and key["revoked_at"] is None and Role.OPERATOR.value in key["roles"]

        return open_stream(who, ops.sse(hub, f, until_seconds, allowed, lambda s: b"event: alert\ndata: %s\n\n" % _dumps(s)))

    return api


def _dumps(value: object) -> bytes:
    # Row keys from SQLAlchemy are str subclasses, which orjson only takes with OPT_NON_STR_KEYS.
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
