"""The console's calls to the other services' operator APIs, on the signed-in operator's behalf.

Each call carries a short-lived token for the operator's own credential, so routing, the notifier
and audit check the role and record the operator as the actor, exactly as for `curl`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from shared.auth import Principal, issue_token
from shared.settings import Settings

TOKEN_TTL = 300


class UpstreamError(Exception):
    """The service could not be reached or did not answer in time."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service, self.detail = service, detail


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def detail(self) -> str:
        """The error as one line: FastAPI's `detail`, a problem list, or the raw text."""
        body = self.body
        if isinstance(body, dict):
            body = body.get("detail", body)
        if isinstance(body, dict) and "problems" in body:
            return "; ".join(str(p) for p in body["problems"])
        return body if isinstance(body, str) else orjson.dumps(body).decode()


class Upstream:
    def __init__(self, settings: Settings, timeout: float = 10.0) -> None:
        self.settings = settings
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=self.timeout)
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def call(self, who: Principal | None, service: str, method: str, path: str, *,
                   json: Any = None, params: dict | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {issue_token(self.settings, who, ttl=TOKEN_TTL)}"} if who else {}
        url = f"{self.settings.service_url(service)}{path}"
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._session().request(method, url, json=json, params=clean, headers=headers) as response:
                raw = await response.read()
                kind = response.headers.get("content-type", "")
                body = orjson.loads(raw) if "json" in kind and raw else raw.decode(errors="replace")
                return Answer(response.status, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise UpstreamError(service, str(exc) or type(exc).__name__) from None

    async def get(self, who: Principal | None, service: str, path: str, **params) -> Answer:
        return await self.call(who, service, "GET", path, params=params)
