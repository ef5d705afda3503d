"""After one alert goes through the four service processes, their /metrics show it happen."""
from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from demo.scenario import EXPECTED_DENIED, EXPECTED_RECIPIENTS, SCENARIO
from shared.auth import Role
from tests.integration.conftest import make_key

pytestmark = pytest.mark.stack
CODE = re.compile(r"[a-z][a-z0-9_]*")  # reasons, codes, outcomes, causes, states: codes, never sentences


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, list[tuple[dict, float]]]:
    """Sample name → [(labels, value)] of one service's /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name].append((s.labels, s.value))
    return samples


def total(samples: dict, name: str, **labels) -> float:
    return sum(v for found, v in samples.get(name, []) if labels.items() <= found.items())


async def test_one_alert_shows_in_every_services_metrics(settings, services):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    delivered = len(EXPECTED_RECIPIENTS)
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, settings.notifier_port)
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=SCENARIO,
                             headers={"Authorization": "Bearer not-a-key"}) as r:
            assert r.status == 401
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=SCENARIO,
                             headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 202, await r.text()

        for _ in range(150):  # the services share the session with other tests: compare with before
            notifier = await scrape(http, settings.notifier_port)
            if (total(notifier, "blonet_deliveries_total", outcome="delivered")
                    - total(before, "blonet_deliveries_total", outcome="delivered")) >= delivered:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError(f"delivered count did not grow by {delivered}: {notifier.get('blonet_deliveries_total')}")
        gateway = await scrape(http, settings.gateway_port)
        routing = await scrape(http, settings.routing_port)
        audit = await scrape(http, settings.audit_port)

    for endpoint in EXPECTED_RECIPIENTS:
        assert total(notifier, "blonet_deliveries_total", outcome="delivered", endpoint=endpoint) >= 1, endpoint
    e2e = total(notifier, "blonet_accept_to_delivery_seconds_count") - total(before, "blonet_accept_to_delivery_seconds_count")
    assert e2e >= delivered
    assert total(notifier, "blonet_endpoint_circuit_state", endpoint="ep-blo-dostuk", state="closed") == 1
    lag = {(labels["group"], labels["topic"]) for labels, _ in notifier["blonet_consumer_lag_records"]}
    assert (settings.topic("notifier"), settings.topic("deliveries.requested")) in lag, lag

    assert total(gateway, "blonet_alerts_accepted_total") >= 1
    assert total(gateway, "blonet_alerts_rejected_total", reason="unauthorized") >= 1
    assert total(routing, "blonet_routing_decisions_total", kind="alert", outcome="recipients") >= 1
    assert total(routing, "blonet_routing_recipients_total") >= delivered
    for code in set(EXPECTED_DENIED.values()):
        assert total(routing, "blonet_routing_denials_total", code=code) >= 1, code
    assert total(audit, "blonet_audit_tree_entries") > 0

    for samples in (gateway, routing, notifier, audit):
        for name, found in samples.items():
            for labels, _ in found:
                for label in ("reason", "code", "outcome", "cause", "state", "kind"):
                    if label in labels:
                        assert CODE.fullmatch(labels[label]), f"{name}{{{label}={labels[label]!r}}}"
