"""Assemble the routing service."""
from __future__ import annotations

from fastapi import FastAPI

from services.routing.api import router
from services.routing.consumer import RoutingHandler
from services.routing.state import ActiveNetwork
from shared import topics
from shared.service import Runtime
from shared.settings import Settings, get_settings


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    rt = Runtime("routing", settings.routing_port, settings)
    active = ActiveNetwork(rt)
    rt.before_consuming.append(active.load)  # the active version must be known before the first decision
    rt.consume("routing", [topics.ALERTS_SUBMITTED.name], RoutingHandler(rt, active))
    rt.workers.append(active.follow)
    app = rt.app()
    app.include_router(router(rt, active))
    return rt, app
