"""The Merkle log in PostgreSQL: appends, dedupe, checkpoints, proofs, erasure, and no fork under concurrency."""
from __future__ import annotations

import asyncio
import re
import base64
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from services.audit import entry, repository, service
from services.audit.models import entries, payloads
from services.audit.service import ProofRequestError
from shared import db
from shared.auditproof import verify_log
from shared.checkpoint import SignerKey, open_checkpoint
from shared.ids import new_id
from shared.merkle import Frontier, leaf_hash, verify_consistency, verify_inclusion
from shared.settings import Settings
from tests.integration.conftest import in_session
from tests.unit.test_audit_entry import submitted_record

pytestmark = pytest.mark.stack
KEY = SignerKey.generate("blonet-test/audit")


def now() -> datetime:
    return datetime.now(timezone.utc)


async def append_records(settings: Settings, records: list[tuple[str, int, int, bytes]]) -> list[int]:
    drafts = [entry.from_record(*r) for r in records]
    return await in_session(settings, "audit", lambda s: service.append(s, drafts, now()))


async def sign(settings: Settings, key: SignerKey = KEY) -> str:
    return await in_session(settings, "audit", lambda s: service.sign_checkpoint(s, key, key.name, now()))


async def whole_log(settings: Settings) -> tuple[list[bytes], list[str]]:
    async def read(s):
        size = await repository.size(s)
        rows = await repository.entry_bytes(s, 0, size)
        return [e for _, e in rows], [c["note"] for c in await repository.checkpoint_list(s, -1, 100_000)]
    return await in_session(settings, "audit", read)


def b64d(items: list[str]) -> list[bytes]:
    return [base64.b64decode(x) for x in items]


async def own_database(settings: Settings, suffix: str) -> Settings:
    """Create a database with a migrated audit schema of its own, for a log no other test touches."""
    s = settings.model_copy(update={"pg_database": f"{settings.pg_database}_{suffix}"})
    await db.bootstrap(s)
    await db.migrate(s, "audit")
    return s


async def superuser(settings: Settings, *statements: str | tuple[str, dict]) -> list[list]:
    """Run statements as the superuser, triggers disabled: what someone behind the database's back can do."""
    engine = create_async_engine(URL.create("postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host,
                                            port=settings.pg_port, database=settings.pg_database))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SET session_replication_role = replica"))
            await conn.execute(text("SET search_path = audit"))
            results = []
            for sql, params in (s if isinstance(s, tuple) else (s, {}) for s in statements):
                result = await conn.execute(text(sql), params)
                results.append(result.all() if result.returns_rows else [])
            return results
    finally:
        await engine.dispose()


async def drop_database(settings: Settings) -> None:
    engine = create_async_engine(URL.create("postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host,
                                            port=settings.pg_port, database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)'))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
async def own_log(settings):
    """A log of its own, so checkpoints signed here do not race the running audit service's."""
    s = await own_database(settings, "log")
    yield s
    await drop_database(s)


async def test_appends_sign_and_prove_against_the_signed_root(own_log):
    s = own_log
    first = await append_records(s, [("alerts.submitted", 0, i, submitted_record()) for i in range(5)])
    old_note = await sign(s)
    more = await append_records(s, [("alerts.submitted", 1, i, submitted_record()) for i in range(9)])
    note = await sign(s)
    assert more[0] == first[-1] + 1
    old, new = open_checkpoint(old_note, KEY.verifier), open_checkpoint(note, KEY.verifier)
    for index in (first[0], first[-1], more[-1]):
        proof = await in_session(s, "audit", lambda x: service.inclusion_proof(x, tree_size=None, index=index))
        data = (await whole_log(s))[0][index]
        assert proof["tree_size"] == new.size and proof["checkpoint"] == note
        assert verify_inclusion(index, new.size, leaf_hash(data), b64d(proof["hashes"]), new.root)
        by_hash = await in_session(s, "audit", lambda x: service.inclusion_proof(x, tree_size=new.size,
                                                                                   leaf=leaf_hash(data)))
        assert by_hash["index"] == index
    proof = await in_session(s, "audit", lambda x: service.consistency_proof(x, first=old.size, second=new.size))
    assert verify_consistency(old.size, new.size, old.root, new.root, b64d(proof["hashes"]))
    assert await sign(s) == note, "nothing new: the latest checkpoint is served again"


async def test_an_event_seen_twice_is_logged_once(own_log):
    raw = submitted_record()
    logged = await append_records(own_log, [("alerts.submitted", 2, 1, raw), ("alerts.submitted", 2, 1, raw)])
    again = await append_records(own_log, [("alerts.submitted", 3, 7, raw)])  # re-produced elsewhere
    assert len(logged) == 1 and again == []


@pytest.mark.parametrize("ask,reason", [
    (dict(kind="inclusion", index=10**9), "outside the tree"),
    (dict(kind="inclusion", index=0, tree_size=10**9), "beyond the latest checkpoint"),
    (dict(kind="inclusion", leaf=bytes(32)), "no entry has the leaf hash"),
    (dict(kind="consistency", first=5, second=3), "first (5) is larger than second (3)"),
    (dict(kind="consistency", first=0), "first must be at least 1"),
    (dict(kind="consistency", first=1, second=10**9), "beyond the latest checkpoint"),
])
async def test_proofs_outside_the_tree_are_refused_with_the_reason(own_log, ask, reason):
    await append_records(own_log, [("alerts.routed", 0, 1, submitted_record())])
    await sign(own_log)
    kind = ask.pop("kind")
    call = service.inclusion_proof if kind == "inclusion" else service.consistency_proof
    ask.setdefault("tree_size" if kind == "inclusion" else "second", None)
    with pytest.raises(ProofRequestError, match=re.escape(reason)):
        await in_session(own_log, "audit", lambda x: call(x, **ask))


async def test_erased_payloads_leave_every_proof_valid(own_log):
    raws = [submitted_record() for _ in range(3)]
    indexes = await append_records(own_log, [("alerts.submitted", 4, i, r) for i, r in enumerate(raws)])
    before = await sign(own_log)
    alert_id = entry.from_record("x", 0, 0, raws[1]).alert_id
    erased = await in_session(own_log, "audit", lambda x: service.erase(x, reason="subject request", actor="dpo",
                                                                           now=now(), alert_id=alert_id))
    assert erased == [indexes[1]]
    gone = await in_session(own_log, "audit", lambda x: x.scalar(select(payloads.c.idx).where(payloads.c.idx == indexes[1])))
    assert gone is None
    note = await sign(own_log)
    log, history = await whole_log(own_log)
    verify_log(log, note, KEY.verifier, history=history, saved_note=before)
    record = entry.decode(log[-1])
    assert record["type"] == entry.ERASURE and record["erased"]["indexes"] == [[indexes[1], indexes[1]]]
    assert record["reason"] == "subject request" and record["actor"] == "dpo"
    # Retention: nothing is older than a year here, everything is older than "now + 1 s".
    assert await in_session(own_log, "audit", lambda x: service.erase(
        x, reason="retention", actor="t", now=now(), stored_before=now() - timedelta(days=365))) == []
    swept = await in_session(own_log, "audit", lambda x: service.erase(
        x, reason="retention", actor="t", now=now(), stored_before=now() + timedelta(seconds=1)))
    assert indexes[0] in swept and indexes[2] in swept
    log, history = await whole_log(own_log)
    verify_log(log, await sign(own_log), KEY.verifier, history=history, saved_note=before)


async def test_two_instances_appending_and_signing_at_once_never_fork(own_log):
    """Two 'instances' (own engines) append and sign concurrently; the checkpoints all fit one tree."""
    engines = [db.make_engine(own_log, "audit", pool_size=4) for _ in range(2)]

    heads = [service.Head(), service.Head()]  # each instance keeps its own frontier and verified tree

    async def instance(engine, head: service.Head, n: int, tag: int) -> None:
        sessions, verified = db.make_sessionmaker(engine), service.Verified()
        for batch in range(n):
            drafts = [entry.from_record("alerts.routed", tag, batch * 10 + i, submitted_record()) for i in range(10)]
            async with sessions() as s:
                await service.append(s, drafts, now(), head)
                await s.commit()
            if batch % 3 == 0:
                async with sessions() as s:
                    await service.sign_checkpoint(s, KEY, KEY.name, now(), verified)
                    await s.commit()

    try:
        await asyncio.gather(instance(engines[0], heads[0], 12, 100), instance(engines[1], heads[1], 12, 200))
    finally:
        for e in engines:
            await e.dispose()
    note = await sign(own_log)
    log, history = await whole_log(own_log)
    assert len(history) >= 5
    result = verify_log(log, note, KEY.verifier, history=history)  # every checkpoint ever signed fits the one tree
    assert result.checkpoint.size == len(log)
    idx = await in_session(own_log, "audit", lambda x: x.execute(select(entries.c.idx).order_by(entries.c.idx)))
    assert list(idx.scalars()) == list(range(len(log)))
    assert all(h.reloads >= 2 for h in heads), "each took turns with the other, so each reloaded its frontier"


async def test_a_rolled_back_append_is_never_built_on_even_when_the_sizes_meet_again(own_log):
    """Instance A's append rolls back after extending its frontier; B appends as many entries; A's next
    append must see that the stored tree is not its own and reload, not fork."""
    a, b = service.Head(), service.Head()
    await in_session(own_log, "audit", lambda s: service.append(s, [_draft()], now(), a))

    async def rolled_back(s):
        await service.append(s, [_draft() for _ in range(3)], now(), a)
        await s.rollback()

    await in_session(own_log, "audit", rolled_back)
    await in_session(own_log, "audit", lambda s: service.append(s, [_draft() for _ in range(3)], now(), b))
    assert a.frontier.size == b.frontier.size and a.frontier.hashes != b.frontier.hashes  # same size, other tree
    reloads = a.reloads
    await in_session(own_log, "audit", lambda s: service.append(s, [_draft() for _ in range(2)], now(), a))
    assert a.reloads == reloads + 1
    log, history = await whole_log(own_log)
    note = await sign(own_log)
    assert verify_log(log, note, KEY.verifier, history=history).checkpoint.size == len(log)
    assert (await in_session(own_log, "audit", lambda s: _edge_root(s, len(log)))) == open_checkpoint(
        note, KEY.verifier).root


async def test_one_appender_keeps_its_frontier_and_reads_no_tree_node(own_log):
    head = service.Head()
    for n in (1, 5, 2):
        await in_session(own_log, "audit", lambda s: service.append(s, [_draft() for _ in range(n)], now(), head))
    assert head.reloads == 1, "loaded once, then confirmed by the stored tree at every append"
    log, history = await whole_log(own_log)
    verify_log(log, await sign(own_log), KEY.verifier, history=history)


async def test_the_append_statements_never_change_with_the_batch_size(own_log):
    """The hot statements take arrays: batches of any size send the same SQL text (one prepared statement each)."""
    engine = db.make_engine(own_log, "audit", pool_size=1)
    sent: list[list[str]] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *args: sent[-1].append(args[2]))
    head = service.Head()
    try:
        for n in (0, 1, 4, 9):
            sent.append([])
            async with db.make_sessionmaker(engine)() as s:
                await service.append(s, [_draft() for _ in range(n)] + [_draft(agencies=("a\\\"b", "c,d}", "{e"))],
                                     now(), head)
                await s.commit()
    finally:
        await engine.dispose()
    assert all(statements == sent[1] for statements in sent[1:]), sent
    assert len(sent[1]) == 3, sent[1]  # the lock, the head (size, edge, known ids), the insert
    stored = await in_session(own_log, "audit", lambda s: s.scalar(select(entries.c.agencies).order_by(
        entries.c.idx.desc()).limit(1)))
    assert stored == ["a\\\"b", "c,d}", "{e"]


async def test_appends_go_on_while_a_checkpoint_is_being_signed(own_log, monkeypatch):
    verified = service.Verified()
    await in_session(own_log, "audit", lambda s: service.append(s, [_draft() for _ in range(4)], now()))
    await in_session(own_log, "audit", lambda s: service.sign_checkpoint(s, KEY, KEY.name, now(), verified))
    engine = db.make_engine(own_log, "audit", pool_size=2)
    try:
        async with db.make_sessionmaker(engine)() as signer:  # a signer holds its lock, mid-way
            await repository.lock_signing(signer)
            added = await asyncio.wait_for(in_session(own_log, "audit", lambda s: service.append(
                s, [_draft() for _ in range(3)], now())), 10)
            await signer.rollback()
    finally:
        await engine.dispose()
    assert len(added) == 3
    read: list[tuple[int, int]] = []
    entry_bytes = repository.entry_bytes

    async def counted(session, start, end):
        read.append((start, end))
        return await entry_bytes(session, start, end)

    monkeypatch.setattr(repository, "entry_bytes", counted)
    note = await in_session(own_log, "audit", lambda s: service.sign_checkpoint(s, KEY, KEY.name, now(), verified))
    size = open_checkpoint(note, KEY.verifier).size
    assert read == [(size - 3, size)], "only the entries added since the last checkpoint were hashed again"


def _draft(agencies: tuple[str, ...] = ("kg-sbs",)) -> entry.Draft:
    return entry.Draft(new_id(), "test.event", {"n": 1}, payload=b"{}", agencies=agencies)


async def _edge_root(session, size: int) -> bytes:
    return Frontier(size, await service._edge(session, size)).root()
