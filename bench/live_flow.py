"""`python -m bench.live_flow`: how soon operators see an alert in the live flow, against the status view itself.

The four real services run as in bench.pipeline (own database, topics and receiver, the dev
stack's Kafka and PostgreSQL). At each rate, alerts are submitted one by one (open loop) while
one operator stream (`GET /v1/ops/stream`, what the console and `blonet tail` read) is open.
For each alert, times are taken from the gateway's 202:

- **row**: the baseline. The bench polls the gateway's status table directly, every 5 ms, until
  the alert's row is there. Nothing can show the alert sooner.
- **feed**: the alert's first `event: alert` on the stream (NOTIFY on commit → LISTEN → SSE).
- **delivered**: the first event that shows every recipient delivered.

The ratio feed/row (p50 and p95) is the cost of the push path over the earliest possible moment.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

import aiohttp
import orjson
import uvloop
from sqlalchemy import select

from bench.loadgen import pct
from bench.pipeline import BASE_PORT, RECEIVER_PORT, SERVICES, Bench, drive
from demo.scenario import SCENARIO
from services.gateway import repository as gateway_repo
from services.gateway.models import alerts
from shared import db
from shared.auth import Role, hash_api_key, new_api_key


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="1,5,20", help="alerts per second, one step each (default 1,5,20)")
    p.add_argument("--step-seconds", type=float, default=10.0)
    p.add_argument("--settle-seconds", type=float, default=15.0, help="how long to wait for the last alerts of a step")
    args = p.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    args.systems = ()
    return args


class LiveFlow(Bench):
    async def run(self) -> None:
        self.stack.ensure()
        rcv = self.spawn("receiver", ["-m", "bench.receiver", "--port", str(RECEIVER_PORT)], {})
        await self.wait_http(f"{self.receiver_url}/count?tag=x", rcv)
        submit = await self.prepare_blonet()
        key_id, operator = new_api_key()
        await self.in_session("gateway", lambda s: gateway_repo.add_key(
            s, key_id=key_id, agency="unodc", roles=[Role.OPERATOR], key_hash=hash_api_key(operator), label="bench"))
        for name in SERVICES:
            self.spawn(name, ["-m", f"services.{name}"], self.app_env)
        for i, name in enumerate(SERVICES):
            await self.wait_http(f"http://127.0.0.1:{BASE_PORT + i}/readyz", self.procs[name])
        print(f"bench {self.run_id}: services up; logs in {self.tmp}", flush=True)
        print(f"{'rate/s':>7} {'sent':>5} {'202 p50':>8} {'row p50/p95 ms':>15} {'feed p50/p95 ms':>16} "
              f"{'ratio p50/p95':>14} {'delivered p50/p95 ms':>21} {'unseen':>6}", flush=True)
        await self.step_at(2.0, 2.0, submit, operator, quiet=True)  # warm-up: connections, group joins; not reported
        self.results["live_flow"] = [await self.step_at(rate, self.args.step_seconds, submit, operator)
                                     for rate in self.args.rates]

    async def step_at(self, rate: float, seconds: float, submit: str, operator: str, quiet: bool = False) -> dict:
        base = f"http://127.0.0.1:{BASE_PORT}"
        accepted: dict[str, float] = {}  # alert id -> time of its 202
        seen: dict[str, float] = {}  # alert id -> its first event on the stream
        done: dict[str, float] = {}  # alert id -> the first event showing it delivered everywhere
        accept_ms, row_ms = [], []
        engine = db.make_engine(self.settings, "gateway", pool_size=2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
            stream = await http.get(f"{base}/v1/ops/stream", headers={"Authorization": f"Bearer {operator}"})
            assert stream.status == 200, await stream.text()

            async def read_feed() -> None:
                async for line in stream.content:
                    if not line.startswith(b"data:"):
                        continue
                    now, event = time.time(), orjson.loads(line[5:])
                    seen.setdefault(event["alert_id"], now)
                    if event["state"] == "delivered":
                        done.setdefault(event["alert_id"], now)

            async def row_visible(alert_id: str) -> None:
                async with engine.connect() as conn:
                    while not await conn.scalar(select(alerts.c.alert_id).where(alerts.c.alert_id == alert_id)):
                        await asyncio.sleep(0.005)
                row_ms.append((time.time() - accepted[alert_id]) * 1000)

            async def one() -> None:
                t0 = time.time()
                async with http.post(f"{base}/v1/alerts", json=SCENARIO, headers={"Authorization": f"Bearer {submit}"}) as r:
                    body = await r.json()
                if r.status != 202:
                    return
                accepted[body["id"]] = t1 = time.time()
                accept_ms.append((t1 - t0) * 1000)
                await row_visible(body["id"])

            reader = asyncio.create_task(read_feed())
            await asyncio.sleep(0.5)
            n, t0, tasks = max(1, round(rate * seconds)), time.time(), []
            for i in range(n):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
                tasks.append(asyncio.create_task(one()))
            await asyncio.gather(*tasks)
            deadline = time.time() + self.args.settle_seconds
            while not set(accepted) <= set(done) and time.time() < deadline:
                await asyncio.sleep(0.1)
            reader.cancel()
            stream.close()
        await engine.dispose()
        # After the 202 (an event read before its 202 counts as 0: the feed was not the slow part).
        feed_ms = [max(0.0, seen[a] - t) * 1000 for a, t in accepted.items() if a in seen]
        delivered_ms = [max(0.0, done[a] - t) * 1000 for a, t in accepted.items() if a in done]
        ratio = [pct(feed_ms, p) / pct(row_ms, p) if feed_ms and row_ms else None for p in (50, 95)]
        out = {"rate": rate, "sent": n, "accepted": len(accepted), "accept_p50_ms": pct(accept_ms, 50),
               "row_p50_ms": pct(row_ms, 50), "row_p95_ms": pct(row_ms, 95), "feed_p50_ms": pct(feed_ms, 50),
               "feed_p95_ms": pct(feed_ms, 95), "ratio_p50": ratio[0], "ratio_p95": ratio[1],
               "delivered_p50_ms": pct(delivered_ms, 50), "delivered_p95_ms": pct(delivered_ms, 95),
               "unseen": len(set(accepted) - set(seen)), "undelivered": len(set(accepted) - set(done))}
        if quiet:
            return out
        f = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
        r = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{rate:>7.0f} {n:>5} {f(out['accept_p50_ms']):>8} {f(out['row_p50_ms']) + '/' + f(out['row_p95_ms']):>15} "
              f"{f(out['feed_p50_ms']) + '/' + f(out['feed_p95_ms']):>16} {r(ratio[0]) + '/' + r(ratio[1]):>14} "
              f"{f(out['delivered_p50_ms']) + '/' + f(out['delivered_p95_ms']):>21} {out['unseen']:>6}", flush=True)
        return out

    def summary(self) -> None:
        pass  # each step's row is printed as it finishes


async def main() -> int:
    return await drive(LiveFlow(parse_args()))


if __name__ == "__main__":
    sys.exit(uvloop.run(main()))
