"""Gateway accept throughput: JSON and CAP at 1 KB and 10 KB, beside a raw-bytes baseline, in one run.

The baseline is `bench.floor server`: FastAPI on uvicorn producing the raw body to Kafka with the
same producer settings and answering 202 once acked. The gateway is the real service (auth,
rate limiter, body cap, decoding, CAP schema validation, idempotency, produce, status row).
Each case runs closed-loop with `--concurrency` clients for `--seconds`; every request carries a
distinct alert (CAP identifiers and JSON Idempotency-Keys are unique), so nothing is a replay.

    .venv/bin/python -m bench.gateway_accept            # against the test stack of `make test`
    BLONET_KAFKA_BOOTSTRAP=127.0.0.1:9092 BLONET_PG_PORT=5433 .venv/bin/python -m bench.gateway_accept

Needs a running Kafka and PostgreSQL; uses its own database, topic prefix and ports.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import aiohttp

from demo.scenario import SCENARIO
from shared import db, topics
from shared.alerts import Alert
from shared.auth import Role, hash_api_key, new_api_key
from shared.cap import render_cap
from shared.settings import REPO, Settings

RUN = secrets.token_hex(3)
GATEWAY_PORT, FLOOR_PORT = 28110, 28111
YEAR = date.today().year + 1
BASE = {**SCENARIO, "effective": f"{YEAR}-05-15T00:00:00+06:00", "expires": f"{YEAR}-05-20T23:59:59+06:00"}


def bodies(kind: str, size: int, n: int) -> tuple[list[bytes], str]:
    """Return n distinct request bodies of about `size` bytes, and their content type."""
    pad = "Подробности. "
    alert = dict(BASE)
    probe = _one(kind, {**alert, "description": ""}, "X" * 12)
    alert["description"] = pad * max(0, (size - len(probe)) // len(pad.encode()))
    ctype = "application/json" if kind == "json" else "application/cap+xml"
    return [_one(kind, alert, f"B{RUN}-{i:08d}") for i in range(n)], ctype


def _one(kind: str, alert: dict, ident: str) -> bytes:
    if kind == "json":
        return json.dumps({**alert, "headline": f"{alert['headline']} {ident}"}, ensure_ascii=False).encode()
    doc = Alert.model_validate(alert).model_dump(mode="json")
    return render_cap({"alert": doc}, sender="kg-sbs@sbs.gov.kg", identifier=ident, sent=datetime.now(timezone.utc))


async def load(url: str, payloads: list[bytes], ctype: str, key: str, concurrency: int, seconds: float, json_keys: bool) -> dict:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    it = iter(range(len(payloads)))
    deadline = time.perf_counter() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        for i in it:
            if time.perf_counter() > deadline:
                return
            headers = {"Content-Type": ctype, "Authorization": f"Bearer {key}"}
            if json_keys:
                headers["Idempotency-Key"] = f"bench-{RUN}-{hash(payloads[i])}"
            start = time.perf_counter()
            async with http.post(url, data=payloads[i], headers=headers) as r:
                await r.read()
                if r.status == 202:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors[r.status] = errors.get(r.status, 0) + 1

    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2) if latencies else None  # noqa: E731
    return {"accepted_per_s": round(len(latencies) / elapsed, 1), "p50_ms": pick(0.50), "p99_ms": pick(0.99),
            "accepted": len(latencies), "errors": errors}


async def prepare(settings: Settings) -> str:
    await db.bootstrap(settings)
    await db.migrate(settings, "gateway")
    await topics.create_topics(settings)
    await topics.create_topics(settings.model_copy(update={"topic_prefix": f"benchgwfloor{RUN}."}))
    engine = db.make_engine(settings, "gateway", pool_size=1)
    key_id, key = new_api_key()
    from services.gateway import repository

    async with db.make_sessionmaker(engine)() as session:
        await repository.add_key(session, key_id=key_id, agency="kg-sbs", roles=[Role.SUBMIT], key_hash=hash_api_key(key), label="bench")
        await session.commit()
    await engine.dispose()
    return key


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} never came up")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sizes", default="1024,10240")
    args = parser.parse_args()
    env = {
        "BLONET_KAFKA_BOOTSTRAP": os.environ.get("BLONET_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        "BLONET_PG_PORT": os.environ.get("BLONET_PG_PORT", "15433"),
        "BLONET_PG_DATABASE": f"blonet_benchgw_{RUN}", "BLONET_TOPIC_PREFIX": f"benchgw{RUN}.",
        "BLONET_GATEWAY_PORT": str(GATEWAY_PORT), "BLONET_RATE_LIMIT_PER_SECOND": "1000000",
        "BLONET_RATE_LIMIT_BURST": "1000000", "BLONET_LOG_LEVEL": "WARNING",
    }
    keys = Path(tempfile.mkdtemp())
    env |= {"BLONET_TOKEN_PRIVATE_KEY_FILE": str(keys / "t.pem"), "BLONET_TOKEN_PUBLIC_KEY_FILE": str(keys / "t.pub.pem")}
    os.environ.update(env)
    settings = Settings()
    key = await prepare(settings)
    full = {**os.environ, **env}
    procs = [
        subprocess.Popen([sys.executable, "-m", "services.gateway"], env=full, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "bench.floor", "server"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**full, "BLONET_TOPIC_PREFIX": f"benchgwfloor{RUN}.", "BENCH_FLOOR_PORT": str(FLOOR_PORT),
                              "BENCH_FLOOR_TOPIC": topics.ALERTS_SUBMITTED.name}),
    ]
    results = []
    try:
        await wait_ready(f"http://127.0.0.1:{GATEWAY_PORT}/readyz")
        await wait_ready(f"http://127.0.0.1:{FLOOR_PORT}/docs")
        for size in map(int, args.sizes.split(",")):
            for kind in ("json", "cap"):
                payloads, ctype = bodies(kind, size, 40_000)
                warm = payloads[-200:]
                await load(f"http://127.0.0.1:{FLOOR_PORT}/v1/alerts", warm, ctype, key, 8, 2, False)
                await load(f"http://127.0.0.1:{GATEWAY_PORT}/v1/alerts", warm, ctype, key, 8, 2, kind == "json")
                floor = await load(f"http://127.0.0.1:{FLOOR_PORT}/v1/alerts", payloads[:-200], ctype, key, args.concurrency, args.seconds, False)
                gateway = await load(f"http://127.0.0.1:{GATEWAY_PORT}/v1/alerts", payloads[:-200], ctype, key, args.concurrency, args.seconds, kind == "json")
                row = {"format": kind, "bytes": len(payloads[0]), "baseline": floor, "gateway": gateway,
                       "ratio": round(gateway["accepted_per_s"] / floor["accepted_per_s"], 2) if floor["accepted_per_s"] else None}
                results.append(row)
                print(f"{kind:4} {row['bytes']:6d} B  baseline {floor['accepted_per_s']:7.1f}/s p50 {floor['p50_ms']} ms p99 {floor['p99_ms']} ms"
                      f"  | gateway {gateway['accepted_per_s']:7.1f}/s p50 {gateway['p50_ms']} ms p99 {gateway['p99_ms']} ms"
                      f"  | {row['ratio']:.0%} of baseline  errors {gateway['errors'] or '-'}", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        # Leave the stack as found: this run's topics and database go with it.
        for prefix in (f"benchgw{RUN}.", f"benchgwfloor{RUN}."):
            await topics.delete_topics(settings, prefix)
        await db.drop_database(settings)
    out = REPO / "bench" / "results" / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"run": RUN, "concurrency": args.concurrency, "seconds": args.seconds, "results": results}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
