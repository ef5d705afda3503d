"""The gateway's per-key limits: a token-bucket rate limit (429) and a cap on open streams (429).

The body-size cap (413) is every service's: shared/bodylimit.py."""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class RateLimiter:
    """Token buckets per API key: `limit` requests/s and bursts up to `burst` across all gateway
    instances, each enforcing its share, `1/instances` of both (members.py counts the instances)."""

    def __init__(self, limit: float, burst: int, clock=time.monotonic) -> None:
        self.limit, self.whole_burst, self.clock = limit, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self.share(1)

    def share(self, instances: int) -> None:
        """Enforce 1/`instances` of the limit and of the burst here (never less than one request)."""
        self.rate = self.limit / instances
        self.burst = max(1.0, self.whole_burst / instances)

    def take(self, key: str) -> float:
        """Take one token for `key`; return 0 if allowed, else the seconds to wait."""
        now = self.clock()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    @staticmethod
    def retry_after(wait: float) -> str:
        return str(max(1, math.ceil(wait)))


class StreamSlots:
    """Open Server-Sent Event streams per API key (per gateway instance): at most `per_key` at once."""

    def __init__(self, per_key: int) -> None:
        self.per_key = per_key
        self.open: dict[str, int] = {}

    def take(self, key: str) -> bool:
        if self.open.get(key, 0) >= self.per_key:
            return False
        self.open[key] = self.open.get(key, 0) + 1
        return True

    def give_back(self, key: str) -> None:
        left = self.open.get(key, 0) - 1
        if left > 0:
            self.open[key] = left
        else:
            self.open.pop(key, None)


class SlotStream(StreamingResponse):
    """A stream that gives its slot back however it ends: finished, client gone, or service stopping."""

    def __init__(self, *args, release: Callable[[], None], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
