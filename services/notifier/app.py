"""Assemble the notifier service."""
from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from services.notifier.api import router
from services.notifier.consumer import AckIntake, DeliveryIntake
from services.notifier.delivery import outbox_sweeper
from services.notifier.dispatch import Dispatcher
from services.notifier.escalation import escalation_worker
from shared import topics
from shared.service import Runtime
from shared.settings import Settings, get_settings


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    rt = Runtime("notifier", settings.notifier_port, settings)
    dispatcher = Dispatcher(rt)
    rt.consume("notifier", [topics.DELIVERIES_REQUESTED.name], DeliveryIntake(rt, dispatcher), gate=dispatcher)
    rt.consume("notifier-acks", [topics.ALERTS_ACKNOWLEDGED.name], AckIntake(rt),
               fetch_max_wait_ms=settings.background_fetch_max_wait_ms, fetch_min_bytes=settings.background_fetch_min_bytes)
    rt.workers += [dispatcher.run, partial(outbox_sweeper, rt), partial(escalation_worker, rt)]
    app = rt.app()
    app.include_router(router(rt))
    return rt, app
