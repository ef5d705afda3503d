"""The operations console in a real browser: Playwright drives Debian's Chromium against the four
services (real Kafka and PostgreSQL), as an operator would.

Screenshots go to the test's temporary folder; set BLONET_CONSOLE_SCREENSHOTS=docs/console to
refresh the ones in docs/console.md.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from demo.scenario import EXPECTED_DENIED, EXPECTED_RECIPIENTS, SCENARIO
from services.gateway.console.session import AUDIENCE, COOKIE
from shared.auth import Principal, Role, issue_token
from tests.integration.conftest import make_key

pytestmark = pytest.mark.stack

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps calling Google's hosts, which this machine refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
BROKEN = "ep-kg-customs-dostuk"


@pytest.fixture(scope="module")
async def browser() -> Browser:
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        await chromium.close()


@pytest.fixture(scope="module")
async def keys(settings) -> dict[str, str]:
    return {"operator": await make_key(settings, "unodc", Role.OPERATOR),
            "submitter": await make_key(settings, "kg-sbs", Role.SUBMIT),
            "auditor": await make_key(settings, "unodc", Role.AUDITOR)}


@pytest.fixture
async def page(browser, settings, services, keys) -> Page:
    context = await browser.new_context(base_url=settings.public_base_url, viewport={"width": 1400, "height": 900},
                                        locale="en-GB")
    page = await context.new_page()
    page.set_default_timeout(10_000)
    await page.goto("/console/login")
    await page.fill("#api_key", keys["operator"])
    await page.click("button[type=submit]")
    await expect(page.locator("h1")).to_contain_text("Live flow")
    yield page
    await context.close()


async def shot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("BLONET_CONSOLE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def submit(settings, key: str, alert: dict) -> str:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(f"{settings.public_base_url}/v1/alerts", json=alert) as r:
            assert r.status == 202, await r.text()
            return (await r.json())["id"]


async def operator_call(settings, key: str, service: str, method: str, path: str, **kwargs):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{settings.public_base_url}/v1/auth/token", headers={"Authorization": f"Bearer {key}"}) as r:
            token = (await r.json())["access_token"]
        async with http.request(method, f"{settings.service_url(service)}{path}",
                                headers={"Authorization": f"Bearer {token}"}, **kwargs) as r:
            body = await r.json() if "json" in r.headers.get("content-type", "") else await r.text()
            return r.status, body


# --- signing in --------------------------------------------------------------------------------

async def test_login_refuses_bad_non_operator_and_expired_credentials(browser, settings, services, keys, tmp_path):
    context = await browser.new_context(base_url=settings.public_base_url)
    page = await context.new_page()
    await page.goto("/console")
    assert page.url.endswith("/console/login"), "no session: the login page, never data"
    await page.click("button[type=submit]")
    await expect(page.locator("#api_key-error")).to_have_text("Required.")
    await page.fill("#api_key", "blo_nope_nope")
    await page.click("button[type=submit]")
    await expect(page.locator("#api_key-error")).to_contain_text("Unknown, revoked or malformed")
    await page.fill("#api_key", keys["submitter"])
    await page.click("button[type=submit]")
    await expect(page.locator("#api_key-error")).to_have_text("This key has no operator role.")
    await shot(page, "login", tmp_path)

    expired = issue_token(settings, Principal(keys["operator"].split("_")[1], "unodc", frozenset({Role.OPERATOR})),
                          ttl=-60, audience=AUDIENCE)
    await context.add_cookies([{"name": COOKIE, "value": expired, "url": settings.public_base_url + "/console"}])
    await page.goto("/console/deliveries")
    assert "/console/login" in page.url
    await expect(page.locator("#api_key-error")).to_contain_text("session ended")
    # An API token (no console audience) is not a session either, and the data routes answer 401.
    api_token = issue_token(settings, Principal(keys["operator"].split("_")[1], "unodc", frozenset({Role.OPERATOR})))
    await context.add_cookies([{"name": COOKIE, "value": api_token, "url": settings.public_base_url + "/console"}])
    response = await page.request.get("/console/flow/stream")
    assert response.status == 401
    await context.close()


# --- the live flow and one alert -----------------------------------------------------------------

async def test_alert_appears_live_and_explains_the_tajik_denial(page, settings, keys, tmp_path):
    await expect(page.locator("#live")).to_have_text("live")
    alert_id = await submit(settings, keys["submitter"], SCENARIO)
    row = page.locator(f"#a-{alert_id}")
    await expect(row).to_be_visible(timeout=2_000)  # the issue's bar: within 2 s of acceptance
    await expect(row.locator(".chip.s-delivered")).to_have_count(len(EXPECTED_RECIPIENTS), timeout=15_000)
    await expect(row.locator(".state")).to_have_text("delivered")
    await shot(page, "flow", tmp_path)

    # Filters: another post's alerts only -> this one is not listed.
    await page.goto("/console?post=kyzyl-kiya&since=1h")
    await expect(page.locator(f"#a-{alert_id}")).to_have_count(0)
    await page.goto("/console?category=drugs&tlp=TLP:GREEN")
    await expect(page.locator(f"#a-{alert_id}")).to_be_visible()

    # Audit consumes the same topics on its own: wait until it has logged the whole story, then sign now.
    story = 2 + 2 * len(EXPECTED_RECIPIENTS)
    for _ in range(100):
        status, body = await operator_call(settings, keys["operator"], "audit", "GET", f"/v1/trail/{alert_id}")
        if status == 200 and len(body["entries"]) >= story:
            break
        await asyncio.sleep(0.2)
    await operator_call(settings, keys["operator"], "audit", "POST", "/v1/checkpoint")
    await page.click(f"#a-{alert_id} a")
    await expect(page.locator("h1")).to_have_text(SCENARIO["headline"])
    (agency, unit), code = next(iter(EXPECTED_DENIED.items()))
    denial = page.locator(f"#denial-{agency}")
    await expect(denial).to_contain_text(code)
    await expect(denial).to_contain_text(unit)
    assert len(await denial.locator("td").nth(2).inner_text()) > 20, "a sentence, not just a code"
    await expect(page.locator(".decision tr.recipient")).to_have_count(len(EXPECTED_RECIPIENTS))
    await expect(page.locator("#recipient-ep-unodc")).to_contain_text("delivered")
    await expect(page.locator("#trace")).to_have_text(await page.locator("#trace").inner_text())
    assert len(await page.locator("#trace").inner_text()) == 32
    await expect(page.locator("#trail table, #trail .error").first).to_be_visible(timeout=10_000)
    assert await page.locator("#trail .error").count() == 0, await page.locator("#trail").inner_text()
    verified = page.locator("#trail .verified")
    assert await page.locator("#trail .trail-failed").count() == 0
    assert await verified.count() >= story
    await shot(page, "alert", tmp_path)


# --- deliveries: break an endpoint, watch the circuit, replay ---------------------------------------

async def test_broken_endpoint_opens_circuit_then_replay_delivers(page, settings, keys, inbox, tmp_path):
    inbox.failing.add(BROKEN)
    try:
        alert_id = await submit(settings, keys["submitter"], SCENARIO)
        await page.goto("/console/deliveries")
        for _ in range(60):  # retries every 0.2/0.5/1 s in the tests; the breaker opens after 3 failures
            if await page.locator(f"#endpoint-{BROKEN} .circuit").inner_text() == "open" and \
                    await page.locator(f"tr[id^=dead-]:has(a[href$='{alert_id}'])").count():
                break
            await asyncio.sleep(0.5)
            await page.reload()
        await expect(page.locator(f"#endpoint-{BROKEN} .circuit")).to_have_text("open")
        dead = page.locator(f"tr[id^=dead-]:has(a[href$='{alert_id}'])")
        await expect(dead).to_have_count(1)
        await shot(page, "deliveries", tmp_path)
    finally:
        inbox.failing.discard(BROKEN)

    await dead.locator("button").click()
    await expect(page.locator("h1")).to_have_text("Send this delivery again?")
    await page.click("#confirm")
    await expect(page.locator("#flash.ok")).to_be_visible()
    for _ in range(40):
        mine = [m for m in inbox.received.get(BROKEN, []) if m.body["alert_id"] == alert_id]
        if mine:
            break
        await asyncio.sleep(0.25)
    assert len(mine) == 1, "the replay reached the restored endpoint once"
    await page.goto(f"/console/alerts/{alert_id}")
    timeline = page.locator(f"#recipient-{BROKEN}")
    await expect(timeline.locator("tr.attempt", has_text="503").first).to_be_visible()
    for _ in range(40):
        if await timeline.locator("h3 .state").inner_text() == "delivered":
            break
        await asyncio.sleep(0.25)
        await page.reload()
    await expect(timeline.locator("h3 .state")).to_have_text("delivered")

    # Replaying something already delivered is refused, with the reason.
    status, deliveries = await operator_call(settings, keys["operator"], "notifier", "GET", "/v1/deliveries",
                                             params={"alert_id": alert_id})
    assert status == 200
    delivered = next(d for d in deliveries if d["endpoint"] == "ep-unodc")
    await page.goto("/console/deliveries")
    await page.evaluate("""id => { const f = document.createElement('form'); f.method = 'post';
        f.action = '/console/deliveries/' + id + '/replay'; f.innerHTML = '<input name=confirmed value=1>';
        document.body.append(f); f.submit(); }""", str(delivered["delivery_id"]))
    await expect(page.locator("#flash.bad")).to_contain_text("delivered")

    # Server-side validation: the error sits next to its field, and nothing is replayed.
    await page.fill("#since", "yesterday-ish")
    await page.click("#recover button")
    await expect(page.locator("#since-error")).to_contain_text("2026-11-28T09:00Z")


# --- rules: history, dry run of a change ------------------------------------------------------------

async def test_dry_run_of_a_rule_change(page, settings, keys, tmp_path):
    status, rules = await operator_call(settings, keys["operator"], "routing", "GET", "/v1/routing/rules")
    assert status == 200
    candidate = copy.deepcopy(rules["content"])
    # Deny the UNODC observers everything: the candidate decision loses them, the active one keeps them.
    candidate["rules"]["rules"].insert(0, {"id": "observers-paused", "deny": ["unodc"], "deny_reason": "observers paused",
                                           "continue": True})
    await page.goto("/console/rules")
    await expect(page.locator("#active-hash")).to_have_text(rules["ruleset_hash"])
    await page.fill("#alert_json", json.dumps(SCENARIO, ensure_ascii=False))
    await page.fill("#candidate", "{ not json")
    await page.click("#run")
    await expect(page.locator("#candidate-error")).to_be_visible()
    await page.fill("#candidate", json.dumps(candidate, ensure_ascii=False))
    await page.click("#run")
    result = page.locator("#dry-run-result")
    await expect(result).to_be_visible()
    await shot(page, "rules", tmp_path)
    sections = result.locator("section")
    await expect(sections).to_have_count(2)
    await expect(sections.nth(0).locator("tr.denial", has_text="unodc")).to_have_count(1)
    await expect(sections.nth(1).locator("tr.recipient", has_text="unodc")).to_have_count(1)
    status, after = await operator_call(settings, keys["operator"], "routing", "GET", "/v1/routing/rules")
    assert after["ruleset_hash"] == rules["ruleset_hash"], "a dry run activates nothing"

    await page.fill("#alert_json", "")
    await page.fill("#candidate", "")
    await page.click("#run")
    await expect(page.locator("#alert_json-error")).to_have_text("Required.")


# --- system, language ------------------------------------------------------------------------------

async def test_actions_from_another_site_are_refused(page):
    for path in ("/console/endpoints/ep-unodc/disable", "/console/logout"):
        response = await page.request.post(path, form={"confirmed": "1"},
                                           headers={"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"})
        assert response.status == 403, path
    await page.goto("/console/deliveries")
    await expect(page.locator("#endpoint-ep-unodc")).to_contain_text("yes")  # still enabled, still signed in


async def test_system_page_and_language_switch(page, settings, keys, tmp_path):
    await submit(settings, keys["submitter"], SCENARIO)  # this test's own traffic: it may run alone
    await page.goto("/console/system")
    for service in ("gateway", "routing", "notifier", "audit"):
        await expect(page.locator(f"#service-{service}")).to_contain_text("yes")
    await expect(page.locator("#group-gateway-status")).to_be_visible()
    await expect(page.locator("#group-notifier")).to_be_visible()
    assert int(await page.locator("#stat-alerts").inner_text()) >= 1
    await shot(page, "system", tmp_path)
    await page.click("#lang-switch")
    await expect(page.locator("h1")).to_have_text("Система")
    await expect(page.locator("nav")).to_contain_text("Поток")
    await page.goto("/console")
    await expect(page.locator("h1")).to_contain_text("Поток")
    await shot(page, "flow-ru", tmp_path)
    await page.click("#lang-switch")
    await expect(page.locator("h1")).to_contain_text("Live flow")


async def test_activate_a_version_with_confirmation_then_roll_back(page, settings, keys):
    status, rules = await operator_call(settings, keys["operator"], "routing", "GET", "/v1/routing/rules")
    original = rules["ruleset_hash"]
    changed = copy.deepcopy(rules["content"])
    changed["rules"]["rules"][0]["description"] += " (reviewed)"
    await page.goto("/console/rules")
    await page.fill("#content", "rules: [")
    await page.click("#activate-form button")
    await expect(page.locator("#content-error")).to_be_visible()  # not YAML: refused next to the field
    await page.fill("#content", json.dumps({"directory": changed["directory"], "rules": {"rules": "nonsense"}}))
    await page.click("#activate-form button")
    await expect(page.locator("h1")).to_contain_text("Activate this version")
    await page.click("#confirm")
    await expect(page.locator("#content-error")).to_contain_text("do not validate")
    assert (await operator_call(settings, keys["operator"], "routing", "GET", "/v1/routing/rules"))[1]["ruleset_hash"] == original

    await page.fill("#content", json.dumps(changed))
    await page.click("#activate-form button")
    await expect(page.locator(".preview")).to_contain_text("(reviewed)")
    await page.click("#confirm")
    await expect(page.locator("#flash.ok")).to_contain_text("Activated")
    new = (await operator_call(settings, keys["operator"], "routing", "GET", "/v1/routing/rules"))[1]["ruleset_hash"]
    assert new != original
    await expect(page.locator("#active-hash")).to_have_text(new)
    await page.locator("a.diff").first.click()
    await expect(page.locator("pre.diff .add")).to_have_count(1)
    await expect(page.locator("pre.diff .add")).to_contain_text("(reviewed)")
    await expect(page.locator("pre.diff .del").first).to_be_visible()

    await page.goto("/console/rules")  # roll back from the history
    await page.locator(f"tr:has(code[title='{original}']) button").first.click()
    await page.click("#confirm")
    await expect(page.locator("#flash.ok")).to_contain_text(original)
    await expect(page.locator("#active-hash")).to_have_text(original)
