"""The database enforces the service boundaries and the audit log's immutability."""
from __future__ import annotations

import asyncio

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


@pytest.mark.parametrize("statement", [
    "UPDATE entries SET event_type = 'forged'", "DELETE FROM entries", "TRUNCATE entries",
])
async def test_audit_entries_refuse_change(settings, services, statement):
    from tests.integration.test_consumer_group import count_logged, produce

    ids = await produce(settings, 1)  # the running audit service logs it: the table is not empty
    for _ in range(100):
        if await count_logged(settings, ids):
            break
        await asyncio.sleep(0.1)
    with pytest.raises(DBAPIError, match="append-only"):
        await in_session(settings, "audit", lambda s: s.execute(text(statement)))
    assert await count_logged(settings, ids) == 1


async def test_migrations_are_idempotent(settings):
    for service in db.SERVICES:
        await db.migrate(settings, service)
    await db.bootstrap(settings)
