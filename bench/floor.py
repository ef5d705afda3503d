"""The floors: BLOnet's hops with no logic, built from the same parts and settings.

The fair floor has BLOnet's shape: one alert in, one record per recipient endpoint, each POSTed
and followed by a status record, and a consumer reading every topic (as audit does):
  server:  FastAPI on uvicorn (like the gateway) produces each POST body to the submitted topic
           with shared.kafka.make_producer and answers 202 once the broker acked it;
  fanout:  (like routing) consumes submitted, produces one record per endpoint (keyed by the
           endpoint, as deliveries.requested is), commits after the acks;
  deliver: (like the notifier) consumes those, POSTs each to the receiver, one endpoint's in
           order and endpoints side by side, produces one status record per delivery, commits
           after the acks;
  sink:    (like audit) consumes every floor topic and parses each record.
The one-POST floor, kept as a second reference line:
  relay:   consumes submitted and POSTs each record once to the receiver.

Run as `python -m bench.floor server|fanout|deliver|sink|relay`; settings come from BLONET_* like a
service, plus BENCH_FLOOR_TOPIC (unprefixed name of the submitted topic), BENCH_RECEIVER_URL and,
for fanout, BENCH_FLOOR_ENDPOINTS (comma-separated endpoint ids).
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import defaultdict
from contextlib import asynccontextmanager

import aiohttp
import orjson
import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response

from shared.kafka import EventConsumer, make_producer
from shared.settings import get_settings

TOPIC = os.environ.get("BENCH_FLOOR_TOPIC", "floor")
REQUESTED, STATUS = f"{TOPIC}-requested", f"{TOPIC}-status"  # the floor's deliveries.requested and .status


def server() -> None:
    settings = get_settings()
    state = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state["producer"] = make_producer(settings)
        await state["producer"].start()
        try:
            yield
        finally:
            await state["producer"].stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/alerts")
    async def ingest(request: Request) -> Response:
        body = await request.body()
        # Random key, like the gateway's fresh thread id: spreads over the partitions.
        ack = await state["producer"].send(settings.topic(TOPIC), value=body, key=os.urandom(8).hex().encode())
        await asyncio.wait_for(ack, timeout=10)
        return Response(status_code=202, content=b'{"accepted":true}', media_type="application/json")

    # The same uvicorn call as shared.service.Runtime.serve (uvloop + httptools via uvicorn[standard]).
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_FLOOR_PORT"]), log_config=None, access_log=False)


async def consume(settings, name: str, topics: list[str], handle) -> None:
    """Run one EventConsumer (BLOnet's, unchanged) until SIGTERM or SIGINT."""
    consumer = EventConsumer(settings, group=settings.topic(f"floor-{name}"), topics=[settings.topic(t) for t in topics],
                             handler=handle)
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, consumer.stop)
    await consumer.run()


def receiver_session(settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds))


async def post(http: aiohttp.ClientSession, url: str, value: bytes) -> None:
    async with http.post(url, data=value, headers={"content-type": "application/json"}) as r:
        await r.read()
        r.raise_for_status()  # a failure makes EventConsumer retry the batch, like a real handler


async def relay() -> None:
    settings = get_settings()
    url = os.environ["BENCH_RECEIVER_URL"]
    async with receiver_session(settings) as http:
        async def handle(records) -> None:
            await asyncio.gather(*(post(http, url, r.value) for r in records))

        await consume(settings, "relay", [TOPIC], handle)


async def fanout() -> None:
    settings = get_settings()
    endpoints = [e.encode() for e in os.environ["BENCH_FLOOR_ENDPOINTS"].split(",")]
    producer = make_producer(settings)
    await producer.start()
    try:
        async def handle(records) -> None:
            acks = [await producer.send(settings.topic(REQUESTED), value=r.value, key=e) for r in records for e in endpoints]
            await asyncio.gather(*acks)

        await consume(settings, "fanout", [TOPIC], handle)
    finally:
        await producer.stop()


async def deliver() -> None:
    settings = get_settings()
    url = os.environ["BENCH_RECEIVER_URL"]
    producer = make_producer(settings)
    await producer.start()
    try:
        async with receiver_session(settings) as http:
            async def endpoint_queue(endpoint: bytes, records) -> list:
                acks = []
                for r in records:  # one endpoint's deliveries in order, as BLOnet's are by default
                    await post(http, f"{url}/{endpoint.decode()}", r.value)
                    acks.append(await producer.send(settings.topic(STATUS), value=b'{"state":"delivered"}', key=endpoint))
                return acks

            async def handle(records) -> None:
                by_endpoint = defaultdict(list)
                for r in records:
                    by_endpoint[r.key].append(r)
                done = await asyncio.gather(*(endpoint_queue(e, rs) for e, rs in by_endpoint.items()))
                await asyncio.gather(*(ack for acks in done for ack in acks))

            await consume(settings, "deliver", [REQUESTED], handle)
    finally:
        await producer.stop()


async def sink() -> None:
    settings = get_settings()

    async def handle(records) -> None:
        for r in records:
            orjson.loads(r.value)

    await consume(settings, "sink", [TOPIC, REQUESTED, STATUS], handle)


CONSUMERS = {"relay": relay, "fanout": fanout, "deliver": deliver, "sink": sink}

if __name__ == "__main__":
    if sys.argv[1:] == ["server"]:
        server()
    elif len(sys.argv) == 2 and sys.argv[1] in CONSUMERS:
        uvloop.run(CONSUMERS[sys.argv[1]]())  # services run their consumers inside uvicorn's uvloop loop too
    else:
        sys.exit(f"usage: python -m bench.floor server|{'|'.join(CONSUMERS)}")
