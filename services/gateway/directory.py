"""The network directory routing last activated, as the gateway knows it: followed on `routing.rules`.

The gateway may not read routing's tables nor import its code, so it reads the announcements
routing makes of every activation (each carries the full content) from the start of the topic
and keeps the latest. Until one arrives it uses the network files routing bootstraps from.
"""
from __future__ import annotations

import asyncio
import logging

import yaml
from aiokafka import TopicPartition
from pydantic import ValidationError

from shared import topics
from shared.directory import Directory
from shared.events import Envelope, RulesChanged
from shared.kafka import make_consumer
from shared.settings import Settings

log = logging.getLogger(__name__)


def directory_of(value: bytes) -> tuple[str, Directory] | None:
    """Return (ruleset hash, directory) from a routing.rules record, or None for anything else."""
    try:
        event = Envelope.from_bytes(value).payload_as(RulesChanged)
        return event.ruleset_hash, Directory.model_validate(event.content["directory"])
    except (ValueError, KeyError, TypeError):  # ValidationError is a ValueError
        return None


class DirectoryUnavailable(Exception):
    """No network directory is known yet (no file, no announcement on routing.rules)."""


class ActiveDirectory:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ruleset_hash: str | None = None
        self.current = self._from_files()

    def _from_files(self) -> Directory | None:
        path = self.settings.network_dir / "directory.yaml"
        try:
            return Directory.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValidationError):
            log.warning("no readable network directory file; waiting for routing's announcement", extra={"path": str(path)})
            return None

    def apply(self, value: bytes) -> None:
        found = directory_of(value)
        if found is None:
            log.warning("skipped a routing.rules record that carries no valid directory")
            return
        self.ruleset_hash, self.current = found

    def may_originate(self, agency: str) -> bool:
        """Whether the directory lets `agency` submit alerts (an agency it does not list: routing decides)."""
        listed = {a.id: a for a in self.current.agencies} if self.current else {}
        return agency not in listed or listed[agency].originates

    def names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The ids an alert may name as addressees (agencies, units) and as its post; 503 while none is known."""
        if self.current is None:
            raise DirectoryUnavailable()
        return self.current.addressable(), frozenset(p.id for p in self.current.posts)

    def cap_sender_problem(self, agency: str, sender: str) -> str | None:
        """Why `agency` may not send CAP as `sender` (another agency's, or not one of its own), or None."""
        return self.current.cap_sender_problem(agency, sender) if self.current else None

    def _agency(self, agency: str):
        return next((a for a in self.current.agencies if a.id == agency), None) if self.current else None

    def cap_signing(self, agency: str) -> tuple[tuple[str, ...], bool]:
        """The certificates (PEM) `agency`'s CAP signatures are checked against, and whether it must sign."""
        found = self._agency(agency)
        return (found.cap_signing_certificates, found.require_signed_cap) if found else ((), False)

    def cap_agencies(self) -> dict[str, str]:
        """The agency each CAP sender the directory lists belongs to."""
        return {s: a.id for a in self.current.agencies for s in a.cap_senders} if self.current else {}

    def own_cap_senders(self, agency: str) -> tuple[str, ...]:
        """The CAP senders the directory lists for `agency` (only these may name messages BLOnet never received)."""
        found = self._agency(agency)
        return found.cap_senders if found else ()

    async def follow(self, stopping: asyncio.Event) -> None:
        """Read routing.rules from its start and keep following it; no consumer group, no offsets."""
        # A long poll: a new version is answered at once, and an idle follower costs the broker little.
        consumer = make_consumer(self.settings, enable_auto_commit=False, fetch_max_wait_ms=self.settings.idle_fetch_max_wait_ms)
        tp = TopicPartition(self.settings.topic(topics.ROUTING_RULES.name), 0)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while not stopping.is_set():
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    self.apply(record.value)
        finally:
            await consumer.stop()
