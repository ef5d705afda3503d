"""API keys in memory, so that a request is authenticated without a database round trip.

A change to a key row (its revocation) notifies `KEYS_CHANNEL` with the key's hash when it
commits (a trigger, migration 0004), and every gateway instance drops that key at once: a revoked
key is refused within a second everywhere. Entries also expire after `ttl` seconds. While the
LISTEN connection is down a notification could be missed, so the cache is bypassed (every request
looks its key up, as before) and emptied when the connection comes back.
"""
from __future__ import annotations

import time

from services.gateway import repository
from services.gateway.listen import Listener
from shared.auth import Principal
from shared.service import Runtime

KEYS_CHANNEL = "gateway_keys"
Found = tuple[Principal, frozenset[str] | None]  # the key's principal and the posts it may submit for
MAX_ENTRIES = 10_000  # active keys only are kept; past this many, start afresh rather than grow


class KeyCache:
    def __init__(self, rt: Runtime, ttl: float = 30.0) -> None:
        self.rt, self.ttl = rt, ttl
        self._entries: dict[str, tuple[float, Found]] = {}
        self._changes = 0  # notifications seen: a lookup racing one must not cache what it read
        self.listener = Listener(rt, "api-key cache", {KEYS_CHANNEL: self._changed}, on_connect=self._forget_all)

    def _changed(self, key_hash: str) -> None:
        self._changes += 1
        self._entries.pop(key_hash, None)

    def _forget_all(self) -> None:
        self._changes += 1
        self._entries.clear()

    async def principal(self, key_hash: str) -> Found | None:
        """The active key's principal and posts, or None for an unknown or revoked key."""
        listening, now = self.listener.listening.is_set(), time.monotonic()
        hit = self._entries.get(key_hash)
        if listening and hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        changes = self._changes
        async with self.rt.sessions() as session:
            found = await repository.principal_for_key(session, key_hash)
        if found is None or not self.listener.listening.is_set() or changes != self._changes:
            self._entries.pop(key_hash, None)
        else:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = (now, found)
        return found
