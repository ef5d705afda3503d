"""Notifier benchmark: deliveries per second beside the no-logic relay, and a healthy endpoint's
latency while a neighbour on the same partition and instance times out on every request.

    .venv/bin/python -m bench.notifier_bench [--deliveries 3000] [--rate 50] [--seconds 20]

Uses the Kafka and PostgreSQL the BLONET_* variables point at (default: the dev stack); creates
its own database `blonet_nbench_<run>` and topic prefix `nbench<run>.`, and drops/deletes them at
the end. The receiver runs in this process on --port; the notifier and the relay
(`bench.floor relay`, the foundation's no-logic relay: same EventConsumer, same aiohttp
client settings) run as subprocesses. Results go to bench/results/notifier-<time>.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka.admin import NewTopic
from aiokafka.partitioner import DefaultPartitioner

from bench.system import Proc
from services.notifier import repository
from shared import db, topics
from shared.events import DeliveryRequested, Envelope, ViewProfile
from shared.ids import new_id
from shared.kafka import make_admin, make_producer
from shared.settings import REPO, get_settings

HEALTHY = "ep-bench-healthy"


def p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def pooled(runs: list[dict]) -> dict:
    """Return the latency figures of several runs' samples taken together."""
    lat = [x for r in runs for x in r.pop("latencies_ms")]
    return {"sent": sum(r["sent"] for r in runs), "received": len(lat), "p50_ms": p(lat, 0.5), "p99_ms": p(lat, 0.99)}


class Receiver:
    """Counts what arrives per path; /hang/* sleeps past the notifier's attempt timeout."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}
        self.latency_ms: dict[str, list[float]] = {}
        self.arrived = asyncio.Event()
        self.expect = 0

    async def handle(self, request: web.Request) -> web.Response:
        kind, name = request.match_info["kind"], request.match_info["name"]
        body = await request.read()
        if kind == "hang":
            await asyncio.sleep(30)
            return web.Response(status=504)
        now = time.time()
        due = orjson.loads(body).get("due") if body.startswith(b"{") else None
        self.count[name] = self.count.get(name, 0) + 1
        if due:
            self.latency_ms.setdefault(name, []).append((now - due) * 1000)
        if self.expect and sum(self.count.values()) >= self.expect:
            self.arrived.set()
        return web.Response(status=204)


def same_partition_neighbour(partitions: int) -> str:
    """Return an endpoint id whose key lands on the healthy endpoint's partition."""
    part = DefaultPartitioner()
    target = part(HEALTHY.encode(), list(range(partitions)), list(range(partitions)))
    return next(f"ep-bench-nb{i}" for i in range(10_000)
                if part(f"ep-bench-nb{i}".encode(), list(range(partitions)), list(range(partitions))) == target)


class NotifierBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run = secrets.token_hex(3)
        base = get_settings()
        self.settings = base.model_copy(update={
            "pg_database": f"blonet_nbench_{self.run}", "topic_prefix": f"nbench{self.run}.",
            "webhook_timeout_seconds": args.timeout,
        })
        self.log_dir = Path(tempfile.mkdtemp(prefix="nbench-"))
        self.receiver = Receiver()
        self.procs: list[Proc] = []
        self.results: dict = {"run": self.run, "args": vars(args)}

    def env(self) -> dict[str, str]:
        s = self.settings
        return {"BLONET_PG_DATABASE": s.pg_database, "BLONET_TOPIC_PREFIX": s.topic_prefix,
                "BLONET_WEBHOOK_TIMEOUT_SECONDS": str(s.webhook_timeout_seconds),
                "BLONET_NOTIFIER_PORT": str(self.args.port + 1), "BLONET_LOG_LEVEL": "WARNING",
                "BENCH_FLOOR_TOPIC": "floor", "BENCH_RECEIVER_URL": f"http://127.0.0.1:{self.args.port}/ok/floor"}

    async def setup(self, endpoints: set[str]) -> None:
        await db.bootstrap(self.settings)
        await db.migrate(self.settings, "notifier")
        await topics.create_topics(self.settings)
        admin = make_admin(self.settings)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.settings.topic("floor"), topics.DELIVERIES_REQUESTED.partitions, 1)])
        finally:
            await admin.close()
        engine = db.make_engine(self.settings, "notifier", pool_size=1)
        async with db.make_sessionmaker(engine)() as session:
            await repository.ensure_endpoints(session, endpoints)
            await session.commit()
        await engine.dispose()

    async def start(self, name: str, args: list[str], ready_port: int | None) -> Proc:
        proc = Proc(name, [sys.executable, *args], {**os.environ, **self.env()}, self.log_dir)
        self.procs.append(proc)
        if ready_port:
            import aiohttp
            async with aiohttp.ClientSession() as http:
                for _ in range(300):
                    try:
                        async with http.get(f"http://127.0.0.1:{ready_port}/readyz") as r:
                            if r.status == 200:
                                return proc
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
            raise RuntimeError(f"{name} not ready:\n{proc.tail()}")
        await asyncio.sleep(3)  # the relay has no readiness endpoint: give its group join a moment
        return proc

    def request(self, endpoint: str, path: str, due: float) -> tuple[str, bytes]:
        req = DeliveryRequested(delivery_id=new_id(), endpoint=endpoint, agency="bench",
                                url=f"http://127.0.0.1:{self.args.port}/{path}/{endpoint}",
                                profile=ViewProfile.FULL, body={"due": due, "pad": "x" * 400})
        aid = new_id()
        return endpoint, Envelope.wrap(req, origin_node="bench", alert_id=aid, thread_id=aid).to_bytes()

    async def throughput(self, producer, system: str, topic: str, messages: list[tuple[str, bytes]]) -> float:
        """Return deliveries per second: first send to the last arrival of `messages`."""
        self.receiver.count.clear()
        self.receiver.expect = len(messages)
        self.receiver.arrived.clear()
        t0 = time.perf_counter()
        futures = [await producer.send(self.settings.topic(topic), value=v, key=k.encode()) for k, v in messages]
        await asyncio.gather(*futures)
        await asyncio.wait_for(self.receiver.arrived.wait(), 600)
        rate = len(messages) / (time.perf_counter() - t0)
        print(f"{system:>9}: {len(messages)} deliveries at {rate:,.0f}/s", flush=True)
        return rate

    async def open_loop(self, producer, neighbour: str, neighbour_path: str) -> dict:
        """Send to the healthy endpoint and its neighbour at --rate each; return the healthy one's latency."""
        self.receiver.latency_ms.clear()
        rate, seconds = self.args.rate, self.args.seconds
        t0 = time.time() + 0.5
        futures = []
        for i in range(int(rate * seconds)):
            due = t0 + i / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            for endpoint, path in ((HEALTHY, "ok"), (neighbour, neighbour_path)):
                k, v = self.request(endpoint, path, due)
                futures.append(await producer.send(self.settings.topic(topics.DELIVERIES_REQUESTED.name), value=v, key=k.encode()))
        await asyncio.gather(*futures)
        await asyncio.sleep(3)  # drain
        lat = self.receiver.latency_ms.get(HEALTHY, [])
        return {"sent": int(rate * seconds), "received": len(lat), "p50_ms": p(lat, 0.5), "p99_ms": p(lat, 0.99),
                "latencies_ms": lat}

    async def main(self) -> None:
        partitions = topics.DELIVERIES_REQUESTED.partitions
        neighbour = same_partition_neighbour(partitions)
        spread = [f"ep-bench-{i}" for i in range(self.args.endpoints)]
        await self.setup({HEALTHY, neighbour, *spread})
        app = web.Application()
        app.add_routes([web.post("/{kind}/{name}", self.receiver.handle)])
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.args.port).start()
        producer = make_producer(self.settings)
        await producer.start()
        try:
            n = self.args.deliveries
            await self.start("relay", ["-m", "bench.floor", "relay"], None)
            floor_msgs = [(f"k{i}", orjson.dumps({"due": 0, "pad": "x" * 400})) for i in range(n)]
            await self.throughput(producer, "warm-up", "floor", floor_msgs[:200])
            floor = await self.throughput(producer, "floor", "floor", floor_msgs)
            self.procs.pop().stop()
            await self.start("notifier", ["-m", "services.notifier"], self.args.port + 1)
            msgs = [self.request(spread[i % len(spread)], "ok", 0) for i in range(n)]
            await self.throughput(producer, "warm-up", topics.DELIVERIES_REQUESTED.name, msgs[:200])
            notifier = await self.throughput(producer, "notifier", topics.DELIVERIES_REQUESTED.name,
                                             [self.request(spread[i % len(spread)], "ok", 0) for i in range(n)])
            self.results["throughput"] = {"floor_per_s": floor, "notifier_per_s": notifier, "ratio": notifier / floor}
            self.receiver.expect = 0
            # Alternate the two conditions so load from anything else on the box falls on both alike.
            runs: dict[str, list[dict]] = {"ok": [], "hang": []}
            for _ in range(self.args.rounds):
                for path in ("ok", "hang"):
                    runs[path].append(await self.open_loop(producer, neighbour, path))
            both, broken = (pooled(runs["ok"]), pooled(runs["hang"]))
            print(f"healthy p99 with a healthy neighbour: {both['p99_ms']:.1f} ms (p50 {both['p50_ms']:.1f})", flush=True)
            print(f"healthy p99 with a timing-out neighbour: {broken['p99_ms']:.1f} ms (p50 {broken['p50_ms']:.1f})", flush=True)
            self.results["neighbour"] = {"partition_shared_with": neighbour, "both_healthy": both, "neighbour_timing_out": broken,
                                         "p99_ratio": broken["p99_ms"] / both["p99_ms"], "target": 1.2, "runs": runs}
            print(json.dumps({k: self.results[k] for k in ("throughput", "neighbour")}, indent=2, default=str))
        finally:
            await producer.stop()
            for proc in self.procs:
                proc.stop()
            await runner.cleanup()
            await self.cleanup()
        out = REPO / "bench" / "results" / f"notifier-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(self.results, indent=2, default=str))
        print(f"written to {out}")

    async def cleanup(self) -> None:
        s = self.settings
        admin = make_admin(s)
        await admin.start()
        try:
            names = [t for t in await admin.list_topics() if t.startswith(s.topic_prefix)]
            if names:
                await admin.delete_topics(names)
        finally:
            await admin.close()
        await db.drop_database(s)

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--deliveries", type=int, default=3000, help="deliveries in the throughput runs")
    ap.add_argument("--endpoints", type=int, default=30, help="endpoints the throughput deliveries spread over")
    ap.add_argument("--rate", type=float, default=50, help="deliveries/s to each of the two endpoints in the latency runs")
    ap.add_argument("--seconds", type=float, default=20, help="length of each latency run")
    ap.add_argument("--rounds", type=int, default=2, help="alternations of the two latency conditions")
    ap.add_argument("--timeout", type=float, default=1.0, help="the notifier's per-attempt timeout")
    ap.add_argument("--port", type=int, default=28410, help="receiver port (the notifier gets port + 1)")
    return ap.parse_args()


if __name__ == "__main__":
    asyncio.run(NotifierBench(parse_args()).main())
