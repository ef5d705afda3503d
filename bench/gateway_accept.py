"""Gateway accept throughput: JSON (with and without an Idempotency-Key) and CAP, beside a raw-bytes
baseline, and beside the gateway of another git ref (`--before`), in one run.

The baseline is `bench.floor server`: FastAPI on uvicorn producing the raw body to Kafka with the
same producer settings and answering 202 once acked. The gateway is the real service (auth,
rate limiter, body cap, decoding, CAP schema validation, idempotency, produce). With `--before REF`
that ref's gateway (unpacked into a temporary folder, its own database and topics) runs the same
cases, one after the other with this checkout's, and each line gives after/before.
Each case runs closed-loop with `--concurrency` clients for `--seconds`; every request carries a
distinct alert (CAP identifiers and Idempotency-Keys are unique), so nothing is a replay.

    .venv/bin/python -m bench.gateway_accept --before e056992   # against the test stack of `make test`
    BLONET_KAFKA_BOOTSTRAP=127.0.0.1:9092 BLONET_PG_PORT=5433 .venv/bin/python -m bench.gateway_accept

Needs a running Kafka and PostgreSQL; uses its own database, topic prefix and ports.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
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
GATEWAY_PORT, FLOOR_PORT, BEFORE_PORT = 28110, 28111, 28112
YEAR = date.today().year + 1
BASE = {**SCENARIO, "effective": f"{YEAR}-05-15T00:00:00+06:00", "expires": f"{YEAR}-05-20T23:59:59+06:00"}


def bodies(kind: str, size: int, n: int) -> tuple[list[bytes], str]:
    """Return n distinct request bodies of about `size` bytes, and their content type."""
    pad = "Подробности. "
    alert = dict(BASE)
    probe = _one(kind, {**alert, "description": ""}, "X" * 12)
    alert["description"] = pad * max(0, (size - len(probe)) // len(pad.encode()))
    ctype = "application/json" if kind == "json" else "application/cap+xml"
    return [_one(kind, alert, f"B{RUN}-{size}-{i:08d}") for i in range(n)], ctype


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


async def add_key(settings: Settings) -> str:
    from services.gateway import repository

    key_id, key = new_api_key()
    await db.in_session(settings, "gateway", lambda s: repository.add_key(
        s, key_id=key_id, agency="kg-sbs", roles=[Role.SUBMIT], key_hash=hash_api_key(key), label="bench"))
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


CASES = (("json", False), ("json+key", True), ("cap", False))  # (format, Idempotency-Key sent)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--sizes", default="1024,10240")
    parser.add_argument("--before", help="git ref whose gateway runs the same cases in this run")
    args = parser.parse_args()
    env = {
        "BLONET_KAFKA_BOOTSTRAP": os.environ.get("BLONET_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        "BLONET_PG_PORT": os.environ.get("BLONET_PG_PORT", "15433"),
        "BLONET_RATE_LIMIT_PER_SECOND": "1000000", "BLONET_RATE_LIMIT_BURST": "1000000", "BLONET_LOG_LEVEL": "WARNING",
    }
    keys = Path(tempfile.mkdtemp())
    env |= {"BLONET_TOKEN_PRIVATE_KEY_FILE": str(keys / "t.pem"), "BLONET_TOKEN_PUBLIC_KEY_FILE": str(keys / "t.pub.pem")}
    os.environ.update(env)
    gateways = {"after": (REPO, GATEWAY_PORT)}
    old = None
    if args.before:
        old = Path(tempfile.mkdtemp())
        subprocess.run(f"git -C {REPO} archive {args.before} | tar -x -C {old}", shell=True, check=True)
        gateways["before"] = (old, BEFORE_PORT)
    variants = {}  # label → (settings, env, root, port)
    for label, (root, gw_port) in gateways.items():
        own = {"BLONET_PG_DATABASE": f"blonet_benchgw_{RUN}_{label}", "BLONET_TOPIC_PREFIX": f"benchgw{RUN}{label}.",
               "BLONET_GATEWAY_PORT": str(gw_port)}
        settings = Settings(**{k.removeprefix("BLONET_").lower(): v for k, v in own.items()})
        variants[label] = (settings, {**os.environ, **env, **own, "PYTHONPATH": str(root)}, root, gw_port)
    floor_settings = variants["after"][0].model_copy(update={"topic_prefix": f"benchgwfloor{RUN}."})
    procs, results = [], []
    try:
        await topics.create_topics(floor_settings)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "server"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **env, "BLONET_TOPIC_PREFIX": floor_settings.topic_prefix, "BENCH_FLOOR_PORT": str(FLOOR_PORT),
                 "BENCH_FLOOR_TOPIC": topics.ALERTS_SUBMITTED.name}))
        bench_keys = {}
        for label, (settings, full, root, gw_port) in variants.items():
            await db.bootstrap(settings)
            await topics.create_topics(settings)
            # The gateway migrates its own schema (a ref's migrations may differ from this checkout's).
            procs.append(subprocess.Popen([sys.executable, "-m", "services.gateway"], env=full, cwd=root,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            await wait_ready(f"http://127.0.0.1:{gw_port}/readyz")
            bench_keys[label] = await add_key(settings)
        await wait_ready(f"http://127.0.0.1:{FLOOR_PORT}/docs")
        for size in map(int, args.sizes.split(",")):
            for kind, keyed in CASES:
                payloads, ctype = bodies(kind.split("+")[0], size, 40_000)
                row = {"format": kind, "bytes": len(payloads[0])}
                warm, rest = payloads[-600:], payloads[:-600]
                await load(f"http://127.0.0.1:{FLOOR_PORT}/v1/alerts", warm[:200], ctype, "", 8, 2, False)
                row["baseline"] = await load(f"http://127.0.0.1:{FLOOR_PORT}/v1/alerts", rest, ctype, "", args.concurrency,
                                             args.seconds, False)
                for n, label in enumerate(sorted(variants)):  # after, then before: each its own fresh alerts
                    url = f"http://127.0.0.1:{variants[label][3]}/v1/alerts"
                    await load(url, warm[200 * (n + 1):200 * (n + 2)], ctype, bench_keys[label], 8, 2, keyed)
                    row[label] = await load(url, rest[len(rest) // 2 * n:], ctype, bench_keys[label], args.concurrency,
                                            args.seconds, keyed)
                results.append(row)
                line = f"{kind:8} {row['bytes']:6d} B  baseline {row['baseline']['accepted_per_s']:7.1f}/s"
                for label in sorted(variants, reverse=True):
                    r = row[label]
                    line += (f" | {label} {r['accepted_per_s']:7.1f}/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms "
                             f"({r['accepted_per_s'] / row['baseline']['accepted_per_s']:.0%} of baseline, errors {r['errors'] or '-'})")
                if "before" in row and row["before"]["accepted_per_s"]:
                    line += f" | after/before {row['after']['accepted_per_s'] / row['before']['accepted_per_s']:.2f}×"
                print(line, flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(20)
        # Leave the stack as found: this run's topics and databases go with it.
        for settings, *_ in variants.values():
            await topics.delete_topics(settings, settings.topic_prefix)
            await db.drop_database(settings)
        await topics.delete_topics(floor_settings, floor_settings.topic_prefix)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    out = REPO / "bench" / "results" / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"run": RUN, "concurrency": args.concurrency, "seconds": args.seconds, "before": args.before,
                               "results": results}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    asyncio.run(main())
