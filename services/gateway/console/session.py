"""Console sign-in: an operator API key, exchanged once for a signed session cookie.

The cookie holds a token with the console's own audience (useless as an API token), HttpOnly and
SameSite=Strict; every request re-checks that its key is still active, so a revoked key ends the
session at once. Posts must come from the console's own origin (no cross-site form posts).
"""
from __future__ import annotations

from urllib.parse import urlsplit

import jwt
from fastapi import Request

from services.gateway import repository
from shared.auth import Principal, Role, hash_api_key, issue_token, split_api_key, verify_token
from shared.service import Runtime

COOKIE = "blonet_console"
LANG_COOKIE = "blonet_lang"
AUDIENCE = "blonet-console"


class LoginRequired(Exception):
    """No valid operator session: pages redirect to the login page, fragments answer 401."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class CrossSite(Exception):
    """A state-changing request that did not come from a console page: refused with 403."""


async def sign_in(rt: Runtime, api_key: str) -> tuple[str | None, str | None]:
    """Return (session token, None) for an active operator key, else (None, error key)."""
    if split_api_key(api_key) is None:
        return None, "login.bad_key"
    async with rt.sessions() as session:
        found = await repository.principal_for_key(session, hash_api_key(api_key))
    if found is None:
        return None, "login.bad_key"
    principal = found[0]
    if Role.OPERATOR not in principal.roles:
        return None, "login.not_operator"
    return issue_token(rt.settings, principal, ttl=rt.settings.console_session_seconds, audience=AUDIENCE), None


async def current(rt: Runtime, request: Request) -> Principal:
    """The signed-in operator (a principal with the operator role), or LoginRequired."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired()
    try:
        principal = verify_token(rt.settings, token, audience=AUDIENCE)
    except jwt.InvalidTokenError:
        raise LoginRequired("login.expired") from None
    if Role.OPERATOR not in principal.roles:
        raise LoginRequired("login.not_operator")
    async with rt.sessions() as session:
        key = await repository.get_key(session, principal.key_id)
    if key is None or key["revoked_at"] is not None or Role.OPERATOR.value not in key["roles"]:
        raise LoginRequired("login.bad_key")
    return principal


def same_origin(request: Request) -> bool:
    """A state-changing request must come from a console page (Origin, or Fetch metadata, agrees)."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return site is not None or _same(request.headers.get("referer", ""), str(request.base_url))
    return _same(origin, str(request.base_url))


def _same(url: str, base: str) -> bool:
    """Same scheme, host and port (a look-alike such as http://gw.example.evil.com is not http://gw.example)."""
    a, b = urlsplit(url), urlsplit(base)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc) and bool(a.netloc)
