"""Assemble the gateway service."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.gateway import console, ops, ops_api, service
from services.gateway.api import authenticator, count_refused_submission, install_errors, router, streamer
from services.gateway.consumer import TOPICS, StatusView
from services.gateway.directory import ActiveDirectory
from services.gateway.keycache import KeyCache
from services.gateway.lookup import AlertRows
from services.gateway.members import Members
from services.gateway.limits import RateLimiter, StreamSlots
from shared import db
from shared.alerts import Alert
from shared.auth import ensure_signing_key
from shared.service import Runtime
from shared.settings import Settings, get_settings

DESCRIPTION = """Agency systems submit alerts (BLOnet JSON or OASIS CAP 1.2), follow them, and acknowledge
or forward the alerts they receive. Every error is a `Problem` (`code`, `detail`, `errors`).
See docs/api.md for the CAP mapping, the authorization matrix and curl examples."""


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    ensure_signing_key(settings)
    rt = Runtime("gateway", settings.gateway_port, settings)
    # Reads and keyed submissions use the database: a wide pool, and no pre-ping round trip per checkout
    # (a dead connection fails that one request, which the client retries safely with its Idempotency-Key).
    rt.engine = db.make_engine(settings, "gateway", pool_size=30)
    rt.sessions = db.make_sessionmaker(rt.engine)
    # Kafka itself gives up on a record at the accept deadline: a 503 is never followed by the alert landing.
    rt.producer_timeout_ms = int(settings.accept_timeout_seconds * 1000)
    # Operators read this projection right after a 202 (`blonet tail`, the console): its fetch is held
    # at most `status_fetch_max_wait_ms`, enough to gather an alert's burst of events into one poll.
    rt.consume("gateway-status", TOPICS, StatusView(rt), max_records=500,
               fetch_max_wait_ms=settings.status_fetch_max_wait_ms, fetch_min_bytes=settings.background_fetch_min_bytes)

    async def purge_idempotency_keys() -> None:
        await service.purge_idempotency_keys(rt)

    directory = ActiveDirectory(settings)  # who may originate, as routing last activated it

    async def follow_directory() -> None:
        await directory.follow(rt.stopping)

    hub, keys = ops.FlowHub(rt), KeyCache(rt)
    rt.workers += [purge_idempotency_keys, hub.run, keys.listener.run, follow_directory]
    rt.on_body_refused = count_refused_submission
    app = rt.app(description=DESCRIPTION, version="1.0.0")
    limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
    rt.workers.append(Members(rt, on_change=limiter.share).run)  # each instance enforces limit / live instances
    authenticate = authenticator(keys, limiter)
    slots = StreamSlots(settings.max_streams_per_key)
    app.include_router(router(rt, authenticate, hub, slots, directory, AlertRows(rt, hub)))
    app.include_router(ops_api.router(rt, hub, authenticate, streamer(slots)))
    console.install(app, rt, hub)
    install_errors(app)
    app.openapi = lambda: _openapi(app)
    return rt, app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the Alert model the submit route reads by content type itself."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        alert = Alert.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(alert.pop("$defs", {}))
        components["Alert"] = alert
        app.openapi_schema = schema
    return app.openapi_schema
