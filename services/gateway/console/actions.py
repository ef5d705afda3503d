"""The console's actions: rules (dry run, activation, diffs) and deliveries (replay, recover, switch).

Each action is a POST from the console's own origin, confirmed on a second page, then redirected
with its result; forms are validated here and errors shown next to their fields.
"""

import difflib
from datetime import datetime
from typing import Annotated
from urllib.parse import quote
from uuid import UUID

import orjson
import yaml
from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from services.gateway import ops
from services.gateway.console.upstream import UpstreamError
from services.gateway.console.web import Kit, Who, load_document
from shared.alerts import Alert
from shared.auth import Principal


def router(kit: Kit) -> APIRouter:
    api = APIRouter(prefix="/console", include_in_schema=False)

    # --- rules -----------------------------------------------------------------------------------

    async def rules_context(who: Principal) -> dict:
        answer = await kit.up.get(who, "routing", "/v1/routing/rules")
        if not answer.ok:
            raise UpstreamError("routing", f"{answer.status} {answer.detail()}")
        async with kit.rt.sessions() as s:
            recent = await ops.summaries(s, ops.Filters(), 20)
        return {"active": answer.body, "recent": recent}

    @api.get("/rules")
    async def rules_page(request: Request, who: Who):
        try:
            context = await rules_context(who)
        except UpstreamError as exc:
            return kit.render(request, "error.html", who, 502, message=str(exc))
        return kit.render(request, "rules.html", who, form={}, errors={}, **context)

    @api.get("/rules/diff")
    async def rules_diff(request: Request, who: Who, old: str, new: str):
        docs = {}
        for name, digest in (("old", old), ("new", new)):
            answer = await kit.up.get(who, "routing", f"/v1/routing/rules/{quote(digest, safe='')}")
            if not answer.ok:
                return kit.render(request, "error.html", who, answer.status, message=f"{digest}: {answer.detail()}")
            docs[name] = yaml.safe_dump(answer.body["content"], sort_keys=True, allow_unicode=True,
                                        width=10_000).splitlines()
        lines = list(difflib.unified_diff(docs["old"], docs["new"], old[:19], new[:19], lineterm="", n=3))
        return kit.render(request, "diff.html", who, old=old, new=new, lines=lines)

    @api.post("/rules/dry-run")
    async def dry_run(request: Request, who: Who, alert_json: Annotated[str, Form(max_length=200_000)] = "",
                      pick_alert: Annotated[str, Form(max_length=64)] = "",
                      candidate: Annotated[str, Form(max_length=2_000_000)] = ""):
        kit.guard(request)
        errors, body = {}, {}
        doc = None
        if pick_alert:
            async with kit.rt.sessions() as s:
                doc = await ops.alert_document(s, pick_alert)
            if doc is None:
                errors["pick_alert"] = "alert.not_found"
        elif alert_json.strip():
            try:
                doc = orjson.loads(alert_json)
            except orjson.JSONDecodeError as exc:
                errors["alert_json"] = kit.words(request)("error.invalid_json", detail=str(exc))
        else:
            errors["alert_json"] = "field.required"
        if isinstance(doc, dict):
            try:
                body["alert"] = Alert.model_validate(doc).model_dump(mode="json")
            except ValidationError as exc:
                errors["alert_json"] = kit.words(request)("error.invalid_alert") + " " + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        elif doc is not None:
            errors["alert_json"] = kit.words(request)("error.invalid_alert")
        if candidate.strip():
            try:
                body["content"] = load_document(candidate)
                if not isinstance(body["content"], dict):
                    raise ValueError("expected a document with `directory` and `rules`")
            except ValueError as exc:
                errors["candidate"] = str(exc)
        result = None
        if not errors:
            try:
                path = "/v1/routing/explain/compare" if "content" in body else "/v1/routing/explain"
                answer = await kit.up.call(who, "routing", "POST", path, json=body)
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
            return kit.render(request, "error.html", who, 502, message=str(exc))
        form = {"alert_json": alert_json, "pick_alert": pick_alert, "candidate": candidate}
        return kit.render(request, "rules.html", who, 422 if errors else 200, form=form, errors=errors, result=result,
                      **context)

    @api.post("/rules/activate")
    async def activate(request: Request, who: Who, content: Annotated[str, Form(max_length=2_000_000)] = "",
                       version: Annotated[str, Form(max_length=80)] = "",
                       confirmed: Annotated[str, Form(max_length=1)] = ""):
        kit.guard(request)
        errors = {}
        doc = None
        if version:
            answer = await kit.up.get(who, "routing", f"/v1/routing/rules/{quote(version, safe='')}")
            if answer.ok:
                doc = answer.body["content"]
            else:
                errors["content"] = answer.detail()
        elif content.strip():
            try:
                doc = load_document(content)
            except ValueError as exc:
                errors["content"] = str(exc)
        else:
            errors["content"] = "field.required"
        if not errors and not confirmed:
            return kit.render(request, "confirm.html", who, question="rules.activate.confirm", action="/console/rules/activate",
                          fields={"content": content, "version": version}, back="/console/rules",
                          preview=yaml.safe_dump(doc, sort_keys=True, allow_unicode=True)[:20_000])
        if not errors:
            answer = await kit.up.call(who, "routing", "PUT", "/v1/routing/rules", json=doc)
            if answer.ok:
                key = "rules.activated_ok" if answer.body.get("changed") else "rules.unchanged"
                return kit.done("/console/rules", True, kit.words(request)(key, hash=answer.body["ruleset_hash"]))
            errors["content"] = kit.words(request)("rules.invalid") + " " + answer.detail()
        context = await rules_context(who)
        return kit.render(request, "rules.html", who, 422, form={"content": content}, errors=errors, **context)

    # --- deliveries ------------------------------------------------------------------------------

    async def deliveries_context(who: Principal, endpoint: str | None) -> dict:
        context = {"endpoints": [], "dead": [], "problems": [], "endpoint": endpoint}
        calls = (("endpoints", "/v1/endpoints", {}), ("dead", "/v1/deliveries/failed", {"endpoint": endpoint, "limit": 200}))
        for name, path, params in calls:
            if answer := await kit.fetch(who, "notifier", path, context["problems"], **params):
                context[name] = answer.body
        return context

    @api.get("/deliveries")
    async def deliveries_page(request: Request, who: Who, endpoint: str | None = None):
        return kit.render(request, "deliveries.html", who, errors={}, form={}, **await deliveries_context(who, endpoint))

    async def confirm_or(request: Request, who: Principal, confirmed: str, question: str, action: str,
                         fields: dict, call) -> Response:
        if not confirmed:
            return kit.render(request, "confirm.html", who, question=question, action=action, fields=fields,
                          back="/console/deliveries")
        try:
            answer = await call()
        except UpstreamError as exc:
            return kit.done("/console/deliveries", False, str(exc))
        if answer.ok:
            return kit.done("/console/deliveries", True, kit.words(request)("done") + ": " + orjson.dumps(answer.body).decode())
        return kit.done("/console/deliveries", False, kit.words(request)("refused") + ": " + answer.detail())

    @api.post("/deliveries/{delivery_id}/replay")
    async def replay(request: Request, delivery_id: UUID, who: Who, confirmed: Annotated[str, Form(max_length=1)] = ""):
        kit.guard(request)
        return await confirm_or(request, who, confirmed, "deliveries.confirm_replay", f"/console/deliveries/{delivery_id}/replay",
                                {}, lambda: kit.up.call(who, "notifier", "POST", f"/v1/deliveries/{delivery_id}/replay"))

    @api.post("/endpoints/{endpoint}/{switch}")
    async def switch(request: Request, endpoint: str, switch: str, who: Who,
                     confirmed: Annotated[str, Form(max_length=1)] = ""):
        kit.guard(request)
        if switch not in ("enable", "disable"):
            return kit.render(request, "error.html", who, 404, message=switch)
        return await confirm_or(request, who, confirmed, "deliveries.confirm_switch", f"/console/endpoints/{endpoint}/{switch}",
                                {}, lambda: kit.up.call(who, "notifier", "POST", f"/v1/endpoints/{quote(endpoint, safe='')}/{switch}"))

    @api.post("/recover")
    async def recover(request: Request, who: Who, endpoint: Annotated[str, Form(max_length=64)] = "",
                      since: Annotated[str, Form(max_length=40)] = "", confirmed: Annotated[str, Form(max_length=1)] = ""):
        kit.guard(request)
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
            return kit.render(request, "deliveries.html", who, 422, errors=errors, form={"since": since, "endpoint": endpoint},
                          **await deliveries_context(who, None))
        return await confirm_or(request, who, confirmed, "deliveries.confirm_recover", "/console/recover",
                                {"endpoint": endpoint, "since": since},
                                lambda: kit.up.call(who, "notifier", "POST", f"/v1/endpoints/{quote(endpoint, safe='')}/recover",
                                                json={"since": when.isoformat()}))

    return api
