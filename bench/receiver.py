"""The bench's receiver process: records when each marked message arrives, and a 202 sink.

Kept cheap on purpose (no signature check): it shares the 2 cores with the system under test.
Every request body carries a marker "B|<step tag>|<seq>|" at the start of its headline.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import time

import orjson
import uvloop
from aiohttp import web


class Receiver:
    def __init__(self) -> None:
        self.seen: dict[str, dict[int, list]] = {}  # tag -> seq -> [first arrival, last arrival, count]
        self.counts: dict[str, int] = {}  # tag -> deliveries, cheap to poll while draining
        self.unmarked = 0
        self.ids: dict[str, dict[tuple[int, str], set]] = {}  # tag -> (seq, endpoint) -> webhook-ids seen

    async def deliver(self, request: web.Request) -> web.Response:
        now = time.time()  # wall clock: the generator stamps send times in another process
        body = await request.read()
        try:
            doc = orjson.loads(body)
            _, tag, seq, _ = (doc.get("alert") or doc)["headline"].split("|", 3)  # BLOnet wraps the alert
            seq = int(seq)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.unmarked += 1
            return web.Response(status=200)
        rec = self.seen.setdefault(tag, {}).get(seq)
        if rec is None:
            self.seen[tag][seq] = [now, now, 1]
        else:
            rec[1] = now
            rec[2] += 1
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if webhook_id := request.headers.get("webhook-id"):
            self.ids.setdefault(tag, {}).setdefault((seq, request.match_info.get("endpoint", "")), set()).add(webhook_id)
        return web.Response(status=200)

    async def sink(self, _: web.Request) -> web.Response:
        return web.Response(status=202)  # the generator-ceiling target: no work at all

    async def count(self, request: web.Request) -> web.Response:
        tag = request.query["tag"]
        return web.json_response({"deliveries": self.counts.get(tag, 0), "unmarked": self.unmarked})

    async def collect(self, request: web.Request) -> web.Response:
        tag = request.query["tag"]  # handed over once, then forgotten: memory stays bounded
        self.counts.pop(tag, None)
        return web.Response(body=orjson.dumps({str(k): v for k, v in self.seen.pop(tag, {}).items()}),
                            content_type="application/json")

    async def split_ids(self, request: web.Request) -> web.Response:
        """How many (alert, endpoint) deliveries of a tag arrived under more than one webhook-id; then forgotten."""
        ids = self.ids.pop(request.query["tag"], {})
        return web.json_response({"deliveries": len(ids), "split": sum(len(v) > 1 for v in ids.values())})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.post("/sink", self.sink), web.post("/floor", self.deliver), web.post("/floor/{endpoint}", self.deliver),
            web.post("/inbox/{endpoint}", self.deliver),
            web.get("/count", self.count), web.get("/collect", self.collect), web.get("/ids", self.split_ids),
        ])
        return app


async def main(port: int) -> None:
    runner = web.AppRunner(Receiver().app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    uvloop.run(main(parser.parse_args().port))
