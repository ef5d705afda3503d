"""Escalation: an alert not acknowledged in time is re-sent and sent to the agency's fallback
endpoint (from the network directory); an acknowledged one is not; both visible in audit."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from services.notifier import repository
from shared import topics
from shared.events import AckStatus, AlertAcknowledged, Envelope
from shared.ids import new_id
from shared.kafka import make_producer, send
from tests.integration.conftest import in_session, network_dir, start_service, wait_ready
from tests.integration.test_notifier import events_on, operator_headers, register, request_deliveries
from tests.integration.test_notifier_crash import (NOTIFIER_PORTS, RECEIVER_PORT, crash_settings, notifier_env,  # noqa: F401
                                                   receiver)

pytestmark = pytest.mark.stack
FALLBACK = "ep-kg-sbs-duty"  # kg-sbs's fallback_endpoint in deploy/network/directory.yaml


async def acknowledge(settings, alert_id, agency: str) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        ack = AlertAcknowledged(agency=agency, status=AckStatus.RECEIVED, acknowledged_by="test")
        env = Envelope.wrap(ack, origin_node="test", alert_id=alert_id, thread_id=alert_id)
        await (await send(producer, settings.topic(topics.ALERTS_ACKNOWLEDGED.name), str(alert_id), env))
    finally:
        await producer.stop()


async def watch(settings, alert_id, agency="kg-sbs"):
    return await in_session(settings, "notifier", lambda s: repository.watch_state(s, alert_id, agency))


async def test_unacknowledged_alert_is_resent_and_escalated_acknowledged_one_is_not(crash_settings, receiver, tmp_path):
    s = crash_settings
    await register(s, ["esc", "acked"])
    await in_session(s, "notifier", lambda session: repository.ensure_endpoints(session, {FALLBACK}))
    env = {**notifier_env(s, 0), "BLONET_ACK_DEADLINES_SECONDS": '{"immediate": 5}',
           "BLONET_NETWORK_DIR": str(network_dir(tmp_path / "network", RECEIVER_PORT))}
    proc = start_service("notifier", tmp_path, env, suffix="-esc")
    try:
        await wait_ready(NOTIFIER_PORTS[0], proc)
        body = {"alert": {"urgency": "immediate", "headline": "Vehicle lookout at Dostuk"}}
        late_alert, acked_alert = new_id(), new_id()
        await request_deliveries(s, ["esc"], url=f"http://127.0.0.1:{RECEIVER_PORT}/esc", body=body, alert_id=late_alert)
        await request_deliveries(s, ["acked"], url=f"http://127.0.0.1:{RECEIVER_PORT}/acked", body=body, alert_id=acked_alert)
        await acknowledge(s, acked_alert, "kg-sbs")
        for _ in range(200):
            if len(receiver.calls["esc"]) >= 2 and receiver.calls[FALLBACK]:
                break
            await asyncio.sleep(0.1)
        assert len(receiver.calls["esc"]) == 2 and receiver.calls["esc"][0] != receiver.calls["esc"][1], "re-sent as a new message"
        assert receiver.bodies[FALLBACK] == [body], "escalated to the agency's fallback endpoint"
        assert await watch(s, late_alert) == "escalated"
        assert await watch(s, acked_alert) == "acknowledged"
        assert len(receiver.calls["acked"]) == 1, "an acknowledged alert is not escalated"
        acts = await events_on(s, topics.OPERATIONS_ACTIONS.name, lambda p: p["action"] == "alert.escalate")
        assert [a["detail"]["resent_to"] for a in acts] == [["ep-test-esc", FALLBACK]]
        async with aiohttp.ClientSession(headers=operator_headers(s)) as http:
            async with http.get(f"http://127.0.0.1:{NOTIFIER_PORTS[0]}/v1/deliveries", params={"alert_id": str(late_alert)}) as r:
                shown = await r.json()
        assert sorted((d["endpoint"], d["escalation"] or "") for d in shown) == [
            (FALLBACK, "fallback"), ("ep-test-esc", ""), ("ep-test-esc", "resend")], "operators see what escalation added"
        assert {d["ack_state"] for d in shown} == {"escalated"}
    finally:
        proc.stop()
