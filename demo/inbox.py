"""Local "agency inboxes": receive webhooks, verify them like a real agency system would.

Each endpoint id of the directory gets a mailbox at POST /inbox/{endpoint}. A delivery is
accepted only with a valid Standard Webhooks signature and a fresh timestamp; a repeated
webhook-id is acknowledged but stored once (receivers dedupe on it).
"""
from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    body: dict
    traceparent: str | None = None  # W3C trace context the delivery carried


@dataclass
class Inbox:
    secrets: Callable[[], dict[str, str]]
    received: dict[str, list[Received]] = field(default_factory=dict)
    rejected: int = 0
    duplicates: int = 0
    failing: set[str] = field(default_factory=set)  # endpoints that answer 503, to show retries and the breaker

    async def deliver(self, request: web.Request) -> web.Response:
        endpoint = request.match_info["endpoint"]
        secret = self.secrets().get(endpoint)
        if secret is None:
            return web.json_response({"error": f"no such inbox {endpoint}"}, status=404)
        if endpoint in self.failing:
            return web.json_response({"error": f"inbox {endpoint} is switched off"}, status=503)
        body = await request.read()
        try:
            Webhook(secret).verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            self.rejected += 1
            return web.json_response({"error": f"signature rejected: {exc}"}, status=401)
        box = self.received.setdefault(endpoint, [])
        webhook_id = request.headers["webhook-id"]
        if any(r.webhook_id == webhook_id for r in box):
            self.duplicates += 1
        else:
            box.append(Received(webhook_id, orjson.loads(body), request.headers.get("traceparent")))
        return web.json_response({"received": webhook_id})

    async def mailbox(self, request: web.Request) -> web.Response:
        box = self.received.get(request.match_info["endpoint"], [])
        return web.json_response([{"webhook_id": r.webhook_id, "body": r.body} for r in box])

    async def index(self, _: web.Request) -> web.Response:
        rows = "".join(
            f"<tr><td><a href='/inbox/{html.escape(ep)}'>{html.escape(ep)}</a></td><td>{len(box)}</td>"
            f"<td>{html.escape(box[-1].body['alert'].get('headline', '')) if box else ''}</td></tr>"
            for ep, box in sorted(self.received.items())
        )
        page = (
            "<!doctype html><meta charset=utf-8><title>BLOnet demo inboxes</title>"
            "<h1>What each agency endpoint received (signatures verified)</h1>"
            f"<table border=1 cellpadding=4><tr><th>endpoint</th><th>alerts</th><th>latest headline</th></tr>{rows}</table>"
            f"<p>rejected signatures: {self.rejected}; duplicate deliveries absorbed: {self.duplicates}</p>"
        )
        return web.Response(text=page, content_type="text/html")

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.post("/inbox/{endpoint}", self.deliver), web.get("/inbox/{endpoint}", self.mailbox), web.get("/", self.index)])
        return app


async def serve(inbox: Inbox, port: int) -> web.AppRunner:
    """Start the inbox app on 127.0.0.1:port; return its runner (call .cleanup() to stop)."""
    runner = web.AppRunner(inbox.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
