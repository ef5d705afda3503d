"""What every console page shares: templates, the signed-in operator, results, and calls upstream."""

import base64
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import orjson
import yaml
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from services.gateway.console import session
from services.gateway.console.i18n import pick, translate
from services.gateway.console.upstream import Answer, Upstream, UpstreamError
from services.gateway.ops import FlowHub
from shared.auth import Principal
from shared.service import Runtime

FLASH = "blonet_flash"  # an action's result, shown once on the page it redirects to
log = logging.getLogger(__name__)

# A page shows a problem as (i18n key, values): what is missing and why, never a service's raw answer.
Problem = tuple[str, dict]


def problem(service: str, status: int | None, detail: str) -> Problem:
    """Log a service's failed answer in full; return what the page says of it."""
    log.warning("console: upstream call failed", extra={"service": service, "status": status, "detail": detail[:500]})
    if status is None:
        return "error.unreachable", {"service": service}
    return "error.upstream", {"service": service, "status": status}


def _when(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["when"] = _when


def load_document(text: str) -> object:
    """Parse YAML or JSON (JSON is YAML); raise ValueError with a readable message."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).replace("\n", " ")) from None


@dataclass
class Kit:
    rt: Runtime
    hub: FlowHub
    up: Upstream

    def lang(self, request: Request) -> str:
        return pick(request.headers.get("accept-language"), request.cookies.get(session.LANG_COOKIE))

    def words(self, request: Request):
        lang = self.lang(request)
        return lambda key, **values: translate(lang, key, **values)

    def render(self, request: Request, name: str, who: Principal | None, status: int = 200, **context) -> HTMLResponse:
        flash = _read_flash(request)
        response = templates.TemplateResponse(request, name, {
            "t": self.words(request), "lang": self.lang(request), "who": who, "flash": flash,
            "trace_url": self.rt.settings.trace_url_template, **context}, status_code=status)
        if flash:
            response.delete_cookie(FLASH, path="/console")
        return response

    @staticmethod
    def done(target: str, ok: bool, text: str) -> RedirectResponse:
        """Redirect after an action (post/redirect/get), carrying its result for one page view."""
        response = RedirectResponse(target, status_code=303)
        raw = orjson.dumps({"ok": ok, "text": text[:1500]})
        response.set_cookie(FLASH, base64.urlsafe_b64encode(raw).decode(), httponly=True, samesite="strict", path="/console")
        return response

    @staticmethod
    def guard(request: Request) -> None:
        if not session.same_origin(request):
            raise session.CrossSite()

    async def fetch(self, who: Principal, service: str, path: str, problems: list[Problem], **params) -> Answer | None:
        """GET from a service; on failure note why in `problems` (shown on the page) and return None."""
        try:
            answer = await self.up.get(who, service, path, **params)
        except UpstreamError as exc:
            problems.append(problem(service, None, exc.detail))
            return None
        if answer.ok:
            return answer
        if answer.status != 404:
            problems.append(problem(service, answer.status, answer.detail()))
        return None


async def operator(request: Request) -> Principal:
    return await session.current(request.app.state.console.rt, request)


Who = Annotated[Principal, Depends(operator)]


def _read_flash(request: Request) -> dict | None:
    raw = request.cookies.get(FLASH)
    if not raw:
        return None
    try:
        flash = orjson.loads(base64.urlsafe_b64decode(raw))
        return {"ok": bool(flash["ok"]), "text": str(flash["text"])}
    except (ValueError, KeyError, TypeError):
        return None
