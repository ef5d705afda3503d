"""The consumer's batch rules: one handler call per poll, poison bisected out, outages waited out."""
from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiokafka.errors import (
    CorruptRecordException, InvalidProducerEpoch, KafkaConnectionError, MessageSizeTooLargeError,
    OutOfOrderSequenceNumber, ProducerFenced, RecordTooLargeError, TopicAuthorizationFailedError,
)
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings as hsettings, strategies as st
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from shared import failures, kafka
from shared.alerts import Alert
from shared.kafka import EventConsumer, deadletter_of
from shared.settings import Settings


class Producer:
    """Stands in for the service's producer: keeps the dead letters it was given."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send_and_wait(self, topic, value, key, headers):
        self.sent.append({"topic": topic, "value": value, "key": key, "headers": headers})


def record(topic: str, partition: int, offset: int, value: bytes = b"ok") -> ConsumerRecord:
    return ConsumerRecord(topic, partition, offset, 0, 0, b"k", value, None, 1, len(value), (("event-id", b"e"),))


def facts(sent: dict) -> dict[str, str]:
    return deadletter_of(replace(record("x", 0, 0), headers=tuple(sent["headers"])))


def poll(partitions: int = 8, per: int = 3, poison: set[tuple[int, int]] = frozenset()) -> list[ConsumerRecord]:
    return [record("t.in", p, o, b"bad" if (p, o) in poison else b"ok") for p in range(partitions) for o in range(per)]


@pytest.fixture(autouse=True)
def fast(monkeypatch):
    monkeypatch.setattr(kafka, "BACKOFF_SECONDS", (0.001, 0.004))
    monkeypatch.setattr(kafka, "CONFIRM_SECONDS", 0.001)


def consumer(handler, probes=()) -> tuple[EventConsumer, Producer]:
    c = EventConsumer(Settings(), group="t.g", topics=["t.in"], handler=handler, deadletter_topic="t.svc.deadletter",
                      probes=probes)
    c.producer = Producer()
    return c, c.producer


class Store:
    """A handler with one transaction per call: all of a call's records or none."""

    def __init__(self, fail=lambda r: ValueError("bad record")) -> None:
        self.calls: list[int] = []
        self.kept: list[tuple[int, int]] = []
        self.fail = fail

    async def __call__(self, records):
        self.calls.append(len(records))
        for r in records:
            if r.value == b"bad":
                raise self.fail(r)
        self.kept += [(r.partition, r.offset) for r in records]


async def test_a_clean_poll_of_many_partitions_is_one_handler_call():
    store = Store()
    c, producer = consumer(store)
    await c._handle(poll())
    assert store.calls == [24] and len(store.kept) == 24 and not producer.sent


async def test_the_poison_record_alone_goes_to_the_dead_letter_topic_with_its_coordinates():
    store = Store()
    c, producer = consumer(store)
    await c._handle(poll(poison={(5, 1)}))
    assert sorted(store.kept) == sorted((p, o) for p in range(8) for o in range(3) if (p, o) != (5, 1))
    (letter,) = producer.sent
    assert letter["topic"] == "t.svc.deadletter" and letter["value"] == b"bad" and letter["key"] == b"k"
    found = facts(letter)
    assert found["group"] == "t.g" and found["topic"] == "t.in" and found["partition"] == "5" and found["offset"] == "1"
    assert found["error_class"] == "ValueError" and ("event-id", b"e") in letter["headers"]
    assert len(store.calls) <= 2 * 5 + 3, "bisection, not one call per record"


@hsettings(max_examples=60, deadline=None)
@given(st.sets(st.tuples(st.integers(0, 7), st.integers(0, 4)), max_size=6))
async def test_every_good_record_is_kept_once_and_every_poison_dead_lettered_once(poison):
    store = Store()
    c, producer = consumer(store)
    await c._handle(poll(per=5, poison=poison))
    everything = {(p, o) for p in range(8) for o in range(5)}
    assert sorted(store.kept) == sorted(everything - poison)
    assert sorted((int(facts(s)["partition"]), int(facts(s)["offset"])) for s in producer.sent) == sorted(poison)


async def test_a_failure_a_probe_shares_is_an_outage_retried_until_it_ends():
    down = {"probe": 3}

    async def probe():
        if down["probe"]:
            down["probe"] -= 1
            raise ConnectionRefusedError("database away")

    store = Store(fail=lambda r: RuntimeError("whatever the database said"))
    c, producer = consumer(store, probes=[probe])
    records = poll(partitions=2, per=2, poison={(1, 1)})

    async def heal():  # the "bad" record was only bad while the database was away
        while down["probe"]:
            await asyncio.sleep(0.001)
        records[3].value = b"ok"

    await asyncio.gather(c._handle(records), heal())
    assert not producer.sent and len(store.kept) == 4
    assert store.calls[:4] == [4, 4, 4, 4], "the same batch, not split, while the probe failed"


async def test_connection_errors_are_outages_even_when_the_probes_answer():
    tries = {"n": 0}

    async def handler(records):
        tries["n"] += 1
        if tries["n"] < 4:
            raise KafkaConnectionError("broker gone for a moment")

    c, producer = consumer(handler, probes=[lambda: asyncio.sleep(0)])
    await c._handle(poll(partitions=1, per=1))
    assert tries["n"] == 4 and not producer.sent


async def test_a_dead_letter_that_fails_again_is_not_sent_anywhere():
    async def handler(records):
        raise ValueError("cannot log it either")

    c, producer = consumer(handler)
    letter = replace(record("t.svc.deadletter", 0, 0), headers=(("blonet-deadletter-group", b"t.g"),))
    await c._handle([letter])
    assert producer.sent == []


async def test_a_stop_during_an_outage_leaves_without_committing():
    async def handler(records):
        raise OSError("network unreachable")

    c, _ = consumer(handler)
    task = asyncio.create_task(c._handle(poll(partitions=1, per=1)))
    await asyncio.sleep(0.05)
    c.stop()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c._done == {}


def test_failures_are_described_without_the_data():
    secret = "Ivanov\x00Petr"
    try:
        Alert.model_validate({"sender_agency": "kg-sbs", "category": "drugs", "severity": "severe", "urgency": "immediate",
                              "certainty": "likely", "headline": secret})
    except ValidationError as exc:
        text = failures.describe(exc)
    assert text == "headline: Value error, control character U+0000 is not allowed" and "Ivanov" not in text
    try:
        {"x": 1}[secret]
    except KeyError as exc:
        assert "Ivanov" not in failures.describe(exc) and "KeyError in" in failures.describe(exc)
    try:
        b"\xffIvanov".decode()
    except UnicodeDecodeError as exc:
        assert failures.describe(exc) == "utf-8 invalid start byte at byte 0"


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"value {'Ivanov'!r} refused")
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate, outage", [("57P01", True), ("08006", True), ("40001", True), ("53300", True),
                                              ("22P05", False), ("22021", False), ("23505", False)])
def test_database_errors_are_outages_by_their_sqlstate_class(sqlstate, outage):
    exc = DBAPIError("INSERT …", None, PgError(sqlstate))
    assert failures.transient(exc) is outage
    assert failures.describe(exc) == f"PgError (SQLSTATE {sqlstate})"


def test_plain_failures_are_not_outages_and_network_ones_are():
    assert not failures.transient(ValueError("x")) and not failures.transient(KeyError("x"))
    assert failures.transient(ConnectionResetError()) and failures.transient(TimeoutError())
    assert failures.transient(KafkaConnectionError("x"))


def test_kafka_errors_are_outages_unless_the_record_caused_them():
    # Seen in CI: after a whole-cluster restart routing's producer got OutOfOrderSequenceNumber,
    # the probes answered, and three alerts were dead-lettered after 5 of their 7 deliveries left.
    for exc in (OutOfOrderSequenceNumber(), InvalidProducerEpoch(), ProducerFenced(), TopicAuthorizationFailedError()):
        assert failures.transient(exc), exc
    assert failures.producer_broken(OutOfOrderSequenceNumber()) and not failures.producer_broken(KafkaConnectionError())
    for exc in (MessageSizeTooLargeError(), RecordTooLargeError(), CorruptRecordException()):
        assert not failures.transient(exc) and not failures.producer_broken(exc), exc


async def test_a_lost_producer_sequence_is_retried_as_an_outage_and_reported_for_recovery():
    broken = {"left": 2}
    told: list[Exception] = []

    async def handler(records):
        if broken["left"]:
            broken["left"] -= 1
            raise OutOfOrderSequenceNumber()

    async def on_outage(exc):
        told.append(exc)

    c, producer = consumer(handler, probes=[lambda: asyncio.sleep(0)])  # the probes answer: no outage by them
    c.on_outage = on_outage
    await c._handle(poll(partitions=2, per=2))
    assert not producer.sent, "nothing dead-lettered"
    assert [type(e) for e in told] == [OutOfOrderSequenceNumber] * 2


async def test_an_event_its_topics_producer_does_not_publish_is_dead_lettered_before_the_handler():
    """Topic ownership: on a topic only the gateway writes, a routing decision is refused whoever wrote it."""
    from shared import topics

    accepts = topics.accepted_events(Settings(topic_prefix="t."), ["alerts.submitted", "gateway.deadletter"])
    assert accepts == {"t.alerts.submitted": {"alert.submitted", "alert.forwarded"}}  # dead-letter topics carry any
    store = Store()
    c, producer = consumer(store)
    c.accepts = accepts
    submitted, routed = b'{"type": "alert.submitted"}', b'{"payload": {}, "type": "alert.routed"}'
    await c._handle([record("t.alerts.submitted", 0, 0, submitted), record("t.alerts.submitted", 0, 1, routed),
                     record("t.alerts.submitted", 0, 2, b"not json"), record("t.other", 0, 0, routed)])
    # Unreadable records are the handler's to judge; a topic without a list is not checked.
    assert store.calls == [3] and (0, 1) not in store.kept
    [sent] = producer.sent
    assert sent["value"] == routed and facts(sent)["error_class"] == "ForeignEvent"
    assert "'alert.routed' is not published on t.alerts.submitted" in facts(sent)["error"]
    await c._handle([record("t.alerts.submitted", 0, 3, b'{"type": "Ivan Petrov"}')])
    assert "an unknown type is not published" in facts(producer.sent[-1])["error"]  # record strings are never quoted
    assert "Ivan" not in facts(producer.sent[-1])["error"]


@pytest.mark.parametrize("value,claimed", [(b'{"type": "x"}', "x"), (b'{"type": 1}', None), (b"[1]", None),
                                           (b"\xff", None), (None, None), (b'"type"', None)])
def test_the_claimed_event_type_is_read_only_from_a_json_object(value, claimed):
    assert kafka.event_type_of(value) == claimed
