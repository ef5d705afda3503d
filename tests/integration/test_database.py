"""The database enforces the service boundaries (the audit log's immutability: test_audit_append_only.py)."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from shared import db
from tests.integration.conftest import in_session

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("reader,owner,table", [
    ("routing", "gateway", "api_keys"), ("notifier", "audit", "entries"),
    ("audit", "notifier", "endpoints"), ("gateway", "routing", "decisions"),
])
async def test_no_service_reads_another_services_tables(settings, reader, owner, table):
    with pytest.raises(DBAPIError, match="permission denied"):
        await in_session(settings, reader, lambda s: s.execute(text(f"SELECT * FROM {owner}.{table}")))


async def test_migrations_are_idempotent(settings):
    for service in db.SERVICES:
        await db.migrate(settings, service)
    await db.bootstrap(settings)


async def test_an_autocommit_session_sends_no_begin_except_inside_the_consumers_transaction(settings):
    """Routing stores a poll's decisions in one statement that commits by itself (no BEGIN or COMMIT
    round trip); inside `one_transaction` (the consumer isolating a poison record) that session is a
    savepoint like any other. `txid_current()` names the statement's transaction."""
    engine = db.make_engine(settings, "routing", pool_size=1)
    sessions = db.make_sessionmaker(engine)

    async def own_transaction_per_statement(session) -> bool:
        first = await session.scalar(text("SELECT txid_current()"))
        return first != await session.scalar(text("SELECT txid_current()"))

    try:
        async with sessions.autocommit() as session:
            assert await own_transaction_per_statement(session)
        async with sessions() as session:
            assert not await own_transaction_per_statement(session)
        async with db.one_transaction(engine):
            async with sessions.autocommit() as session:
                assert not await own_transaction_per_statement(session)
                joined = await session.scalar(text("SELECT txid_current()"))
            async with sessions() as session:
                assert await session.scalar(text("SELECT txid_current()")) == joined, "both in the consumer's transaction"
    finally:
        await engine.dispose()
