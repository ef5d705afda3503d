"""Assemble the audit service."""
from __future__ import annotations

from fastapi import FastAPI

from services.audit.api import router
from services.audit.consumer import Recorder
from shared import topics
from shared.service import Runtime
from shared.settings import Settings, get_settings


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    rt = Runtime("audit", settings.audit_port, settings)
    rt.consume("audit", [t.name for t in topics.CATALOGUE], Recorder(rt), max_records=500)
    app = rt.app()
    app.include_router(router(rt))
    return rt, app
