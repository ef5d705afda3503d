"""The whole CAP corpus (tests/data/cap/) through real gateways: each message gets the answer its table row gives.

Two gateways on their own topics: one as deployed (expired alerts refused), one replaying old traffic
(reject_expired_alerts off), so that messages that expired long ago still show what they get while in force.
Each message is submitted with a key of its sender's agency; their directory lists each feed with its
CAP senders and, for some, its signing certificates (tests/cap_corpus.py, `corpus_directory`).
"""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import yaml
from lxml import etree

from shared import topics
from shared.auth import Role
from tests.cap_corpus import ACCEPTED, CORPUS, DIR, corpus_directory
from tests.conftest import RUN, port
from tests.integration.conftest import make_key, network_dir, start_service, wait_ready

pytestmark = pytest.mark.stack
PREFIX = f"t{RUN}.capc."
LIVE, REPLAY = port(520), port(521)


@pytest.fixture(scope="module")
async def gateways(settings, tmp_path_factory) -> AsyncIterator[dict[str, str]]:
    await topics.create_topics(settings.model_copy(update={"topic_prefix": PREFIX}))
    network = network_dir(tmp_path_factory.mktemp("cap-network"))
    (network / "directory.yaml").write_text(yaml.safe_dump(corpus_directory(yaml.safe_load((network / "directory.yaml").read_text()))))
    procs = {}
    try:
        for mode, at, reject in (("live", LIVE, "true"), ("replay", REPLAY, "false")):
            procs[mode] = start_service("gateway", tmp_path_factory.mktemp(f"cap-{mode}"), {
                "BLONET_GATEWAY_PORT": str(at), "BLONET_TOPIC_PREFIX": PREFIX, "BLONET_REJECT_EXPIRED_ALERTS": reject,
                "BLONET_NETWORK_DIR": str(network), "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{at}"}, suffix=f"-cap-{mode}")
            await wait_ready(at, procs[mode])
        yield {"live": f"http://127.0.0.1:{LIVE}", "replay": f"http://127.0.0.1:{REPLAY}"}
    finally:
        for proc in procs.values():
            proc.stop()


async def _submit(http: aiohttp.ClientSession, url: str, key: str, body: bytes, idempotency_key: str | None = None) -> tuple[int, dict]:
    # The two gateways share one database: an Idempotency-Key per gateway keeps the second from replaying the first's answer.
    extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    async with http.post(f"{url}/v1/alerts", data=body, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/cap+xml", **extra}) as r:
        return r.status, await r.json()


async def test_every_corpus_message_gets_the_answer_of_its_table_row(settings, gateways):
    assert len(CORPUS) >= 30 and sorted(c.file for c in CORPUS) == sorted(p.name for p in DIR.glob("*") if p.name != "README.md")
    keys = {agency: await make_key(settings, agency, Role.SUBMIT) for agency in {c.agency for c in CORPUS}}
    got, signatures = {}, {}
    async with aiohttp.ClientSession() as http:
        for case in CORPUS:
            body = (DIR / case.file).read_bytes()
            for mode in ("live", "replay"):
                code, answer = await _submit(http, gateways[mode], keys[case.agency], body, f"{RUN}-{mode}-{case.file}")
                got[case.file, mode] = ACCEPTED if code == 202 else answer.get("code")
                if code == 202:  # a signature is kept (the original bytes), noted and checked
                    assert answer["cap"]["signed"] == (b"xmldsig#" in body and b"Signature" in body), case.file
                    signatures[case.file, mode] = answer["cap"]["signature"]["state"]
                else:
                    assert code in (403, 413, 422), (case.file, mode, code, answer)
    expected = {(c.file, mode): getattr(c, mode) for c in CORPUS for mode in ("live", "replay")}
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    # "invalid / verified": the state as deployed, then replaying (at the message's own sent time)
    states = {(c.file, mode): c.signature.split(" / ")[0 if mode == "live" else -1] for c in CORPUS for mode in ("live", "replay")}
    assert {k: v for k, v in signatures.items() if v != states[k]} == {}


async def test_a_corpus_message_needs_its_sender_agencys_key(settings, gateways):
    other = await make_key(settings, "kg-moi", Role.SUBMIT)
    async with aiohttp.ClientSession() as http:
        code, answer = await _submit(http, gateways["live"], other, (DIR / "oasiscap-v1dot2_appendix_adot4.xml").read_bytes())
    assert (code, answer["code"]) == (403, "wrong_sender")


async def test_language_query_takes_any_bcp47_tag_and_picks_by_lookup(settings, gateways):
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    ns = {"c": "urn:oasis:names:tc:emergency:cap:1.2"}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        code, answer = await _submit(http, gateways["live"], key, (DIR / "handwritten-bcp47-languages.xml").read_bytes())
        assert code == 202
        picked = {}
        for wanted in ("zh-Hant-TW", "EN-US", "fil", "ru-RU", "es-419"):
            async with http.get(f"{gateways['live']}/v1/alerts/{answer['id']}", params={"format": "cap", "language": wanted}) as r:
                assert r.status == 200, await r.text()
                picked[wanted] = [i.findtext("c:language", namespaces=ns) for i in etree.fromstring(await r.read()).findall("c:info", ns)]
        async with http.get(f"{gateways['live']}/v1/alerts/{answer['id']}", params={"format": "cap", "language": "en_US"}) as r:
            assert (r.status, (await r.json())["code"]) == (422, "invalid_request")
    assert picked == {"zh-Hant-TW": ["zh-Hant"], "EN-US": ["en-us"], "fil": ["fil"], "ru-RU": ["ru"], "es-419": ["ru"]}
