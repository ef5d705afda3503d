"""`python -m bench.faults` (`make faults`): break parts of BLOnet under steady load and prove that
nothing answered 202 is lost.

Each run has a private stack (its own folder under var/, its own ports: never the test stack or a
developer's), the four services as processes (`--instances` of each, in the same consumer groups),
and a receiver that verifies every webhook signature and records each webhook-id. Under an
open-loop load (`--rate` alerts/s, each fanned out to the scenario's 7 endpoints) it runs one
scenario at a time; the load's generator retries every 503, timeout or refused connection with
the same Idempotency-Key until it gets a 202, as an agency system should. After each scenario it
waits for the drain, then counts. Every loop is bounded in count and time, and only loopback is used.

  kill-<service>   kill -9 each instance of the service in turn, restart it 5 s later (--restart-after)
  kafka-stop       stop Kafka (every broker) for 10 s, then start it
  leader-kill      kill -9 the broker leading partition 0 of alerts.submitted, restart it after 10 s
                   (3-broker stack)
  postgres-restart restart PostgreSQL (fast shutdown) while deliveries are being recorded
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop
import yaml
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.system import Proc, port_open, wait_http
from demo.scenario import EXPECTED_RECIPIENTS, SCENARIO
from services.gateway import repository as gateway_repo
from services.notifier import repository as notifier_repo
from shared import db, topics
from shared.auth import Role, ensure_signing_key, hash_api_key, new_api_key
from shared.kafka import make_admin
from shared.settings import REPO, Settings, get_settings

SERVICES = ("gateway", "routing", "notifier", "audit")
FANOUT = len(EXPECTED_RECIPIENTS)
# Ports from --base-port: services +10*instance+index; receiver +90; Kafka +92..+97; PostgreSQL +99.
STACK_SH = str(REPO / "deploy" / "stack.sh")
RETRY_FOR_SECONDS = 180  # the generator gives up on one alert after this long (counted as not accepted)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="kill-gateway,kill-routing,kill-notifier,kill-audit,kafka-stop,postgres-restart",
                   help="comma-separated, in order (see above)")
    p.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="Kafka brokers in the private stack")
    p.add_argument("--instances", type=int, default=1, help="instances of each service")
    p.add_argument("--rate", type=float, default=20, help="alerts/s offered during each scenario")
    p.add_argument("--seconds", type=float, default=90, help="load per scenario; the fault comes a third of the way in")
    p.add_argument("--drain-seconds", type=float, default=180, help="max wait after the load for every delivery")
    p.add_argument("--one-window", action="store_true",
                   help="one load window with the scenarios' faults one after another (the short version make test runs)")
    p.add_argument("--base-port", type=int, default=27000, help="first of the 100 ports the run uses")
    p.add_argument("--restart-after", type=float, default=5,
                   help="seconds a killed service stays down; brokers stay down twice as long")
    return p.parse_args(argv)


# ------------------------------------------------------------------ the receiver

@dataclass
class Received:
    ids: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (alert id, endpoint) -> webhook-ids
    arrivals: list[float] = field(default_factory=list)  # monotonic time of each first arrival
    duplicates: int = 0  # the same webhook-id again (allowed: at-least-once)
    bad_signatures: int = 0


class Receiver:
    """Agency endpoints that verify every signature (Standard Webhooks) and remember every webhook-id."""

    def __init__(self, secrets_of: dict[str, str]) -> None:
        self.secrets, self.got = secrets_of, Received()

    async def deliver(self, request: web.Request) -> web.Response:
        endpoint, body = request.match_info["endpoint"], await request.read()
        try:
            Webhook(self.secrets[endpoint]).verify(body, dict(request.headers))
        except (KeyError, WebhookVerificationError):
            self.got.bad_signatures += 1
            return web.Response(status=401)
        ids = self.got.ids.setdefault((orjson.loads(body)["alert_id"], endpoint), set())
        webhook_id = request.headers["webhook-id"]
        if webhook_id in ids:
            self.got.duplicates += 1
        else:
            ids.add(webhook_id)
            self.got.arrivals.append(time.monotonic())
        return web.Response(status=200)

    async def serve(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.add_routes([web.post("/inbox/{endpoint}", self.deliver)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner


# ------------------------------------------------------------------ the load

@dataclass
class Load:
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> alert id
    refused: Counter = field(default_factory=Counter)  # status or error -> count, retried each time
    gave_up: int = 0
    offered: int = 0


async def steady_load(url: str, key: str, rate: float, seconds: float, tag: str) -> Load:
    """Open loop: alert i is due at t0 + i/rate; each is retried with its key until a 202 (bounded)."""
    load, n = Load(), max(1, round(rate * seconds))
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def one(i: int) -> None:
            idem, body = f"{tag}-{i}", orjson.dumps({**SCENARIO, "headline": f"{tag} {i} {SCENARIO['headline']}"[:200]})
            give_up = time.monotonic() + RETRY_FOR_SECONDS
            while time.monotonic() < give_up:
                try:
                    async with http.post(url, data=body, headers={**headers, "Idempotency-Key": idem}) as r:
                        if r.status == 202:
                            load.accepted[idem] = (await r.json())["id"]
                            return
                        load.refused[str(r.status)] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    load.refused[type(exc).__name__] += 1
                await asyncio.sleep(0.5)
            load.gave_up += 1

        t0, tasks = time.monotonic(), []
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(i)))
            load.offered += 1
        await asyncio.gather(*tasks)
    return load


# ------------------------------------------------------------------ the harness

class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.run_id, self.base = args, secrets.token_hex(3), args.base_port
        self.tmp = Path(tempfile.mkdtemp(prefix=f"blonet-faults-{self.run_id}-"))
        self.stack_env = {**{k: v for k, v in os.environ.items() if not k.startswith("BLONET_")},
                          "BLONET_STACK_DIR": str(REPO / "var" / f"faults-{self.run_id}"),
                          "BLONET_KAFKA_PORT": str(self.base + 92), "BLONET_KAFKA_CONTROLLER_PORT": str(self.base + 93),
                          "BLONET_PG_PORT": str(self.base + 99), "BLONET_KAFKA_BROKERS": str(args.brokers)}
        self.procs: dict[str, Proc] = {}
        self.rows: list[dict] = []

    def stack(self, *args: str) -> str:
        result = subprocess.run([STACK_SH, *args], env=self.stack_env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"stack.sh {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    def port(self, service: str, instance: int) -> int:
        return self.base + 10 * instance + SERVICES.index(service)

    async def setup(self) -> None:
        print(self.stack("start"), flush=True)
        bootstrap = self.stack("bootstrap")
        self.app_env = {
            "BLONET_KAFKA_BOOTSTRAP": bootstrap, "BLONET_PG_PORT": str(self.base + 99),
            "BLONET_SECRETS_FILE": str(Path(self.stack_env["BLONET_STACK_DIR"]) / "kafka" / "secrets.json"),
            "BLONET_PG_DATABASE": f"blonet_faults_{self.run_id}", "BLONET_TOPIC_PREFIX": f"faults{self.run_id}.",
            **{f"BLONET_{s.upper()}_PORT": str(self.port(s, 0)) for s in SERVICES},
            "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{self.port('gateway', 0)}",
            "BLONET_NETWORK_DIR": str(self.tmp / "network"),
            "BLONET_TOKEN_PRIVATE_KEY_FILE": str(self.tmp / "keys" / "token.pem"),
            "BLONET_TOKEN_PUBLIC_KEY_FILE": str(self.tmp / "keys" / "token.pub.pem"),
            "BLONET_RETRY_SCHEDULE_SECONDS": "[1, 2, 5, 10, 20, 30, 60, 60, 60]",
            "BLONET_RATE_LIMIT_PER_SECOND": "1000", "BLONET_RATE_LIMIT_BURST": "1000",
        }
        for k in [k for k in os.environ if k.startswith("BLONET_")]:
            del os.environ[k]
        os.environ.update(self.app_env)
        get_settings.cache_clear()
        self.settings: Settings = get_settings()
        net = self.tmp / "network"
        shutil.copytree(REPO / "deploy" / "network", net)
        doc = yaml.safe_load((net / "directory.yaml").read_text())
        for e in doc["endpoints"]:
            e["url"] = f"http://127.0.0.1:{self.base + 90}/inbox/{e['id']}"
        (net / "directory.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        s = self.settings
        ensure_signing_key(s)
        await db.bootstrap(s)
        for service in db.SERVICES:
            await db.migrate(s, service)
        await topics.create_topics(s)
        key_id, self.key = new_api_key()
        await self.in_session("gateway", lambda x: gateway_repo.add_key(
            x, key_id=key_id, agency=SCENARIO["sender_agency"], roles=[Role.SUBMIT], key_hash=hash_api_key(self.key), label="faults"))
        await self.in_session("notifier", lambda x: notifier_repo.ensure_endpoints(x, {e["id"] for e in doc["endpoints"]}))
        self.receiver = Receiver(await self.in_session("notifier", notifier_repo.secrets_by_endpoint))
        self.receiver_runner = await self.receiver.serve(self.base + 90)
        for service in SERVICES:
            for i in range(self.args.instances):
                self.start(service, i)
        for service in SERVICES:
            for i in range(self.args.instances):
                await self.wait_ready(service, i)

    async def in_session(self, service: str, work):
        return await db.in_session(self.settings, service, work)

    def start(self, service: str, instance: int) -> None:
        env = {**os.environ, f"BLONET_{service.upper()}_PORT": str(self.port(service, instance))}
        self.procs[f"{service}-{instance}"] = Proc(f"{service}-{instance}", [sys.executable, "-m", f"services.{service}"], env, self.tmp)

    async def wait_ready(self, service: str, instance: int, timeout: float = 120) -> None:
        await wait_http(f"http://127.0.0.1:{self.port(service, instance)}/readyz", self.procs[f"{service}-{instance}"],
                        timeout, ready=lambda status: status == 200)

    # ---------------------------------------------------------------- faults

    async def kill_service(self, service: str) -> float:
        """kill -9 each instance in turn, restart it 5 s later; return when the last one is ready."""
        for i in range(self.args.instances):
            os.kill(self.procs[f"{service}-{i}"].pid, signal.SIGKILL)
            await asyncio.sleep(self.args.restart_after)
            self.start(service, i)
            await self.wait_ready(service, i)
        return time.monotonic()

    async def kafka_stop(self) -> float:
        self.stack("stop", "kafka")
        await asyncio.sleep(2 * self.args.restart_after)
        self.stack("start", "kafka")
        return time.monotonic()

    async def leader_kill(self) -> float:
        admin = make_admin(self.settings)
        await admin.start()
        try:
            parts = (await admin.describe_topics([self.settings.topic(topics.ALERTS_SUBMITTED.name)]))[0]["partitions"]
        finally:
            await admin.close()
        leader = next(p["leader"] for p in parts if p["partition"] == 0)
        folder = Path(self.stack_env["BLONET_STACK_DIR"]) / ("kafka" if leader == 1 else f"kafka-{leader}")
        os.kill(int((folder / "kafka.pid").read_text()), signal.SIGKILL)
        await asyncio.sleep(2 * self.args.restart_after)
        self.stack("start", "kafka")
        return time.monotonic()

    async def postgres_restart(self) -> float:
        # Deliveries are recorded continuously under this load: a fast shutdown lands in the middle of them.
        self.stack("restart", "postgres")
        return time.monotonic()

    def fault(self, name: str):
        if name.startswith("kill-") and name[5:] in SERVICES:
            return lambda: self.kill_service(name[5:])
        if name == "kafka-stop":
            return self.kafka_stop
        if name == "leader-kill" and self.args.brokers == 3:
            return self.leader_kill
        if name == "postgres-restart":
            return self.postgres_restart
        raise SystemExit(f"faults: no scenario {name!r} on a {self.args.brokers}-broker stack")

    # ---------------------------------------------------------------- a scenario

    async def scenario(self, names: list[str]) -> dict:
        """One load window; the faults one after another from a third of the way in, each given time to recover."""
        faults, name = [self.fault(n) for n in names], "+".join(names)
        tag = f"{names[0]}-{len(self.rows)}-{self.run_id}"
        print(f"\n== {name}: {self.args.rate:g} alerts/s for {self.args.seconds:g} s, "
              f"{'the faults one after another' if len(faults) > 1 else 'the fault'} from {self.args.seconds / 3:.0f} s", flush=True)
        got = self.receiver.got = Received()
        loop = asyncio.get_running_loop()
        started = loop.time()
        load_task = asyncio.create_task(steady_load(f"http://127.0.0.1:{self.port('gateway', 0)}/v1/alerts", self.key,
                                                    self.args.rate, self.args.seconds, tag))
        await asyncio.sleep(self.args.seconds / 3)
        gap = self.args.seconds / 3 / len(faults)  # spread over the middle third, whatever each fault takes
        for i, fault in enumerate(faults):
            fault_end = await fault()
            print(f"   {names[i]} done at {loop.time() - started:.0f} s", flush=True)
            await asyncio.sleep(gap)
        load = await load_task
        ids = set(load.accepted.values())
        deadline = time.monotonic() + self.args.drain_seconds
        while time.monotonic() < deadline and self.complete(got, ids) < len(ids):
            await asyncio.sleep(1)
        complete = self.complete(got, ids)
        split = sum(1 for (alert, _), w in got.ids.items() if alert in ids and len(w) > 1)
        after = [t for t in got.arrivals if t >= fault_end]
        audited = await self.audited(ids)
        died = sorted(name for name, proc in self.procs.items() if not proc.alive())  # a fault must never end a service
        for name in died:
            service, instance = name.rsplit("-", 1)
            self.start(service, int(instance))
            await self.wait_ready(service, int(instance))
        row = {"died": died, "scenario": name, "offered": load.offered, "accepted": len(load.accepted), "refused": dict(load.refused),
               "gave_up": load.gave_up, "distinct_ids": len(ids), "delivered": sum(len(w) > 0 for (a, _), w in got.ids.items() if a in ids),
               "expected": len(ids) * FANOUT, "duplicates": got.duplicates, "split_ids": split, "bad_signatures": got.bad_signatures,
               "lost": len(ids) - complete, "recover_s": round(after[0] - fault_end, 1) if after else None, "audit": audited}
        row["ok"] = (row["lost"] == 0 and not split and not died and not load.gave_up and len(ids) == len(load.accepted)
                     and not got.bad_signatures and audited == "verified")
        print(_line(row), flush=True)
        self.rows.append(row)
        return row

    @staticmethod
    def complete(got: Received, ids: set[str]) -> int:
        per_alert = Counter(alert for (alert, _), w in got.ids.items() if w)
        return sum(1 for a in ids if per_alert[a] >= FANOUT)

    async def audited(self, ids: set[str]) -> str:
        """Each accepted alert's submission is in the audit log exactly once, and the log verifies."""
        deadline = time.monotonic() + 120
        while True:
            counts = await self.in_session("audit", lambda s: _submitted_counts(s, ids))
            if len(counts) == len(ids) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        if len(counts) != len(ids) or any(c != 1 for c in counts.values()):
            return f"MISSING {len(ids) - len(counts)}"
        for _ in range(3):  # right after a fault a pooled database connection may still fail one request
            verify = await asyncio.create_subprocess_exec(
                str(REPO / ".venv/bin/blonet"), "audit", "verify", "--key", self.vkey(), "--token", await self.auditor_token(),
                "--url", f"http://127.0.0.1:{self.port('audit', 0)}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await verify.communicate()
            if verify.returncode == 0:
                return "verified"
            await asyncio.sleep(1)
        return f"FAILED: {out.decode()[-300:]}"

    def vkey(self) -> str:
        from services.audit import keys
        return keys.vkey_file(self.settings).read_text().strip()

    async def auditor_token(self) -> str:
        if not hasattr(self, "_auditor_key"):
            key_id, self._auditor_key = new_api_key()
            await self.in_session("gateway", lambda x: gateway_repo.add_key(
                x, key_id=key_id, agency="unodc", roles=[Role.AUDITOR], key_hash=hash_api_key(self._auditor_key), label="faults"))
        async with aiohttp.ClientSession() as http:
            for _ in range(20):  # right after a fault a pooled database connection may still fail once
                async with http.post(f"http://127.0.0.1:{self.port('gateway', 0)}/v1/auth/token",
                                     headers={"authorization": f"Bearer {self._auditor_key}"}) as r:
                    if r.status == 200:
                        return (await r.json())["access_token"]
                await asyncio.sleep(0.5)
        raise RuntimeError(f"no auditor token: the gateway answers {r.status}")

    async def cleanup(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        if hasattr(self, "receiver_runner"):
            await self.receiver_runner.cleanup()
        try:
            self.stack("clean")  # a database kept outside the checkout goes too
        except RuntimeError as exc:
            print(exc)
        shutil.rmtree(self.stack_env["BLONET_STACK_DIR"], ignore_errors=True)

    def table(self) -> None:
        print("\n== Faults under load  (lost = accepted alerts not delivered to all 7 recipients after the drain)")
        print(_header())
        for row in self.rows:
            print(_line(row))


async def _submitted_counts(session, ids: set[str]) -> dict[str, int]:
    from sqlalchemy import text
    rows = await session.execute(text(
        "SELECT alert_id::text, count(*) FROM entries WHERE type = 'alert.submitted' AND alert_id = ANY(CAST(:ids AS uuid[])) "
        "GROUP BY alert_id"), {"ids": list(ids)})
    return dict(rows.all())


def _header() -> str:
    return (f"   {'scenario':18} {'offered':>7} {'accepted':>8} {'refused':>7} {'delivered':>13} {'dup ids':>7} "
            f"{'split ids':>9} {'lost':>5} {'recover s':>9}  audit")


def _line(r: dict) -> str:
    return (f"   {r['scenario']:18} {r['offered']:7d} {r['accepted']:8d} {sum(r['refused'].values()):7d} "
            f"{str(r['delivered']) + '/' + str(r['expected']):>13} {r['duplicates']:7d} {r['split_ids']:9d} {r['lost']:5d} "
            f"{'-' if r['recover_s'] is None else r['recover_s']:>9}  {r['audit']}"
            f"{'  died: ' + ','.join(r['died']) if r['died'] else ''}{'' if r['ok'] else '   <- FAIL'}")


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.base_port
    ports = [base + 90, base + 92, base + 93, base + 99] + [base + 10 * i + j for i in range(args.instances) for j in range(4)]
    if taken := [p for p in ports if port_open(p)]:
        sys.exit(f"faults: ports {taken} are in use")
    harness = Harness(args)
    task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped from outside: still clean up the private stack
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        await harness.setup()
        names = args.scenarios.split(",")
        for group in ([names] if args.one_window else [[n] for n in names]):
            await harness.scenario(group)
    except asyncio.CancelledError:
        print("\nfaults: stopped; cleaning up", flush=True)
        task.uncancel()
    finally:
        await harness.cleanup()
        harness.table()
        print(f"logs: {harness.tmp}")
    return 0 if harness.rows and all(r["ok"] for r in harness.rows) else 1


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
