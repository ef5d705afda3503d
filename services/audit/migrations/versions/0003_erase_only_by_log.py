"""Payloads leave only through a logged erasure.

Until now the service role `audit` held DELETE on `payloads`, so the service (or anyone with its
credentials) could remove a payload without the `audit.erasure` entry that says so. The role loses
DELETE; the owner's SECURITY DEFINER function `erase_logged_payloads(erasure)` deletes exactly the
payloads that the `audit.erasure` entry at index `erasure` (already in the log) lists, and nothing
else. So every payload gone has an entry in the log saying which, when, by whom and why.

Revision ID: 0003
"""
from alembic import op

revision = "0003"
down_revision = "0002"

SERVICE_ROLE = "audit"


def upgrade() -> None:
    op.execute(f"REVOKE DELETE ON payloads FROM {SERVICE_ROLE}")
    op.execute("""
        CREATE FUNCTION erase_logged_payloads(erasure bigint) RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = audit, pg_temp AS $$
        DECLARE
            doc jsonb;
            removed bigint;
        BEGIN
            SELECT convert_from(entry, 'UTF8')::jsonb INTO doc FROM entries WHERE idx = erasure AND type = 'audit.erasure';
            IF doc IS NULL THEN
                RAISE EXCEPTION 'entry % is not an audit.erasure entry: payloads leave only by a logged erasure', erasure;
            END IF;
            DELETE FROM payloads p USING jsonb_array_elements(doc -> 'erased' -> 'indexes') AS run
             WHERE p.idx BETWEEN (run ->> 0)::bigint AND (run ->> 1)::bigint AND p.idx < erasure;
            GET DIAGNOSTICS removed = ROW_COUNT;
            RETURN removed;
        END $$
    """)
    op.execute("REVOKE ALL ON FUNCTION erase_logged_payloads(bigint) FROM PUBLIC")
    op.execute(f"GRANT EXECUTE ON FUNCTION erase_logged_payloads(bigint) TO {SERVICE_ROLE}")


def downgrade() -> None:
    raise RuntimeError("the audit log is append-only; it is never downgraded")
