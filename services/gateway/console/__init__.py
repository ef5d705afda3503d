"""The operations console, served by the gateway at /console (see docs/console.md)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.gateway.console import pages
from services.gateway.console.session import LoginRequired
from services.gateway.console.upstream import Upstream
from services.gateway.ops import FlowHub
from shared.service import Runtime


def install(app: FastAPI, rt: Runtime, hub: FlowHub) -> None:
    upstream = Upstream(rt.settings)
    rt.on_stop.append(upstream.close)
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
    app.include_router(pages.router(rt, hub, upstream))

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        # Never data without a valid operator session: pages go to the login form, the rest gets 401.
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            target = f"/console/login?reason={quote(exc.reason)}" if exc.reason else "/console/login"
            return RedirectResponse(target, status_code=303)
        return PlainTextResponse("sign in to the console first", status_code=401)
