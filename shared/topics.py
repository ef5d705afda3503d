"""The catalogue of Kafka topics: one place that names each topic, its key and its parties."""
from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from shared import acls
from shared.kafka import DEADLETTER_MAX_BYTES, make_admin
from shared.events import EventType
from shared.settings import Settings


@dataclass(frozen=True)
class Topic:
    name: str
    key: str
    partitions: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    purpose: str
    config: dict[str, str] = field(default_factory=dict, hash=False)  # topic-level broker settings
    # The event types its producers publish; a consumer refuses any other (empty: a dead-letter
    # topic, which carries copies of any record). With the ACLs, only the producer's principal
    # writes the topic, so an event's claims (say, its agency) are the ones that principal checked.
    events: tuple[EventType, ...] = ()


ALERTS_SUBMITTED = Topic(
    "alerts.submitted", "thread id", 6, ("gateway",), ("routing", "gateway", "audit"),
    "alerts accepted at the edge, and forwards; an alert, its updates/cancels and forwards share the key",
    events=(EventType.ALERT_SUBMITTED, EventType.ALERT_FORWARDED),
)
ALERTS_ROUTED = Topic(
    "alerts.routed", "thread id", 6, ("routing",), ("gateway", "audit"),
    "routing decisions: recipients with reasons, denials with reason codes", events=(EventType.ALERT_ROUTED,),
)
DELIVERIES_REQUESTED = Topic(
    "deliveries.requested", "endpoint id", 12, ("routing",), ("notifier", "gateway", "audit"),
    "one request per recipient endpoint; keyed by endpoint so one endpoint stays in order",
    events=(EventType.DELIVERY_REQUESTED,),
)
DELIVERIES_STATUS = Topic(
    "deliveries.status", "thread id", 6, ("notifier",), ("gateway", "audit"),
    "delivery outcomes: delivered, retrying, failed (dead letter)", events=(EventType.DELIVERY_STATUS,),
)
ALERTS_ACKNOWLEDGED = Topic(
    "alerts.acknowledged", "thread id", 6, ("gateway",), ("notifier", "gateway", "audit"),
    "recipients' acknowledgements: received, acting, not relevant", events=(EventType.ALERT_ACKNOWLEDGED,),
)
DELIVERIES_DEADLETTER = Topic(
    "deliveries.deadletter", "endpoint id", 6, ("notifier",), ("audit",),
    "deliveries given up on (schedule exhausted, 410, unknown or refused endpoint), with the reason",
    events=(EventType.DELIVERY_STATUS,),
)
OPERATIONS_ACTIONS = Topic(
    "operations.actions", "target id", 3, ("notifier",), ("audit", "gateway"),
    "operators' acts on delivery state: replay, recover, enable/disable, secret rotation, escalation",
    events=(EventType.OPERATOR_ACTION,),
)
ROUTING_RULES = Topic(
    "routing.rules", "ruleset", 1, ("routing",), ("audit", "gateway"),
    "each activation of a network directory and rule set, with its full content and who made it",
    events=(EventType.RULES_CHANGED,),
)
# Each service's poison records (shared/kafka.py): the source record's key, value and headers,
# plus headers naming the consumer group, the source topic/partition/offset and the error.
SERVICE_DEADLETTERS = tuple(
    Topic(f"{service}.deadletter", "source record's key", 3, (service,), ("audit",),
          f"records {service} could not handle (poison), with where they came from and why",
          {"max.message.bytes": str(DEADLETTER_MAX_BYTES)})
    for service in ("gateway", "routing", "notifier", "audit")
)
CATALOGUE = (ALERTS_SUBMITTED, ALERTS_ROUTED, DELIVERIES_REQUESTED, DELIVERIES_STATUS, ALERTS_ACKNOWLEDGED,
             DELIVERIES_DEADLETTER, OPERATIONS_ACTIONS, ROUTING_RULES, *SERVICE_DEADLETTERS)


def accepted_events(settings: Settings, names: list[str]) -> dict[str, frozenset[str]]:
    """The event types a consumer of these catalogue topics accepts, by prefixed topic name (a topic
    that carries any, a dead-letter topic, is left out: nothing to check there)."""
    by_name = {t.name: t for t in CATALOGUE}
    return {settings.topic(n): frozenset(by_name[n].events) for n in names if n in by_name and by_name[n].events}


def deadletter_topic(service: str) -> Topic:
    """Return the dead-letter topic of `service`."""
    return next(t for t in SERVICE_DEADLETTERS if t.name == f"{service}.deadletter")


async def replication(admin: AIOKafkaAdminClient) -> tuple[int, dict[str, str]]:
    """Replicas and topic config for a new topic: 3 with 2 in sync on a cluster of 3 or more, else 1.

    With acks=all and two replicas in sync required, an accepted record is on two brokers before
    the gateway answers 202, and one broker may die without stopping writes.
    """
    brokers = len((await admin.describe_cluster())["brokers"])
    return (3, {"min.insync.replicas": "2"}) if brokers >= 3 else (1, {})


def new_topic(name: str, partitions: int, replicas: tuple[int, dict[str, str]],
              config: dict[str, str] | None = None) -> NewTopic:
    factor, configs = replicas
    return NewTopic(name, num_partitions=partitions, replication_factor=factor, topic_configs={**configs, **(config or {})})


async def create_topics(settings: Settings) -> list[str]:
    """Create every catalogued topic that does not exist yet, and on an authenticating broker the
    ACLs of its producers and consumers (shared/acls.py); return the names created."""
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        replicas = await replication(admin)
        wanted = [
            new_topic(settings.topic(t.name), t.partitions, replicas, t.config)
            for t in CATALOGUE
            if settings.topic(t.name) not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:  # another process won the race: fine
                pass
        await grant_acls(settings, admin)
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def grant_acls(settings: Settings, admin: AIOKafkaAdminClient | None = None) -> None:
    """Grant each service's ACLs on the catalogue under the settings' prefix (no-op on a PLAINTEXT broker)."""
    if settings.kafka_login() is None:
        return
    own = admin is None
    admin = admin or make_admin(settings)
    if own:
        await admin.start()
    try:
        await acls.grant(admin, acls.bindings(CATALOGUE, settings.topic_prefix))
    finally:
        if own:
            await admin.close()


async def delete_topics(settings: Settings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with `prefix` (a test or benchmark run's own), and every
    ACL on a topic or group so named; return the topics."""
    if not prefix:
        raise ValueError("refusing to delete topics without a prefix")
    admin = make_admin(settings)
    await admin.start()
    try:
        doomed = [name for name in await admin.list_topics() if name.startswith(prefix)]
        if doomed:
            await admin.delete_topics(doomed)
        if settings.kafka_login() is not None:
            await acls.revoke_prefix(admin, prefix)
        return doomed
    finally:
        await admin.close()
