"""Tampering behind the database's back (superuser, triggers off) is caught by `blonet audit verify` and consistency checks."""
from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from services.audit import keys
from shared import topics
from shared.checkpoint import peek_checkpoint
from shared.merkle import Frontier, leaf_hash
from shared.settings import Settings
from tests.conftest import APP_ENV, port
from tests.integration.conftest import start_service, wait_ready
from tests.integration.test_audit_log import append_records, drop_database, own_database, superuser
from tests.integration.test_audit_service import Auditor, run_cli, token
from tests.unit.test_audit_entry import submitted_record

pytestmark = pytest.mark.stack
PORT = port(150)


@dataclass
class Log:
    settings: Settings
    auditor: Auditor
    saved: Path  # the auditor's own copy of a checkpoint of the first 20-odd entries
    vkey: str

    @property
    def saved_size(self) -> int:
        return peek_checkpoint(self.saved.read_text()).size

    async def verify(self, *extra: str) -> tuple[int, str]:
        return await run_cli("verify", "--url", self.auditor.base, "--token",
                             self.auditor.headers["Authorization"].split()[1], "--key", self.vkey,
                             "--saved", str(self.saved), *extra)

    async def entry(self, idx: int) -> bytes:
        return (await superuser(self.settings, f"SELECT entry FROM entries WHERE idx = {idx}"))[0][0].entry

    async def set_entry(self, idx: int, data: bytes) -> None:
        await superuser(self.settings, ("UPDATE entries SET entry = :e WHERE idx = :i", {"e": data, "i": idx}))

    async def rebuild_tree(self, forged: dict[int, bytes] | None = None) -> None:
        """Replace every tree node with hashes recomputed from the entries (and the forged ones)."""
        rows = (await superuser(self.settings, "SELECT idx, entry FROM entries ORDER BY idx"))[0]
        nodes, frontier = [], Frontier()
        for r in rows:
            nodes += frontier.append(leaf_hash((forged or {}).get(r.idx, r.entry)))
        await superuser(self.settings, "DELETE FROM tree_nodes", (
            "INSERT INTO tree_nodes SELECT * FROM unnest(CAST(:l AS smallint[]), CAST(:k AS bigint[]), CAST(:h AS bytea[]))",
            {"l": [n[0][0] for n in nodes], "k": [n[0][1] for n in nodes], "h": [n[1] for n in nodes]}))


@pytest.fixture(scope="module")
async def log(settings, tmp_path_factory):
    """A log of its own (20 entries, saved checkpoint, 10 more, checkpoint) served by its own audit process."""
    s = await own_database(settings, "tamper")
    await append_records(s, [("alerts.submitted", 0, i, submitted_record()) for i in range(20)])
    await topics.grant_acls(s.model_copy(update={"topic_prefix": APP_ENV["BLONET_TOPIC_PREFIX"] + "tamper."}))
    proc = start_service("audit", tmp_path_factory.mktemp("tamper"), {
        "BLONET_PG_DATABASE": s.pg_database, "BLONET_AUDIT_PORT": str(PORT),
        "BLONET_TOPIC_PREFIX": APP_ENV["BLONET_TOPIC_PREFIX"] + "tamper.", "BLONET_CHECKPOINT_INTERVAL_SECONDS": "0"})
    try:
        await wait_ready(PORT, proc)
        async with aiohttp.ClientSession() as http:
            auditor = Auditor(http, f"http://127.0.0.1:{PORT}", token(s, "auditor"))
            saved = tmp_path_factory.mktemp("saved") / "checkpoint"
            saved.write_text(await auditor.sign())
            await append_records(s, [("alerts.routed", 0, i, submitted_record()) for i in range(10)])
            await auditor.sign()
            yield Log(s, auditor, saved, str(keys.load_signing_key(s).verifier))
    finally:
        proc.stop()
        await drop_database(s)


async def test_an_untouched_log_verifies(log):
    code, out = await log.verify()
    assert code == 0 and f"extends your saved checkpoint of {log.saved_size}" in out, out


async def test_a_changed_entry_is_caught_and_placed(log):
    original = await log.entry(5)
    await log.set_entry(5, original.replace(b'"offset":5', b'"offset":95'))
    try:
        code, out = await log.verify()
        assert code == 1 and "FAILED" in out and re.search(r"between index 0 and (19|20) was changed", out), out
    finally:
        await log.set_entry(5, original)
    assert (await log.verify())[0] == 0


async def test_a_deleted_entry_is_caught(log):
    row = (await superuser(log.settings, "SELECT * FROM entries WHERE idx = 7"))[0][0]
    await superuser(log.settings, "DELETE FROM entries WHERE idx = 7")
    try:
        code, out = await log.verify()
        assert code == 1 and "entry at position 7 carries index 8" in out, out
    finally:
        await superuser(log.settings, ("INSERT INTO entries VALUES (:idx, :event_id, :type, :alert_id, :causation_id, "
                                       ":occurred_at, :recorded_at, :agencies, :entry)", dict(row._mapping)))
    assert (await log.verify())[0] == 0


async def test_reordered_entries_are_caught(log):
    swap = ("UPDATE entries SET idx = -1 WHERE idx = 3", "UPDATE entries SET idx = 3 WHERE idx = 4",
            "UPDATE entries SET idx = 4 WHERE idx = -1")
    await superuser(log.settings, *swap)
    try:
        code, out = await log.verify()
        assert code == 1 and "entry at position 3 carries index 4" in out, out
    finally:
        await superuser(log.settings, *swap)
    assert (await log.verify())[0] == 0


async def test_a_rewritten_log_with_a_matching_tree_fails_every_consistency_check(log):
    """The strongest tamperer: change an entry and rebuild every tree node to match it, so proofs look fine."""
    original = await log.entry(2)
    forged = original.replace(b'"offset":2', b'"offset":42')
    await log.set_entry(2, forged)
    await log.rebuild_tree({2: forged})
    try:
        # The service refuses to sign over it: its stored tree no longer matches what it signed.
        async with log.auditor.http.post(f"{log.auditor.base}/v1/checkpoint", headers=log.auditor.headers) as r:
            assert r.status == 409 and "no longer matches the checkpoint" in await r.text()
        # The auditor's light check: the served consistency proof from the saved checkpoint fails ...
        alert_id = json.loads(base64.b64decode((await log.auditor.get("/v1/entries", start=25, end=26))
                                               ["entries"][0]["entry"]))["alert_id"]
        code, out = await log.verify("--alert", alert_id)
        assert code == 1 and f"does not extend your saved checkpoint of {log.saved_size}" in out, out
        # ... and the full check: the recomputed tree contradicts every checkpoint signed before.
        code, out = await log.verify()
        assert code == 1 and re.search(r"between index 0 and (19|20) was changed", out), out
    finally:
        await log.set_entry(2, original)
        await log.rebuild_tree()
    assert (await log.verify())[0] == 0
