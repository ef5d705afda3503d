"""The console's pages: sign-in, the live flow, one alert, the system (docs/console.md).

Server-rendered; `static/console.js` only adds the live feed and loads the trail after the page.
"""

from datetime import datetime, timedelta, timezone
from typing import Annotated
from uuid import UUID

import orjson
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, StreamingResponse

from services.gateway import ops
from services.gateway.console import session, system, trail
from services.gateway.console.i18n import LANGUAGES
from services.gateway.console.web import Kit, Who, templates
from shared.alerts import Category, Tlp

SINCE = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


def router(kit: Kit) -> APIRouter:
    api = APIRouter(prefix="/console", include_in_schema=False)

    # --- sign in / out, language -----------------------------------------------------------------

    @api.get("/login")
    async def login_page(request: Request, reason: str | None = None):
        return kit.render(request, "login.html", None, error=reason if reason and reason.startswith("login.") else None)

    @api.post("/login")
    async def login(request: Request, api_key: Annotated[str, Form(max_length=200)] = ""):
        if not api_key.strip():
            return kit.render(request, "login.html", None, 422, error="field.required")
        token, error = await session.sign_in(kit.rt, api_key.strip())
        if token is None:
            return kit.render(request, "login.html", None, 401, error=error)
        response = RedirectResponse("/console", status_code=303)
        response.set_cookie(session.COOKIE, token, max_age=kit.rt.settings.console_session_seconds, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/console")
        return response

    @api.post("/logout")
    async def logout(request: Request):
        kit.guard(request)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(session.COOKIE, path="/console")
        return response

    @api.get("/lang/{code}")
    async def language(code: str, next: str = "/console"):
        target = next if next.startswith("/console") else "/console"
        response = RedirectResponse(target, status_code=303)
        if code in LANGUAGES:
            response.set_cookie(session.LANG_COOKIE, code, max_age=365 * 86400, samesite="lax", path="/console")
        return response

    # --- live flow -------------------------------------------------------------------------------

    def flow_filters(request: Request) -> tuple[ops.Filters, dict]:
        q = {k: (request.query_params.get(k) or "").strip()[:64] for k in ("agency", "post", "category", "tlp", "since")}
        since = datetime.now(timezone.utc) - SINCE[q["since"]] if q["since"] in SINCE else None
        return ops.Filters(q["agency"] or None, q["post"] or None, q["category"] or None, q["tlp"] or None, since), q

    @api.get("")
    async def flow(request: Request, who: Who):
        f, q = flow_filters(request)
        async with kit.rt.sessions() as s:
            found = await ops.summaries(s, f, 100)
            agencies, posts = await ops.known_agencies_and_posts(s)
        return kit.render(request, "flow.html", who, alerts=found, q=q, agencies=agencies, posts=posts,
                      categories=[c.value for c in Category], tlps=[t.value for t in Tlp], query=request.url.query)

    @api.get("/flow/stream")
    async def flow_stream(request: Request, _: Who):
        f, _q = flow_filters(request)
        words = kit.words(request)
        row = templates.env.get_template("_row.html")

        async def allowed() -> bool:  # the session may end or its key be revoked while the page is open
            try:
                await session.current(kit.rt, request)
                return True
            except session.LoginRequired:
                return False

        def render(s: dict) -> bytes:
            html = row.render(a=s, t=words)
            return b"event: row\ndata: %s\n\n" % orjson.dumps({"id": str(s["alert_id"]), "html": html})

        # An hour at most; the browser's EventSource reconnects by itself.
        return StreamingResponse(ops.sse(kit.hub, f, 3600, allowed, render), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- one alert -------------------------------------------------------------------------------

    @api.get("/alerts/{alert_id}")
    async def alert_page(request: Request, alert_id: UUID, who: Who):
        async with kit.rt.sessions() as s:
            found = await ops.summary(s, alert_id)
            if found is None:
                return kit.render(request, "error.html", who, 404, message="alert.not_found")
            forwards = await ops.forwards_of(s, alert_id)
            thread = await ops.thread(s, found["thread_id"])
        problems: list[str] = []
        decisions = await kit.fetch(who, "routing", f"/v1/decisions/{alert_id}", problems)
        deliveries = await kit.fetch(who, "notifier", "/v1/deliveries", problems, alert_id=alert_id)
        return kit.render(request, "alert.html", who, a=found, forwards=forwards, thread=thread, decisions=decisions.body if decisions else [],
                      deliveries=deliveries.body if deliveries else [], problems=problems)

    @api.get("/alerts/{alert_id}/trail")
    async def alert_trail(request: Request, alert_id: UUID, who: Who):
        found = await trail.verified_trail(kit.up, who, alert_id)
        return kit.render(request, "_trail.html", who, trail=found, alert_id=alert_id)

    # --- system ----------------------------------------------------------------------------------

    @api.get("/system")
    async def system_page(request: Request, who: Who):
        services = await system.health(kit.up)
        try:
            lag, lag_error = await system.consumer_lag(kit.rt.settings), None
        except Exception as exc:  # the page reports Kafka trouble, it does not fail with it
            lag, lag_error = [], f"{type(exc).__name__}: {exc}"
        async with kit.rt.sessions() as s:
            stats = await ops.flow_stats(s, datetime.now(timezone.utc))
        return kit.render(request, "system.html", who, services=services, lag=lag, groups=system.by_group(lag),
                      lag_error=lag_error, stats=stats)

    return api
