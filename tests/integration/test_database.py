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
