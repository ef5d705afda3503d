"""`blonet tail`, `status`, `deliveries failed` and `replay` as an operator runs them: a real
process against the four real services, with an operator API key."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import datetime, timezone

import aiohttp
import pytest

from demo.scenario import EXPECTED_RECIPIENTS, SCENARIO
from shared.auth import Role
from shared.settings import REPO
from tests.conftest import port
from tests.integration.conftest import make_key
from tests.integration.test_end_to_end import poll

pytestmark = pytest.mark.stack
# `blonet` exactly as installed (services.entry), run from this checkout (cwd first on sys.path),
# whatever an editable install points at. Its operations commands load only what they need.
BLONET = [sys.executable, "-c", "import sys; from services.entry import main; sys.argv[0] = 'blonet'; main()"]
# Wide enough that no table cell wraps; unbuffered so a live `tail` shows each line as it is printed.
CLI_ENV = {"COLUMNS": "250", "PYTHONUNBUFFERED": "1"}
NOBODY_LISTENS = port(160)


async def blonet(*args: str, key: str | None = None, command: list[str] = BLONET) -> tuple[int, str, str]:
    env = {**os.environ, **CLI_ENV, "BLONET_API_KEY": key or ""}
    proc = await asyncio.create_subprocess_exec(*command, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(scope="module")
async def operator(settings) -> str:
    return await make_key(settings, "unodc", Role.OPERATOR)


async def submit(settings, alert: dict = SCENARIO) -> str:
    key = await make_key(settings, alert["sender_agency"], Role.SUBMIT)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=alert) as r:
            assert r.status == 202, await r.text()
            return (await r.json())["id"]


async def summary(operator: str, alert_id: str) -> dict:
    """Return what `blonet status --json` says of an alert: the gateway's summary, decisions, deliveries."""
    code, out, err = await blonet("status", alert_id, "--json", key=operator)
    assert code == 0, err
    return json.loads(out)


async def flow(settings, operator: str, alert_id: str) -> dict:
    """Return the gateway's operator summary of an alert (cheaper to poll than a `blonet` process).

    The summary is the status projection's: an alert is in it a poll after its 202 (a 404 until then)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {operator}"}) as http:
        for _ in range(50):
            async with http.get(f"http://127.0.0.1:{settings.gateway_port}/v1/ops/alerts/{alert_id}") as r:
                if r.status != 404:
                    assert r.status == 200, await r.text()
                    return await r.json()
            await asyncio.sleep(0.1)
        raise AssertionError(f"alert {alert_id} never reached the status projection")


def state_of(found: dict, endpoint: str) -> str | None:
    return next((r["state"] for r in found["recipients"] if r["endpoint"] == endpoint), None)


def delivery_of(found: dict, endpoint: str) -> dict:
    return next(d for d in found["deliveries"] if d["endpoint"] == endpoint)


async def test_status_shows_the_decision_with_the_tajik_denial_each_delivery_and_the_acknowledgement(settings, services, operator):
    alert_id = await submit(settings)
    await poll(lambda: flow(settings, operator, alert_id), lambda s: s["state"] == "delivered", timeout=30)
    moi = await make_key(settings, "kg-moi", Role.RECEIVE)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {moi}"}) as http:
        async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts/{alert_id}/ack",
                             json={"status": "acting", "comment": "на контроле"}) as r:
            assert r.status == 202, await r.text()
    await poll(lambda: flow(settings, operator, alert_id), lambda s: any(r["ack_status"] for r in s["recipients"]))

    code, out, err = await blonet("status", alert_id, key=operator)
    assert code == 0, err
    assert "tj-bs/tj-bs-kyzyl-art" in out and "denied: not_on_route" in out and "TJ is not on the KG→UZ route" in out
    for endpoint in ("ep-blo-dostuk", "ep-uz-sbs-dustlik", "ep-unodc"):
        assert endpoint in out
    assert "trafficking-risk-at-crossing" in out and "summary" in out and "full" in out
    assert "#1" in out and "delivered" in out and "HTTP 200" in out, out
    assert "acknowledgements" in out and "acting" in out and "на контроле" in out

    found = await summary(operator, alert_id)
    assert [(d["code"], d["agency"]) for d in found["decisions"][0]["decision"]["denied"]] == [("not_on_route", "tj-bs")]
    assert len(found["deliveries"]) == 7 and {d["state"] for d in found["deliveries"]} == {"delivered"}


async def test_refusals_are_one_clear_line_and_a_non_zero_exit(settings, services, operator):
    submitter = await make_key(settings, "kg-sbs", Role.SUBMIT)
    unknown = "01900000-0000-7000-8000-000000000000"
    cases = [
        (("tail", "--once"), None, 2, "an operator API key is needed"),
        (("tail", "--once"), "blo_nothing_" + "x" * 40, 2, "gateway: the API key was refused (401): unknown or revoked API key"),
        (("status", unknown), submitter, 2, "gateway: not allowed (403): needs the operator role"),
        (("deliveries", "failed"), submitter, 2, "notifier: not allowed (403): needs role operator"),
        (("status", unknown), operator, 1, f"gateway (404): no alert {unknown}"),
        (("replay", unknown), operator, 1, f"notifier (404): no delivery {unknown}"),
        (("tail", "--once", "--gateway", f"http://127.0.0.1:{NOBODY_LISTENS}"), operator, 3,
         f"cannot reach the gateway at http://127.0.0.1:{NOBODY_LISTENS}"),
    ]
    for args, key, exit_code, words in cases:  # one after another: a 2-core box gains nothing from parallel starts
        code, out, err = await blonet(*args, key=key)
        assert (code, out) == (exit_code, ""), (args, code, out, err)
        assert len(err.strip().splitlines()) == 1 and words in err, (args, err)


async def test_dead_letters_are_listed_replayed_one_by_one_and_since_a_time(settings, services, inbox, operator):
    since = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    inbox.failing.add("ep-kz-mof")
    try:
        first, second = await submit(settings), await submit(settings)
        for alert_id in (first, second):
            await poll(lambda: flow(settings, operator, alert_id), lambda s: state_of(s, "ep-kz-mof") == "failed", timeout=40)
        code, out, err = await blonet("deliveries", "failed", "--endpoint", "ep-kz-mof", key=operator)
        assert code == 0, err
        assert first in out and second in out and "retry schedule exhausted after 4 attempts; last: HTTP 503" in out

        delivered = delivery_of(await summary(operator, first), "ep-blo-dostuk")["delivery_id"]
        code, out, err = await blonet("replay", delivered, key=operator)
        assert code == 1 and "notifier (409): already delivered at" in err, err
    finally:
        inbox.failing.discard("ep-kz-mof")

    dead = delivery_of(await summary(operator, first), "ep-kz-mof")["delivery_id"]
    code, out, err = await blonet("replay", dead, key=operator)
    assert code == 0 and f"delivery {dead} is queued again" in out, err
    code, out, err = await blonet("replay", "--endpoint", "ep-kz-mof", "--since", since, key=operator)
    assert code == 0 and "1 delivery to ep-kz-mof is queued again" in out, err
    for alert_id in (first, second):
        await poll(lambda: flow(settings, operator, alert_id), lambda s: state_of(s, "ep-kz-mof") == "delivered")
    code, out, err = await blonet("replay", "--endpoint", "ep-kz-mof", "--since", since, key=operator)
    assert code == 0 and "nothing replayed: no delivery to ep-kz-mof is dead-lettered" in out, err
    code, out, err = await blonet("deliveries", "failed", "--endpoint", "ep-kz-mof", key=operator)
    assert code == 0 and "no dead letters for ep-kz-mof" in out


async def test_tail_lists_once_follows_live_and_stops_cleanly_on_ctrl_c(settings, services, operator):
    earlier = await submit(settings)
    await flow(settings, operator, earlier)  # projected: `tail` lists what the projection holds
    code, out, err = await blonet("tail", "--once", "--category", "drugs", key=operator)
    assert code == 0 and earlier in out and "kg-sbs@bor-dobo" in out, err
    code, out, err = await blonet("tail", "--once", "--category", "weapons", key=operator)
    assert code == 0 and earlier not in out

    env = {**os.environ, **CLI_ENV, "BLONET_API_KEY": operator}
    proc = await asyncio.create_subprocess_exec(*BLONET, "tail", "--post", "dostuk", "--last", "0", cwd=REPO, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert "following the flow" in (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        alert_id = await submit(settings)
        lines: list[str] = []

        def delivered_to() -> set[str]:
            return {e for e in EXPECTED_RECIPIENTS for x in lines if alert_id in x and f"→ {e} (" in x and "delivered" in x}

        def done() -> bool:  # every recipient's line, the denial and the alert's own delivered line, however batched
            return (delivered_to() == set(EXPECTED_RECIPIENTS) and any(alert_id in x and "denied" in x for x in lines)
                    and any(alert_id in x and "delivered" in x and "kg-sbs@bor-dobo" in x for x in lines))

        async def read_until_delivered() -> None:
            while not done():
                lines.append((await proc.stdout.readline()).decode())

        await asyncio.wait_for(read_until_delivered(), 30)
        mine = [x for x in lines if alert_id in x]
        assert "kg-sbs@bor-dobo" in mine[0] and "drugs/severe" in mine[0] and "TLP:GREEN" in mine[0], mine
        assert any("denied" in x and "tj-bs/tj-bs-kyzyl-art: not_on_route" in x for x in mine), mine
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(proc.wait(), 15)
    err = (await proc.stderr.read()).decode()
    assert code == 0 and "stopped" in err and "Traceback" not in err, err
