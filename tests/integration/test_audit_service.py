"""The audit service as a process: every topic logged, bad records kept, the auditors' API, `blonet audit verify`."""
from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from uuid import UUID

import aiohttp
import pytest

from services.audit import keys
from shared import topics
from shared.auth import Principal, Role, issue_token
from shared.checkpoint import open_checkpoint
from shared.kafka import make_producer
from shared.merkle import leaf_hash, verify_consistency, verify_inclusion
from shared.settings import REPO, Settings
from tests.conftest import port
from tests.integration.conftest import start_service, wait_ready
from tests.integration.test_audit_log import drop_database, own_database
from tests.unit.test_audit_entry import submitted_record

pytestmark = pytest.mark.stack
PORT = port(151)
# `blonet` run from this checkout (cwd first on sys.path), whatever an editable install points at.
BLONET = [sys.executable, "-c", "import sys; from services.cli import app; sys.argv[0] = 'blonet'; app()"]


def token(settings: Settings, *roles: Role, agency: str = "unodc") -> str:
    return issue_token(settings, Principal(f"test-{'-'.join(roles)}", agency, frozenset(roles)))


class Auditor:
    """An auditor's HTTP client for one audit service."""

    def __init__(self, http: aiohttp.ClientSession, base: str, bearer: str) -> None:
        self.http, self.base, self.headers = http, base, {"Authorization": f"Bearer {bearer}"}

    async def get(self, path: str, expect: int = 200, **params):
        async with self.http.get(f"{self.base}{path}", params=params, headers=self.headers) as r:
            body = await r.json() if r.content_type == "application/json" else await r.text()
            assert r.status == expect, (path, params, r.status, body)
            return body

    async def sign(self) -> str:
        async with self.http.post(f"{self.base}/v1/checkpoint", headers=self.headers) as r:
            assert r.status == 200, await r.text()
            return await r.text()

    async def wait_for(self, path: str, done, timeout: float = 30, **params):
        for _ in range(int(timeout / 0.2)):
            async with self.http.get(f"{self.base}{path}", params=params, headers=self.headers) as r:
                if r.status == 200 and done(body := await r.json()):
                    return body
            await asyncio.sleep(0.2)
        raise AssertionError(f"gave up waiting for {path} {params}")


@pytest.fixture(scope="session")
async def alone(settings, tmp_path_factory):
    """An audit service with topics, database and process of its own: the bad records these tests
    produce reach no other service's consumer."""
    s = await own_database(settings.model_copy(update={"topic_prefix": settings.topic_prefix + "alone."}), "alone")
    await topics.create_topics(s)
    proc = start_service("audit", tmp_path_factory.mktemp("alone"), {
        "BLONET_PG_DATABASE": s.pg_database, "BLONET_AUDIT_PORT": str(PORT), "BLONET_TOPIC_PREFIX": s.topic_prefix})
    try:
        await wait_ready(PORT, proc)
        yield s
    finally:
        proc.stop()
        await drop_database(s)


@pytest.fixture
async def auditor(alone):
    async with aiohttp.ClientSession() as http:
        yield Auditor(http, f"http://127.0.0.1:{PORT}", token(alone, Role.AUDITOR))


async def produce_raw(settings: Settings, topic: str, *values: bytes) -> None:
    producer = make_producer(settings)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.topic(topic), value=value, key=b"k")
    finally:
        await producer.stop()


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*BLONET, "audit", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, cwd=REPO)
    out, _ = await proc.communicate()
    return proc.returncode, out.decode()


async def test_a_malformed_record_is_logged_as_rejected_and_the_consumer_goes_on(alone, auditor):
    good = submitted_record()
    alert_id = UUID(json.loads(good)["alert_id"])
    # (on alerts.submitted: an alert.submitted anywhere else would be refused as a foreign event)
    await produce_raw(alone, topics.ALERTS_SUBMITTED.name, b'{"event_id": "not-a-uuid", "type":', good)
    found = await auditor.wait_for("/v1/search", lambda b: b["entries"], type="audit.rejected")
    rejected = [e for e in found["entries"] if base64.b64decode(e["payload"]["body"]).startswith(b'{"event_id": "not-a')]
    assert rejected and "json" in rejected[0]["fields"]["reason"].lower()
    assert rejected[0]["fields"]["source"]["topic"] == alone.topic(topics.ALERTS_SUBMITTED.name)
    trail = await auditor.wait_for(f"/v1/trail/{alert_id}", lambda b: b["entries"])
    assert trail["entries"][0]["type"] == "alert.submitted", "the record after the bad one was logged too"


async def test_every_topic_of_the_catalogue_is_consumed(alone, auditor):
    for topic in topics.CATALOGUE:
        await produce_raw(alone, topic.name, f"probe {topic.name}".encode())
    found = await auditor.wait_for("/v1/search", lambda b: len({e["fields"]["source"]["topic"] for e in b["entries"]
                                                               if e["payload"]["body"].startswith("cHJvYmUg")})
                                   == len(topics.CATALOGUE), type="audit.rejected", limit=1000)
    assert found


async def test_proofs_from_the_api_verify_against_the_signed_checkpoint(alone, auditor):
    vkey = keys.load_signing_key(alone).verifier
    await produce_raw(alone, topics.ALERTS_SUBMITTED.name, submitted_record(), submitted_record())
    await auditor.wait_for("/v1/search", lambda b: b["entries"], type="alert.submitted")
    old_note = await auditor.sign()
    old = open_checkpoint(old_note, vkey)
    note = await auditor.sign()  # the signing request itself was logged: the log grew
    cp = open_checkpoint(note, vkey)
    assert cp.size > old.size
    # Proofs name the tree they are for: the periodic signer may sign a newer checkpoint meanwhile.
    page = await auditor.get("/v1/entries", start=max(cp.size - 20, 0), end=cp.size)
    for item in page["entries"][::5]:
        data = base64.b64decode(item["entry"])
        proof = await auditor.get("/v1/proofs/inclusion", index=item["index"], tree_size=cp.size)
        assert proof["checkpoint"] == note
        assert verify_inclusion(item["index"], cp.size, leaf_hash(data), [base64.b64decode(h) for h in proof["hashes"]],
                                cp.root)
        by_hash = await auditor.get("/v1/proofs/inclusion", hash=leaf_hash(data).hex(), tree_size=cp.size)
        assert by_hash["index"] == item["index"]
    proof = await auditor.get("/v1/proofs/consistency", first=old.size, second=cp.size)
    assert proof["checkpoint"] == note
    assert (await auditor.get("/v1/proofs/inclusion", index=0, tree_size=old.size))["checkpoint"] == old_note
    assert verify_consistency(old.size, cp.size, old.root, cp.root, [base64.b64decode(h) for h in proof["hashes"]])


async def test_bad_requests_are_refused_with_the_reason(alone, auditor):
    size = open_checkpoint(await auditor.get("/v1/checkpoint"), keys.load_signing_key(alone).verifier).size
    for path, params, words in [
        ("/v1/proofs/inclusion", {"index": size, "tree_size": size}, f"index {size} is outside the tree of {size} entries"),
        ("/v1/proofs/inclusion", {"index": 0, "tree_size": size + 10**6}, "beyond the latest checkpoint"),
        ("/v1/proofs/inclusion", {"hash": "00" * 32}, "no entry has the leaf hash"),
        ("/v1/proofs/inclusion", {"hash": "xyz"}, "SHA-256 leaf hash"),
        ("/v1/proofs/inclusion", {}, "either index or hash"),
        ("/v1/proofs/consistency", {"first": 3, "second": 2}, "first (3) is larger than second (2)"),
        ("/v1/proofs/consistency", {"first": 1, "second": size + 10**6}, "beyond the latest checkpoint"),
        ("/v1/entries", {"start": 10**9}, "beyond the log's"),
    ]:
        body = await auditor.get(path, expect=400, **params)
        assert words in body["detail"], body
    async with auditor.http.get(f"{auditor.base}/v1/checkpoint") as r:
        assert r.status == 401
    async with auditor.http.get(f"{auditor.base}/v1/checkpoint",
                                headers={"Authorization": f"Bearer {token(alone, Role.SUBMIT)}"}) as r:
        assert r.status == 403 and "needs role auditor" in await r.text()


async def test_every_auditor_query_is_itself_logged(alone, auditor):
    marker = "marker-" + base64.b32encode(os.urandom(5)).decode()
    await auditor.get("/v1/search", agency=marker)
    found = await auditor.get("/v1/search", type="audit.access", agency="unodc", limit=1000)
    queries = [e["fields"]["request"] for e in found["entries"]]
    assert {"method": "GET", "path": "/v1/search", "query": f"agency={marker}"} in queries


async def test_search_by_agency_type_and_time(alone, auditor):
    await produce_raw(alone, topics.ALERTS_SUBMITTED.name, submitted_record())
    found = await auditor.wait_for("/v1/search", lambda b: b["entries"], agency="kg-sbs", type="alert.submitted",
                                   since="2000-01-01T00:00:00Z")
    assert all("kg-sbs" in e["fields"]["agencies"] and e["type"] == "alert.submitted" for e in found["entries"])
    assert (await auditor.get("/v1/search", agency="kg-sbs", until="2000-01-01T00:00:00Z"))["entries"] == []


async def test_blonet_audit_verify_export_and_trail(alone, auditor, tmp_path):
    vkey = str(keys.load_signing_key(alone).verifier)
    raw = submitted_record()
    alert_id = json.loads(raw)["alert_id"]
    await produce_raw(alone, topics.ALERTS_SUBMITTED.name, raw)
    await auditor.wait_for(f"/v1/trail/{alert_id}", lambda b: b["entries"])
    saved = tmp_path / "saved.checkpoint"
    base = ["--url", auditor.base, "--token", auditor.headers["Authorization"].split()[1], "--key", vkey]
    code, out = await run_cli("verify", *base, "--save", str(saved))
    assert code == 0 and "OK" in out, out
    await auditor.sign()
    code, out = await run_cli("verify", *base, "--alert", alert_id, "--saved", str(saved))
    assert code == 0 and "alert.submitted" in out and "payload matches its digest" in out, out
    export = tmp_path / "log.jsonl"
    code, out = await run_cli("export", "--out", str(export), *base[:4])
    assert code == 0, out
    code, out = await run_cli("verify", "--file", str(export), "--key", vkey, "--saved", str(saved))
    assert code == 0 and "extends your saved checkpoint" in out, out
    code, out = await run_cli("verify", *base[:4], "--key", "other+00000000+AQ==")
    assert code == 2 and "verifier key" in out


async def test_operators_read_a_trail_the_checkpoint_and_inclusion_proofs_and_each_read_is_logged(alone, auditor):
    raw = submitted_record()
    alert_id = json.loads(raw)["alert_id"]
    await produce_raw(alone, topics.ALERTS_SUBMITTED.name, raw)
    await auditor.wait_for(f"/v1/trail/{alert_id}", lambda b: b["entries"])
    await auditor.sign()
    operator = Auditor(auditor.http, auditor.base, token(alone, Role.OPERATOR))
    trail = await operator.get(f"/v1/trail/{alert_id}")
    cp = open_checkpoint(await operator.get("/v1/checkpoint"), keys.load_signing_key(alone).verifier)
    first = trail["entries"][0]
    proof = await operator.get("/v1/proofs/inclusion", hash=first["leaf_hash"], tree_size=cp.size)
    assert verify_inclusion(first["index"], cp.size, base64.b64decode(first["leaf_hash"]),
                            [base64.b64decode(h) for h in proof["hashes"]], cp.root)
    for path, params in [("/v1/search", {}), ("/v1/entries", {}), ("/v1/proofs/consistency", {"first": 1}),
                         ("/v1/checkpoints", {})]:
        body = await operator.get(path, expect=403, **params)
        assert "needs role auditor" in body["detail"], "the rest of the log stays the auditors'"
    found = await auditor.get("/v1/search", type="audit.access", agency="unodc", limit=1000)
    reads = [(e["fields"]["request"]["path"], e["fields"]["actor"]["key_id"]) for e in found["entries"]]
    for path in (f"/v1/trail/{alert_id}", "/v1/checkpoint", "/v1/proofs/inclusion"):
        assert (path, "test-operator") in reads, (path, reads[-5:])
