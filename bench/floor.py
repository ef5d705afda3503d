"""The floor: BLOnet's hops with no logic, built from the same parts and settings.

  server: FastAPI on uvicorn (like the gateway) produces each POST body to Kafka with
          shared.kafka.make_producer and answers 202 once the broker acked it;
  relay:  shared.kafka.EventConsumer (same fetch_max_wait_ms, manual commit after the
          handler) POSTs every record with aiohttp to the receiver, then commits.

Run as `python -m bench.floor server|relay`; settings come from BLONET_* like a service,
plus BENCH_FLOOR_TOPIC (unprefixed name) and BENCH_RECEIVER_URL.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
import uvloop
from fastapi import FastAPI, Request, Response

from shared.kafka import EventConsumer, make_producer
from shared.settings import get_settings

TOPIC = os.environ.get("BENCH_FLOOR_TOPIC", "floor")


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


async def relay() -> None:
    settings = get_settings()
    url = os.environ["BENCH_RECEIVER_URL"]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_seconds)) as http:

        async def post(value: bytes) -> None:
            async with http.post(url, data=value, headers={"content-type": "application/json"}) as r:
                await r.read()
                r.raise_for_status()  # a failure makes EventConsumer retry the batch, like a real handler

        async def handle(records) -> None:
            await asyncio.gather(*(post(r.value) for r in records))

        consumer = EventConsumer(settings, group=settings.topic("floor-relay"), topics=[settings.topic(TOPIC)], handler=handle)
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, consumer.stop)
        await consumer.run()


if __name__ == "__main__":
    if sys.argv[1:] == ["server"]:
        server()
    elif sys.argv[1:] == ["relay"]:
        uvloop.run(relay())  # services run their consumers inside uvicorn's uvloop loop too
    else:
        sys.exit("usage: python -m bench.floor server|relay")
