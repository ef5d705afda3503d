"""Defect 7: server-side request forgery through delivery endpoints.

Attack: delivery URLs that point inside the network (10/8, the cloud metadata address 169.254.169.254
written plainly, as a decimal number and as an IPv4-mapped IPv6 address) or at a name that resolves
to loopback but is not on the allow-list (`localhost`, when only 127.0.0.1 is listed); then an
operator replays the refused delivery. Each send is checked where every send passes (new, retried,
replayed, recovered, escalated): refused before any connection, a failed attempt with a clear
reason, no response bytes kept, and nothing reaches the listener.
"""
from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select

from services.notifier.models import attempts
from tests.conftest import port
from tests.integration.conftest import in_session
from tests.integration.test_notifier import attempt_log, operator_headers, register, request_deliveries, wait_for_state

pytestmark = pytest.mark.stack
PORT = port(450)
ATTACKS = {
    "ssrf-private": ("https://10.1.2.3/hook", "10.1.2.3 is a private address"),
    "ssrf-metadata": ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    "ssrf-decimal": ("https://2852039166/latest/meta-data/", "169.254.169.254 is a link-local address"),
    "ssrf-mapped": ("https://[::ffff:169.254.169.254]/latest/", "is a link-local address"),
    "ssrf-localhost": (f"http://localhost:{PORT}/hook", "127.0.0.1 is a loopback address"),
}


@pytest.fixture
async def listener():
    calls: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.Response(status=200, text="secret internal answer")

    app = web.Application()
    app.add_routes([web.post("/{path:.*}", hook)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    yield calls
    await runner.cleanup()


async def excerpts(settings, delivery_id: str) -> list:
    return await in_session(settings, "notifier", lambda s: s.scalars(
        select(attempts.c.response_excerpt).where(attempts.c.delivery_id == delivery_id)))


async def test_internal_addresses_are_refused_at_send_time_even_on_replay(settings, services, listener):
    await register(settings, [*ATTACKS, "ssrf-allowed"])
    ids = {}
    for name, (url, _) in ATTACKS.items():
        ids |= await request_deliveries(settings, [name], url=url)
    for name, (url, words) in ATTACKS.items():
        assert await wait_for_state(settings, ids[name], "failed", timeout=20) == [None] * 4, name
        _, _, reason = await attempt_log(settings, ids[name])
        assert words in reason and "not on the allow-list" in reason, f"{name}: {reason}"
        assert list(await excerpts(settings, ids[name])) == [None] * 4
    assert listener == [], "nothing reached the loopback listener"

    # An operator replays the refused delivery: the send path checks it again.
    async with aiohttp.ClientSession(headers=operator_headers(settings)) as http:
        async with http.post(f"http://127.0.0.1:{settings.notifier_port}/v1/deliveries/{ids['ssrf-localhost']}/replay") as r:
            assert r.status == 202, await r.text()
    assert await wait_for_state(settings, ids["ssrf-localhost"], "failed", timeout=20) == [None] * 8
    assert listener == [], "a replay does not skip the check"

    # The allow-listed loopback address (the demo, test and bench receivers) still works.
    ok = await request_deliveries(settings, ["ssrf-allowed"], url=f"http://127.0.0.1:{PORT}/ok")
    assert await wait_for_state(settings, ok["ssrf-allowed"], "delivered", timeout=20) == [200]
    assert listener == ["/ok"]
