"""`python -m bench.pipeline`: how many alerts per second BLOnet carries, against a no-logic floor.

In order: (1) the load generator's own ceiling against a trivial 202 endpoint; (2) the floor:
HTTP -> Kafka -> consumer -> HTTP with no logic and BLOnet's producer/consumer settings; (3) the
four real services. (2) and (3) get the same stepped open-loop rates; see bench/README.md.
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
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from bench.loadgen import Step, open_loop, pct
from bench.system import CpuMeter, LagProbe, Proc, Stack, port_open
from demo.scenario import EXPECTED_RECIPIENTS, SCENARIO
from services.gateway import repository as gateway_repo
from services.notifier import repository as notifier_repo
from shared import db, topics
from shared.auth import Role, ensure_signing_key, hash_api_key, new_api_key
from shared.settings import REPO, Settings, get_settings

SERVICES = ("gateway", "routing", "notifier", "audit")
# Below the ephemeral range (32768-60999 by default): a listener there can collide with the
# local port of one of the many client connections the run opens (seen: "address already in use").
BASE_PORT = 28000  # services 28000-28003, floor server 28010, receiver 28100
FLOOR_PORT, RECEIVER_PORT = BASE_PORT + 10, BASE_PORT + 100
FLOOR_PARTITIONS = topics.ALERTS_SUBMITTED.partitions
FANOUT = {"floor": 1, "blonet": len(EXPECTED_RECIPIENTS)}  # deliveries per accepted request
SLO_DELIVERY_P99_MS = 100
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
    p.add_argument("--drain-seconds", type=float, default=20, help="max wait after a step for deliveries and lag 0")
    p.add_argument("--ceiling-rates", type=rates, default=[250, 500, 1000, 2000, 3000], help="generator-ceiling steps")
    p.add_argument("--ceiling-seconds", type=float, default=10, help="length of each generator-ceiling step")
    p.add_argument("--ref-rate", type=float, default=200, help="rate at which the p99 ratio is taken")
    p.add_argument("--systems", default="ceiling,floor,blonet", help="which of ceiling,floor,blonet to run")
    p.add_argument("--keep-going", action="store_true", help="run every rate even after an unsustained step")
    p.add_argument("--recover-seconds", type=float, default=120,
                   help="max wait for a failed step's backlog before the --ref-rate step")
    p.add_argument("--idle-seconds", type=float, default=5, help="CPU measured with no load before each system's steps")
    p.add_argument("--quick", action="store_true", help="smoke run: 5 s steps, 10 s drain, 3 s ceiling steps")
    args = p.parse_args()
    if args.quick:
        args.step_seconds, args.drain_seconds, args.ceiling_seconds, args.recover_seconds = 5, 10, 3, 60
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
                              "ceiling": [], "floor": [], "blonet": []}
        self.blonet_prefix = f"bench{self.run_id}."
        self.floor_prefix = f"benchfloor{self.run_id}."
        # One environment for every child: no stray BLONET_* from the caller's shell.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BLONET_")}
        self.app_env = {
            "BLONET_KAFKA_BOOTSTRAP": f"127.0.0.1:{self.stack.kafka_port}",
            "BLONET_PG_PORT": str(self.stack.pg_port),
            "BLONET_PG_DATABASE": f"blonet_bench_{self.run_id}",
            "BLONET_TOPIC_PREFIX": self.blonet_prefix,
            **{f"BLONET_{s.upper()}_PORT": str(BASE_PORT + i) for i, s in enumerate(SERVICES)},
            "BLONET_PUBLIC_BASE_URL": f"http://127.0.0.1:{BASE_PORT}",
            "BLONET_DEMO_INBOX_PORT": str(RECEIVER_PORT),
            "BLONET_NETWORK_DIR": str(self.tmp / "network"),
            "BLONET_TOKEN_PRIVATE_KEY_FILE": str(self.tmp / "keys" / "token.pem"),
            "BLONET_TOKEN_PUBLIC_KEY_FILE": str(self.tmp / "keys" / "token.pub.pem"),
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
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
                try:
                    async with http.get(url) as r:
                        if r.status < 500:
                            return
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
                await asyncio.sleep(0.3)
        raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.tail()}")

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
        tag, deadline = f"{system[0]}w", time.monotonic() + 90
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
            meter = self.cpu_meter(procs + ["receiver"])
            meter.start()
            await asyncio.sleep(self.args.idle_seconds)
            idle = meter.stop()
            self.results[f"{system}_idle_cpu_pct"] = idle
            print(f"   idle, no load ({self.args.idle_seconds:g} s): cpu% {_cpu(idle)}", flush=True)
            await self.warm_up(system, url, headers, lag)
            rates, ref = list(self.args.rates), self.args.ref_rate
            for i, rate in enumerate(rates):
                tag = f"{system[0]}{i}"
                row = await self.step(system, tag, url, rate, self.args.step_seconds, headers, lag,
                                      self.cpu_meter(procs + ["receiver"]))
                self.results[system].append(row)
                if row["sustained"] or self.args.keep_going:
                    continue
                if rate < ref and ref in rates:
                    print(f"   ({system}: not sustained at {rate:g}/s; waiting up to {self.args.recover_seconds:g} s for its "
                          f"backlog, then one step at {ref:g}/s for the ratio)", flush=True)
                    await self.settle(tag, row["expected"] - row["deliveries"], lag)
                    row = await self.step(system, f"{system[0]}r", url, ref, self.args.step_seconds, headers, lag,
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
        print(f"\n== 2. Floor: FastAPI -> Kafka (acks=all) -> EventConsumer -> aiohttp POST, no logic, topic prefix {self.floor_prefix}", flush=True)
        topic = f"{self.floor_prefix}floor"
        await self.create_topics([NewTopic(topic, num_partitions=FLOOR_PARTITIONS, replication_factor=1)])
        env = {**self.app_env, "BLONET_TOPIC_PREFIX": self.floor_prefix, "BENCH_FLOOR_TOPIC": "floor",
               "BENCH_FLOOR_PORT": str(FLOOR_PORT), "BENCH_RECEIVER_URL": f"{self.receiver_url}/floor"}
        server = self.spawn("floor-server", ["-m", "bench.floor", "server"], env)
        self.spawn("floor-relay", ["-m", "bench.floor", "relay"], env)
        try:
            await self.wait_http(f"http://127.0.0.1:{FLOOR_PORT}/docs", server)
            lag = LagProbe(self.settings.kafka_bootstrap, self.floor_prefix)
            print(_header(), flush=True)
            await self.steps("floor", f"http://127.0.0.1:{FLOOR_PORT}/v1/alerts", {"content-type": "application/json"},
                             lag, ["floor-server", "floor-relay"])
        finally:
            self.stop("floor-server", "floor-relay")  # before BLOnet starts: they must not share the cores

    async def blonet(self) -> None:
        print(f"\n== 3. BLOnet: the four services, database {self.settings.pg_database}, topic prefix {self.blonet_prefix}", flush=True)
        key = await self.prepare_blonet()
        for name in SERVICES:
            self.spawn(name, ["-m", f"services.{name}"], self.app_env)
        for i, name in enumerate(SERVICES):
            await self.wait_http(f"http://127.0.0.1:{BASE_PORT + i}/readyz", self.procs[name])
        lag = LagProbe(self.settings.kafka_bootstrap, self.blonet_prefix)
        print(_header(), flush=True)
        await self.steps("blonet", f"http://127.0.0.1:{BASE_PORT}/v1/alerts",
                         {"content-type": "application/json", "authorization": f"Bearer {key}"}, lag, list(SERVICES))

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

    async def in_session(self, service: str, work) -> None:
        engine = db.make_engine(self.settings, service, pool_size=1)
        try:
            async with db.make_sessionmaker(engine)() as session:
                await work(session)
                await session.commit()
        finally:
            await engine.dispose()

    async def create_topics(self, new: list[NewTopic]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics(new)
            self.topics_created += [t.name for t in new]
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
        for system in ("ceiling", "floor", "blonet"):
            if system in self.args.systems:
                await getattr(self, system)()

    async def cleanup(self) -> None:
        for name in reversed(list(self.procs)):  # the receiver last: the services may still be delivering
            self.stop(name)
        if self.topics_created:
            try:
                admin = AIOKafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap)
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
        r, ref = self.results, self.args.ref_rate
        ceiling = max((c["rate"] for c in r["ceiling"] if c["ok"]), default=None)
        best = {s: max((x["rate"] for x in r[s] if x["sustained"]), default=None) for s in ("floor", "blonet")}
        at_ref = {s: next((x["delivery_first_ms"]["p99"] for x in r[s] if x["rate"] == ref), None) for s in ("floor", "blonet")}
        p99_ratio = at_ref["blonet"] / at_ref["floor"] if at_ref["floor"] and at_ref["blonet"] is not None else None
        rate_ratio = best["blonet"] / best["floor"] if best["floor"] and best["blonet"] is not None else None
        # BLOnet sustaining none of the rates still bounds the ratio: below the lowest rate tried.
        rate_bound = self.args.rates[0] / best["floor"] if best["floor"] and r["blonet"] and best["blonet"] is None else None
        top = {s: bool(r[s]) and best[s] == r[s][-1]["rate"] == self.args.rates[-1] for s in ("floor", "blonet")}
        r["summary"] = {"generator_ceiling": ceiling, "sustained": best, "sustained_is_top_rate_tested": top,
                        "p99_delivery_ms_at_ref": at_ref, "ref_rate": ref,
                        "ratio_p99_at_ref": p99_ratio and round(p99_ratio, 2), "ratio_sustained": rate_ratio and round(rate_ratio, 3),
                        "ratio_sustained_below": rate_bound and round(rate_bound, 3)}
        print("\n== Summary  (sustained = no errors, all delivered and lag 0 within the drain window, p99 accept->first delivery"
              f" < {SLO_DELIVERY_P99_MS} ms)")
        if "ceiling" in self.args.systems:
            top_ceiling = ceiling is not None and ceiling == self.args.ceiling_rates[-1]
            print(f"   generator ceiling (p99 < {CEILING_P99_MS} ms):  {_rate(ceiling)}{' (the top rate tested)' if top_ceiling else ''}")
        if not {"floor", "blonet"} & set(self.args.systems):
            return
        for s in ("floor", "blonet"):
            print(f"   {s:6} highest sustained rate:   {_rate(best[s])}{' (the top rate tested: may go higher)' if top[s] else ''}")
        print(f"   p99 accept->delivery at {ref:g}/s:  floor {_f(at_ref['floor'])} ms, BLOnet {_f(at_ref['blonet'])} ms")
        print(f"   ratio BLOnet/floor p99 at {ref:g}/s:    {_f(p99_ratio, 2)}  (target <= 1.5: {_verdict(p99_ratio, lambda v: v <= 1.5)})")
        if rate_bound is not None:
            print(f"   ratio BLOnet/floor sustained rate: < {rate_bound:.3f}  (BLOnet sustained none of the rates, the lowest "
                  f"being {self.args.rates[0]:g}/s; target >= 0.7: FAIL)")
        else:
            print(f"   ratio BLOnet/floor sustained rate: {_f(rate_ratio, 3)}  (target >= 0.7: {_verdict(rate_ratio, lambda v: v >= 0.7)})")

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


def _rate(v: float | None) -> str:
    return "none of the tested rates" if v is None else f"{v:g} alerts/s"


def _verdict(v, test) -> str:
    return "n/a" if v is None else ("PASS" if test(v) else "FAIL")


def _three(d: dict) -> str:
    return "/".join(_f(d[k]) for k in ("p50", "p95", "p99"))


def _header() -> str:
    return (f"   {'system':6} {'offered/s':>9} {'accepted/s':>10} {'errors':>6} {'accept p50/p95/p99 ms':>22} "
            f"{'deliver p50/p95/p99 ms':>24} {'last-of-7 p99':>13} {'delivered/expected':>18} {'lag':>4} sustained")


def _row(r: dict) -> str:
    last = _f(r["delivery_last_ms"]["p99"]) if r["system"] == "blonet" else "-"
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
