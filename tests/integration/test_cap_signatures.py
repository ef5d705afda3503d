"""Signed CAP through a real gateway: each signature state recorded in the answer, the status view and the
alert.submitted event; a directory that requires signatures refuses the rest with a code of its own; the
node signs the CAP it serves and publishes its certificate.

One gateway on its own topics, with a directory in which kg-sbs registers two certificates (one expired)
and kg-customs must sign with its one, and with a node signing key. Keys are generated here.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest
import yaml

from shared import topics
from shared.auth import Role
from shared.cap import render_cap
from shared.capsig import verify
from shared.events import Envelope, SignatureState
from tests.capkeys import NOW, make_key
from tests.conftest import RUN, port
from tests.integration.conftest import make_key as make_api_key
from tests.integration.conftest import network_dir, read_topic, start_service, wait_ready
from tests.integration.test_gateway_edge import FUTURE

pytestmark = pytest.mark.stack
PREFIX = f"t{RUN}.capsig."
AT = port(522)
GW = f"http://127.0.0.1:{AT}/v1"
CAP = "application/cap+xml"
SENT = datetime(2026, 11, 1, 9, 30, tzinfo=timezone(timedelta(hours=6)))
SBS, OLD, CUSTOMS, STRANGER, NODE = (make_key("kg-sbs"), make_key("kg-sbs 2024", valid_from=NOW - timedelta(days=800),
                                     valid_to=NOW - timedelta(days=400)), make_key("kg-customs"), make_key("stranger"),
                                     make_key("blonet-test node"))


def message(agency: str, identifier: str, **changes) -> bytes:
    alert = {**FUTURE, "sender_agency": agency, "sender_post": None, **changes}
    return render_cap({"alert": alert}, sender=f"{agency}@gov.kg", identifier=identifier, sent=SENT)


@pytest.fixture(scope="module")
async def gateway(settings, tmp_path_factory) -> AsyncIterator[None]:
    await topics.create_topics(settings.model_copy(update={"topic_prefix": PREFIX}))
    network = network_dir(tmp_path_factory.mktemp("capsig-network"))
    doc = yaml.safe_load((network / "directory.yaml").read_text())
    agencies = {a["id"]: a for a in doc["agencies"]}
    agencies["kg-sbs"]["cap_signing_certificates"] = [SBS.certificate_pem.decode(), OLD.certificate_pem.decode()]
    agencies["kg-customs"].update(cap_signing_certificates=[CUSTOMS.certificate_pem.decode()], require_signed_cap=True)
    (network / "directory.yaml").write_text(yaml.safe_dump(doc))
    keys = tmp_path_factory.mktemp("capsig-node")
    (keys / "cap.key").write_bytes(NODE.key_pem)
    (keys / "cap.crt").write_bytes(NODE.certificate_pem)
    proc = start_service("gateway", tmp_path_factory.mktemp("capsig-gw"), {
        "BLONET_GATEWAY_PORT": str(AT), "BLONET_TOPIC_PREFIX": PREFIX, "BLONET_NETWORK_DIR": str(network),
        "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{AT}", "BLONET_CAP_SIGNING_KEY_FILE": str(keys / "cap.key"),
        "BLONET_CAP_SIGNING_CERTIFICATE_FILE": str(keys / "cap.crt")}, suffix="-capsig")
    try:
        await wait_ready(AT, proc)
        yield
    finally:
        proc.stop()


async def _submit(http: aiohttp.ClientSession, key: str, body: bytes) -> tuple[int, dict]:
    async with http.post(f"{GW}/alerts", data=body, headers={"Authorization": f"Bearer {key}", "Content-Type": CAP}) as r:
        return r.status, await r.json()


async def test_each_state_is_recorded_in_the_answer_the_status_and_the_submitted_event(settings, gateway):
    key = await make_api_key(settings, "kg-sbs", Role.SUBMIT)
    tampered = SBS.sign(message("kg-sbs", f"{RUN}-T", headline="Convoy at Dostuk"))
    cases = {
        "verified": SBS.sign(message("kg-sbs", f"{RUN}-V")),
        "invalid": tampered.replace(b"Convoy at Dostuk", b"Convoy at Kara-Suu"),  # changed after signing
        "unknown_signer": STRANGER.sign(message("kg-sbs", f"{RUN}-S")),
        "unsigned": message("kg-sbs", f"{RUN}-U"),
    }
    expired = OLD.sign(message("kg-sbs", f"{RUN}-E"))
    ids = {}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        for expected, body in [*cases.items(), ("invalid", expired)]:
            code, answer = await _submit(http, key, body)
            assert code == 202, answer
            assert answer["cap"]["signature"]["state"] == expected, answer
            ids[answer["id"]] = expected
            async with http.get(f"{GW}/alerts/{answer['id']}") as r:
                shown = (await r.json())["cap"]["signature"]
            assert shown == answer["cap"]["signature"]
    assert "valid from" in shown["reason"], "the last one: the expired certificate is named as the reason"
    events = [Envelope.from_bytes(r.value) for r in await read_topic(settings, f"{PREFIX}{topics.ALERTS_SUBMITTED.name}",
                                                                     topics.ALERTS_SUBMITTED.partitions)]
    logged = {str(e.alert_id): e.payload["cap_signature"]["state"] for e in events if str(e.alert_id) in ids}
    assert logged == ids, "the contract carries the state, so the audit log keeps it"


async def test_a_directory_that_requires_signatures_refuses_anything_not_verified(settings, gateway):
    key = await make_api_key(settings, "kg-customs", Role.SUBMIT)
    good = CUSTOMS.sign(message("kg-customs", f"{RUN}-C1", headline="Precursors at Dostuk"))
    refused = {
        "cap_unsigned": message("kg-customs", f"{RUN}-C2"),
        "cap_signature_invalid": good.replace(b"Precursors at Dostuk", b"Precursors at Dustlik"),
        "cap_unknown_signer": SBS.sign(message("kg-customs", f"{RUN}-C3")),  # another agency's key
    }
    async with aiohttp.ClientSession() as http:
        for code_expected, body in refused.items():
            code, answer = await _submit(http, key, body)
            assert (code, answer["code"]) == (422, code_expected), answer
            assert "requires kg-customs's CAP messages to carry a signature" in answer["detail"]
        code, answer = await _submit(http, key, good)
        assert code == 202 and answer["cap"]["signature"]["state"] == "verified", answer
    events = await read_topic(settings, f"{PREFIX}{topics.ALERTS_SUBMITTED.name}", topics.ALERTS_SUBMITTED.partitions)
    mine = [Envelope.from_bytes(r.value) for r in events]
    assert [e.payload["alert"]["headline"] for e in mine if e.payload["alert"]["sender_agency"] == "kg-customs"] == \
        ["Precursors at Dostuk"], "a refused message produces nothing"


async def test_the_node_signs_the_cap_it_serves_and_publishes_its_certificate(settings, gateway):
    key = await make_api_key(settings, "kg-sbs", Role.SUBMIT)
    original = SBS.sign(message("kg-sbs", f"{RUN}-N"))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{GW}/node/cap-certificate") as r:  # no key needed: any receiver may fetch it
            assert r.status == 200 and r.content_type == "application/x-pem-file"
            certificate = await r.text()
        code, answer = await _submit(http, key, original)
        assert code == 202, answer
        auth = {"Authorization": f"Bearer {key}"}
        async with http.get(f"{GW}/alerts/{answer['id']}", params={"format": "cap"}, headers=auth) as r:
            served = await r.read()
        async with http.get(f"{GW}/alerts/{answer['id']}", params={"format": "cap", "original": "true"}, headers=auth) as r:
            kept = await r.read()
    assert certificate == NODE.certificate_pem.decode()
    assert verify(served, (certificate,), datetime.now(timezone.utc)).state is SignatureState.VERIFIED
    assert kept == original and verify(kept, (SBS.certificate_pem.decode(),), datetime.now(timezone.utc)).state is SignatureState.VERIFIED
