"""A poll's records from many partitions are handled in one database transaction, a poison one among them too."""
from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition
from sqlalchemy import func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from services.audit.consumer import Recorder
from services.audit.models import entries
from services.gateway.consumer import StatusView
from services.gateway.models import recipients
from shared import db, topics
from shared.events import DeliveryRequested, Envelope, ViewProfile
from shared.ids import new_id
from shared.kafka import deadletter_of, envelope_headers, make_consumer, make_producer
from shared.service import Runtime
from shared.settings import Settings
from tests.conftest import APP_ENV, port
from tests.integration.conftest import read_topic
from tests.integration.test_audit_log import drop_database, own_database

pytestmark = pytest.mark.stack
TOPIC = topics.DELIVERIES_REQUESTED  # 12 partitions
# The handler's connection, the probe's and one spare, all opened before counting and never closed
# (no overflow): a connection opened inside a window would count its set-up statements as commits.
POOL = 3


def request(agency: str = "kg-sbs") -> Envelope:
    aid = new_id()
    req = DeliveryRequested(delivery_id=new_id(), endpoint="ep-blo-dostuk", agency=agency, url="https://x.example/",
                            profile=ViewProfile.FULL, body={})
    return Envelope.wrap(req, origin_node="test", alert_id=aid, thread_id=aid)


def superuser_engine(settings: Settings, database: str):
    return create_async_engine(URL.create("postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host,
                                          port=settings.pg_port, database=database), isolation_level="AUTOCOMMIT")


async def commits(settings: Settings, rt: Runtime) -> int:
    """The database's committed transactions so far, once every pooled backend has reported its counts.

    A backend reports at most once a second (else after 10 s idle): ask each pooled one to report
    at once, in a transaction that rolls back, so the asking adds no commit. Then wait until the figure holds still over more than a report interval, so a backend that
    exited just before (its counts are reported on exit) is not counted in the next window.
    """
    conns = [await rt.engine.connect() for _ in range(POOL)]
    for conn in conns:
        await conn.execute(text("SELECT pg_stat_force_next_flush()"))
    for conn in conns:
        await conn.close()
    await asyncio.sleep(0.5)  # each reports on going idle after its rollback
    admin = superuser_engine(settings, "postgres")
    query = text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d")
    try:
        async with admin.connect() as conn:
            # Settled: the same figure twice, over more than a backend's report interval (1 s).
            seen = await conn.scalar(query, {"d": settings.pg_database})
            for _ in range(10):
                await asyncio.sleep(1.1)
                await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
                now = await conn.scalar(query, {"d": settings.pg_database})
                if now == seen:
                    return now
                seen = now
            return seen
    finally:
        await admin.dispose()


async def without_autovacuum(settings: Settings) -> None:
    """Keep autovacuum out of a test database: its workers' transactions count in `xact_commit` too."""
    admin = superuser_engine(settings, settings.pg_database)
    try:
        async with admin.connect() as conn:
            names = (await conn.execute(text("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                             "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"))).scalars()
            for name in list(names):
                await conn.execute(text(f"ALTER TABLE {name} SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)"))
    finally:
        await admin.dispose()


async def one_poll(settings: Settings, envelopes: dict[int, list[Envelope]]) -> list:
    """Produce the envelopes to their partitions, then read them all back as one batch."""
    producer = make_producer(settings)
    await producer.start()
    name = settings.topic(TOPIC.name)
    try:
        for partition, envs in envelopes.items():
            for env in envs:
                await producer.send_and_wait(name, env.to_bytes(), key=b"k", partition=partition, headers=envelope_headers(env))
    finally:
        await producer.stop()
    consumer = make_consumer(settings, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(name, p) for p in range(TOPIC.partitions)]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            consumer.seek(tp, ends[tp] - len(envelopes.get(tp.partition, [])))
        records = []
        while len(records) < sum(map(len, envelopes.values())):
            for part in (await consumer.getmany(timeout_ms=500)).values():
                records += part
        return records
    finally:
        await consumer.stop()


async def deadletters(settings: Settings, service: str) -> list:
    t = topics.deadletter_topic(service)
    return await read_topic(settings, settings.topic(t.name), t.partitions)


HANDLERS = {"audit": Recorder, "gateway": StatusView}


@pytest.fixture(params=sorted(HANDLERS))
async def service(settings, request):
    """A service's handler on a database of its own (no other process commits there), with the service's consumer."""
    name = request.param
    s = await own_database(settings, f"batch_{name}")
    await db.migrate(s, name)
    await without_autovacuum(s)
    s = s.model_copy(update={"topic_prefix": f"{APP_ENV['BLONET_TOPIC_PREFIX']}batch{name}."})
    await topics.create_topics(s)
    rt = Runtime(name, port(60), s)
    rt.engine = create_async_engine(db.service_url(s, name), pool_size=POOL, max_overflow=0, hide_parameters=True)
    opened = [await rt.engine.connect() for _ in range(POOL)]
    for conn in opened:
        await conn.close()
    rt.sessions = db.make_sessionmaker(rt.engine)
    rt.consume(name, [TOPIC.name], HANDLERS[name](rt))
    rt.producer = make_producer(s)
    await rt.producer.start()
    (consumer,) = rt.consumers
    consumer.producer = rt.producer
    try:
        yield name, s, rt, consumer
    finally:
        await rt.producer.stop()
        await rt.engine.dispose()
        await drop_database(s)


async def logged(rt: Runtime, envs: list[Envelope]) -> int:
    """How many of the envelopes the service has stored: audit entries, or the gateway's recipient rows."""
    table, column = (entries, entries.c.event_id) if rt.name == "audit" else (recipients, recipients.c.alert_id)
    ids = [e.event_id if rt.name == "audit" else e.alert_id for e in envs]
    async with rt.sessions() as session:
        return await session.scalar(select(func.count()).select_from(table).where(column.in_(ids)))


async def test_many_partitions_and_one_poison_record_are_one_transaction(service):
    name, s, rt, consumer = service
    warm = await one_poll(s, {p: [request()] for p in range(TOPIC.partitions)})
    await consumer._handle(warm)

    clean = {p: [request(), request()] for p in range(TOPIC.partitions)}
    records = await one_poll(s, clean)
    assert len({r.partition for r in records}) == 12
    before = await commits(s, rt)
    await consumer._handle(records)
    delta = await commits(s, rt) - before
    assert delta == 1, f"a clean poll of 12 partitions is one transaction, not {delta}"
    assert await logged(rt, [e for envs in clean.values() for e in envs]) == 24

    poison = request(agency="kg\x00sbs")  # PostgreSQL refuses NUL in text: the database, not the parser, fails it
    mixed = {p: [request(), request()] for p in range(TOPIC.partitions)}
    mixed[5].insert(1, poison)
    records = await one_poll(s, mixed)
    before = await commits(s, rt)
    await consumer._handle(records)
    assert await commits(s, rt) - before == 1, "the good records of a poll with a poison one still commit once"
    good = [e for envs in mixed.values() for e in envs if e is not poison]
    assert await logged(rt, good) == 24 and await logged(rt, [poison]) == 0

    (letter,) = await deadletters(s, name)
    source = next(r for r in records if r.value == poison.to_bytes())
    facts = deadletter_of(letter)
    assert facts["group"] == s.topic(name) and facts["topic"] == source.topic
    assert (facts["partition"], facts["offset"]) == (str(source.partition), str(source.offset))
    assert "SQLSTATE 22021" in facts["error"], facts  # PostgreSQL's character_not_in_repertoire, no value quoted
    assert letter.value == poison.to_bytes() and dict(letter.headers)["event-id"] == str(poison.event_id).encode()
