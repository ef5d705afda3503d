"""What operators see of the flow: alert summaries over the gateway's own status tables, and a live
feed of which alerts changed.

The feed is PostgreSQL LISTEN/NOTIFY: the status consumer notifies on commit, so every gateway
instance's console and `blonet tail` see every change, whichever instance consumed the event.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from sqlalchemy import exists, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway.listen import Listener
from services.gateway.models import alerts, forwards, recipients
from services.gateway.repository import FLOW_CHANNEL
from shared.service import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filters:
    agency: str | None = None  # sender, or any recipient
    post: str | None = None  # the sender's post or the alert's location
    category: str | None = None
    tlp: str | None = None  # e.g. TLP:AMBER
    since: datetime | None = None

    def matches(self, summary: dict) -> bool:
        """The same test as `_where`, on a summary already loaded (for the live feed)."""
        if self.agency and self.agency != summary["sender_agency"] and \
                self.agency not in {r["agency"] for r in summary["recipients"]}:
            return False
        if self.post and self.post not in (summary["post"], summary["sender_post"]):
            return False
        if self.category and self.category != summary["category"]:
            return False
        if self.tlp and self.tlp != summary["tlp"]:
            return False
        return not (self.since and summary["received_at"] < self.since)


def _where(f: Filters) -> list:
    doc = alerts.c.alert
    clauses = []
    if f.agency:
        clauses.append(or_(alerts.c.sender_agency == f.agency, exists().where(
            recipients.c.alert_id == alerts.c.alert_id, recipients.c.agency == f.agency)))
    if f.post:
        clauses.append(or_(doc["sender_post"].astext == f.post, doc["location"]["post"].astext == f.post))
    if f.category:
        clauses.append(doc["category"].astext == f.category)
    if f.tlp:
        clauses.append(doc["tlp"].astext == f.tlp)
    if f.since:
        clauses.append(alerts.c.received_at >= f.since)
    return clauses


def recipient_state(r: dict) -> str:
    """routed, retrying, delivered, failed — or acknowledged / escalated, which say more."""
    if r.get("ack_status"):
        return "acknowledged"
    if r.get("escalated_at"):
        return "escalated"
    return r["state"]


def overall_state(alert: dict, states: list[str]) -> str:
    if alert["routing"] is None:
        return "accepted"
    if not states:
        return "routed"  # nobody to deliver to (every candidate denied)
    if "failed" in states:
        return "failed"
    if all(s == "acknowledged" for s in states):
        return "acknowledged"
    if all(s in ("delivered", "acknowledged", "escalated") for s in states):
        return "delivered"
    return "delivering"


def summarize(alert: dict, rows: list[dict]) -> dict:
    doc = alert["alert"]
    people = [{
        "endpoint": r["endpoint"], "agency": r["agency"], "unit": r["unit"], "profile": r["profile"], "rule": r["rule"],
        "reason": r["reason"], "state": recipient_state(r), "delivery_state": r["state"], "attempts": r["attempts"],
        "http_status": r["http_status"], "error": r["error"], "ack_status": r["ack_status"], "ack_comment": r["ack_comment"],
        "acked_at": r["acked_at"], "delivered_at": r["delivered_at"], "escalated_at": r["escalated_at"],
        "updated_at": r["updated_at"],
    } for r in rows]
    routing = alert["routing"] or {}
    return {
        "alert_id": alert["alert_id"], "thread_id": alert["thread_id"], "received_at": alert["received_at"],
        "sender_agency": alert["sender_agency"], "sender_post": doc.get("sender_post"),
        "post": (doc.get("location") or {}).get("post"), "category": doc.get("category"), "severity": doc.get("severity"),
        "urgency": doc.get("urgency"), "tlp": doc.get("tlp"), "headline": doc.get("headline"),
        "msg_type": doc.get("msg_type", "alert"), "status": doc.get("status"), "trace_id": alert["trace_id"],
        "ruleset_hash": routing.get("ruleset_hash"), "state": overall_state(alert, [p["state"] for p in people]),
        "recipients": people, "denied": routing.get("denied", []), "cap": alert.get("cap"),
    }


async def summaries(session: AsyncSession, f: Filters, limit: int = 100, before: UUID | None = None) -> list[dict]:
    """Newest first; `before` pages on (ids are UUIDv7, so time-ordered)."""
    query = select(alerts).where(*_where(f))
    if before is not None:
        query = query.where(alerts.c.alert_id < before)
    rows = [dict(r) for r in (await session.execute(query.order_by(alerts.c.alert_id.desc()).limit(limit))).mappings()]
    return await _with_recipients(session, rows)


async def summaries_of(session: AsyncSession, alert_ids: set[UUID]) -> list[dict]:
    """The summaries of these alerts (those that exist), oldest first: two queries however many."""
    rows = await session.execute(select(alerts).where(alerts.c.alert_id.in_(alert_ids)).order_by(alerts.c.alert_id))
    return await _with_recipients(session, [dict(r) for r in rows.mappings()])


async def summary(session: AsyncSession, alert_id: UUID) -> dict | None:
    row = (await session.execute(select(alerts).where(alerts.c.alert_id == alert_id))).mappings().first()
    return (await _with_recipients(session, [dict(row)]))[0] if row else None


async def _with_recipients(session: AsyncSession, rows: list[dict]) -> list[dict]:
    ids = [r["alert_id"] for r in rows]
    by_alert: dict[UUID, list[dict]] = {i: [] for i in ids}
    if ids:
        found = await session.execute(select(recipients).where(recipients.c.alert_id.in_(ids))
                                      .order_by(recipients.c.agency, recipients.c.endpoint))
        for r in found.mappings():
            by_alert[r["alert_id"]].append(dict(r))
    return [summarize(r, by_alert[r["alert_id"]]) for r in rows]


async def forwards_of(session: AsyncSession, alert_id: UUID) -> list[dict]:
    rows = await session.execute(select(forwards).where(forwards.c.alert_id == alert_id).order_by(forwards.c.forwarded_at))
    return [dict(r) for r in rows.mappings()]


async def thread(session: AsyncSession, thread_id: UUID) -> list[dict]:
    """The alerts of one thread (original, updates, cancel), oldest first."""
    rows = await session.execute(select(alerts.c.alert_id, alerts.c.received_at, alerts.c.alert["msg_type"].astext.label("msg_type"))
                                 .where(alerts.c.thread_id == thread_id).order_by(alerts.c.alert_id))
    return [dict(r) for r in rows.mappings()]


async def flow_stats(session: AsyncSession, now: datetime, window: timedelta = timedelta(hours=1)) -> dict:
    """Throughput and accept→first-delivery latency over the window, per minute and overall."""
    since = now - window
    minute = func.date_trunc("minute", alerts.c.received_at)
    accepted = await session.execute(select(minute.label("minute"), func.count().label("n"))
                                     .where(alerts.c.received_at >= since).group_by(minute).order_by(minute))
    latency = (func.extract("epoch", recipients.c.delivered_at) - func.extract("epoch", alerts.c.received_at))
    joined = recipients.join(alerts, recipients.c.alert_id == alerts.c.alert_id)
    overall = (await session.execute(select(
        func.count().label("deliveries"),
        func.percentile_cont(0.5).within_group(latency).label("p50"),
        func.percentile_cont(0.95).within_group(latency).label("p95"),
    ).select_from(joined).where(recipients.c.delivered_at >= since))).mappings().one()
    failed = await session.scalar(select(func.count()).select_from(recipients).where(
        recipients.c.state == "failed", recipients.c.updated_at >= since))
    total = await session.scalar(select(func.count()).select_from(alerts).where(alerts.c.received_at >= since))
    counts = {r.minute: r.n for r in accepted}
    first = now.replace(second=0, microsecond=0) - window + timedelta(minutes=1)
    minutes = [first + timedelta(minutes=k) for k in range(int(window.total_seconds() // 60))]
    return {
        "window_seconds": window.total_seconds(), "alerts": total, "deliveries": overall["deliveries"], "failed": failed,
        "alerts_per_minute": [{"minute": m, "n": counts.get(m, 0)} for m in minutes],
        "latency_p50_seconds": overall["p50"], "latency_p95_seconds": overall["p95"],
    }


class FlowHub:
    """One LISTEN connection per gateway instance. Changed alerts are looked up once per batch and
    the summaries fanned out to every live-flow subscriber, each filtering for itself."""

    def __init__(self, rt: Runtime, coalesce: float = 0.01) -> None:
        self.rt, self.coalesce = rt, coalesce
        self.subscribers: set[asyncio.Queue[dict]] = set()
        self.listener = Listener(rt, "live flow", {FLOW_CHANNEL: self._notified})
        self.pending: set[UUID] = set()
        self.changed = asyncio.Event()
        self.watchers: dict[UUID, set[asyncio.Event]] = {}  # per-alert streams: woken when their alert changes
        self.on_change: list[Callable[[UUID], None]] = []  # e.g. lookup.AlertRows drops what the projection stored

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict]]:
        queue: asyncio.Queue[dict] = asyncio.Queue(maxsize=10_000)
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)

    @contextlib.contextmanager
    def watch(self, alert_id: UUID) -> Iterator[asyncio.Event]:
        """Yield an event that is set each time the alert's status view changes (no lookup here)."""
        event = asyncio.Event()
        self.watchers.setdefault(alert_id, set()).add(event)
        try:
            yield event
        finally:
            self.watchers[alert_id].discard(event)
            if not self.watchers[alert_id]:
                del self.watchers[alert_id]

    def _notified(self, payload: str) -> None:
        alert_id = UUID(payload)
        for callback in self.on_change:
            callback(alert_id)
        for event in self.watchers.get(alert_id, ()):
            event.set()
        if self.subscribers:
            self.pending.add(alert_id)
            self.changed.set()

    async def fan_out(self) -> None:
        """Look the changed alerts up (two queries a batch, however many subscribers) and pass them on."""
        while not self.rt.stopping.is_set():
            await self.changed.wait()
            await asyncio.sleep(self.coalesce)  # let a burst of notifications make one batch
            self.changed.clear()
            ids, self.pending = self.pending, set()
            if not ids or not self.subscribers:
                continue
            try:
                async with self.rt.sessions() as session:
                    found = await summaries_of(session, ids)
            except (OSError, SQLAlchemyError) as exc:  # the feed skips a beat; the service goes on
                log.warning("live flow: lookup failed (%s)", exc)
                continue
            for queue in list(self.subscribers):
                for summary in found:
                    if not queue.full():  # a stalled reader misses changes, never slows the others
                        queue.put_nowait(summary)

    async def run(self) -> None:
        """Listen for changes until the service stops, and pass them on."""
        fan_out = asyncio.create_task(self.fan_out())
        try:
            await self.listener.run()
        finally:
            fan_out.cancel()


Allowed = Callable[[], Awaitable[bool]]


async def sse(hub: FlowHub, f: Filters, until_seconds: float, allowed: Allowed,
              render: Callable[[dict], bytes]) -> AsyncIterator[bytes]:
    """Server-Sent Events of the alerts matching `f` as they change, rendered by `render`.

    Subscribed before the first byte, so a client that has read the opening `retry:` line misses
    no change after it. Ends at the deadline, when the service stops, or as soon as a periodic
    check finds the caller's key revoked or its session over.
    """
    loop, recheck = asyncio.get_running_loop(), hub.rt.settings.stream_recheck_seconds
    until, checked = loop.time() + until_seconds, loop.time()
    async with hub.subscribe() as queue:
        yield b"retry: 1000\n\n"
        while (left := until - loop.time()) > 0 and not hub.rt.stopping.is_set():
            try:
                summary = await asyncio.wait_for(queue.get(), timeout=min(left, recheck))
            except asyncio.TimeoutError:
                summary = None
            if loop.time() - checked >= recheck:
                if not await allowed():
                    return
                checked = loop.time()
            if summary is None:
                yield b": keep-alive\n\n"  # also how a closed client is noticed
            elif f.matches(summary):
                yield render(summary)


async def known_agencies_and_posts(session: AsyncSession) -> tuple[list[str], list[str]]:
    """The agencies and posts seen in the flow, for the console's filter choices."""
    agencies = await session.scalars(select(alerts.c.sender_agency).union(select(recipients.c.agency)))
    posts = await session.scalars(select(alerts.c.alert["sender_post"].astext).union(
        select(alerts.c.alert["location"]["post"].astext)))
    return sorted(agencies), sorted(p for p in posts if p)


async def alert_document(session: AsyncSession, alert_id: str) -> dict | None:
    """The alert as submitted (for a dry run of the rules against it)."""
    try:
        key = UUID(alert_id)
    except ValueError:
        return None
    return await session.scalar(select(alerts.c.alert).where(alerts.c.alert_id == key))
