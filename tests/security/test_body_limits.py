"""Defect 8: routing, notifier and audit read a whole request body before checking the caller.

Attack: without any valid credential, POST/PUT bodies far over the gateway's limit (declared, and
chunked with no Content-Length) to the other services. Each must answer 413 before reading it all
(and so before auth, validation or any write).
"""
from __future__ import annotations

import aiohttp
import pytest

pytestmark = pytest.mark.stack

ROUTES = {
    "routing": [("PUT", "/v1/routing/rules"), ("POST", "/v1/routing/explain")],
    "notifier": [("POST", "/v1/endpoints/ep-blo-dostuk/recover"), ("POST", "/v1/endpoints/ep-blo-dostuk/disable")],
    "audit": [("POST", "/v1/checkpoint")],
}


async def test_every_service_refuses_an_oversized_body_before_auth(settings, services):
    big = b"{" + b" " * (settings.max_body_bytes + 1024) + b"}"

    async def chunks():
        for _ in range(0, len(big), 65536):
            yield b" " * 65536

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer not-a-token"}) as http:
        for service, routes in ROUTES.items():
            base = f"http://127.0.0.1:{getattr(settings, f'{service}_port')}"
            for method, path in routes:
                for body in (big, chunks()):
                    async with http.request(method, base + path, data=body,
                                            headers={"Content-Type": "application/json"}) as r:
                        assert r.status == 413, f"{service} {method} {path}: {r.status} {await r.text()}"
                        assert (await r.json())["code"] == "body_too_large"
            # A small body still reaches the service's own checks (here: the missing credential).
            async with http.request(routes[0][0], base + routes[0][1], json={}) as r:
                assert r.status == 401, f"{service}: {r.status}"
