"""Every service's body-size cap: 413 before the app (and so before auth or validation) reads the body.

FastAPI reads a whole request body before its dependencies run, the bearer check included, so
without this an unauthenticated caller could make any service hold any amount of memory.
Pure ASGI, so it wraps each service's app whatever framework serves the routes.
"""
from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: refuse bodies over `max_bytes` with 413 before the app reads any of it.

    The body is read here (bounded), then replayed to the app, so a lying or absent
    Content-Length cannot slip a larger body through.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, on_refused: Callable[[Scope, str], None] | None = None) -> None:
        self.app, self.max_bytes, self.on_refused = app, max_bytes, on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._too_large(scope, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._too_large(scope, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        if self.on_refused:
            self.on_refused(scope, "body_too_large")
        body = orjson.dumps({"code": "body_too_large", "detail": f"the request body exceeds {self.max_bytes} bytes"})
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
