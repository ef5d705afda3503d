"""JSON logs carrying alert and event ids, Prometheus metrics, health and readiness routes."""
from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.metrics import EVENTS_HANDLED, HTTP_REQUESTS  # noqa: F401 (EVENTS_HANDLED: imported from here by the services)

log_context: contextvars.ContextVar[dict] = contextvars.ContextVar("log_context", default={})
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "service": self.service, "logger": record.name,
            "msg": record.getMessage(), **log_context.get(),
        }
        doc.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class Throttle(logging.Filter):
    """Pass a repeated aiokafka message at most once per `seconds`: a broker outage makes it log
    the same connection error hundreds of times a second."""

    def __init__(self, seconds: float = 10.0) -> None:
        super().__init__()
        self.seconds, self.last = seconds, {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True  # our own messages repeat by design ("alert accepted")
        key, now = (record.name, record.msg), time.monotonic()
        if now - self.last.get(key, -self.seconds) < self.seconds:
            return False
        self.last[key] = now
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.Formatter.converter = time.gmtime
    for noisy in ("aiokafka", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    handler.addFilter(Throttle())


ReadinessCheck = Callable[[], Awaitable[None]]


def install(app: FastAPI, service: str, checks: dict[str, ReadinessCheck]) -> None:
    """Add /healthz, /readyz, /metrics and request metrics to an app.

    These three carry no alert data and are left open for probes and Prometheus; every other
    route of every service requires a role.
    """
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    async def healthz() -> dict:
        return {"status": "alive", "service": service}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        results = {}
        for name, check in checks.items():
            try:
                await check()
                results[name] = "ok"
            except Exception as exc:  # readiness reports, it does not raise
                results[name] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
        ready = all(v == "ok" for v in results.values())
        return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)
    app.add_middleware(Timing, service=service)


class Timing:
    """Request durations by method, route and status: pure ASGI, so a request costs no extra task,
    no response re-streaming and no copy of the body (Starlette's BaseHTTPMiddleware does all three)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500  # an exception with nothing sent is a 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")  # set by the router on the same scope
            HTTP_REQUESTS.labels(self.service, scope["method"], getattr(route, "path", "unmatched"), status).observe(
                time.perf_counter() - start)
