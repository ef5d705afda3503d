"""Defect 9: a payload could vanish from the audit log without a trace.

Attacks: (a) the audit service's own database role deletes a payload directly; (b) someone who
bypasses the erase path (a database owner, a restored backup) removes one, and `blonet audit
verify` still said "payload erased"; (c) the console trusted a verifier key from a file the audit
service itself writes. Expected: the service role cannot DELETE payloads (only the erase path,
which first logs an `audit.erasure` entry naming the indexes, can); verify refuses a missing
payload that no verified erasure entry covers; the console uses only the configured key.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import aiohttp
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from services.audit import keys, service
from services.audit.cli import audit as audit_cli
from services.audit.models import payloads
from services.gateway.console import trail
from shared import db
from shared.auth import Principal, Role, issue_token
from tests.integration.conftest import in_session, make_key
from tests.integration.test_end_to_end import poll
from tests.integration.test_gateway_edge import FUTURE, auth

pytestmark = pytest.mark.stack


async def logged_alert(settings, http: aiohttp.ClientSession, audit_url: str) -> tuple[str, list[dict]]:
    """Submit an alert through the gateway; return its id and its trail once audit has logged it."""
    key = await make_key(settings, "kg-sbs", Role.SUBMIT)
    async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=FUTURE, headers=auth(key)) as r:
        assert r.status == 202, await r.text()
        alert_id = (await r.json())["id"]

    async def entries() -> list[dict]:
        async with http.get(f"{audit_url}/v1/trail/{alert_id}") as r:
            return (await r.json())["entries"] if r.status == 200 else []

    return alert_id, await poll(entries, lambda found: any(e["payload"] for e in found))


def verify(settings, token: str, alert_id: str):
    vkey = keys.vkey_file(settings).read_text().strip()
    return CliRunner().invoke(audit_cli, ["verify", "--alert", alert_id, "--key", vkey, "--token", token,
                                          "--url", f"http://127.0.0.1:{settings.audit_port}"])


async def test_payloads_leave_only_by_a_logged_erasure_and_verify_checks_it(settings, services):
    token = issue_token(settings, Principal("auditor-test", "kg-sbs", frozenset({Role.AUDITOR})))
    audit_url = f"http://127.0.0.1:{settings.audit_port}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        tampered, found = await logged_alert(settings, http, audit_url)
        index = next(e["index"] for e in found if e["payload"])

        # (a) The service role may not delete a payload itself.
        async def delete(session):
            await session.execute(text("DELETE FROM payloads WHERE idx = :i"), {"i": index})
        with pytest.raises(DBAPIError, match="permission denied"):
            await in_session(settings, "audit", delete)
        assert await in_session(settings, "audit", lambda s: s.scalar(select(payloads.c.idx).where(payloads.c.idx == index)))

        # (b) A payload removed behind the erase path's back fails verification.
        await in_session(settings, db.owner_role("audit"), delete)  # e.g. a DBA, behind the erase path's back
        async with http.post(f"{audit_url}/v1/checkpoint") as r:
            assert r.status == 200
        result = await asyncio.to_thread(verify, settings, token, tampered)
        assert result.exit_code == 1, result.output
        assert f"entry {index}" in result.output and "no audit.erasure entry" in result.output, result.output

        # The erase path logs the erasure first; then verify accepts the missing payloads.
        erased_alert, _ = await logged_alert(settings, http, audit_url)
        erased = await in_session(settings, "audit", lambda s: service.erase(
            s, reason="security test", actor="test", now=datetime.now(timezone.utc), alert_id=erased_alert))
        assert erased
        async with http.post(f"{audit_url}/v1/checkpoint") as r:
            assert r.status == 200
        result = await asyncio.to_thread(verify, settings, token, erased_alert)
        assert result.exit_code == 0, result.output
        assert "payload erased, recorded by entry" in result.output, result.output


def test_the_console_pins_the_verifier_key_from_configuration(settings, tmp_path):
    """A key file the audit service writes (or whoever holds its host) is not a trust anchor."""
    signer = keys.write_new_key(tmp_path / "attacker.key", "evil/audit")
    published = tmp_path / "attacker.vkey"
    published.write_text(f"{signer.verifier}\n")
    unpinned = settings.model_copy(update={"audit_verifier_key": None, "audit_verifier_key_file": published})
    with pytest.raises(trail.NoVerifierKey):
        trail.verifier_key(unpinned)
    pinned = settings.model_copy(update={"audit_verifier_key": str(signer.verifier), "audit_verifier_key_file": None})
    assert trail.verifier_key(pinned).name == "evil/audit"
