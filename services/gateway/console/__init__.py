"""The operations console, served by the gateway at /console (see docs/console.md)."""
from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.gateway.console import actions, pages
from services.gateway.console.session import CrossSite, LoginRequired
from services.gateway.console.upstream import Upstream, UpstreamError
from services.gateway.console.web import Kit
from services.gateway.console.web import operator as kit_operator
from services.gateway.ops import FlowHub
from shared.service import Runtime


def install(app: FastAPI, rt: Runtime, hub: FlowHub) -> None:
    upstream = Upstream(rt.settings)
    rt.on_stop.append(upstream.close)
    app.mount("/console/static", StaticFiles(directory=Path(__file__).parent / "static"), name="console-static")
    kit = app.state.console = Kit(rt, hub, upstream)
    app.include_router(pages.router(kit))
    app.include_router(actions.router(kit))

    @app.exception_handler(UpstreamError)
    async def upstream_down(request: Request, exc: UpstreamError):
        # A service the page needs did not answer: say which, keep the operator signed in.
        try:
            who = await kit_operator(request)
        except LoginRequired:
            who = None
        return kit.render(request, "error.html", who, 502, message=str(exc))

    @app.exception_handler(CrossSite)
    async def cross_site(_: Request, exc: CrossSite):
        return PlainTextResponse("refused: this action must come from a console page", status_code=403)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, exc: LoginRequired):
        # Never data without a valid operator session: pages go to the login form, the rest gets 401.
        if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
            target = f"/console/login?reason={quote(exc.reason)}" if exc.reason else "/console/login"
            return RedirectResponse(target, status_code=303)
        return PlainTextResponse("sign in to the console first", status_code=401)
