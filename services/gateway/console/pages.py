"""The operations console's pages: live flow, one alert, rules, deliveries, system.

Server-rendered (Jinja2); `static/console.js` only adds the live feed and lazy loading. Every
action is a POST that is confirmed on a second page, then redirects with its result (post /
redirect / get), so it works — and is tested — without JavaScript tricks.
"""

import asyncio
import base64
import difflib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated
from uuid import UUID

import orjson
import yaml
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from services.gateway import ops
from services.gateway.console import session, system, trail
from services.gateway.console.i18n import LANGUAGES, pick, translate
from services.gateway.console.upstream import Upstream, UpstreamError
from services.gateway.ops import FlowHub
from shared.alerts import Alert, Category, Tlp
from shared.service import Runtime

HERE = Path(__file__).parent
FLASH = "blonet_flash"
SINCE = {"15m": timedelta(minutes=15), "1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}


def _when(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["when"] = _when
templates.env.filters["json"] = lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2, default=str).decode()


def _load_document(text: str) -> object:
    """Parse YAML or JSON (JSON is YAML); raise ValueError with a readable message."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).replace("\n", " ")) from None


def router(rt: Runtime, hub: FlowHub, up: Upstream) -> APIRouter:
    pages = APIRouter(prefix="/console", include_in_schema=False)

    def lang_of(request: Request) -> str:
        return pick(request.headers.get("accept-language"), request.cookies.get(session.LANG_COOKIE))

    async def operator(request: Request) -> session.Operator:
        return await session.current(rt, request)

    Who = Annotated[session.Operator, Depends(operator)]

    def render(request: Request, name: str, who: session.Operator | None, status: int = 200, **context) -> HTMLResponse:
        lang = lang_of(request)
        flash = _read_flash(request)
        response = templates.TemplateResponse(request, name, {
            "t": lambda key, **v: translate(lang, key, **v), "lang": lang, "who": who, "flash": flash,
            "trace_url": rt.settings.trace_url_template, **context}, status_code=status)
        if flash:
            response.delete_cookie(FLASH, path="/console")
        return response

    def done(target: str, ok: bool, text: str) -> RedirectResponse:
        response = RedirectResponse(target, status_code=303)
        raw = orjson.dumps({"ok": ok, "text": text[:1500]})
        response.set_cookie(FLASH, base64.urlsafe_b64encode(raw).decode(), httponly=True, samesite="strict", path="/console")
        return response

    def guard(request: Request) -> None:
        if not session.same_origin(request):
            raise session.LoginRequired("refused")

    # --- sign in / out, language -----------------------------------------------------------------

    @pages.get("/login")
    async def login_page(request: Request, reason: str | None = None):
        return render(request, "login.html", None, error=reason if reason and reason.startswith("login.") else None)

    @pages.post("/login")
    async def login(request: Request, api_key: Annotated[str, Form(max_length=200)] = ""):
        if not api_key.strip():
            return render(request, "login.html", None, 422, error="field.required")
        token, error = await session.sign_in(rt, api_key.strip())
        if token is None:
            return render(request, "login.html", None, 401, error=error)
        response = RedirectResponse("/console", status_code=303)
        response.set_cookie(session.COOKIE, token, max_age=rt.settings.console_session_seconds, httponly=True,
                            samesite="strict", secure=request.url.scheme == "https", path="/console")
        return response

    @pages.post("/logout")
    async def logout(request: Request):
        guard(request)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(session.COOKIE, path="/console")
        return response

    @pages.get("/lang/{code}")
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

    @pages.get("")
    async def flow(request: Request, who: Who):
        f, q = flow_filters(request)
        async with rt.sessions() as s:
            found = await ops.summaries(s, f, 100)
            agencies, posts = await ops.known_agencies_and_posts(s)
        return render(request, "flow.html", who, alerts=found, q=q, agencies=agencies, posts=posts,
                      categories=[c.value for c in Category], tlps=[t.value for t in Tlp], query=request.url.query)

    @pages.get("/flow/stream")
    async def flow_stream(request: Request, _: Who):
        f, _q = flow_filters(request)
        lang = lang_of(request)
        row = templates.env.get_template("_row.html")

        async def events():
            yield b"retry: 1000\n\n"
            # An hour at most; the browser's EventSource reconnects by itself.
            async for s in ops.changes(rt, hub, f, asyncio.get_running_loop().time() + 3600):
                if await request.is_disconnected():
                    return
                if not s:
                    yield b": keep-alive\n\n"
                    continue
                html = row.render(a=s, t=lambda key, **v: translate(lang, key, **v))
                yield b"event: row\ndata: %s\n\n" % orjson.dumps({"id": str(s["alert_id"]), "html": html})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- one alert -------------------------------------------------------------------------------

    @pages.get("/alerts/{alert_id}")
    async def alert_page(request: Request, alert_id: UUID, who: Who):
        async with rt.sessions() as s:
            found = await ops.summary(s, alert_id)
            if found is None:
                return render(request, "error.html", who, 404, message="alert.not_found")
            forwards = await ops.forwards_of(s, alert_id)
            thread = await ops.thread(s, found["thread_id"])
        problems = []
        decisions, deliveries = [], []
        try:
            answer = await up.get(who.principal, "routing", f"/v1/decisions/{alert_id}")
            decisions = answer.body if answer.ok else []
            if not answer.ok and answer.status != 404:
                problems.append(f"routing: {answer.status} {answer.detail()}")
        except UpstreamError as exc:
            problems.append(str(exc))
        try:
            answer = await up.get(who.principal, "notifier", "/v1/deliveries", alert_id=alert_id)
            deliveries = answer.body if answer.ok else []
            if not answer.ok:
                problems.append(f"notifier: {answer.status} {answer.detail()}")
        except UpstreamError as exc:
            problems.append(str(exc))
        return render(request, "alert.html", who, a=found, forwards=forwards, thread=thread, decisions=decisions,
                      deliveries=deliveries, problems=problems)

    @pages.get("/alerts/{alert_id}/trail")
    async def alert_trail(request: Request, alert_id: UUID, who: Who):
        try:
            found = await trail.verified_trail(up, who.principal, alert_id)
        except UpstreamError as exc:
            found = trail.Trail(error=str(exc))
        return render(request, "_trail.html", who, trail=found, alert_id=alert_id)

    # --- rules -----------------------------------------------------------------------------------

    async def rules_context(who: session.Operator) -> dict:
        answer = await up.get(who.principal, "routing", "/v1/routing/rules")
        if not answer.ok:
            raise UpstreamError("routing", f"{answer.status} {answer.detail()}")
        async with rt.sessions() as s:
            recent = await ops.summaries(s, ops.Filters(), 20)
        return {"active": answer.body, "recent": recent}

    @pages.get("/rules")
    async def rules_page(request: Request, who: Who):
        try:
            context = await rules_context(who)
        except UpstreamError as exc:
            return render(request, "error.html", who, 502, message=str(exc))
        return render(request, "rules.html", who, form={}, errors={}, **context)

    @pages.get("/rules/diff")
    async def rules_diff(request: Request, who: Who, old: str, new: str):
        docs = {}
        for name, digest in (("old", old), ("new", new)):
            answer = await up.get(who.principal, "routing", f"/v1/routing/rules/{digest}")
            if not answer.ok:
                return render(request, "error.html", who, answer.status, message=f"{digest}: {answer.detail()}")
            docs[name] = yaml.safe_dump(answer.body.get("content", answer.body), sort_keys=True, allow_unicode=True,
                                        width=10_000).splitlines()
        lines = list(difflib.unified_diff(docs["old"], docs["new"], old[:19], new[:19], lineterm="", n=3))
        return render(request, "diff.html", who, old=old, new=new, lines=lines)

    @pages.post("/rules/dry-run")
    async def dry_run(request: Request, who: Who, alert_json: Annotated[str, Form(max_length=200_000)] = "",
                      pick_alert: Annotated[str, Form(max_length=64)] = "",
                      candidate: Annotated[str, Form(max_length=2_000_000)] = ""):
        guard(request)
        errors, body = {}, {}
        doc = None
        if pick_alert:
            async with rt.sessions() as s:
                row = await ops.alert_document(s, pick_alert)
            doc = row if row is not None else errors.setdefault("pick_alert", "alert.not_found")
        elif alert_json.strip():
            try:
                doc = orjson.loads(alert_json)
            except orjson.JSONDecodeError as exc:
                errors["alert_json"] = translate(lang_of(request), "error.invalid_json", detail=str(exc))
        else:
            errors["alert_json"] = "field.required"
        if isinstance(doc, dict):
            try:
                body["alert"] = Alert.model_validate(doc).model_dump(mode="json")
            except ValidationError as exc:
                errors["alert_json"] = translate(lang_of(request), "error.invalid_alert") + " " + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        elif doc is not None and "pick_alert" not in errors and "alert_json" not in errors:
            errors["alert_json"] = translate(lang_of(request), "error.invalid_alert")
        if candidate.strip():
            try:
                body["content"] = _load_document(candidate)
                if not isinstance(body["content"], dict):
                    raise ValueError("expected a document with `directory` and `rules`")
            except ValueError as exc:
                errors["candidate"] = str(exc)
        result = None
        if not errors:
            try:
                path = "/v1/routing/explain/compare" if "content" in body else "/v1/routing/explain"
                answer = await up.call(who.principal, "routing", "POST", path, json=body)
            except UpstreamError as exc:
                errors["candidate"] = str(exc)
            else:
                if answer.ok:
                    result = answer.body
                else:
                    errors["candidate" if "content" in body else "alert_json"] = answer.detail()
        try:
            context = await rules_context(who)
        except UpstreamError as exc:
            return render(request, "error.html", who, 502, message=str(exc))
        form = {"alert_json": alert_json, "pick_alert": pick_alert, "candidate": candidate}
        return render(request, "rules.html", who, 422 if errors else 200, form=form, errors=errors, result=result,
                      **context)

    @pages.post("/rules/activate")
    async def activate(request: Request, who: Who, content: Annotated[str, Form(max_length=2_000_000)] = "",
                       version: Annotated[str, Form(max_length=80)] = "",
                       confirmed: Annotated[str, Form(max_length=1)] = ""):
        guard(request)
        errors = {}
        doc = None
        if version:
            answer = await up.get(who.principal, "routing", f"/v1/routing/rules/{version}")
            doc = answer.body.get("content", answer.body) if answer.ok else errors.setdefault("content", answer.detail())
        elif content.strip():
            try:
                doc = _load_document(content)
            except ValueError as exc:
                errors["content"] = str(exc)
        else:
            errors["content"] = "field.required"
        if not errors and not confirmed:
            return render(request, "confirm.html", who, question="rules.activate.confirm", action="/console/rules/activate",
                          fields={"content": content, "version": version}, back="/console/rules",
                          preview=yaml.safe_dump(doc, sort_keys=True, allow_unicode=True)[:20_000])
        if not errors:
            answer = await up.call(who.principal, "routing", "PUT", "/v1/routing/rules", json=doc)
            if answer.ok:
                key = "rules.activated_ok" if answer.body.get("changed") else "rules.unchanged"
                return done("/console/rules", True, translate(lang_of(request), key, hash=answer.body["ruleset_hash"]))
            errors["content"] = translate(lang_of(request), "rules.invalid") + " " + answer.detail()
        context = await rules_context(who)
        return render(request, "rules.html", who, 422, form={"content": content}, errors=errors, **context)

    # --- deliveries ------------------------------------------------------------------------------

    async def deliveries_context(who: session.Operator, endpoint: str | None) -> dict:
        problems, endpoints, dead = [], [], []
        try:
            answer = await up.get(who.principal, "notifier", "/v1/endpoints")
            endpoints = answer.body if answer.ok else problems.append(answer.detail()) or []
            answer = await up.get(who.principal, "notifier", "/v1/deliveries/failed", endpoint=endpoint, limit=200)
            dead = answer.body if answer.ok else problems.append(answer.detail()) or []
        except UpstreamError as exc:
            problems.append(str(exc))
        return {"endpoints": endpoints, "dead": dead, "problems": problems, "endpoint": endpoint}

    @pages.get("/deliveries")
    async def deliveries_page(request: Request, who: Who, endpoint: str | None = None):
        return render(request, "deliveries.html", who, errors={}, form={}, **await deliveries_context(who, endpoint))

    async def confirm_or(request: Request, who: session.Operator, confirmed: str, question: str, action: str,
                         fields: dict, call) -> Response:
        if not confirmed:
            return render(request, "confirm.html", who, question=question, action=action, fields=fields,
                          back="/console/deliveries")
        try:
            answer = await call()
        except UpstreamError as exc:
            return done("/console/deliveries", False, str(exc))
        if answer.ok:
            return done("/console/deliveries", True, translate(lang_of(request), "done") + ": " + orjson.dumps(answer.body).decode())
        return done("/console/deliveries", False, translate(lang_of(request), "refused") + ": " + answer.detail())

    @pages.post("/deliveries/{delivery_id}/replay")
    async def replay(request: Request, delivery_id: UUID, who: Who, confirmed: Annotated[str, Form(max_length=1)] = ""):
        guard(request)
        return await confirm_or(request, who, confirmed, "deliveries.confirm_replay", f"/console/deliveries/{delivery_id}/replay",
                                {}, lambda: up.call(who.principal, "notifier", "POST", f"/v1/deliveries/{delivery_id}/replay"))

    @pages.post("/endpoints/{endpoint}/{switch}")
    async def switch(request: Request, endpoint: str, switch: str, who: Who,
                     confirmed: Annotated[str, Form(max_length=1)] = ""):
        guard(request)
        if switch not in ("enable", "disable"):
            return render(request, "error.html", who, 404, message=switch)
        return await confirm_or(request, who, confirmed, "deliveries.confirm_switch", f"/console/endpoints/{endpoint}/{switch}",
                                {}, lambda: up.call(who.principal, "notifier", "POST", f"/v1/endpoints/{endpoint}/{switch}"))

    @pages.post("/recover")
    async def recover(request: Request, who: Who, endpoint: Annotated[str, Form(max_length=64)] = "",
                      since: Annotated[str, Form(max_length=40)] = "", confirmed: Annotated[str, Form(max_length=1)] = ""):
        guard(request)
        errors = {}
        if not endpoint:
            errors["endpoint"] = "field.required"
        try:
            when = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
            if when.tzinfo is None:
                raise ValueError
        except ValueError:
            errors["since"] = "error.invalid_time"
        if errors:
            return render(request, "deliveries.html", who, 422, errors=errors, form={"since": since, "endpoint": endpoint},
                          **await deliveries_context(who, None))
        return await confirm_or(request, who, confirmed, "deliveries.confirm_recover", "/console/recover",
                                {"endpoint": endpoint, "since": since},
                                lambda: up.call(who.principal, "notifier", "POST", f"/v1/endpoints/{endpoint}/recover",
                                                json={"since": when.isoformat()}))

    # --- system ----------------------------------------------------------------------------------

    @pages.get("/system")
    async def system_page(request: Request, who: Who):
        services = await system.health(up)
        try:
            lag, lag_error = await system.consumer_lag(rt.settings), None
        except Exception as exc:  # the page reports Kafka trouble, it does not fail with it
            lag, lag_error = [], f"{type(exc).__name__}: {exc}"
        async with rt.sessions() as s:
            stats = await ops.flow_stats(s, datetime.now(timezone.utc))
        return render(request, "system.html", who, services=services, lag=lag, groups=system.by_group(lag),
                      lag_error=lag_error, stats=stats)

    return pages


def _read_flash(request: Request) -> dict | None:
    raw = request.cookies.get(FLASH)
    if not raw:
        return None
    try:
        flash = orjson.loads(base64.urlsafe_b64decode(raw))
        return {"ok": bool(flash["ok"]), "text": str(flash["text"])}
    except (ValueError, KeyError, TypeError):
        return None
