"""The database itself keeps the log append-only: privileges for the service role, triggers for everyone."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.integration.conftest import in_session
from tests.integration.test_audit_log import append_records, drop_database, own_database, sign
from tests.unit.test_audit_entry import submitted_record

pytestmark = pytest.mark.stack
LOG_TABLES = ("entries", "tree_nodes", "checkpoints")
CHANGES = ("UPDATE {t} SET {c} = {c}", "DELETE FROM {t}", "TRUNCATE {t}")
COLUMN = {"entries": "entry", "tree_nodes": "hash", "checkpoints": "note", "payloads": "body"}


@pytest.fixture(scope="module")
async def filled(settings):
    s = await own_database(settings, "appendonly")
    await append_records(s, [("alerts.submitted", 0, i, submitted_record()) for i in range(3)])
    await sign(s)
    yield s
    await drop_database(s)


def statements(tables) -> list[tuple[str, str]]:
    return [(t, sql.format(t=t, c=COLUMN[t])) for t in tables for sql in CHANGES]


@pytest.mark.parametrize("table,statement", statements(LOG_TABLES))
async def test_the_service_role_may_only_insert_and_select(filled, table, statement):
    with pytest.raises(DBAPIError, match=f"permission denied for table {table}"):
        await in_session(filled, "audit", lambda s: s.execute(text(statement)))


@pytest.mark.parametrize("table,statement", statements(LOG_TABLES))
async def test_even_the_owner_is_refused_by_the_triggers(filled, table, statement):
    with pytest.raises(DBAPIError, match=r"append-only: (UPDATE|DELETE|TRUNCATE) refused"):
        await in_session(filled, "audit_owner", lambda s: s.execute(text(statement)))


@pytest.mark.parametrize("statement", [
    "ALTER TABLE entries DISABLE TRIGGER entries_no_update_delete", "DROP TABLE entries",
    "DROP TRIGGER entries_no_truncate ON entries", "ALTER TABLE entries OWNER TO audit",
    "CREATE TABLE entries_copy (x int)",
])
async def test_the_service_role_cannot_take_the_protection_away(filled, statement):
    with pytest.raises(DBAPIError, match="must be owner|permission denied"):
        await in_session(filled, "audit", lambda s: s.execute(text(statement)))


async def test_payloads_can_be_erased_but_never_rewritten(filled):
    with pytest.raises(DBAPIError, match="permission denied for table payloads"):
        await in_session(filled, "audit", lambda s: s.execute(text("UPDATE payloads SET body = body")))
    assert await in_session(filled, "audit", lambda s: s.scalar(text("SELECT count(*) FROM payloads"))) == 3


async def test_rows_written_by_the_service_stay_put(filled):
    count = await in_session(filled, "audit", lambda s: s.scalar(text("SELECT count(*) FROM entries")))
    assert count == 3
    owner = await in_session(filled, "audit", lambda s: s.scalar(text(
        "SELECT tableowner FROM pg_tables WHERE schemaname = 'audit' AND tablename = 'entries'")))
    assert owner == "audit_owner"
