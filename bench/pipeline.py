"""`python -m bench.pipeline`: how many alerts per second BLOnet carries, against a no-logic floor.

In order: (1) the load generator's own ceiling against a trivial 202 endpoint; (2) the fair floor:
BLOnet's hops and fan-out with no logic (HTTP -> Kafka -> one record per endpoint -> the POSTs and
a status record each -> a consumer of every topic) on BLOnet's producer/consumer code; (3) the
one-POST floor (HTTP -> Kafka -> one POST), a second reference line; (4) the four real services,
then a backlog at twice their sustained rate. All get the same stepped open-loop rates; the
summary sets each target of the throughput issue beside BLOnet's and the floors' figures.
See bench/README.md.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp
import orjson
import uvloop
import yaml
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from bench.loadgen import Step, open_loop, pct
from bench.system import CpuMeter, LagProbe, Proc, Stack, port_open, wait_http
from demo.scenario import EXPECTED_RECIPIENTS, SCENARIO
from services.gateway import repository as gateway_repo
from services.notifier import repository as notifier_repo
from shared import db, topics
from shared.auth import Role, ensure_signing_key, hash_api_key, new_api_key
from shared.kafka import make_admin
from shared.settings import REPO, Settings, get_settings

SERVICES = ("gateway", "routing", "notifier", "audit")
# Below the ephemeral range (32768-60999 by default): a listener there can collide with the
# local port of one of the many client connections the run opens (seen: "address already in use").
BASE_PORT = 28000  # services 28000-28003, floor server 28010, receiver 28100
FLOOR_PORT, RECEIVER_PORT = BASE_PORT + 10, BASE_PORT + 100
FLOOR_PARTITIONS = topics.ALERTS_SUBMITTED.partitions
FANOUT = {"floor": len(EXPECTED_RECIPIENTS), "floor1": 1, "blonet": len(EXPECTED_RECIPIENTS)}  # deliveries per request
TAGS = {"floor": "f", "floor1": "o", "blonet": "b"}  # marks each system's requests at the receiver
SYSTEMS = ("floor", "floor1", "blonet")
SLO_DELIVERY_P99_MS = 100
# The targets of the throughput issue (docs/performance.md).
TARGET_SUSTAINED, TARGET_SUSTAINED_VS_FLOOR = 150, 0.8
TARGET_LAST_RATE, TARGET_LAST_VS_FLOOR = 100, 1.5
TARGET_LOW_RATE, TARGET_LOW_P99_MS = 10, 50
TARGET_IDLE_PCT = 10
# Rate limits set so high that they never bind: the bench measures the pipeline, not the limiter.
UNBOUND_LIMITS = {"BLONET_RATE_LIMIT_PER_SECOND": "1000000", "BLONET_RATE_LIMIT_BURST": "1000000",
                  "BLONET_ENDPOINT_RATE_PER_SECOND": "1000000", "BLONET_ENDPOINT_BURST": "1000000"}
CEILING_P99_MS = 10
NOISY_OTHER_PCT = 25  # CPU % of one core used by processes outside the bench and the stack
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args() -> argparse.Namespace:
    rates = lambda s: [float(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", type=rates, default=[5, 10, 25, 50, 100, 200, 300, 400, 600, 800, 1000],
                   help="alerts/s steps (floor and BLOnet)")
    p.add_argument("--step-seconds", type=float, default=30, help="length of each step")
    p.add_argument("--slow-step-seconds", type=float, default=60,
                   help=f"length of the steps at or below {TARGET_LOW_RATE}/s, whose p99 needs more samples")
    p.add_argument("--drain-seconds", type=float, default=20, help="max wait after a step for deliveries and lag 0")
    p.add_argument("--ceiling-rates", type=rates, default=[250, 500, 1000, 2000, 3000], help="generator-ceiling steps")
    p.add_argument("--ceiling-seconds", type=float, default=10, help="length of each generator-ceiling step")
    p.add_argument("--ref-rate", type=float, default=TARGET_LAST_RATE, help="rate at which the last-of-7 p99 ratio is taken")
    p.add_argument("--systems", default="ceiling,floor,floor1,blonet", help="which of ceiling,floor,floor1,blonet to run")
    p.add_argument("--backlog-seconds", type=float, default=60,
                   help="BLOnet, after the steps: this long at twice its sustained rate, then the drain is timed")
    p.add_argument("--backlog-drain-seconds", type=float, default=600, help="max wait for the backlog to drain")
    p.add_argument("--keep-going", action="store_true", help="run every rate even after an unsustained step")
    p.add_argument("--recover-seconds", type=float, default=120,
                   help="max wait for a failed step's backlog before the --ref-rate step")
    p.add_argument("--idle-seconds", type=float, default=60, help="CPU measured with no load after each system's warm-up")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 5 s steps, 10 s drain, 3 s ceiling steps, 5 s idle, 10 s backlog")
    args = p.parse_args()
    if args.quick:
        args.step_seconds, args.drain_seconds, args.ceiling_seconds, args.recover_seconds = 5, 10, 3, 60
        args.slow_step_seconds, args.idle_seconds, args.backlog_seconds, args.backlog_drain_seconds = 5, 5, 10, 120
    args.systems = args.systems.split(",")
    return args


def marked_body(tag: str):
    """The scenario alert with a unique marker in its headline (kept by every recipient view)."""
    def body(seq: int) -> bytes:
        return orjson.dumps({**SCENARIO, "headline": f"B|{tag}|{seq}|{SCENARIO['headline']}"[:200]})
    return body


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(3)
        self.stack = Stack()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"blonet-bench-{self.run_id}-"))
        self.procs: dict[str, Proc] = {}
        self.receiver_url = f"http://127.0.0.1:{RECEIVER_PORT}"
        self.db_created = False
        self.topics_created: list[str] = []
        self.results: dict = {"run_id": self.run_id, "started": datetime.now().isoformat(timespec="seconds"),
                              "args": {k: v for k, v in vars(args).items()}, "logs": str(self.tmp),
                              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                              "ceiling": [], "floor": [], "floor1": [], "blonet": []}
        self.blonet_prefix = f"bench{self.run_id}."
        self.floor_prefix = f"benchfloor{self.run_id}."
        self.floor1_prefix = f"benchpost{self.run_id}."
        # One environment for every child: no stray BLONET_* from the caller's shell.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BLONET_")}
        self.app_env = {
            "BLONET_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.stack.kafka_port}",
            "BLONET_SECRETS_FILE": str(self.stack.dir / "kafka" / "secrets.json"),  # the stack's Kafka logins
            "BLONET_PG_PORT": str(self.stack.pg_port),
            "BLONET_PG_DATABASE": f"blonet_bench_{self.run_id}",
            "BLONET_TOPIC_PREFIX": self.blonet_prefix,
            **{f"BLONET_{s.upper()}_PORT": str(BASE_PORT + i) for i, s in enumerate(SERVICES)},
            "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{BASE_PORT}",
            "BLONET_DEMO_INBOX_PORT": str(RECEIVER_PORT),
            "BLONET_NETWORK_DIR": str(self.tmp / "network"),
            "BLONET_TOKEN_PRIVATE_KEY_FILE": str(self.tmp / "keys" / "token.pem"),
            "BLONET_TOKEN_PUBLIC_KEY_FILE": str(self.tmp / "keys" / "token.pub.pem"),
            **UNBOUND_LIMITS,
        }
        for k in [k for k in os.environ if k.startswith("BLONET_") and k not in self.stack.env]:
            del os.environ[k]  # this process's own Settings() must see only the bench's values
        os.environ.update(self.app_env)
        get_settings.cache_clear()
        self.settings: Settings = get_settings()

    # ------------------------------------------------------------ processes

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str]) -> Proc:
        self.procs[name] = Proc(name, [sys.executable, *args], {**self.env, **extra_env}, self.tmp)
        return self.procs[name]

    def stop(self, *names: str) -> None:
        for name in names:
            proc = self.procs.pop(name, None)
            if proc:
                proc.stop()

    async def wait_http(self, url: str, proc: Proc, timeout: float = 90) -> None:
        await wait_http(url, proc, timeout)

    async def receiver(self, path: str) -> dict:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            async with http.get(f"{self.receiver_url}{path}") as r:
                return await r.json(loads=orjson.loads)

    def cpu_meter(self, names: list[str]) -> CpuMeter:
        pids = {n: self.procs[n].pid for n in names if n in self.procs}
        return CpuMeter({**pids, **self.stack.pids(), "generator": os.getpid()})

    # ------------------------------------------------------------ steps

    async def step(self, system: str, tag: str, url: str, rate: float, seconds: float, headers: dict,
                   lag: LagProbe, meter: CpuMeter | None) -> dict:
        """One open-loop step, then the drain wait; returns its row of figures."""
        fanout = FANOUT[system]
        if meter:
            meter.start()
        s: Step = await open_loop(url, rate, seconds, marked_body(tag), headers)
        cpu = meter.stop() if meter else {}
        expected = len(s.ok) * fanout
        t_end, lags, got = time.monotonic(), {}, 0
        while True:  # drain: every delivery in and every consumer group caught up, or time is up
            got = (await self.receiver(f"/count?tag={tag}"))["deliveries"]
            lags = await lag.lag()
            if (got >= expected and not any(lags.values())) or time.monotonic() - t_end > self.args.drain_seconds:
                break
            await asyncio.sleep(0.5)
        drain_s = time.monotonic() - t_end
        arrivals = await self.receiver(f"/collect?tag={tag}")  # seq -> [first, last, count]
        first_ms, last_ms, delivered, complete = [], [], 0, 0
        for seq in s.ok:
            a = arrivals.get(str(seq))
            if a is None:
                continue
            delivered += min(a[2], fanout)
            first_ms.append((a[0] - s.due(seq)) * 1000)
            if a[2] >= fanout:
                complete += 1
                last_ms.append((a[1] - s.due(seq)) * 1000)
        duplicates = sum(max(0, a[2] - fanout) for a in arrivals.values())
        n_errors = sum(s.errors.values())
        p99_first = pct(first_ms, 99)
        why_not = [w for w, bad in (
            ("errors", n_errors > 0),
            ("undelivered", complete < len(s.ok)),
            (f"p99>{SLO_DELIVERY_P99_MS}ms", p99_first is None or p99_first >= SLO_DELIVERY_P99_MS),
            ("lag", any(lags.values())),
        ) if bad]
        row = {
            "system": system, "rate": rate, "seconds": seconds, "sent": s.sent, "accepted": len(s.ok),
            "achieved_rate": round(s.achieved, 1), "errors": dict(s.errors), "generator_max_late_ms": round(s.max_late_ms, 1),
            "accept_ms": _pcts(s.accept_ms), "delivery_first_ms": _pcts(first_ms), "delivery_last_ms": _pcts(last_ms),
            "deliveries": delivered, "expected": expected, "complete_alerts": complete, "duplicates": duplicates,
            "lag_after_drain": lags, "drain_seconds": round(drain_s, 1), "cpu_pct": cpu,
            "sustained": not why_not, "why_not": why_not,
        }
        print(_row(row), flush=True)
        if cpu:
            print("      cpu% " + _cpu(cpu), flush=True)
        return row

    async def warm_up(self, system: str, url: str, headers: dict, lag: LagProbe) -> None:
        """A few requests first: connections, consumer-group joins and caches are not what we measure."""
        tag, deadline = f"{TAGS[system]}w", time.monotonic() + 90
        s = await open_loop(url, 10, 2, marked_body(tag), headers)
        if not s.ok:
            raise RuntimeError(f"{system}: warm-up requests were refused: {dict(s.errors)}")
        while (await self.receiver(f"/count?tag={tag}"))["deliveries"] < len(s.ok) * FANOUT[system] or any((await lag.lag()).values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{system}: warm-up deliveries did not arrive within 90 s; logs in {self.tmp}")
            await asyncio.sleep(0.5)
        await self.receiver(f"/collect?tag={tag}")

    async def steps(self, system: str, url: str, headers: dict, lag: LagProbe, procs: list[str]) -> None:
        """Idle CPU, warm-up, then the rates in order.

        By default a system stops at its first unsustained step: its backlog would spoil the next
        steps. If that happens below --ref-rate, the backlog is first allowed to clear (bounded by
        --recover-seconds) and one step at --ref-rate is still run, for the p99 ratio.
        """
        await lag.start()
        try:
            await self.warm_up(system, url, headers, lag)
            meter = self.cpu_meter(procs)
            meter.start()
            await asyncio.sleep(self.args.idle_seconds)
            idle = meter.stop()
            self.results[f"{system}_idle_cpu_pct"] = idle
            print(f"   idle after warm-up, no load ({self.args.idle_seconds:g} s): cpu% {_cpu(idle)}", flush=True)
            rates, ref = list(self.args.rates), self.args.ref_rate
            for i, rate in enumerate(rates):
                tag = f"{TAGS[system]}{i}"
                seconds = self.args.slow_step_seconds if rate <= TARGET_LOW_RATE else self.args.step_seconds
                row = await self.step(system, tag, url, rate, seconds, headers, lag,
                                      self.cpu_meter(procs + ["receiver"]))
                self.results[system].append(row)
                if row["sustained"] or self.args.keep_going:
                    continue
                if rate < ref and ref in rates:
                    print(f"   ({system}: not sustained at {rate:g}/s; waiting up to {self.args.recover_seconds:g} s for its "
                          f"backlog, then one step at {ref:g}/s for the ratio)", flush=True)
                    await self.settle(tag, row["expected"] - row["deliveries"], lag)
                    row = await self.step(system, f"{TAGS[system]}r", url, ref, self.args.step_seconds, headers, lag,
                                          self.cpu_meter(procs + ["receiver"]))
                    self.results[system].append(row)
                print(f"   ({system}: higher rates skipped, see --keep-going)", flush=True)
                break
        finally:
            await lag.close()

    async def settle(self, tag: str, missing: int, lag: LagProbe) -> None:
        """Wait for a failed step's late deliveries and for every consumer group to catch up."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < self.args.recover_seconds:
            late = (await self.receiver(f"/count?tag={tag}"))["deliveries"]
            if late >= missing and not any((await lag.lag()).values()):
                break
            await asyncio.sleep(1)
        late = (await self.receiver(f"/collect?tag={tag}"))
        left = missing - sum(a[2] for a in late.values())
        print(f"   (backlog {'cleared' if left <= 0 else f'NOT cleared: {left} deliveries still missing'} after "
              f"{time.monotonic() - t0:.0f} s)", flush=True)

    # ------------------------------------------------------------ phases

    async def ceiling(self) -> None:
        print("\n== 1. Load generator ceiling: aiohttp open loop -> trivial aiohttp endpoint answering 202", flush=True)
        print(f"   {'offered/s':>9} {'achieved/s':>10} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'gen late max ms':>15}  ok", flush=True)
        for rate in self.args.ceiling_rates:
            meter = self.cpu_meter(["receiver"])
            meter.start()
            s = await open_loop(f"{self.receiver_url}/sink", rate, self.args.ceiling_seconds, lambda _: b"{}",
                                {"content-type": "application/json"})
            cpu = meter.stop()
            lat = _pcts(s.accept_ms)
            ok = not s.errors and lat["p99"] is not None and lat["p99"] < CEILING_P99_MS and s.achieved >= 0.97 * rate
            self.results["ceiling"].append({"rate": rate, "achieved_rate": round(s.achieved, 1), "errors": dict(s.errors),
                                            "latency_ms": lat, "generator_max_late_ms": round(s.max_late_ms, 1),
                                            "cpu_pct": cpu, "ok": ok})
            print(f"   {rate:9g} {s.achieved:10.1f} {sum(s.errors.values()):6d} {_f(lat['p50']):>7} {_f(lat['p95']):>7} "
                  f"{_f(lat['p99']):>7} {s.max_late_ms:15.1f}  {'yes' if ok else 'NO'}   cpu% {_cpu(cpu)}", flush=True)
            if not ok:
                break

    async def floor(self) -> None:
        prefix = self.floor_prefix
        print(f"\n== 2. Fair floor: FastAPI -> Kafka (acks=all) -> fan-out to {FANOUT['floor']} records keyed by endpoint -> "
              f"POSTs (in order per endpoint) + a status record each -> a consumer of every topic; no logic, topic prefix {prefix}",
              flush=True)
        await self.create_topics([(f"{prefix}floor", topics.ALERTS_SUBMITTED.partitions),
                                  (f"{prefix}floor-requested", topics.DELIVERIES_REQUESTED.partitions),
                                  (f"{prefix}floor-status", topics.DELIVERIES_STATUS.partitions)])
        env = {**self.app_env, "BLONET_TOPIC_PREFIX": prefix, "BENCH_FLOOR_TOPIC": "floor", "BENCH_FLOOR_PORT": str(FLOOR_PORT),
               "BENCH_RECEIVER_URL": f"{self.receiver_url}/floor", "BENCH_FLOOR_ENDPOINTS": ",".join(EXPECTED_RECIPIENTS)}
        await self.run_floor("floor", prefix, env, ["fanout", "deliver", "sink"])

    async def floor1(self) -> None:
        prefix = self.floor1_prefix
        print(f"\n== 3. One-POST floor: FastAPI -> Kafka (acks=all) -> EventConsumer -> one aiohttp POST, no logic, "
              f"topic prefix {prefix}", flush=True)
        await self.create_topics([(f"{prefix}floor", FLOOR_PARTITIONS)])
        env = {**self.app_env, "BLONET_TOPIC_PREFIX": prefix, "BENCH_FLOOR_TOPIC": "floor",
               "BENCH_FLOOR_PORT": str(FLOOR_PORT), "BENCH_RECEIVER_URL": f"{self.receiver_url}/floor"}
        await self.run_floor("floor1", prefix, env, ["relay"])

    async def run_floor(self, system: str, prefix: str, env: dict, consumers: list[str]) -> None:
        names = [f"{system}-server", *(f"{system}-{c}" for c in consumers)]
        server = self.spawn(names[0], ["-m", "bench.floor", "server"], env)
        for c in consumers:
            self.spawn(f"{system}-{c}", ["-m", "bench.floor", c], env)
        try:
            await self.wait_http(f"http://127.0.0.1:{FLOOR_PORT}/docs", server)
            lag = LagProbe(self.settings, prefix)
            print(_header(), flush=True)
            await self.steps(system, f"http://127.0.0.1:{FLOOR_PORT}/v1/alerts", {"content-type": "application/json"}, lag, names)
        finally:
            self.stop(*names)  # before the next system starts: they must not share the cores

    async def blonet(self) -> None:
        print(f"\n== 4. BLOnet: the four services, database {self.settings.pg_database}, topic prefix {self.blonet_prefix}; "
              "rate limits set so high they never bind", flush=True)
        key = await self.prepare_blonet()
        for name in SERVICES:
            self.spawn(name, ["-m", f"services.{name}"], self.app_env)
        for i, name in enumerate(SERVICES):
            await self.wait_http(f"http://127.0.0.1:{BASE_PORT + i}/readyz", self.procs[name])
        lag = LagProbe(self.settings, self.blonet_prefix)
        print(_header(), flush=True)
        url, headers = f"http://127.0.0.1:{BASE_PORT}/v1/alerts", {"content-type": "application/json", "authorization": f"Bearer {key}"}
        await self.steps("blonet", url, headers, lag, list(SERVICES))
        await self.backlog(url, headers, lag)

    async def backlog(self, url: str, headers: dict, lag: LagProbe) -> None:
        """Twice the sustained rate for a while (a burst, or the queue after an outage), then time the drain."""
        best = max((x["rate"] for x in self.results["blonet"] if x["sustained"]), default=None)
        if best is None or self.args.backlog_seconds <= 0:
            print("   (backlog skipped: BLOnet sustained none of the rates)", flush=True)
            return
        rate, tag = 2 * best, "bk"
        print(f"   backlog: {self.args.backlog_seconds:g} s at {rate:g}/s (twice the sustained rate), then drain "
              f"(at most {self.args.backlog_drain_seconds:g} s)", flush=True)
        await lag.start()
        try:
            # The overload steps of --keep-going leave a queue: drain it first, so the time below is this burst's.
            t0 = time.monotonic()
            while any((await lag.lag()).values()) and time.monotonic() - t0 < self.args.backlog_drain_seconds:
                await asyncio.sleep(1)
            if time.monotonic() - t0 >= 1:
                print(f"   (the earlier steps' queue drained first: {time.monotonic() - t0:.0f} s)", flush=True)
            s: Step = await open_loop(url, rate, self.args.backlog_seconds, marked_body(tag), headers)
            expected, t_end = len(s.ok) * FANOUT["blonet"], time.monotonic()
            while time.monotonic() - t_end < self.args.backlog_drain_seconds:
                got = (await self.receiver(f"/count?tag={tag}"))["deliveries"]
                if got >= expected and not any((await lag.lag()).values()):
                    break
                await asyncio.sleep(1)
            drain = time.monotonic() - t_end
            arrivals = await self.receiver(f"/collect?tag={tag}")
            ids = await self.receiver(f"/ids?tag={tag}")
        finally:
            await lag.close()
        lost = sum(1 for seq in s.ok if arrivals.get(str(seq), [0, 0, 0])[2] < FANOUT["blonet"])
        row = {"rate": rate, "seconds": self.args.backlog_seconds, "sent": s.sent, "accepted": len(s.ok),
               "errors": dict(s.errors), "alerts_not_fully_delivered": lost, "split_webhook_ids": ids["split"],
               "drain_seconds": round(drain, 1), "drained": lost == 0 and drain < self.args.backlog_drain_seconds}
        self.results["backlog"] = row
        print(f"   backlog: sent {s.sent}, accepted {len(s.ok)}, refused {dict(s.errors) or 0}, not fully delivered {lost}, "
              f"deliveries under two webhook-ids {ids['split']}, drained in {drain:.1f} s", flush=True)

    async def prepare_blonet(self) -> str:
        """What `make run` and the tests do: database, topics, a submit key, endpoint secrets."""
        net = self.tmp / "network"
        shutil.copytree(REPO / "deploy" / "network", net)  # whatever files routing reads, as shipped...
        doc = yaml.safe_load((net / "directory.yaml").read_text())
        for e in doc["endpoints"]:  # ...except that every endpoint URL points at the bench receiver
            e["url"] = f"{self.receiver_url}/inbox/{e['id']}"
        (net / "directory.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
        s = self.settings
        ensure_signing_key(s)
        self.db_created = True  # from here on the cleanup drops it (IF EXISTS)
        await db.bootstrap(s)
        for service in db.SERVICES:
            await db.migrate(s, service)
        self.topics_created += [s.topic(name) for name in await topics.create_topics(s)]
        key_id, key = new_api_key()
        await self.in_session("gateway", lambda x: gateway_repo.add_key(
            x, key_id=key_id, agency=SCENARIO["sender_agency"], roles=[Role.SUBMIT], key_hash=hash_api_key(key), label="bench"))
        ids = {e["id"] for e in doc["endpoints"]}  # read from the file: no dependency on routing's loader
        await self.in_session("notifier", lambda x: notifier_repo.ensure_endpoints(x, ids))
        return key

    async def in_session(self, service: str, work):
        return await db.in_session(self.settings, service, work)

    async def create_topics(self, new: list[tuple[str, int]]) -> None:
        """Create (name, partitions) topics replicated as BLOnet's are on this cluster."""
        admin = make_admin(self.settings)
        await admin.start()
        try:
            replicas = await topics.replication(admin)
            await admin.create_topics([topics.new_topic(name, parts, replicas) for name, parts in new])
            self.topics_created += [name for name, _ in new]
        finally:
            await admin.close()

    # ------------------------------------------------------------ run

    async def run(self) -> None:
        ports = [BASE_PORT + i for i in range(len(SERVICES))] + [FLOOR_PORT, RECEIVER_PORT]
        taken = [p for p in ports if port_open(p)]
        if taken:
            raise RuntimeError(f"ports {taken} are in use; the bench needs {ports}")
        self.stack.ensure()
        print(f"bench {self.run_id}: Kafka 127.0.0.1:{self.stack.kafka_port}, PostgreSQL 127.0.0.1:{self.stack.pg_port}, "
              f"logs in {self.tmp}", flush=True)
        rcv = self.spawn("receiver", ["-m", "bench.receiver", "--port", str(RECEIVER_PORT)], {})
        await self.wait_http(f"{self.receiver_url}/count?tag=x", rcv)
        for system in ("ceiling", *SYSTEMS):
            if system in self.args.systems:
                await getattr(self, system)()

    async def cleanup(self) -> None:
        for name in reversed(list(self.procs)):  # the receiver last: the services may still be delivering
            self.stop(name)
        if self.topics_created:
            try:
                admin = make_admin(self.settings)
                await admin.start()
                try:
                    await admin.delete_topics(self.topics_created)
                finally:
                    await admin.close()
            except Exception as exc:
                print(f"bench: could not delete topics {self.topics_created}: {exc!r}")
        if self.db_created:
            s = self.settings
            admin = create_async_engine(URL.create("postgresql+asyncpg", username=s.pg_superuser, host=s.pg_host,
                                                   port=s.pg_port, database="postgres"), isolation_level="AUTOCOMMIT")
            try:
                async with admin.connect() as conn:
                    await conn.execute(text(f'DROP DATABASE IF EXISTS "{s.pg_database}" WITH (FORCE)'))
            except Exception as exc:
                print(f"bench: could not drop database {s.pg_database}: {exc!r}")
            finally:
                await admin.dispose()
        self.stack.restore()

    def summary(self) -> None:
        r = self.results
        ceiling = max((c["rate"] for c in r["ceiling"] if c["ok"]), default=None)
        best = {s: max((x["rate"] for x in r[s] if x["sustained"]), default=None) for s in SYSTEMS}
        top = {s: bool(r[s]) and best[s] == r[s][-1]["rate"] == self.args.rates[-1] for s in SYSTEMS}
        at = lambda s, rate, fig: next((x[fig]["p99"] for x in r[s] if x["rate"] == rate), None)  # noqa: E731
        last = {s: at(s, self.args.ref_rate, "delivery_last_ms") for s in SYSTEMS}
        low = {s: at(s, TARGET_LOW_RATE, "delivery_first_ms") for s in SYSTEMS}
        idle = {s: _service_cpu(r.get(f"{s}_idle_cpu_pct")) for s in SYSTEMS}
        backlog = r.get("backlog")
        ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
        rows = [  # figure, BLOnet, fair floor, one-POST floor, target, verdict
            ("highest sustained rate, alerts/s", _rate(best["blonet"], top["blonet"]), _rate(best["floor"], top["floor"]),
             _rate(best["floor1"], top["floor1"]), f">= {TARGET_SUSTAINED} and >= {TARGET_SUSTAINED_VS_FLOOR}x fair floor",
             "FAIL" if r["blonet"] and best["blonet"] is None else  # measured, and sustained none of the rates
             _verdict(best["blonet"], lambda v: v >= TARGET_SUSTAINED and (not best["floor"] or v >= TARGET_SUSTAINED_VS_FLOOR * best["floor"]))),
            ("  ratio BLOnet / fair floor", _f(ratio(best["blonet"], best["floor"]), 2), "", "", f">= {TARGET_SUSTAINED_VS_FLOOR}", ""),
            (f"p99 accept->last of 7 at {self.args.ref_rate:g}/s, ms", _f(last["blonet"]), _f(last["floor"]), "-",
             f"<= {TARGET_LAST_VS_FLOOR}x fair floor", _verdict(ratio(last["blonet"], last["floor"]), lambda v: v <= TARGET_LAST_VS_FLOOR)),
            ("  ratio BLOnet / fair floor", _f(ratio(last["blonet"], last["floor"]), 2), "", "", f"<= {TARGET_LAST_VS_FLOOR}", ""),
            (f"p99 accept->first delivery at {TARGET_LOW_RATE}/s, ms", _f(low["blonet"]), _f(low["floor"]), _f(low["floor1"]),
             f"<= {TARGET_LOW_P99_MS}", _verdict(low["blonet"], lambda v: v <= TARGET_LOW_P99_MS)),
            (f"idle CPU, % of one core ({self.args.idle_seconds:g} s)", _f(idle["blonet"]), _f(idle["floor"]), _f(idle["floor1"]),
             f"< {TARGET_IDLE_PCT}", _verdict(idle["blonet"], lambda v: v < TARGET_IDLE_PCT)),
        ]
        if backlog:
            rows.append((f"backlog {backlog['seconds']:g} s at {backlog['rate']:g}/s: drain time, s", _f(backlog["drain_seconds"]),
                         "", "", "drains, 0 lost, 0 split ids",
                         "PASS" if backlog["drained"] and not backlog["split_webhook_ids"] else "FAIL"))
        else:
            rows.append(("backlog at twice the sustained rate", "not run", "", "", "drains, 0 lost, 0 split ids", "n/a"))
        r["summary"] = {"generator_ceiling": ceiling, "sustained": best, "sustained_is_top_rate_tested": top,
                        "p99_last_of_7_ms_at_ref": last, "ref_rate": self.args.ref_rate, "p99_first_ms_at_low_rate": low,
                        "idle_cpu_pct": idle, "backlog": backlog, "targets": [list(row) for row in rows]}
        print("\n== Summary  (sustained = no errors, all delivered and lag 0 within the drain window, p99 accept->first delivery"
              f" < {SLO_DELIVERY_P99_MS} ms; rate limits never bind)")
        if "ceiling" in self.args.systems:
            top_ceiling = ceiling is not None and ceiling == self.args.ceiling_rates[-1]
            print(f"   generator ceiling (p99 < {CEILING_P99_MS} ms):  {_rate(ceiling, top_ceiling)}")
        if not set(SYSTEMS) & set(self.args.systems):
            return
        widths = (44, 12, 12, 14, 34, 7)
        head = ("figure", "BLOnet", "fair floor", "one-POST floor", "target", "verdict")
        for row in (head, *rows):
            print("   " + " ".join(f"{cell:<{w}}" if i in (0, 4) else f"{cell:>{w}}" for i, (cell, w) in enumerate(zip(row, widths))))

    def save(self) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps(self.results, indent=2))
        return path


# ---------------------------------------------------------------- formatting

def _pcts(values: list[float]) -> dict:
    return {f"p{p}": (round(v, 2) if (v := pct(values, p)) is not None else None) for p in (50, 95, 99)} | {
        "max": round(max(values), 2) if values else None}


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _rate(v: float | None, top: bool = False) -> str:
    """A sustained rate; `top`: it was the highest rate tested, so only a lower bound."""
    return "none" if v is None else f"{'>=' if top else ''}{v:g}"


def _service_cpu(cpu: dict | None) -> float | None:
    """CPU of the system under test and its stack (Kafka, PostgreSQL), without the bench's own processes."""
    if not cpu:
        return None
    return round(sum(v for k, v in cpu.items() if k not in ("generator", "receiver", "machine", "other")), 1)


def _verdict(v, test) -> str:
    return "n/a" if v is None else ("PASS" if test(v) else "FAIL")


def _three(d: dict) -> str:
    return "/".join(_f(d[k]) for k in ("p50", "p95", "p99"))


def _header() -> str:
    return (f"   {'system':6} {'offered/s':>9} {'accepted/s':>10} {'errors':>6} {'accept p50/p95/p99 ms':>22} "
            f"{'deliver p50/p95/p99 ms':>24} {'last-of-7 p99':>13} {'delivered/expected':>18} {'lag':>4} sustained")


def _row(r: dict) -> str:
    last = _f(r["delivery_last_ms"]["p99"]) if FANOUT[r["system"]] > 1 else "-"
    errors = sum(r["errors"].values())
    verdict = "yes" if r["sustained"] else "NO (" + ", ".join(r["why_not"]) + ")"
    return (f"   {r['system']:6} {r['rate']:9g} {r['achieved_rate']:10.1f} {errors:6d} {_three(r['accept_ms']):>22} "
            f"{_three(r['delivery_first_ms']):>24} {last:>13} {str(r['deliveries']) + '/' + str(r['expected']):>18} "
            f"{sum(r['lag_after_drain'].values()):4d} {verdict}")


def _cpu(cpu: dict) -> str:
    text = " ".join(f"{k} {v:g}" for k, v in cpu.items())
    if cpu.get("other", 0) > NOISY_OTHER_PCT:  # someone else's work shared the 2 cores: say so next to the figures
        text += "  <- NOISY: other processes were busy"
    return text


async def drive(bench: Bench) -> int:
    """Run a bench, then always clean up (children, database, stack), also on Ctrl-C; return the exit code."""
    task = asyncio.current_task()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    code = 0
    try:
        await bench.run()
    except asyncio.CancelledError:
        task.uncancel()  # keep awaiting in the cleanup below
        print("\nbench: interrupted; cleaning up", flush=True)
        code = 130
    except Exception as exc:
        print(f"\nbench failed: {exc!r}", flush=True)
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().remove_signal_handler(sig)
        await bench.cleanup()
    bench.summary()
    print(f"\nresults: {bench.save()}")
    return code


async def main() -> int:
    return await drive(Bench(parse_args()))


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
