"""The notifier against real endpoints: every request verified with `standardwebhooks`.

Retries keep the webhook-id, Retry-After, 410, redirects, the circuit breaker, dead letters
(state and topic), replay and recovery (audited), secret rotation, no head-of-line blocking.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from services.notifier import repository, service
from services.notifier.models import attempts, deliveries, endpoints as endpoint_table
from shared import topics
from shared.auth import Principal, Role, issue_token
from shared.events import DeliveryRequested, Envelope, ViewProfile
from shared.ids import new_id
from shared.kafka import make_consumer, make_producer, send
from tests.conftest import port
from tests.integration.conftest import in_session

pytestmark = pytest.mark.stack
PORT = port(20)
NAMES = ("flaky", "down", "slow", "fast", "limited", "gone", "redirect", "breaker", "dead", "rotated", "recover", "health",
         "waiting")


class Endpoints:
    """Test endpoints that verify every request's signature, then answer as their name says.

    flaky fails twice then accepts; down always 503; slow takes 3 s; limited answers 429 with
    Retry-After: 2 once; gone answers 410; redirect answers 302; breaker/dead/recover/health fail
    while their name is in `failing`; everything else accepts.
    """

    def __init__(self, secrets: dict[str, list[str]]) -> None:
        self.secrets = secrets
        self.calls: dict[str, list[tuple[float, str]]] = defaultdict(list)
        self.failing = {"breaker", "dead", "recover", "health"}
        self.bad_signatures: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.text()
        for secret in self.secrets[f"ep-test-{name}"]:  # each secret alone must verify the request
            try:
                Webhook(secret).verify(body, dict(request.headers))
            except Exception as exc:
                self.bad_signatures.append(f"{name}: {exc}")
        self.calls[name].append((time.monotonic(), request.headers["webhook-id"]))
        n = len(self.calls[name])
        if name == "flaky" and n <= 2:
            return web.Response(status=500, text="temporarily broken")
        if name == "down":
            return web.Response(status=503, text="down for maintenance")
        if name == "limited" and n == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        if name == "gone":
            return web.Response(status=410, text="this endpoint is retired")
        if name == "redirect":
            return web.Response(status=302, headers={"Location": "https://elsewhere.example/"})
        if name in self.failing:
            return web.Response(status=500, text=f"{name} failing")
        if name == "slow":
            await asyncio.sleep(3)
        return web.Response(status=204)


async def register(settings, names) -> dict[str, list[str]]:
    """Register the test endpoints with the notifier (as `blonet endpoints sync` would); return their secrets."""
    ids = {f"ep-test-{n}" for n in names}
    await in_session(settings, "notifier", lambda s: repository.ensure_endpoints(s, ids))
    found = await in_session(settings, "notifier", lambda s: repository.secrets_by_endpoint(s, sorted(ids)))
    return {e: [secret] for e, secret in found.items()}


@pytest.fixture
async def endpoints(settings):
    eps = Endpoints(await register(settings, NAMES))
    app = web.Application()
    app.add_routes([web.post("/{name}", eps.handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    yield eps
    await runner.cleanup()
    assert not eps.bad_signatures, eps.bad_signatures


async def request_deliveries(settings, names: list[str], alert_id=None, **fields) -> dict[str, str]:
    """Put one delivery request per endpoint name on the topic, as routing would; return their ids."""
    producer = make_producer(settings)
    await producer.start()
    ids = {}
    try:
        for name in names:
            aid = alert_id or new_id()
            req = DeliveryRequested(**{
                "delivery_id": new_id(), "endpoint": f"ep-test-{name}", "agency": "kg-sbs",
                "url": f"http://127.0.0.1:{PORT}/{name}", "profile": ViewProfile.FULL, "body": {"test": name}, **fields,
            })
            env = Envelope.wrap(req, origin_node="test", alert_id=aid, thread_id=aid)
            await (await send(producer, settings.topic(topics.DELIVERIES_REQUESTED.name), req.endpoint, env))
            ids[name] = str(req.delivery_id)
    finally:
        await producer.stop()
    return ids


async def attempt_log(settings, delivery_id: str) -> tuple[str, list[int | None], str | None]:
    async def query(s):
        row = (await s.execute(select(deliveries.c.state, deliveries.c.reason).where(deliveries.c.delivery_id == delivery_id))).first()
        codes = (await s.execute(select(attempts.c.http_status).where(attempts.c.delivery_id == delivery_id)
                                 .order_by(attempts.c.attempt))).scalars().all()
        return (row.state if row else None), list(codes), (row.reason if row else None)
    return await in_session(settings, "notifier", query)


async def wait_for_state(settings, delivery_id: str, state: str, timeout: float = 30) -> list[int | None]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found, codes, _ = await attempt_log(settings, delivery_id)
        if found == state:
            return codes
        await asyncio.sleep(0.1)
    raise AssertionError(f"delivery {delivery_id} never reached {state}: {await attempt_log(settings, delivery_id)}")


async def events_on(settings, topic: str, match, timeout: float = 20) -> list[dict]:
    """Return the payloads on `topic` that `match` (waits until at least one arrives)."""
    consumer = make_consumer(settings, settings.topic(topic),
                                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None)
    await consumer.start()
    found: list[dict] = []
    try:
        deadline = time.monotonic() + timeout
        while not found and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [p for p in payloads(records) if match(p)]
    finally:
        await consumer.stop()
    return found


def payloads(records) -> list[dict]:
    """Return the payloads of the records that are events (other tests put raw probes on every topic)."""
    found = []
    for record in records:
        try:
            found.append(Envelope.from_bytes(record.value).payload)
        except ValueError:
            pass
    return found


def operator_headers(settings) -> dict[str, str]:
    token = issue_token(settings, Principal("op-test", "kg-sbs", frozenset({Role.OPERATOR})))
    return {"Authorization": f"Bearer {token}"}


async def test_retries_keep_the_webhook_id_until_delivered(settings, services, endpoints):
    ids = await request_deliveries(settings, ["flaky"])
    assert await wait_for_state(settings, ids["flaky"], "delivered") == [500, 500, 204]
    assert [wid for _, wid in endpoints.calls["flaky"]] == [ids["flaky"]] * 3, "one webhook-id across retries"


async def test_exhausted_schedule_dead_letters_in_state_and_topic(settings, services, endpoints):
    ids = await request_deliveries(settings, ["down"])
    # Test schedule: 0.2 s, 0.5 s, 1 s between attempts, then the dead letter.
    assert await wait_for_state(settings, ids["down"], "failed") == [503, 503, 503, 503]
    _, _, reason = await attempt_log(settings, ids["down"])
    assert reason == "retry schedule exhausted after 4 attempts; last: HTTP 503"
    dead = await events_on(settings, topics.DELIVERIES_DEADLETTER.name, lambda p: p["delivery_id"] == ids["down"])
    assert dead[0]["state"] == "failed" and dead[0]["error"] == reason


async def test_retry_after_is_honoured(settings, services, endpoints):
    ids = await request_deliveries(settings, ["limited"])
    assert await wait_for_state(settings, ids["limited"], "delivered") == [429, 204]
    (first, _), (second, _) = endpoints.calls["limited"]
    assert second - first >= 1.9, f"retried after {second - first:.2f} s, not the 2 s Retry-After asked for"


async def test_410_dead_letters_and_disables_the_endpoint(settings, services, endpoints):
    ids = await request_deliveries(settings, ["gone"])
    assert await wait_for_state(settings, ids["gone"], "failed") == [410]
    enabled = await in_session(settings, "notifier", lambda s: s.scalar(
        select(endpoint_table.c.enabled).where(endpoint_table.c.endpoint == "ep-test-gone")))
    assert enabled is False
    acts = await events_on(settings, topics.OPERATIONS_ACTIONS.name,
                           lambda p: p["target"] == "ep-test-gone" and p["action"] == "endpoint.disable")
    assert acts[0]["actor"] == "notifier" and "410" in acts[0]["reason"]
    later = await request_deliveries(settings, ["gone"])  # waits, not sent, while disabled
    await asyncio.sleep(1.0)
    assert (await attempt_log(settings, later["gone"]))[:2] == ("pending", [])
    async with aiohttp.ClientSession(headers=operator_headers(settings)) as http:
        async with http.post(f"http://127.0.0.1:{settings.notifier_port}/v1/endpoints/ep-test-gone/enable") as r:
            assert r.status == 200, await r.text()
    assert await wait_for_state(settings, later["gone"], "failed") == [410], "enabled again: it goes out"


async def test_redirects_are_failures_with_the_reason(settings, services, endpoints):
    ids = await request_deliveries(settings, ["redirect"])
    await wait_for_state(settings, ids["redirect"], "failed")
    _, codes, reason = await attempt_log(settings, ids["redirect"])
    assert codes == [302] * 4 and "redirect to https://elsewhere.example/ not followed" in reason


async def test_unknown_endpoint_and_refused_url_are_dead_lettered_with_the_reason(settings, services, endpoints):
    unknown = await request_deliveries(settings, ["never-registered"])
    refused = await request_deliveries(settings, ["fast"], url="http://agency.example/hook")
    for delivery_id, words in ((unknown["never-registered"], "unknown endpoint"), (refused["fast"], "refused address")):
        assert await wait_for_state(settings, delivery_id, "failed") == []
        assert words in (await attempt_log(settings, delivery_id))[2]
        dead = await events_on(settings, topics.DELIVERIES_DEADLETTER.name, lambda p: p["delivery_id"] == delivery_id)
        assert words in dead[0]["error"]


async def test_circuit_opens_stops_hammering_probes_and_closes(settings, services, endpoints):
    ids = await request_deliveries(settings, ["breaker"] * 1)
    ids2 = await request_deliveries(settings, ["breaker"])
    for _ in range(100):  # threshold 3 (tests' settings): three failures open the circuit
        if len(endpoints.calls["breaker"]) >= 3:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)
    assert len(endpoints.calls["breaker"]) == 3, "the open circuit stops further attempts"
    endpoints.failing.discard("breaker")
    await wait_for_state(settings, ids["breaker"], "delivered")
    await wait_for_state(settings, ids2["breaker"], "delivered")
    times = [t for t, _ in endpoints.calls["breaker"]]
    assert times[3] - times[2] >= 1.8, "the probe came only after the 2 s cooldown"


async def test_dead_letters_are_replayed_one_or_all_since_a_time_audited(settings, services, endpoints):
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    one = await request_deliveries(settings, ["dead"])
    many = [await request_deliveries(settings, ["recover"]) for _ in range(2)]
    for delivery_id in (one["dead"], *[m["recover"] for m in many]):
        await wait_for_state(settings, delivery_id, "failed")
    base = f"http://127.0.0.1:{settings.notifier_port}/v1"
    endpoints.failing -= {"dead", "recover"}
    async with aiohttp.ClientSession(headers=operator_headers(settings)) as http:
        async with http.get(f"{base}/deliveries/failed", params={"endpoint": "ep-test-dead"}) as r:
            assert one["dead"] in {d["delivery_id"] for d in await r.json()}
        async with http.post(f"{base}/deliveries/{one['dead']}/replay") as r:
            assert r.status == 202, await r.text()
        async with http.post(f"{base}/endpoints/ep-test-recover/recover", json={"since": since.isoformat()}) as r:
            assert (await r.json())["replayed"] == 2
        async with http.post(f"{base}/deliveries/{new_id()}/replay") as r:
            assert r.status == 404
    assert (await wait_for_state(settings, one["dead"], "delivered"))[-1] == 204
    for m in many:
        await wait_for_state(settings, m["recover"], "delivered")
    assert {wid for _, wid in endpoints.calls["dead"]} == {one["dead"]}, "a replay keeps the webhook-id"
    acts = await events_on(settings, topics.OPERATIONS_ACTIONS.name,
                           lambda p: p["actor"] == "op-test" and p["target"] in (one["dead"], "ep-test-recover"))
    assert {a["action"] for a in acts} == {"delivery.replay", "endpoint.recover"}


async def test_after_a_rotation_both_secrets_sign(settings, services, endpoints):
    old = endpoints.secrets["ep-test-rotated"][0]
    new = await in_session(settings, "notifier", lambda s: service.rotate_secret(s, settings, "ep-test-rotated", actor="test"))
    endpoints.secrets["ep-test-rotated"] = [old, new]  # the handler verifies with each alone
    ids = await request_deliveries(settings, ["rotated"])
    await wait_for_state(settings, ids["rotated"], "delivered")
    assert not endpoints.bad_signatures


async def test_a_slow_endpoint_does_not_hold_up_others(settings, services, endpoints):
    start = time.monotonic()
    ids = await request_deliveries(settings, ["slow", "fast"])
    await wait_for_state(settings, ids["fast"], "delivered")
    fast_done = time.monotonic() - start
    await wait_for_state(settings, ids["slow"], "delivered")
    assert fast_done < 2.0, f"fast endpoint waited {fast_done:.2f} s behind the slow one"


async def test_refused_connections_and_garbage_answers_are_failures_with_the_reason(settings, services, endpoints):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(b"this is not HTTP\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", port(403))
    try:
        await register(settings, ["refused", "garbage"])
        refused = await request_deliveries(settings, ["refused"], url=f"http://127.0.0.1:{port(402)}/nobody-listens")
        answered = await request_deliveries(settings, ["garbage"], url=f"http://127.0.0.1:{port(403)}/hook")
        for ids, name in ((refused, "refused"), (answered, "garbage")):
            assert await wait_for_state(settings, ids[name], "failed") == [None] * 4
        assert "Connect" in (await attempt_log(settings, refused["refused"]))[2]
        assert "exhausted after 4 attempts; last: " in (await attempt_log(settings, answered["garbage"]))[2]
    finally:
        server.close()
        await server.wait_closed()


async def test_operators_see_an_alerts_deliveries_endpoint_health_and_why_a_replay_is_refused(settings, services, endpoints):
    alert_id = new_id()
    ids = await request_deliveries(settings, ["health", "fast"], alert_id=alert_id)
    await wait_for_state(settings, ids["fast"], "delivered")
    await wait_for_state(settings, ids["health"], "failed")
    base = f"http://127.0.0.1:{settings.notifier_port}/v1"
    async with aiohttp.ClientSession(headers=operator_headers(settings)) as http:
        async with http.get(f"{base}/deliveries", params={"alert_id": str(alert_id)}) as r:
            assert r.status == 200, await r.text()
            found = {d["endpoint"]: d for d in await r.json()}
        assert set(found) == {"ep-test-health", "ep-test-fast"}
        failed = found["ep-test-health"]
        assert (failed["webhook_id"], failed["channel"], failed["agency"], failed["state"]) == (
            ids["health"], "webhook", "kg-sbs", "failed")
        log = failed["attempt_log"]
        assert [(a["outcome"], a["http_status"]) for a in log] == [("retrying", 500)] * 3 + [("failed", 500)]
        assert all(a["next_attempt_at"] for a in log[:3]) and log[3]["next_attempt_at"] is None
        assert log[0]["response_excerpt"] == "health failing" and log[0]["reason"] == "HTTP 500"
        assert "exhausted after 4 attempts" in log[3]["reason"] and log[0]["latency_ms"] >= 0
        assert found["ep-test-fast"]["attempt_log"][0]["outcome"] == "delivered"

        async with http.get(f"{base}/endpoints") as r:
            health = {e["endpoint"]: e for e in await r.json()}
        sick, well = health["ep-test-health"], health["ep-test-fast"]
        assert sick["circuit"]["state"] == "open" and sick["circuit"]["consecutive_failures"] == 4
        assert datetime.fromisoformat(sick["circuit"]["open_until"]) > datetime.now(timezone.utc)
        assert sick["deliveries"]["failed"] == 1 and sick["last_success_at"] is None
        assert "exhausted after 4 attempts; last: HTTP 500" in sick["last_error"] and sick["last_failure_at"]
        assert well["circuit"] == {"state": "closed", "consecutive_failures": 0, "open_until": None}
        assert well["last_success_at"] and well["deliveries"]["delivered"] >= 1

        async with http.post(f"{base}/deliveries/{ids['fast']}/replay") as r:
            assert r.status == 409 and (await r.json())["detail"].startswith("already delivered at 20"), await r.text()
        async with http.post(f"{base}/deliveries/{new_id()}/replay") as r:
            assert r.status == 404 and "no delivery" in (await r.json())["detail"]
        async with http.post(f"{base}/endpoints/ep-test-waiting/disable") as r:
            assert r.status == 200
        waiting = await request_deliveries(settings, ["waiting"])
        await wait_for(lambda: attempt_log(settings, waiting["waiting"]), lambda found: found[0] == "pending")
        async with http.post(f"{base}/deliveries/{waiting['waiting']}/replay") as r:
            assert r.status == 409 and (await r.json())["detail"].startswith("still pending (no attempt yet, due at")
        async with http.post(f"{base}/endpoints/ep-test-waiting/enable") as r:
            assert r.status == 200

        since = {"since": datetime.now(timezone.utc).isoformat()}
        async with http.post(f"{base}/endpoints/ep-test-nobody/recover", json=since) as r:
            assert r.status == 404 and "no endpoint ep-test-nobody" in await r.text()
        async with http.post(f"{base}/endpoints/ep-test-waiting/recover", json=since) as r:
            assert await r.json() == {"endpoint": "ep-test-waiting", "replayed": 0,
                                      "reason": "no delivery to ep-test-waiting is dead-lettered"}
        async with http.post(f"{base}/endpoints/ep-test-health/recover", json=since) as r:
            body = await r.json()
        assert body["replayed"] == 0 and "its latest dead letter failed at" in body["reason"], body


async def wait_for(probe, done, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done(found := await probe()):
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"gave up waiting: {found}")
