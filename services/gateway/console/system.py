"""The System page's facts: each service's readiness and every consumer group's lag."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


from services.gateway.console.upstream import Upstream, UpstreamError
from shared.kafka import make_admin, make_consumer
from shared.settings import Settings

SERVICES = ("gateway", "routing", "notifier", "audit")


@dataclass
class Lag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - self.committed)


def by_group(lags: list[Lag]) -> list[dict]:
    """Per group: how many partitions it commits on, its total and its worst lag."""
    groups: dict[str, dict] = {}
    for lag in lags:
        g = groups.setdefault(lag.group, {"group": lag.group, "partitions": 0, "lag": 0, "max": 0})
        g["partitions"] += 1
        g["lag"] += lag.lag
        g["max"] = max(g["max"], lag.lag)
    return list(groups.values())


async def health(up: Upstream) -> list[dict]:
    async def one(service: str) -> dict:
        try:
            answer = await up.get(None, service, "/readyz")
        except UpstreamError as exc:
            return {"service": service, "ready": False, "checks": {"http": exc.detail}}
        body = answer.body if isinstance(answer.body, dict) else {}
        return {"service": service, "ready": answer.status == 200 and body.get("ready", False), "checks": body.get("checks", {})}

    return list(await asyncio.gather(*(one(s) for s in SERVICES)))


async def consumer_lag(settings: Settings, timeout: float = 5.0) -> list[Lag]:
    """Committed offset against the log end, per group, topic and partition (this deployment's groups only)."""
    admin = make_admin(settings, request_timeout_ms=int(timeout * 1000))
    reader = make_consumer(settings, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(reader.start(), timeout)
        groups = sorted(g[0] for g in await admin.list_consumer_groups() if g[0].startswith(settings.topic_prefix))
        committed = {}
        for group in groups:
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                if tp.topic.startswith(settings.topic_prefix) and meta.offset >= 0:
                    committed[(group, tp)] = meta.offset
        ends = await reader.end_offsets(list({tp for _, tp in committed})) if committed else {}
        return [Lag(g.removeprefix(settings.topic_prefix), tp.topic.removeprefix(settings.topic_prefix), tp.partition, off, ends.get(tp, off))
                for (g, tp), off in sorted(committed.items(), key=lambda kv: (kv[0][0], kv[0][1].topic, kv[0][1].partition))]
    finally:
        for close in (reader.stop, admin.close):  # either may never have started
            with contextlib.suppress(Exception):
                await close()
