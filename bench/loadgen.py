"""Open-loop load generator on aiohttp, and the percentile helper.

Open loop: request i is due at t0 + i/rate whatever happened to earlier requests, and its
latency is counted from that due time. So a slow server (or a late generator) shows up as
latency instead of silently lowering the offered rate (no coordinated omission).
"""
from __future__ import annotations

import asyncio
import gc
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

REQUEST_TIMEOUT = 10.0  # the gateway's own Kafka ack timeout is 10 s
MAX_CONNECTIONS = 500  # enough for any open-loop backlog we offer; bounds sockets on overload


@dataclass
class Step:
    rate: float
    seconds: float
    t0: float = 0.0  # wall-clock due time of request 0
    ok: list[int] = field(default_factory=list)  # seqs answered 202
    accept_ms: list[float] = field(default_factory=list)  # due time -> 202 received
    errors: Counter = field(default_factory=Counter)  # status code or exception name -> count
    sent: int = 0
    last_done: float = 0.0
    max_late_ms: float = 0.0  # how far behind schedule the generator fell at worst

    def due(self, seq: int) -> float:
        return self.t0 + seq / self.rate

    @property
    def achieved(self) -> float:
        """Accepted requests per second over the span from the first due time to the last answer."""
        span = max(self.last_done - self.t0, self.seconds)
        return len(self.ok) / span if span > 0 else 0.0


async def open_loop(url: str, rate: float, seconds: float, body: Callable[[int], bytes], headers: dict[str, str]) -> Step:
    step = Step(rate, seconds)
    n = max(1, round(rate * seconds))  # bounded in count...
    gc.collect()
    gc.disable()  # a full collection over thousands of live tasks stalls the schedule by tens of ms
    try:
        return await _run(step, n, url, body, headers)
    finally:
        gc.enable()


async def _run(step: Step, n: int, url: str, body: Callable[[int], bytes], headers: dict[str, str]) -> Step:
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as http:

        async def one(seq: int) -> None:
            try:
                async with http.post(url, data=body(seq), headers=headers) as r:
                    await r.read()
                    status = r.status
            except Exception as exc:  # counted as an error, never raised: the step goes on
                status = type(exc).__name__
            done = time.time()
            step.last_done = max(step.last_done, done)
            if status == 202:
                step.ok.append(seq)
                step.accept_ms.append((done - step.due(seq)) * 1000)
            else:
                step.errors[str(status)] += 1

        tasks = []
        step.t0 = time.time() + 0.05
        for seq in range(n):
            delay = step.due(seq) - time.time()
            step.max_late_ms = max(step.max_late_ms, -delay * 1000)
            await asyncio.sleep(max(delay, 0))  # sleep(0) still lets answers be read when behind
            tasks.append(asyncio.create_task(one(seq)))
            step.sent += 1
        # ...and in time: every request has its own timeout, this is the backstop.
        _, pending = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT + 5)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            step.errors["unfinished"] += len(pending)
    return step


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
