"""The catalogue of Kafka topics: one place that names each topic, its key and its parties."""
from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared.settings import Settings


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    partitions: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    purpose: str


ALERTS_SUBMITTED = Topic(
    "alerts.submitted", "thread id", 6, ("gateway",), ("routing", "gateway", "audit"),
    "alerts accepted at the edge, and forwards; an alert, its updates/cancels and forwards share the key",
)
ALERTS_ROUTED = Topic(
    "alerts.routed", "thread id", 6, ("routing",), ("gateway", "audit"),
    "routing decisions: recipients with reasons, denials with reason codes",
)
DELIVERIES_REQUESTED = Topic(
    "deliveries.requested", "endpoint id", 12, ("routing",), ("notifier", "gateway", "audit"),
    "one request per recipient endpoint; keyed by endpoint so one endpoint stays in order",
)
DELIVERIES_STATUS = Topic(
    "deliveries.status", "thread id", 6, ("notifier",), ("gateway", "audit"),
    "delivery outcomes: delivered, retrying, failed (dead letter)",
)
ALERTS_ACKNOWLEDGED = Topic(
    "alerts.acknowledged", "thread id", 6, ("gateway",), ("notifier", "gateway", "audit"),
    "recipients' acknowledgements: received, acting, not relevant",
)
DELIVERIES_DEADLETTER = Topic(
    "deliveries.deadletter", "endpoint id", 6, ("notifier",), ("audit",),
    "deliveries given up on (schedule exhausted, 410, unknown or refused endpoint), with the reason",
)
OPERATIONS_ACTIONS = Topic(
    "operations.actions", "target id", 3, ("notifier",), ("audit", "gateway"),
    "operators' acts on delivery state: replay, recover, enable/disable, secret rotation, escalation",
)
ROUTING_RULES = Topic(
    "routing.rules", "ruleset", 1, ("routing",), ("audit", "gateway"),
    "each activation of a network directory and rule set, with its full content and who made it",
)
CATALOGUE = (ALERTS_SUBMITTED, ALERTS_ROUTED, DELIVERIES_REQUESTED, DELIVERIES_STATUS, ALERTS_ACKNOWLEDGED,
             DELIVERIES_DEADLETTER, OPERATIONS_ACTIONS, ROUTING_RULES)


async def create_topics(settings: Settings) -> list[str]:
    """Create every catalogued topic that does not exist yet; return the names created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(settings.topic(t.name), num_partitions=t.partitions, replication_factor=1)
            for t in CATALOGUE
            if settings.topic(t.name) not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # another process won the race: fine
                pass
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def delete_topics(settings: Settings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix` (a test or benchmark run's own); return them."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()
