"""`blonet run`: start the four services and the demo, stream their logs, stop all on Ctrl-C."""
from __future__ import annotations

import asyncio
import json
import os
import signal

import aiohttp
from rich.console import Console
from rich.table import Table

from demo.inbox import Inbox, serve
from demo.processes import Supervised, instance_env
from demo.scenario import EXPECTED_DENIED, EXPECTED_RECIPIENTS, SCENARIO
from services.audit import keys as audit_keys
from services.gateway import repository as gateway_repo
from services.notifier import repository as notifier_repo
from services.routing.cli import apply_network
from services.routing.network import load_network
from shared import db, topics
from shared.auth import Role, hash_api_key, new_api_key
from shared.secretfile import replace_secret
from shared.settings import REPO, Settings, get_settings

SERVICES = ("gateway", "routing", "notifier", "audit")
console = Console(highlight=False)




async def prepare(settings: Settings) -> tuple[dict[str, str], dict[str, str]]:
    """Set up database and topics; return the demo's API keys and the endpoints' secrets."""
    await db.bootstrap(settings)
    for service in SERVICES:
        await db.migrate(settings, service)
    await topics.create_topics(settings)
    keys_file = REPO / "var" / "demo" / f"keys-{settings.pg_port}.json"
    keys = json.loads(keys_file.read_text()) if keys_file.exists() else {}

    async def issue(session) -> None:
        for name, agency, roles in (("submit", "kg-sbs", [Role.SUBMIT]), ("operator", "unodc", [Role.OPERATOR]),
                                    ("auditor", "unodc", [Role.AUDITOR])):
            if name in keys and await gateway_repo.principal_for_key(session, hash_api_key(keys[name])):
                continue
            key_id, keys[name] = new_api_key()
            await gateway_repo.add_key(session, key_id=key_id, agency=agency, roles=roles,
                                       key_hash=hash_api_key(keys[name]), label=f"demo {name}")

    await db.in_session(settings, "gateway", issue)
    replace_secret(keys_file, json.dumps(keys, indent=2).encode())
    network = load_network(settings.network_dir)
    if await apply_network(settings, network, by="blonet run", source="cli"):
        console.print(f"network {settings.network_dir} activated as {network.hash}")
    directory = network.directory
    ids = {e.id for e in directory.endpoints}
    await db.in_session(settings, "notifier", lambda s: notifier_repo.ensure_endpoints(s, ids))
    secrets = await db.in_session(settings, "notifier", notifier_repo.secrets_by_endpoint)
    if not settings.audit_verifier_key:  # the console trusts only a configured key: pin this node's, as set up now
        os.environ["BLONET_AUDIT_VERIFIER_KEY"] = str(audit_keys.load_signing_key(settings).verifier)
    return keys, secrets


async def _wait_ready(http: aiohttp.ClientSession, port: int, timeout: float = 90) -> None:
    """Wait for a service's readiness; a crash meanwhile is the supervisor's to restart, not ours to report."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.3)
    raise RuntimeError(f"service on port {port} not ready after {timeout:.0f} s")


async def run_scenario(http: aiohttp.ClientSession, settings: Settings, keys: dict[str, str], inbox: Inbox) -> bool:
    """Submit the exercise's first scenario, wait for its deliveries, print what happened."""
    auth = {"Authorization": f"Bearer {keys['submit']}"}
    async with http.post(f"http://127.0.0.1:{settings.gateway_port}/v1/alerts", json=SCENARIO, headers=auth) as r:
        accepted = await r.json()
        if r.status != 202:
            console.print(f"[red]scenario refused: {r.status} {accepted}")
            return False
    status: dict = {}
    for _ in range(200):
        async with http.get(accepted["status_url"], headers=auth) as r:
            status = await r.json()
        states = [x["state"] for x in status.get("recipients", [])]
        if status.get("status") == "routed" and states and all(s in ("delivered", "failed") for s in states):
            break
        await asyncio.sleep(0.15)
    table = Table(title=f"Scenario: {SCENARIO['headline']}", title_justify="left")
    for col in ("candidate", "expected", "outcome", "why"):
        table.add_column(col)
    got = {x["endpoint"]: x for x in status.get("recipients", [])}
    ok = set(got) == set(EXPECTED_RECIPIENTS)
    for endpoint, (agency, unit, profile) in EXPECTED_RECIPIENTS.items():
        x = got.get(endpoint)
        verified = len(inbox.received.get(endpoint, []))
        outcome = f"{x['state']} ({x['profile']} view, signature verified {verified}×)" if x else "MISSING"
        ok &= bool(x) and x["state"] == "delivered" and x["profile"] == profile and verified >= 1
        table.add_row(unit or agency, f"receives ({profile})", outcome, x["reason"] if x else "")
    denied = {(d["agency"], d["unit"]): d for d in status.get("denied", [])}
    for (agency, unit), code in EXPECTED_DENIED.items():
        d = denied.get((agency, unit))
        ok &= bool(d) and d["code"] == code
        table.add_row(unit, f"not a recipient ({code})", f"denied: {d['code']}" if d else "MISSING", d["explanation"] if d else "")
    console.print(table)
    console.print(f"alert {accepted['id']} routed under {status.get('ruleset_hash')}")
    console.print(f"DEMO SUMMARY: {'OK' if ok else 'MISMATCH'} — {sum(1 for x in got.values() if x['state'] == 'delivered')}"
                  f"/{len(EXPECTED_RECIPIENTS)} recipients delivered, {len(denied)} denied with reasons")
    return ok


def where_to_look(settings: Settings, keys: dict[str, str], alert_hint: str = "<alert id>") -> str:
    g, a = settings.gateway_port, settings.audit_port
    return (
        f"\nWhere to look:\n"
        f"  operations console:                       http://127.0.0.1:{g}/console  (sign in with the operator key below)\n"
        f"  operator key:  {keys['operator']}\n"
        f"  demo inboxes (what each agency received): http://127.0.0.1:{settings.demo_inbox_port}/\n"
        f"  gateway API docs:                         http://127.0.0.1:{g}/docs\n"
        f"  alert status:  curl -H 'Authorization: Bearer {keys['submit']}' http://127.0.0.1:{g}/v1/alerts/{alert_hint}\n"
        f"  audit trail:   TOKEN=$(curl -s -X POST -H 'Authorization: Bearer {keys['auditor']}' http://127.0.0.1:{g}/v1/auth/token | jq -r .access_token)\n"
        f"                 curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:{a}/v1/trail/{alert_hint}\n"
        f"  demo keys:     var/demo/keys-{settings.pg_port}.json\n"
        f"Press Ctrl-C to stop everything."
    )


async def main(instances: int = 1, port_step: int = 1000) -> int:
    settings = get_settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    console.print("preparing database, topics, demo keys and endpoint secrets…")
    keys, secrets = await prepare(settings)
    inbox = Inbox(secrets=lambda: secrets)
    runner = await serve(inbox, settings.demo_inbox_port)
    say = lambda text: console.print(f"[yellow]{text}")  # noqa: E731
    running: list[Supervised] = []
    for name in SERVICES:
        for i in range(1, instances + 1):
            label, env = instance_env(name, getattr(settings, f"{name}_port"), i, instances, port_step)
            running.append(Supervised(label, f"services.{name}", env, say))
    tasks = [asyncio.create_task(s.run()) for s in running]
    code = 0
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            for name in SERVICES:
                for i in range(instances):
                    await _wait_ready(http, getattr(settings, f"{name}_port") + port_step * i)
            ready = "all four services are ready" if instances == 1 else f"{instances} instances of each service are ready"
            console.print(f"{ready}; submitting the Dostuk exercise scenario…")
            ok = await run_scenario(http, settings, keys, inbox)
        console.print(where_to_look(settings, keys))
        code = 0 if ok else 1
        await stop.wait()  # a service that exits is restarted (see demo/processes.py), not a reason to stop
    except Exception as exc:  # report in one line, then clean up
        console.print(f"[red]blonet run failed: {exc}")
        code = 1
    finally:
        console.print("stopping services…")
        await asyncio.gather(*(s.stop() for s in running))
        for task in tasks:
            task.cancel()
        await runner.cleanup()
        console.print("all services stopped")
    return code
