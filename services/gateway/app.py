"""Assemble the gateway service."""
from __future__ import annotations

from fastapi import FastAPI

from services.gateway.api import router
from services.gateway.consumer import StatusView
from shared import topics
from shared.auth import ensure_signing_key
from shared.service import Runtime
from shared.settings import Settings, get_settings


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    ensure_signing_key(settings)
    rt = Runtime("gateway", settings.gateway_port, settings)
    # Kafka itself gives up on a record at the accept deadline: a 503 is never followed by the alert landing.
    rt.producer_timeout_ms = int(settings.accept_timeout_seconds * 1000)
    status_topics = [topics.ALERTS_SUBMITTED.name, topics.ALERTS_ROUTED.name, topics.DELIVERIES_STATUS.name]
    rt.consume("gateway-status", status_topics, StatusView(rt))
    app = rt.app()
    app.include_router(router(rt))
    return rt, app
