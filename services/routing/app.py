"""Assemble the routing service."""
from __future__ import annotations

from fastapi import FastAPI

from services.routing.api import router
from services.routing.consumer import RoutingHandler
from services.routing.directory import load_network
from shared import topics
from shared.service import Runtime
from shared.settings import Settings, get_settings


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    directory, rules, ruleset_hash = load_network(settings.network_dir)  # invalid files stop start-up
    rt = Runtime("routing", settings.routing_port, settings)
    rt.consume("routing", [topics.ALERTS_SUBMITTED.name], RoutingHandler(rt, directory, rules, ruleset_hash))
    app = rt.app()
    app.include_router(router(rt, directory, rules, ruleset_hash))
    return rt, app
