"""Defect 6: per-alert SSE streams were uncapped and never re-checked the caller.

Attack: one key opens stream after stream on an alert it may read (each polled the database four
times every 250 ms for up to an hour); a key revoked meanwhile kept its streams. Expected: past
`max_streams_per_key` open streams a key gets 429 (one closing frees a slot), and a revoked key's
streams end at the next re-check (`stream_recheck_seconds`; 1 s in the tests, 15 s by default).
"""
from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import pytest

from services.gateway import repository as gateway_repo
from shared.auth import Role, split_api_key
from tests.integration.conftest import in_session, make_key
from tests.integration.test_gateway_edge import FUTURE, auth

pytestmark = pytest.mark.stack


async def test_streams_are_capped_per_key_and_end_when_the_key_is_revoked(settings, services):
    gw = f"http://127.0.0.1:{settings.gateway_port}"
    cap = getattr(settings, "max_streams_per_key", 5)
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    other = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)))
        async with http.post(f"{gw}/v1/alerts", json=FUTURE, headers=auth(key)) as r:
            assert r.status == 202, await r.text()
            url = f"{gw}/v1/alerts/{(await r.json())['id']}/events"

        async def open_stream(with_key: str) -> aiohttp.ClientResponse:
            r = await stack.enter_async_context(http.get(url, params={"until_seconds": "60"}, headers=auth(with_key)))
            if r.status == 200:
                assert await r.content.readline() == b"retry: 1000\n"
            return r

        streams = [await open_stream(key) for _ in range(cap)]
        assert [s.status for s in streams] == [200] * cap
        refused = await open_stream(key)
        assert refused.status == 429, f"stream {cap + 1} of one key: {refused.status}"
        assert (await refused.json())["code"] == "too_many_streams"
        assert (await open_stream(other)).status == 200, "another key has its own slots"
        streams.pop().close()
        for _ in range(50):  # the server notices the closed stream on its next write or wait
            again = await open_stream(key)
            if again.status == 200:
                break
            await asyncio.sleep(0.2)
        assert again.status == 200, "a closed stream frees its slot"
        streams.append(again)

        await in_session(settings, "gateway", lambda s: gateway_repo.revoke_key(s, split_api_key(key)))

        async def drained(stream: aiohttp.ClientResponse) -> None:
            async for _ in stream.content:
                pass

        await asyncio.wait_for(asyncio.gather(*(drained(s) for s in streams)), timeout=15)
