"""The broker is a trust boundary: a client without credentials, with wrong ones, with another service's,
or reaching outside its principal's ACLs is refused by the real broker (SASL/SCRAM + StandardAuthorizer)."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from shared import acls, topics
from shared.kafka import make_admin, make_consumer, make_producer
from shared.settings import Settings

pytestmark = pytest.mark.stack


def as_principal(settings: Settings, user: str, password: str | None = None) -> Settings:
    """The run's settings logged in as `user` (its password from the stack's secrets file unless given)."""
    return settings.model_copy(update={"kafka_username": user, "kafka_password": password})


async def produce(settings: Settings, topic: str) -> None:
    producer = make_producer(settings, request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(producer.start(), 30)
        await asyncio.wait_for(producer.send_and_wait(topic, b"{}", key=b"k"), 30)
    finally:
        await producer.stop()


async def consume(settings: Settings, topic: str, group: str) -> None:
    consumer = make_consumer(settings, topic, group_id=group, auto_offset_reset="earliest", request_timeout_ms=10_000)
    try:
        await asyncio.wait_for(consumer.start(), 30)
        await asyncio.wait_for(consumer.getmany(timeout_ms=2000), 30)
    finally:
        await consumer.stop()


def test_the_stack_logs_in_with_scram(settings):
    assert settings.kafka_login() is not None, "the test stack must run with SASL on (BLONET_SECRETS_FILE)"


async def test_a_client_without_credentials_is_refused(settings):
    anonymous = settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    assert anonymous.kafka_login() is None
    with pytest.raises((KafkaConnectionError, KafkaError, asyncio.TimeoutError)):
        await produce(anonymous, settings.topic(topics.ALERTS_SUBMITTED.name))


@pytest.mark.parametrize("user,password", [("gateway", "not-its-password"), ("mallory", "whatever")])
async def test_a_wrong_password_or_an_unknown_principal_is_refused(settings, user, password):
    with pytest.raises((KafkaConnectionError, KafkaError, asyncio.TimeoutError)):
        await produce(as_principal(settings, user, password), settings.topic(topics.ALERTS_SUBMITTED.name))


async def test_each_service_may_write_its_own_topics(settings):
    """The control for the refusals below: the same clients succeed within their ACLs. (On topics of
    their own, granted like any run's: the run's topics must not carry these bare records.)"""
    own = settings.model_copy(update={"topic_prefix": settings.topic_prefix + "acl."})
    await topics.create_topics(own)
    for topic in topics.CATALOGUE:
        for producer in topic.producers:
            await produce(as_principal(own, producer), own.topic(topic.name))


async def test_another_services_credentials_cannot_write_a_topic_it_does_not_own(settings):
    # Only the gateway writes alerts.submitted: routing's (or the notifier's) login cannot fake a submission,
    # nor can the gateway fake a routing decision or a delivery outcome.
    for user, topic in (("routing", topics.ALERTS_SUBMITTED), ("notifier", topics.ALERTS_SUBMITTED),
                        ("audit", topics.ALERTS_ACKNOWLEDGED), ("gateway", topics.ALERTS_ROUTED),
                        ("gateway", topics.DELIVERIES_STATUS), ("notifier", topics.ROUTING_RULES)):
        assert user not in topic.producers
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(as_principal(settings, user), settings.topic(topic.name))


async def test_a_service_cannot_read_a_topic_it_does_not_consume(settings):
    assert "routing" not in topics.DELIVERIES_STATUS.consumers
    with pytest.raises(TopicAuthorizationFailedError):
        await consume(as_principal(settings, "routing"), settings.topic(topics.DELIVERIES_STATUS.name),
                      settings.topic("routing-probe"))


async def test_a_service_cannot_join_another_services_group(settings):
    # The notifier may read alerts.acknowledged, but not as audit's group (it would steal audit's partitions).
    with pytest.raises(GroupAuthorizationFailedError):
        await consume(as_principal(settings, "notifier"), settings.topic(topics.ALERTS_ACKNOWLEDGED.name),
                      settings.topic("audit"))


async def test_a_topic_outside_the_runs_acls_is_refused(settings):
    """ACLs are literal topic names: the gateway's grant on this run's alerts.submitted does not
    reach a look-alike topic (another prefix), even one that exists."""
    stray = settings.model_copy(update={"topic_prefix": "x" + settings.topic_prefix})
    admin = make_admin(settings)
    await admin.start()
    try:
        from aiokafka.admin import NewTopic

        await admin.create_topics([NewTopic(stray.topic(topics.ALERTS_SUBMITTED.name), 1, 1)])
        with pytest.raises(TopicAuthorizationFailedError):
            await produce(as_principal(settings, "gateway"), stray.topic(topics.ALERTS_SUBMITTED.name))
    finally:
        await admin.delete_topics([stray.topic(topics.ALERTS_SUBMITTED.name)])
        await admin.close()


async def test_the_broker_holds_exactly_the_catalogues_acls(settings):
    admin = make_admin(settings)
    await admin.start()
    try:
        wanted = acls.bindings(topics.CATALOGUE, settings.topic_prefix)
        for topic in topics.CATALOGUE:
            name = settings.topic(topic.name)
            assert await acls.describe(admin, acls.TOPIC, name) == [a for a in wanted if a.name == name]
    finally:
        await admin.close()


async def test_a_service_cannot_pass_off_another_services_event_on_its_own_topic(settings, services):
    """The gateway's login may write alerts.acknowledged, but a routing decision written there is refused
    by every consumer (dead-lettered as ForeignEvent), so the status view never shows it as routed."""
    from shared.kafka import deadletter_of
    from tests.integration.conftest import read_topic
    from tests.security.test_poison import nul_event

    forged = nul_event(topics.ALERTS_ROUTED).replace(b"\\u0000", b"-")  # a well-formed alert.routed
    name = settings.topic(topics.ALERTS_ACKNOWLEDGED.name)
    producer = make_producer(as_principal(settings, "gateway"))
    await producer.start()
    try:
        meta = await producer.send_and_wait(name, forged, key=b"forged")
    finally:
        await producer.stop()
    wanted = {settings.topic(g) for g in ("gateway-status", "notifier-acks", "audit")}
    found: dict[str, dict] = {}
    for _ in range(150):
        for t in topics.SERVICE_DEADLETTERS:
            for record in await read_topic(settings, settings.topic(t.name), t.partitions):
                facts = deadletter_of(record) or {}
                if (facts.get("topic"), int(facts.get("offset", -1)), int(facts.get("partition", -1))) == (
                        name, meta.offset, meta.partition):
                    found[facts["group"]] = facts
        if wanted <= set(found):
            break
        await asyncio.sleep(0.2)
    assert set(found) == wanted, found
    assert {f["error_class"] for f in found.values()} == {"ForeignEvent"}
    assert all("'alert.routed' is not published on" in f["error"] for f in found.values())
