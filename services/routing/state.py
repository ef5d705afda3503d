"""The active network version: loaded from the database, hot-swapped when another instance changes it."""
from __future__ import annotations

import asyncio
import logging

from services.routing import repository
from services.routing.compiled import Compiled
from services.routing.network import Network, load_network, network_from
from shared import topics
from shared.events import Envelope, RulesChanged
from shared.kafka import send
from shared.service import Runtime

log = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # every instance follows an activation within this


class ActiveNetwork:
    """Holds the compiled active version; `apply` validates, stores, activates and announces a new one."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.current: Compiled | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """Load the active version; on a fresh database, bootstrap it from the network files."""
        async with self.rt.sessions() as session:
            found = await repository.active_version(session)
        if found is None:
            await self.apply(load_network(self.rt.settings.network_dir), by="routing", source="bootstrap")
        else:
            self.current = Compiled(network_from(found[1], f"version {found[0]}"))
        log.info("network version active", extra={"ruleset_hash": self.current.hash})

    async def apply(self, network: Network, *, by: str, source: str) -> bool:
        """Activate `network` unless it is already active; return whether it changed."""
        async with self._lock:
            async with self.rt.sessions() as session:
                await repository.lock_activation(session)
                previous = await repository.active_hash(session)
                if previous == network.hash:
                    self.current = self.current or Compiled(network)
                    return False
                await repository.store_version(session, hash=network.hash, content=network.content(), by=by)
                await repository.activate(session, hash=network.hash, by=by, source=source)
                await session.commit()
            self.current = Compiled(network)
            event = RulesChanged(ruleset_hash=network.hash, previous_hash=previous, changed_by=by, source=source,
                                 content=network.content())
            env = Envelope.wrap(event, origin_node=self.rt.settings.node_id, alert_id=None, thread_id=None)
            await (await send(self.rt.producer, self.rt.settings.topic(topics.ROUTING_RULES.name), "ruleset", env))
            log.info("network version activated", extra={"ruleset_hash": network.hash, "by": by, "source": source})
            return True

    async def follow(self) -> None:
        """Switch to a version another instance (or the CLI) activated."""
        while not self.rt.stopping.is_set():
            await asyncio.sleep(POLL_SECONDS)
            try:
                async with self.rt.sessions() as session:
                    if await repository.active_hash(session) == self.current.hash:
                        continue
                    found = await repository.active_version(session)
                self.current = Compiled(network_from(found[1], f"version {found[0]}"))
                log.info("followed a network activation", extra={"ruleset_hash": found[0]})
            except Exception:
                log.warning("could not check the active network version; keeping the current one", exc_info=True)
