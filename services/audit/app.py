"""Assemble the audit service: the consumer of every topic, the checkpoint signer, the auditors' API."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from services.audit import keys, repository, service
from services.audit.api import router
from services.audit.consumer import Recorder
from shared import topics
from shared.checkpoint import SignerKey
from shared.metrics import AUDIT_CHECKPOINT_SIZE, AUDIT_CHECKPOINT_TIME, AUDIT_TREE_SIZE
from shared.service import Runtime
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)
RETENTION_SWEEP_SECONDS = 3600.0


class Checkpointer:
    """Sign checkpoints (at start, every interval if the log grew, and on demand) and sweep expired payloads."""

    def __init__(self, rt: Runtime, key: SignerKey, origin: str, head: service.Head | None = None) -> None:
        self.rt, self.key, self.origin = rt, key, origin
        self.head = head or service.Head()  # the appender state the retention sweep's erasure entries extend
        self.verified = service.Verified()  # each signing re-hashes only the entries added since the last
        self._last_sweep = float("-inf")

    async def sign(self) -> str:
        async with self.rt.sessions() as session:
            note = await service.sign_checkpoint(session, self.key, self.origin, datetime.now(timezone.utc),
                                                 self.verified)
            await session.commit()
            await self.observe(session)
        return note

    async def observe(self, session: AsyncSession) -> None:
        """Set the gauges of the tree's size and of the latest checkpoint (its size and when it was signed)."""
        latest = await repository.latest_checkpoint(session)
        AUDIT_TREE_SIZE.set(await repository.size(session))
        if latest:
            AUDIT_CHECKPOINT_SIZE.set(latest["tree_size"])
            AUDIT_CHECKPOINT_TIME.set(latest["signed_at"].timestamp())

    async def sweep(self) -> None:
        """Erase payloads past their retention period (the entries stay, and every proof with them)."""
        now = datetime.now(timezone.utc)
        cutoff = now - timedelta(days=self.rt.settings.payload_retention_days)
        async with self.rt.sessions() as session:
            erased = await service.erase(session, reason="retention", actor="audit service", now=now, stored_before=cutoff,
                                         head=self.head)
            await session.commit()
        if erased:
            log.info("payloads past retention erased", extra={"count": len(erased)})

    async def run(self) -> None:
        interval = self.rt.settings.checkpoint_interval_seconds
        while not self.rt.stopping.is_set():
            try:
                await self.sign()
                loop_time = asyncio.get_running_loop().time()
                if loop_time - self._last_sweep >= RETENTION_SWEEP_SECONDS:
                    await self.sweep()
                    self._last_sweep = loop_time
            except service.TamperError:
                log.critical("the stored log contradicts a signed checkpoint; no checkpoint signed", exc_info=True)
            except Exception:  # the database may be away for a while: keep trying, never kill the consumer
                log.exception("checkpoint or retention sweep failed")
            try:
                await asyncio.wait_for(self.rt.stopping.wait(), timeout=interval if interval > 0 else None)
            except asyncio.TimeoutError:
                pass


def build(settings: Settings | None = None) -> tuple[Runtime, FastAPI]:
    settings = settings or get_settings()
    rt = Runtime("audit", settings.audit_port, settings)
    head = service.Head()  # one appender state per process: the consumer, the API and the sweep take turns on the lock
    checkpointer = Checkpointer(rt, keys.load_signing_key(settings), keys.origin(settings), head)
    rt.consume("audit", [t.name for t in topics.CATALOGUE], Recorder(rt, head), max_records=settings.audit_max_records,
               fetch_max_wait_ms=settings.audit_fetch_max_wait_ms, fetch_min_bytes=settings.background_fetch_min_bytes)
    rt.workers.append(checkpointer.run)
    app = rt.app()
    app.include_router(router(rt, checkpointer, head))
    return rt, app
