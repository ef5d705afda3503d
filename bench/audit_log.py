"""Benchmark of the audit log: appends/s, inclusion-proof latency and full verification at 1 M entries.

    .venv/bin/python -m bench.audit_log                       # 1,000,000 entries (about 10 minutes)
    .venv/bin/python -m bench.audit_log --entries 50000       # a smoke run

Each figure stands beside a baseline measured in the same run, on the same machine and data:
- appends: the product's append path (Recorder's: parse each Kafka record, seal the entry, extend
  the tree, insert entries + tree nodes + payloads under the append lock, commit per batch of 500)
  against a plain INSERT of the same entry and payload rows into tables without indexes, triggers,
  lock or tree; and, batch by batch in turn, against the append as it was before issue 11
  (`append_before_issue_11`, the reference line);
- polls: what a live consumer hands the log, a few records from each of 8 partitions per poll,
  interleaved poll by poll: the product's one append per poll, the reference's, and the product's
  append once per partition (the consumer loop's old shape): per-poll latency and records/s;
- appends while signing: the first checkpoint (over every entry) is signed while poll-sized
  appends keep arriving, as the reference did (under the append lock) and as the product does:
  how many land meanwhile and the longest one waits;
- inclusion proofs at the full size: `service.inclusion_proof` (latest checkpoint + O(log n) tree
  nodes) against a primary-key SELECT of one entry; and the whole HTTP route in process (token
  check, the auditor query appended to the log, the proof);
- verification: `verify_log` over an export of every entry (recompute every leaf and node,
  check the signed checkpoints) against hashlib.sha256 over the same bytes.

It needs a PostgreSQL (the dev stack's by default: `deploy/stack.sh start postgres`), creates the
database blonet_bench_audit_<run>, and drops it at the end unless --keep.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import secrets
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from uuid import UUID

from sqlalchemy import select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from demo.scenario import SCENARIO
from services.audit import entry, keys, repository, service
from services.audit.client import export_head, read_export
from services.audit.models import entries
from shared import db
from shared.alerts import Alert
from shared.auditproof import verify_log
from shared.merkle import Frontier, leaf_hash
from shared.events import (
    AlertRouted, AlertSubmitted, DeliveryRequested, DeliveryState, DeliveryStatus, Envelope, Recipient, ViewProfile,
)
from shared.settings import REPO, Settings, get_settings

BATCH = 500  # the audit consumer's max_records
HEAD = service.Head()  # the appender state, as the audit process keeps it between appends
PARTITIONS = 8  # the polls case: records from this many partitions per poll
EVENT, ALERT = "00000000-0000-7000-8000-0000000000e1", "00000000-0000-7000-8000-0000000000a1"


def templates() -> list[tuple[str, bytes]]:
    """One alert's story as Kafka values, with placeholder ids: submitted, routed, 7 x (requested, status)."""
    alert_id, event_id = UUID(ALERT), UUID(EVENT)
    alert = Alert.model_validate(SCENARIO)

    def wrap(payload) -> bytes:
        return Envelope.wrap(payload, origin_node="bench", alert_id=alert_id, thread_id=alert_id,
                             event_id=event_id).to_bytes()

    recipients = [Recipient(agency=f"agency-{i}", endpoint=f"ep-{i}", profile=ViewProfile.FULL, rule="r", reason="x")
                  for i in range(7)]
    out = [("alerts.submitted", wrap(AlertSubmitted(alert=alert, submitted_by="bench"))),
           ("alerts.routed", wrap(AlertRouted(ruleset_hash="0" * 64, recipients=recipients, denied=[])))]
    for r in recipients:
        out.append(("deliveries.requested", wrap(DeliveryRequested(
            delivery_id=event_id, endpoint=r.endpoint, agency=r.agency, url="https://x.example/in", profile=r.profile,
            body={"alert": SCENARIO}))))
        out.append(("deliveries.status", wrap(DeliveryStatus(
            delivery_id=event_id, endpoint=r.endpoint, agency=r.agency, state=DeliveryState.DELIVERED, attempt=1,
            http_status=200, latency_ms=3.0))))
    return out


def records(n: int):
    """Yield n (topic, partition, offset, value) records: alert stories with fresh ids."""
    story, offset = templates(), 0
    while offset < n:
        alert = str(UUID(int=random.getrandbits(128)))
        for topic, value in story:
            if offset == n:
                return
            event = str(UUID(int=random.getrandbits(128)))
            yield topic, offset % 6, offset, value.replace(EVENT.encode(), event.encode()).replace(ALERT.encode(),
                                                                                                  alert.encode())
            offset += 1


def percentiles(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(q[49] * 1000, 3), "p99_ms": round(q[98] * 1000, 3), "samples": len(samples)}


async def superuser_engine(settings: Settings, database: str):
    return create_async_engine(URL.create("postgresql+asyncpg", username=settings.pg_superuser, host=settings.pg_host,
                                          port=settings.pg_port, database=database), isolation_level="AUTOCOMMIT")


async def append_before_issue_11(session: AsyncSession, drafts: list[entry.Draft], now: datetime,
                                 head: service.Head) -> None:
    """The append as it was before issue 11, kept as the reference line: the frontier rebuilt from
    the stored edge on every append, the known ids by `IN (...)` (text changing with the batch),
    and a COPY per table."""
    await repository.lock_log(session)
    size = await repository.size(session)
    known = await session.execute(select(entries.c.event_id).where(entries.c.event_id.in_([d.event_id for d in drafts])))
    seen, fresh = set(known.scalars()), []
    for d in drafts:
        if d.event_id not in seen:
            seen.add(d.event_id)
            fresh.append(d)
    frontier = Frontier(size, await service._edge(session, size))
    rows: dict[str, list[tuple]] = {"entries": [], "tree_nodes": [], "payloads": []}
    for index, d in enumerate(fresh, start=size):
        nonce = os.urandom(entry.NONCE_SIZE)
        data = entry.seal(d, index, now, nonce)
        rows["tree_nodes"] += [(level, k, h) for (level, k), h in frontier.append(leaf_hash(data))]
        rows["entries"].append((index, d.event_id, d.type, d.alert_id, d.causation_id, d.occurred_at or now, now,
                                list(d.agencies), data))
        rows["payloads"].append((index, nonce, d.payload, now))
    raw = (await (await session.connection()).get_raw_connection()).driver_connection
    for table, batch in rows.items():
        if batch:
            await raw.copy_records_to_table(table, records=batch)
    head.frontier = frontier  # as if the product had appended these: its next append finds its head current


PRODUCT, BEFORE = "product", "before_issue_11"
APPENDS = {PRODUCT: service.append, BEFORE: append_before_issue_11}


async def bench_appends(settings: Settings, n: int) -> dict:
    """Build the log in batches of 500, alternating the product's append and the reference's, timing each."""
    engine = db.make_engine(settings, "audit", pool_size=2)
    sessions = db.make_sessionmaker(engine)
    spent = {PRODUCT: 0.0, BEFORE: 0.0}
    batch, started, progress = [], time.perf_counter(), time.perf_counter()
    try:
        for record in records(n):
            batch.append(record)
            if len(batch) == BATCH or record[2] == n - 1:
                how = (PRODUCT, BEFORE)[record[2] // BATCH % 2]
                t = time.perf_counter()
                await _append(sessions, batch, how)
                spent[how] += time.perf_counter() - t
                batch = []
                if time.perf_counter() - progress > 15:
                    progress = time.perf_counter()
                    done = record[2] + 1
                    print(f"  {done:>9} entries, {done / (progress - started):,.0f}/s", flush=True)
    finally:
        await engine.dispose()
    seconds = time.perf_counter() - started
    rates = {how: round(n / 2 / spent[how]) for how in spent}
    return {"entries": n, "seconds": round(seconds, 2), "per_second": rates[PRODUCT],
            "before_issue_11_per_second": rates[BEFORE], "ratio_product_vs_before": round(rates[PRODUCT] / rates[BEFORE], 2)}


async def _append(sessions, batch, how: str = PRODUCT) -> None:
    drafts = [entry.from_record(*r) for r in batch]
    async with sessions() as session:
        await APPENDS[how](session, drafts, datetime.now(timezone.utc), HEAD)
        await session.commit()


async def bench_polls(settings: Settings, polls: int, per_partition: int) -> dict:
    """Per-poll cost of `per_partition` records from each of 8 partitions, interleaved poll by poll (load
    drift hits every shape alike): the product's one append per poll, the reference's, and the product's
    append once per partition (the consumer loop's old shape)."""
    engine = db.make_engine(settings, "audit", pool_size=2)
    sessions = db.make_sessionmaker(engine)
    stream = records(polls * 3 * PARTITIONS * per_partition)
    shapes: dict[str, list[float]] = {"one_per_poll": [], "before_issue_11_one_per_poll": [], "one_per_partition": []}
    try:
        for _ in range(polls):
            for shape, samples in shapes.items():
                poll = [(t, i % PARTITIONS, o, v) for i, (t, _, o, v) in
                        zip(range(PARTITIONS * per_partition), stream)]
                t = time.perf_counter()
                if shape == "one_per_partition":
                    for p in range(PARTITIONS):
                        await _append(sessions, [r for r in poll if r[1] == p])
                else:
                    await _append(sessions, poll, BEFORE if shape.startswith(BEFORE) else PRODUCT)
                samples.append(time.perf_counter() - t)
    finally:
        await engine.dispose()
    size = PARTITIONS * per_partition
    out = {shape: {**percentiles(samples), "records_per_second": round(size * len(samples) / sum(samples))}
           for shape, samples in shapes.items()}
    return {"records_per_poll": size, "partitions": PARTITIONS, **out,
            "p50_ratio_before_vs_product": round(out["before_issue_11_one_per_poll"]["p50_ms"]
                                                 / out["one_per_poll"]["p50_ms"], 2),
            "p50_ratio_per_partition_vs_per_poll": round(out["one_per_partition"]["p50_ms"]
                                                         / out["one_per_poll"]["p50_ms"], 2)}


async def bench_appends_while_signing(settings: Settings, per_poll: int) -> dict:
    """Sign the first checkpoint (every entry so far) while poll-sized appends keep coming, twice: as the
    reference did, holding the append lock (then rolled back), and as the product does (committed)."""
    engine = db.make_engine(settings, "audit", pool_size=3)
    sessions = db.make_sessionmaker(engine)
    key = keys.load_signing_key(settings)
    stream = records(10**9)

    async def sign(under_append_lock: bool) -> float:
        t = time.perf_counter()
        async with sessions() as session:
            if under_append_lock:
                await repository.lock_log(session)
            await service.sign_checkpoint(session, key, key.name, datetime.now(timezone.utc), service.Verified())
            await (session.rollback() if under_append_lock else session.commit())
        return time.perf_counter() - t

    out = {}
    try:
        for label, under_lock in ((BEFORE, True), (PRODUCT, False)):
            waits: list[float] = []
            signing = asyncio.create_task(sign(under_lock))
            await asyncio.sleep(0.05)  # the signer is under way first
            while not signing.done():
                poll = [r for _, r in zip(range(per_poll), stream)]
                t = time.perf_counter()
                await _append(sessions, poll)
                waits.append(time.perf_counter() - t)
            out[label] = {"sign_seconds": round(await signing, 2), "polls_appended_while_signing": len(waits),
                          "longest_append_ms": round(max(waits) * 1000, 1),
                          "median_append_ms": round(statistics.median(waits) * 1000, 1)}
    finally:
        await engine.dispose()
    return {"records_per_poll": per_poll, **out}


async def bench_plain_insert(settings: Settings, n: int) -> dict:
    """Insert the first n entries' rows (and their payloads) as they are into plain tables: the floor."""
    admin = await superuser_engine(settings, settings.pg_database)
    try:
        async with admin.connect() as conn:
            await conn.execute(text("CREATE TABLE audit.plain_entries (LIKE audit.entries)"))
            await conn.execute(text("CREATE TABLE audit.plain_payloads (LIKE audit.payloads)"))
        seconds = 0.0
        for start in range(0, n, BATCH):
            async with admin.connect() as conn:
                rows = (await conn.execute(text("SELECT * FROM audit.entries WHERE idx >= :a AND idx < :b"),
                                           {"a": start, "b": min(start + BATCH, n)})).mappings().all()
                pays = (await conn.execute(text("SELECT * FROM audit.payloads WHERE idx >= :a AND idx < :b"),
                                           {"a": start, "b": min(start + BATCH, n)})).mappings().all()
            t = time.perf_counter()
            async with admin.begin() as conn:
                await conn.execute(text("INSERT INTO audit.plain_entries VALUES (:idx, :event_id, :type, :alert_id, "
                                        ":causation_id, :occurred_at, :recorded_at, :agencies, :entry)"),
                                   [dict(r) for r in rows])
                await conn.execute(text("INSERT INTO audit.plain_payloads VALUES (:idx, :nonce, :body, :stored_at)"),
                                   [dict(r) for r in pays])
            seconds += time.perf_counter() - t
    finally:
        await admin.dispose()
    return {"entries": n, "seconds": round(seconds, 2), "per_second": round(n / seconds)}


async def bench_proofs(settings: Settings, samples: int) -> dict:
    engine = db.make_engine(settings, "audit", pool_size=2)
    key = keys.load_signing_key(settings)
    try:
        async with db.make_sessionmaker(engine)() as session:
            t = time.perf_counter()
            await service.sign_checkpoint(session, key, key.name, datetime.now(timezone.utc))
            await session.commit()
            sign_seconds = time.perf_counter() - t
            size = (await repository.latest_checkpoint(session))["tree_size"]
            proof, select = [], []
            for _ in range(samples):
                i = random.randrange(size)
                t = time.perf_counter()
                await service.inclusion_proof(session, tree_size=None, index=i)
                proof.append(time.perf_counter() - t)
                t = time.perf_counter()
                await session.execute(text("SELECT entry FROM entries WHERE idx = :i"), {"i": i})
                select.append(time.perf_counter() - t)
            await session.rollback()
    finally:
        await engine.dispose()
    return {"tree_size": size, "checkpoint_seconds": round(sign_seconds, 2),
            "inclusion_proof": percentiles(proof), "baseline_pk_select": percentiles(select),
            "http": await bench_http(settings, size, samples // 2)}


async def bench_http(settings: Settings, size: int, samples: int) -> dict:
    """The inclusion route in process: bearer token check, the query appended to the log, the proof."""
    import httpx
    from fastapi import FastAPI

    from services.audit.api import router
    from shared.auth import Principal, Role, ensure_signing_key, issue_token
    from shared.service import Runtime

    ensure_signing_key(settings)
    rt = Runtime("audit", settings.audit_port, settings)
    app = FastAPI()
    app.include_router(router(rt, checkpointer=None))
    bearer = issue_token(settings, Principal("bench", "unodc", frozenset({Role.AUDITOR})))
    latencies = []
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://audit",
                                     headers={"Authorization": f"Bearer {bearer}"}) as http:
            for _ in range(samples):
                t = time.perf_counter()
                r = await http.get("/v1/proofs/inclusion", params={"index": random.randrange(size), "tree_size": size})
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    finally:
        await rt.engine.dispose()
    return percentiles(latencies)


async def export_log(settings: Settings, out: Path) -> None:
    """Write the export format of `blonet audit export`, streamed from the database."""
    engine = db.make_engine(settings, "audit", pool_size=1)
    try:
        async with db.make_sessionmaker(engine)() as session:
            notes = [c["note"] for c in await repository.checkpoint_list(session, -1, 1000)]
            size = (await repository.latest_checkpoint(session))["tree_size"]
            with out.open("wb") as f:
                f.write(export_head("bench/audit", notes, size))
                for start in range(0, size, 20_000):
                    f.writelines(e + b"\n" for _, e in await repository.entry_bytes(session, start, min(start + 20_000, size)))
    finally:
        await engine.dispose()


def bench_verify(settings: Settings, export: Path) -> dict:
    vkey = keys.load_signing_key(settings).verifier
    _, notes, entries = read_export(export)
    t = time.perf_counter()
    result = verify_log(entries, notes[-1], vkey, history=notes)
    verify_seconds = time.perf_counter() - t
    _, _, entries = read_export(export)
    t = time.perf_counter()
    for data in entries:
        hashlib.sha256(data).digest()
    hash_seconds = time.perf_counter() - t
    return {"entries": result.checkpoint.size, "verify_seconds": round(verify_seconds, 2),
            "baseline_sha256_seconds": round(hash_seconds, 2), "ratio": round(verify_seconds / hash_seconds, 1)}


async def main(args: argparse.Namespace) -> dict:
    base = get_settings()
    run = secrets.token_hex(3)
    settings = base.model_copy(update={"pg_database": f"blonet_bench_audit_{run}", "audit_signing_key_file":
                                       REPO / "var" / "bench" / f"audit-{run}.key", "audit_origin": "bench/audit"})
    keys.write_new_key(keys.key_file(settings), "bench/audit")
    await db.bootstrap(settings)
    await db.migrate(settings, "audit")
    report: dict = {"run": run, "entries": args.entries, "batch": BATCH}
    try:
        print(f"appending {args.entries:,} entries through the product's append path ...", flush=True)
        report["appends"] = await bench_appends(settings, args.entries)
        print(f"  {report['appends']}", flush=True)
        baseline = min(args.baseline_entries or args.entries, args.entries)
        print(f"plain INSERT of the first {baseline:,} of the same rows ...", flush=True)
        report["appends_baseline_plain_insert"] = await bench_plain_insert(settings, baseline)
        print(f"  {report['appends_baseline_plain_insert']}", flush=True)
        print(f"{args.polls} polls of {args.per_partition} records from each of {PARTITIONS} partitions, "
              "one append per poll vs one per partition ...", flush=True)
        report["polls"] = await bench_polls(settings, args.polls, args.per_partition)
        print(f"  {report['polls']}", flush=True)
        print("signing the first checkpoint while polls keep being appended ...", flush=True)
        report["appends_while_signing"] = await bench_appends_while_signing(settings, PARTITIONS * args.per_partition)
        print(f"  {report['appends_while_signing']}", flush=True)
        print(f"signing, then {args.samples} inclusion proofs at the full size ...", flush=True)
        report["proofs"] = await bench_proofs(settings, args.samples)
        print(f"  {report['proofs']}", flush=True)
        export = REPO / "var" / "bench" / f"audit-{run}.jsonl"
        print(f"exporting and verifying {args.entries:,} entries ...", flush=True)
        await export_log(settings, export)
        report["verify"] = bench_verify(settings, export)
        print(f"  {report['verify']}", flush=True)
        export.unlink()
    finally:
        if not args.keep:
            admin = await superuser_engine(settings, "postgres")
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)'))
            await admin.dispose()
        keys.key_file(settings).unlink(missing_ok=True)
    a, b = report["appends"], report["appends_baseline_plain_insert"]
    p, v = report["proofs"], report["verify"]
    report["summary"] = {
        "appends_per_second": a["per_second"], "plain_insert_rows_per_second": b["per_second"],
        "append_cost_vs_plain_insert": round(b["per_second"] / a["per_second"], 2),
        "appends_before_issue_11_per_second": a["before_issue_11_per_second"],
        "poll_of_8_partitions_p50_ms": report["polls"]["one_per_poll"]["p50_ms"],
        "poll_of_8_partitions_before_issue_11_p50_ms": report["polls"]["before_issue_11_one_per_poll"]["p50_ms"],
        "poll_per_partition_p50_ms": report["polls"]["one_per_partition"]["p50_ms"],
        "polls_appended_while_signing": report["appends_while_signing"][PRODUCT]["polls_appended_while_signing"],
        "polls_appended_while_signing_before_issue_11":
            report["appends_while_signing"][BEFORE]["polls_appended_while_signing"],
        "longest_append_while_signing_ms": report["appends_while_signing"][PRODUCT]["longest_append_ms"],
        "longest_append_while_signing_before_issue_11_ms": report["appends_while_signing"][BEFORE]["longest_append_ms"],
        "first_checkpoint_seconds": report["appends_while_signing"][PRODUCT]["sign_seconds"],
        "inclusion_p99_ms": p["inclusion_proof"]["p99_ms"], "pk_select_p99_ms": p["baseline_pk_select"]["p99_ms"],
        "http_inclusion_p99_ms": p["http"]["p99_ms"],
        "verify_seconds": v["verify_seconds"], "sha256_seconds": v["baseline_sha256_seconds"],
        "targets_met": {"appends>=5000/s": a["per_second"] >= 5000, "inclusion_p99<5ms": p["inclusion_proof"]["p99_ms"] < 5,
                        "verify_1M<30s": v["verify_seconds"] < 30 * args.entries / 1_000_000},
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--baseline-entries", type=int, default=200_000, help="rows for the plain INSERT baseline")
    parser.add_argument("--samples", type=int, default=2000, help="inclusion proofs to time")
    parser.add_argument("--polls", type=int, default=300, help="polls of 8 partitions to time, per shape")
    parser.add_argument("--per-partition", type=int, default=2, help="records per partition in each poll")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args()
    report = asyncio.run(main(args))
    out = REPO / "var" / "bench" / f"audit-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report["summary"], indent=2))
    print(f"written to {out}")
