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
  controller-kill  kill -9 the active KRaft controller (3-broker stack), restart it after 10 s
  postgres-restart restart PostgreSQL (fast shutdown) while deliveries are being recorded
  endpoint-faults  for 2 min (--endpoint-fault-seconds) one endpoint answers 503, one hangs past the
                   notifier's timeout, one refuses connections; the other four must see no delay
  partition-<svc>  cut the service (every instance) off from Kafka for 15 s through a TCP proxy
                   (--partition-seconds): its bytes are held, not forwarded, then flow again
  disk-full        fill the single broker's log dir (a tmpfs of --disk-mb) for 10 s, then free it and
                   start the broker again if it stopped (needs root to mount the tmpfs)

After each scenario: every alert answered 202 reached all 7 endpoints (or was dead-lettered on the
retry schedule, counted), under one webhook-id per delivery, no alert arrived that was not
accepted, every consumer group's lag is 0, and the audit log holds each submission once and verifies.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import re
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
from aiokafka.errors import KafkaError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench.system import LagProbe, Proc, port_open, wait_http
from bench.tcpproxy import PartitionProxy
from demo.scenario import EXPECTED_RECIPIENTS, SCENARIO
from services.gateway import repository as gateway_repo
from services.notifier import repository as notifier_repo
from shared import db, topics
from shared.auth import Role, ensure_signing_key, hash_api_key, new_api_key
from shared.kafka import SASL_MECHANISM, make_admin
from shared.secretfile import create_secret
from shared.settings import REPO, Settings, get_settings

SERVICES = ("gateway", "routing", "notifier", "audit")
# Ports from --base-port: services +10*instance+index; Kafka proxies +80..+85 (listening on the even
# ports, forwarding to the broker's PROXIED listener on the odd ones); the endpoint that refuses
# connections +89; receiver +90; Kafka +92..+97; PostgreSQL +99.
MAX_INSTANCES = 8
# endpoint-faults: which endpoints misbehave, and how. The other four are the healthy ones.
FAULTY = {"ep-kg-moi-dostuk": "503", "ep-kg-customs-dostuk": "hang", "ep-uz-sbs-dustlik": "refuse"}
STACK_SH = str(REPO / "deploy" / "stack.sh")
RETRY_FOR_SECONDS = 180  # the generator gives up on one alert after this long (counted as not accepted)


def parser(prog: str = "python -m bench.faults", doc: str | None = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", default="kill-gateway,kill-routing,kill-notifier,kill-audit,kafka-stop,postgres-restart,"
                   "endpoint-faults,partition-notifier,disk-full", help="comma-separated, in order (see above)")
    p.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="Kafka brokers in the private stack")
    p.add_argument("--instances", type=int, default=1, help="instances of each service")
    p.add_argument("--rate", type=float, default=20, help="alerts/s offered during each scenario")
    p.add_argument("--seconds", type=float, default=90, help="load per scenario; the fault comes a third of the way in")
    p.add_argument("--drain-seconds", type=float, default=180, help="max wait after the load for every delivery")
    p.add_argument("--one-window", action="store_true",
                   help="one load window with the scenarios' faults one after another (the short version make test runs)")
    p.add_argument("--base-port", type=int, default=27000, help="first of the 100 ports the run uses")
    p.add_argument("--restart-after", type=float, default=5,
                   help="seconds a killed service stays down; brokers stay down (and a disk stays full) twice as long")
    p.add_argument("--endpoint-fault-seconds", type=float, default=120, help="how long the endpoint faults last")
    p.add_argument("--max-healthy-delay", type=float, default=10,
                   help="endpoint-faults fails if a healthy endpoint waits longer than this (s) from accept to delivery")
    p.add_argument("--partition-seconds", type=float, default=15, help="how long a partition lasts")
    p.add_argument("--disk-mb", type=int, default=512, help="size of the tmpfs holding the broker's log dir (disk-full)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if not 1 <= args.instances <= MAX_INSTANCES:
        raise SystemExit(f"faults: --instances takes 1 to {MAX_INSTANCES}")
    return args


# ------------------------------------------------------------------ the receiver

@dataclass
class Received:
    ids: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # (alert id, endpoint) -> webhook-ids
    first: dict[tuple[str, str], float] = field(default_factory=dict)  # (alert id, endpoint) -> first arrival (monotonic)
    tagged: set[str] = field(default_factory=set)  # alert ids whose headline carries this window's tag
    duplicates: int = 0  # the same webhook-id again (allowed: at-least-once)
    bad_signatures: int = 0
    faulted: int = 0  # attempts a misbehaving endpoint answered 503 or let hang


class Receiver:
    """Agency endpoints that verify every signature (Standard Webhooks) and remember every webhook-id.

    `faulty` makes an endpoint misbehave: "503" answers 503 at once, "hang" answers nothing until the
    fault heals (past the notifier's timeout). The endpoint that refuses connections is served on a
    port of its own, whose site the harness takes down."""

    def __init__(self, secrets_of: dict[str, str]) -> None:
        self.secrets, self.got, self.tag = secrets_of, Received(), ""
        self.faulty: dict[str, str] = {}
        self.healed = asyncio.Event()

    async def deliver(self, request: web.Request) -> web.Response:
        endpoint, got = request.match_info["endpoint"], self.got
        if mode := self.faulty.get(endpoint):
            got.faulted += 1
            if mode == "hang":
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.healed.wait(), 300)
            return web.Response(status=503)
        body = await request.read()
        try:
            Webhook(self.secrets[endpoint]).verify(body, dict(request.headers))
        except (KeyError, WebhookVerificationError):
            got.bad_signatures += 1
            return web.Response(status=401)
        doc = orjson.loads(body)
        alert = doc["alert_id"]
        if str((doc.get("alert") or doc).get("headline", "")).startswith(f"{self.tag} "):
            got.tagged.add(alert)
        ids = got.ids.setdefault((alert, endpoint), set())
        webhook_id = request.headers["webhook-id"]
        if webhook_id in ids:
            got.duplicates += 1
        else:
            ids.add(webhook_id)
            got.first.setdefault((alert, endpoint), time.monotonic())
        return web.Response(status=200)

    async def serve(self, port: int) -> web.AppRunner:
        app = web.Application()
        app.add_routes([web.post("/inbox/{endpoint}", self.deliver)])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner


# ------------------------------------------------------------------ the load

@dataclass
class Load:
    accepted: dict[str, str] = field(default_factory=dict)  # Idempotency-Key -> alert id
    accepted_at: dict[str, float] = field(default_factory=dict)  # alert id -> its 202 (monotonic)
    refused: Counter = field(default_factory=Counter)  # status or error -> count, retried each time
    gave_up: int = 0
    offered: int = 0
    ended: float = 0.0  # when the last alert got its answer (monotonic)


async def steady_load(urls: list[str], key: str, rate: float, seconds: float, tag: str, stop: asyncio.Event | None = None) -> Load:
    """Open loop: alert i is due at t0 + i/rate; each is retried with its key until a 202 (bounded).
    Alerts are spread round-robin over the gateway instances' `urls`, and each retry goes to the next
    one, as a client behind a load balancer would see it (so a killed instance is a detour, and each
    instance's 1/N share of the key's rate limit holds). Setting `stop` ends the offering early;
    alerts already offered still get their answer."""
    load, n = Load(), max(1, round(rate * seconds))
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:

        async def one(i: int) -> None:
            idem, body = f"{tag}-{i}", orjson.dumps({**SCENARIO, "headline": f"{tag} {i} {SCENARIO['headline']}"[:200]})
            give_up, attempt = time.monotonic() + RETRY_FOR_SECONDS, 0
            while time.monotonic() < give_up:
                url, attempt = urls[(i + attempt) % len(urls)], attempt + 1
                try:
                    async with http.post(url, data=body, headers={**headers, "Idempotency-Key": idem}) as r:
                        if r.status == 202:
                            load.accepted[idem] = alert = (await r.json())["id"]
                            load.accepted_at.setdefault(alert, time.monotonic())
                            return
                        load.refused[str(r.status)] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    load.refused[type(exc).__name__] += 1
                await asyncio.sleep(0.5)
            load.gave_up += 1

        t0, tasks = time.monotonic(), []
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            if stop is not None and stop.is_set():
                break
            tasks.append(asyncio.create_task(one(i)))
            load.offered += 1
        await asyncio.gather(*tasks)
    load.ended = time.monotonic()
    return load


# ------------------------------------------------------------------ the harness

class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.run_id, self.base = args, secrets.token_hex(3), args.base_port
        self.names = [n for n in args.scenarios.split(",") if n]
        self.tmp = Path(tempfile.mkdtemp(prefix=f"blonet-faults-{self.run_id}-"))
        self.stack_env = {**{k: v for k, v in os.environ.items() if not k.startswith("BLONET_")},
                          "BLONET_STACK_DIR": str(REPO / "var" / f"faults-{self.run_id}"),
                          "BLONET_KAFKA_PORT": str(self.base + 92), "BLONET_KAFKA_CONTROLLER_PORT": str(self.base + 93),
                          "BLONET_PG_PORT": str(self.base + 99), "BLONET_KAFKA_BROKERS": str(args.brokers)}
        self.procs: dict[str, Proc] = {}
        self.rows: list[dict] = []
        self.stopping = asyncio.Event()  # set: the load offers no more alerts (the soak's first Ctrl-C)
        for name in self.names:
            self.fault(name)  # an unknown or impossible scenario fails before anything starts
        # The services cut off by partition-<svc> reach Kafka through the proxies from the start.
        self.proxied = {n.removeprefix("partition-") for n in self.names if n.startswith("partition-")}
        if len(self.proxied) > 1:
            raise SystemExit("faults: one partition-<service> per run (the brokers have one proxied listener)")
        self.proxies: list[PartitionProxy] = []
        if self.proxied:
            self.stack_env["BLONET_KAFKA_PROXY_PORT"] = str(self.base + 80)
        self.tmpfs: Path | None = None

    def stack(self, *args: str) -> str:
        result = subprocess.run([STACK_SH, *args], env=self.stack_env, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"stack.sh {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return result.stdout.strip()

    async def astack(self, *args: str) -> str:
        """stack.sh off the event loop: the load and the receiver go on while a broker starts."""
        return await asyncio.to_thread(self.stack, *args)

    def kafka_running(self) -> bool:
        return subprocess.run([STACK_SH, "status", "kafka"], env=self.stack_env, capture_output=True, timeout=60).returncode == 0

    def port(self, service: str, instance: int) -> int:
        return self.base + 10 * instance + SERVICES.index(service)

    def endpoint_port(self, endpoint: str) -> int:
        return self.base + 89 if FAULTY.get(endpoint) == "refuse" else self.base + 90

    async def setup(self) -> None:
        if "disk-full" in self.names:
            self.mount_tmpfs()
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
            # No escalation within a run: it re-sends to the same endpoint under a new webhook-id.
            "BLONET_ACK_DEADLINES_SECONDS": '{"immediate": 86400, "expected": 86400, "future": 86400, "past": 86400, "unknown": 86400}',
        }
        for k in [k for k in os.environ if k.startswith("BLONET_")]:
            del os.environ[k]
        os.environ.update(self.app_env)
        get_settings.cache_clear()
        self.settings: Settings = get_settings()
        if self.proxied:
            for i in range(self.args.brokers):
                proxy = PartitionProxy(self.base + 80 + 2 * i, self.base + 81 + 2 * i)
                await proxy.start()
                self.proxies.append(proxy)
            self.proxied_bootstrap = ",".join(f"127.0.0.1:{p.listen_port}" for p in self.proxies)
        net = self.tmp / "network"
        shutil.copytree(REPO / "deploy" / "network", net)
        doc = yaml.safe_load((net / "directory.yaml").read_text())
        for e in doc["endpoints"]:
            e["url"] = f"http://127.0.0.1:{self.endpoint_port(e['id'])}/inbox/{e['id']}"
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
        self.refuser_runner: web.AppRunner | None = await self.receiver.serve(self.base + 89)
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
        if service in self.proxied:
            env["BLONET_KAFKA_BOOTSTRAP"] = self.proxied_bootstrap
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
        await self.astack("stop", "kafka")
        await asyncio.sleep(2 * self.args.restart_after)
        await self.astack("start", "kafka")
        return time.monotonic()

    async def kill_node(self, node: int) -> float:
        """kill -9 a broker, start it again after twice --restart-after."""
        folder = Path(self.stack_env["BLONET_STACK_DIR"]) / ("kafka" if node == 1 else f"kafka-{node}")
        os.kill(int((folder / "kafka.pid").read_text()), signal.SIGKILL)
        await asyncio.sleep(2 * self.args.restart_after)
        await self.astack("start", "kafka")
        return time.monotonic()

    async def leader_kill(self) -> float:
        admin = make_admin(self.settings)
        await admin.start()
        try:
            parts = (await admin.describe_topics([self.settings.topic(topics.ALERTS_SUBMITTED.name)]))[0]["partitions"]
        finally:
            await admin.close()
        return await self.kill_node(next(p["leader"] for p in parts if p["partition"] == 0))

    async def controller_kill(self) -> float:
        node = await self.quorum_leader()
        print(f"   the active controller is node {node}; killing it", flush=True)

        async def successor() -> int:
            await asyncio.sleep(1)
            return await self.quorum_leader()

        asked = asyncio.create_task(successor())  # asked while the node is down; a JVM may take long to answer here
        end = await self.kill_node(node)
        with contextlib.suppress(Exception):
            print(f"   while it was down the active controller became node {await asyncio.wait_for(asked, 120)}", flush=True)
        return end

    def tool_login(self) -> Path | None:
        """A client properties file (0600, in the run's temp dir) logging Kafka's own tools in as admin."""
        login = self.settings.kafka_login()
        if login is None:
            return None
        path = Path(self.tmp) / "admin-client.properties"
        if not path.exists():
            user, password = login
            create_secret(path, (
                f"security.protocol={self.settings.kafka_security_protocol or 'SASL_PLAINTEXT'}\n"
                f"sasl.mechanism={SASL_MECHANISM}\n"
                "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{user}" password="{password}";\n').encode())
        return path

    async def quorum_leader(self) -> int:
        """The node leading the KRaft quorum (the active controller), from Kafka's own quorum tool.

        Not from the admin API: in KRaft a broker names a random live broker as "controller" to clients."""
        libs = Path(os.environ.get("BLONET_CACHE_DIR", REPO / "var" / "cache")) / "kafka-libs"
        out, login = b"", self.tool_login()
        for _ in range(5):  # right after a kill the tool may ask the dead node first
            tool = await asyncio.create_subprocess_exec(
                "java", "-Xmx128m", "-cp", f"{libs}/*", f"-Dlog4j2.configurationFile={REPO / 'deploy' / 'kafka' / 'log4j2.xml'}", f"-Dkafka.logs.dir={self.tmp}",
                "org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server", self.settings.kafka_bootstrap,
                *(["--command-config", str(login)] if login else []), "describe", "--status", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(tool.communicate(), 120)
            if found := re.search(rb"LeaderId:\s*(\d+)", out):
                return int(found[1])
            await asyncio.sleep(2)
        raise RuntimeError(f"the quorum tool named no leader:\n{out.decode(errors='replace')[-1000:]}")

    async def postgres_restart(self) -> float:
        # Deliveries are recorded continuously under this load: a fast shutdown lands in the middle of them.
        await self.astack("restart", "postgres")
        return time.monotonic()

    async def endpoint_faults(self) -> float:
        """One endpoint answers 503, one hangs, one refuses connections, all for --endpoint-fault-seconds."""
        r = self.receiver
        r.healed.clear()
        r.faulty = {e: mode for e, mode in FAULTY.items() if mode != "refuse"}
        await self.refuser_runner.cleanup()  # closes its listener and its kept-alive connections
        self.refuser_runner = None
        await asyncio.sleep(self.args.endpoint_fault_seconds)
        self.refuser_runner = await r.serve(self.base + 89)
        r.faulty = {}
        r.healed.set()
        return time.monotonic()

    async def partition(self) -> float:
        for proxy in self.proxies:
            proxy.cut()
        await asyncio.sleep(self.args.partition_seconds)
        for proxy in self.proxies:
            proxy.heal()
        return time.monotonic()

    def mount_tmpfs(self) -> None:
        """The single broker's log dir on a small tmpfs of its own, so that it alone can be filled."""
        data = Path(self.stack_env["BLONET_STACK_DIR"]) / "kafka" / "data"
        data.mkdir(parents=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.args.disk_mb}m,mode=0755", "tmpfs", str(data)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"faults: disk-full needs a tmpfs for the broker's log dir: {result.stderr.strip()} (run as root)")
        self.tmpfs = data

    async def disk_full(self) -> float:
        filler = self.tmpfs / "filler"
        written = await asyncio.to_thread(_fill, filler)
        print(f"   the broker's disk is full ({written >> 20} MiB of filler)", flush=True)
        await asyncio.sleep(2 * self.args.restart_after)
        filler.unlink()
        if not await asyncio.to_thread(self.kafka_running):
            print("   the broker stopped on the full disk; space freed, starting it again", flush=True)
            await self.astack("start", "kafka")
        return time.monotonic()

    def fault(self, name: str):
        if name.startswith("kill-") and name[5:] in SERVICES:
            return lambda: self.kill_service(name[5:])
        if name.startswith("partition-") and name[10:] in SERVICES:
            return self.partition
        if name == "kafka-stop":
            return self.kafka_stop
        if name == "leader-kill" and self.args.brokers == 3:
            return self.leader_kill
        if name == "controller-kill" and self.args.brokers == 3:
            return self.controller_kill
        if name == "disk-full" and self.args.brokers == 1:
            return self.disk_full
        if name == "postgres-restart":
            return self.postgres_restart
        if name == "endpoint-faults":
            return self.endpoint_faults
        raise SystemExit(f"faults: no scenario {name!r} on a {self.args.brokers}-broker stack")

    # ---------------------------------------------------------------- a scenario

    async def scenario(self, names: list[str], first_at: float | None = None, gap: float | None = None, during=None,
                       label: str | None = None) -> dict:
        """One load window; the faults one after another from `first_at` (default: a third of the way in),
        each followed by `gap` seconds (default: spread over the middle third). `during`, if given, is a
        coroutine function run alongside the window until the counts are done (the soak's sampler)."""
        faults, name = [self.fault(n) for n in names], label or "+".join(names) or "no fault"
        tag = f"{(names or ['load'])[0]}-{len(self.rows)}-{self.run_id}"
        first_at = self.args.seconds / 3 if first_at is None else first_at
        gap = self.args.seconds / 3 / max(1, len(faults)) if gap is None else gap
        print(f"\n== {name}: {self.args.rate:g} alerts/s for {self.args.seconds:g} s, "
              f"{'the faults one after another' if len(faults) > 1 else 'the fault'} from {first_at:.0f} s", flush=True)
        got = self.receiver.got = Received()
        self.receiver.tag = tag
        loop = asyncio.get_running_loop()
        started, t0 = loop.time(), time.monotonic()
        side = asyncio.create_task(during()) if during else None
        gateways = [f"http://127.0.0.1:{self.port('gateway', i)}/v1/alerts" for i in range(self.args.instances)]
        load_task = asyncio.create_task(steady_load(gateways, self.key,
                                                    self.args.rate, self.args.seconds, tag, self.stopping))
        await _sleep_unless(self.stopping, first_at)
        fault_start = fault_end = None
        for i, fault in enumerate(faults):
            if self.stopping.is_set():
                break
            fault_start = fault_start or time.monotonic()
            fault_end = await fault()
            print(f"   {names[i]} done at {loop.time() - started:.0f} s", flush=True)
            if i < len(faults) - 1:  # after the last one the load simply runs to its end
                await _sleep_unless(self.stopping, gap)
        load = await load_task
        load_end = load.ended
        ids = set(load.accepted.values())
        expected = {(a, e) for a in ids for e in EXPECTED_RECIPIENTS}
        deadline, dead, checked = load_end + self.args.drain_seconds, set(), 0.0
        while (missing := expected - got.first.keys() - dead) and time.monotonic() < deadline:
            if time.monotonic() - checked > 5:  # deliveries dead-lettered on the retry schedule are accounted for
                dead, checked = await self.dead_lettered(ids), time.monotonic()
            await asyncio.sleep(1)
        dead = await self.dead_lettered(ids)
        missing = expected - got.first.keys() - dead
        arrived = [got.first[k] for k in expected if k in got.first]
        drain = round(max(0.0, max(arrived, default=load_end) - load_end), 1) if not missing else None
        lag = await self.lag_after_drain()
        split = sum(1 for (alert, _), w in got.ids.items() if alert in ids and len(w) > 1)
        after = [t for t in got.first.values() if fault_end and t >= fault_end]
        died = sorted(name for name, proc in self.procs.items() if not proc.alive())  # a fault must never end a service
        for name_ in died:  # (a failure, but the counts go on: the audit check needs a gateway)
            service, instance = name_.rsplit("-", 1)
            self.start(service, int(instance))
            await self.wait_ready(service, int(instance))
        audited = await self.audited(ids)
        if side:
            side.cancel()
            try:
                await side
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # noqa: BLE001 - a broken observer must not hide the counts
                print(f"   {during.__qualname__} failed: {exc!r}", flush=True)
        healthy = set(EXPECTED_RECIPIENTS) - (set(FAULTY) if "endpoint-faults" in names else set())
        delay = _max_delay(got, load.accepted_at, healthy, fault_start, fault_end)
        row = {"died": died, "scenario": name, "offered": load.offered, "accepted": len(load.accepted), "refused": dict(load.refused),
               "gave_up": load.gave_up, "distinct_ids": len(ids), "delivered": len(expected & got.first.keys()),
               "expected": len(expected), "duplicates": got.duplicates, "split_ids": split, "bad_signatures": got.bad_signatures,
               "dead": len(dead), "lost": len({a for a, _ in missing}), "strays": len(got.tagged - ids),
               "max_delay_s": delay, "drain_s": drain, "lag": lag,
               "recover_s": round(after[0] - fault_end, 1) if after else None, "audit": audited}
        # Dead letters are expected only of the endpoints made to fail; anywhere else they are deliveries lost.
        dead_ok = not dead or ("endpoint-faults" in names and all(e in FAULTY for _, e in dead))
        row["ok"] = (row["lost"] == 0 and not split and not died and not load.gave_up and len(ids) == len(load.accepted)
                     and not got.bad_signatures and audited == "verified" and dead_ok and not row["strays"] and lag == 0
                     and ("endpoint-faults" not in names or (delay or 0) <= self.args.max_healthy_delay))
        failed = await self.failed_attempts(ids)
        if "endpoint-faults" in names and not (got.faulted and all(failed.get(e) for e in FAULTY)):
            row["ok"] = False  # the fault never reached the notifier: the scenario proved nothing
        print(_line(row), flush=True)
        print(f"   load ended at {load_end - t0:.0f} s, last delivery at {max(arrived, default=t0) - t0:.0f} s; "
              f"failed attempts by endpoint: {failed or 'none'}"
              + (f"; the misbehaving endpoints answered {got.faulted} with 503 or silence" if got.faulted else ""), flush=True)
        self.rows.append(row)
        return row

    async def failed_attempts(self, ids: set[str]) -> dict[str, int]:
        from sqlalchemy import text
        rows = await self.in_session("notifier", lambda s: s.execute(text(
            "SELECT d.endpoint, count(*) FROM attempts a JOIN deliveries d USING (delivery_id) "
            "WHERE a.outcome <> 'delivered' AND d.alert_id = ANY(CAST(:ids AS uuid[])) GROUP BY d.endpoint"), {"ids": list(ids)}))
        return dict(sorted(rows.all()))

    async def dead_lettered(self, ids: set[str]) -> set[tuple[str, str]]:
        """(alert, endpoint) deliveries the notifier gave up on (state failed: the dead letter)."""
        from sqlalchemy import text
        for _ in range(10):  # right after a fault a pooled database connection may still fail once
            try:
                rows = await self.in_session("notifier", lambda s: s.execute(text(
                    "SELECT alert_id::text, endpoint FROM deliveries WHERE state = 'failed' AND alert_id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": list(ids)}))
                return {(a, e) for a, e in rows.all()}
            except Exception:  # noqa: BLE001 - any database error here is the aftermath of a fault: ask again
                await asyncio.sleep(1)
        raise RuntimeError("the notifier's database did not answer for 10 s")

    async def lag_after_drain(self, timeout: float = 90) -> int | None:
        """Total lag of the run's consumer groups, once it is 0 or after `timeout` s; None if Kafka never answered."""
        probe, lag, deadline = LagProbe(self.settings, self.settings.topic_prefix), None, time.monotonic() + timeout
        try:
            await probe.start()
            while time.monotonic() < deadline:
                try:
                    lag = sum((await probe.lag()).values())
                except KafkaError:
                    lag = None
                if lag == 0:
                    break
                await asyncio.sleep(1)
        finally:
            with contextlib.suppress(KafkaError):
                await probe.close()
        return lag

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
            answer = "nothing"
            for _ in range(20):  # right after a fault a pooled database connection may still fail once
                try:
                    async with http.post(f"http://127.0.0.1:{self.port('gateway', 0)}/v1/auth/token",
                                         headers={"authorization": f"Bearer {self._auditor_key}"}) as r:
                        if r.status == 200:
                            return (await r.json())["access_token"]
                        answer = str(r.status)
                except aiohttp.ClientError as exc:
                    answer = type(exc).__name__
                await asyncio.sleep(0.5)
        raise RuntimeError(f"no auditor token: the gateway answers {answer}")

    async def cleanup(self) -> None:
        for proc in self.procs.values():
            proc.stop()
        for proxy in self.proxies:
            await proxy.close()
        for runner in (getattr(self, "receiver_runner", None), getattr(self, "refuser_runner", None)):
            if runner is not None:
                await runner.cleanup()
        try:
            if self.tmpfs is not None:  # the broker off its tmpfs before the tmpfs goes
                self.stack("stop", "kafka")
                if subprocess.run(["umount", str(self.tmpfs)], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(self.tmpfs)], capture_output=True)
            self.stack("clean")  # a database kept outside the checkout goes too
        except RuntimeError as exc:
            print(exc)
        shutil.rmtree(self.stack_env["BLONET_STACK_DIR"], ignore_errors=True)

    def table(self) -> None:
        print("\n== Faults under load  (lost = accepted alerts not delivered to all 7 recipients, nor dead-lettered, "
              "after the drain; max a->d = the longest accept-to-delivery of an alert accepted during the fault, "
              "healthy endpoints only for endpoint-faults)")
        print(_header())
        for row in self.rows:
            print(_line(row))


async def _submitted_counts(session, ids: set[str]) -> dict[str, int]:
    from sqlalchemy import text
    rows = await session.execute(text(
        "SELECT alert_id::text, count(*) FROM entries WHERE type = 'alert.submitted' AND alert_id = ANY(CAST(:ids AS uuid[])) "
        "GROUP BY alert_id"), {"ids": list(ids)})
    return dict(rows.all())


COLUMNS = (  # title, width, value
    ("offered", 7, lambda r: r["offered"]), ("accepted", 8, lambda r: r["accepted"]),
    ("refused", 7, lambda r: sum(r["refused"].values())), ("delivered", 13, lambda r: f"{r['delivered']}/{r['expected']}"),
    ("dup ids", 7, lambda r: r["duplicates"]), ("split ids", 9, lambda r: r["split_ids"]), ("dead", 4, lambda r: r["dead"]),
    ("lost", 4, lambda r: r["lost"]), ("extra", 5, lambda r: r["strays"]), ("max a->d s", 10, lambda r: r["max_delay_s"]),
    ("drain s", 7, lambda r: r["drain_s"]), ("recover s", 9, lambda r: r["recover_s"]), ("lag", 4, lambda r: r["lag"]),
)


def _header() -> str:
    return f"   {'scenario':24} " + " ".join(f"{t:>{w}}" for t, w, _ in COLUMNS) + "  audit"


def _line(r: dict) -> str:
    cells = " ".join(f"{'-' if (v := f(r)) is None else v!s:>{w}}" for _, w, f in COLUMNS)
    return (f"   {r['scenario']:24} {cells}  {r['audit']}"
            f"{'  died: ' + ','.join(r['died']) if r['died'] else ''}{'' if r['ok'] else '   <- FAIL'}")


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


def _max_delay(got: Received, accepted_at: dict[str, float], endpoints: set[str], start: float | None,
               end: float | None) -> float | None:
    """The longest accept-to-first-arrival at `endpoints` of an alert accepted between start and end (all without a fault)."""
    delays = [t - accepted_at[a] for (a, e), t in got.first.items()
              if e in endpoints and a in accepted_at and (start is None or start <= accepted_at[a] <= end)]
    return round(max(delays), 1) if delays else None


def _fill(path: Path) -> int:
    """Write to `path` until the file system is full; return the bytes written."""
    chunk, written = b"\0" * (1 << 20), 0
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                written += f.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written


async def run(args: argparse.Namespace, body, graceful: bool = False) -> tuple[int, Harness]:
    """Set up a private stack, run `body(harness)`, always clean up and print the table; the exit code.

    SIGINT/SIGTERM cancel the run (the stack is still cleaned up); with `graceful` the first one only
    stops the load, which then drains and is counted as usual."""
    base = args.base_port
    ports = [base + 80 + i for i in range(6)] + [base + 89, base + 90, base + 92, base + 93, base + 99]
    ports += [base + 10 * i + j for i in range(args.instances) for j in range(4)]
    if taken := [p for p in ports if port_open(p)]:
        sys.exit(f"faults: ports {taken} are in use")
    harness = Harness(args)
    task = asyncio.current_task()

    def on_signal() -> None:
        if graceful and not harness.stopping.is_set():
            print("\nstopping the load; draining and counting (again to abandon)", flush=True)
            harness.stopping.set()
        else:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped from outside: still clean up the private stack
        asyncio.get_running_loop().add_signal_handler(sig, on_signal)
    try:
        await harness.setup()
        await body(harness)
    except asyncio.CancelledError:
        print("\nfaults: stopped; cleaning up", flush=True)
        task.uncancel()
    finally:
        await harness.cleanup()
        harness.table()
        print(f"logs: {harness.tmp}")
    return (0 if harness.rows and all(r["ok"] for r in harness.rows) else 1), harness


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    async def body(harness: Harness) -> None:
        for group in ([harness.names] if args.one_window else [[n] for n in harness.names]):
            await harness.scenario(group)

    return (await run(args, body))[0]


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
