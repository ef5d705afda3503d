"""Routing decision benchmark: decisions per second and p99 decision time, indexed vs naive; and
the Kafka handler's polls (decide, store, produce) before and after a change, in one run.

Two networks: the demo network, and a generated one of 1,000 agencies, 200 posts and 10,000
rules. Each runs the same alerts through the indexed `decide()` and through the naive path that
evaluates every rule, in the same process and run, and prints both with their ratio.

`--handler` then times `RoutingHandler` on the real stack (a database and topics of its own) over
polls of `--batch` records (originals, each with an Update right behind it), once with this
checkout's code and once with `--before`'s (a git ref, unpacked into a temporary folder and run
in a subprocess), and prints records/s, statements per poll and the ratio.

    .venv/bin/python -m bench.routing_decisions [--decisions 2000] [--seed 7]
    .venv/bin/python -m bench.routing_decisions --handler --before e056992 [--polls 20 --batch 100]
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import datetime, timezone

from demo.scenario import PRECURSORS, SCENARIO
from services.routing.compiled import Compiled
from services.routing.network import load_network, network_from
from services.routing.policy import Thread, decide
from shared.alerts import Alert, Category, Tlp
from shared.settings import REPO

NOW = datetime(2027, 5, 10, tzinfo=timezone.utc)
CATEGORIES = [c.value for c in Category]


def generated(rng: random.Random, agencies: int = 1000, posts: int = 200, rules: int = 10_000) -> Compiled:
    """A large synthetic network: 10 countries, posts in facing pairs, ~5 units a post."""
    countries = [f"Q{chr(65 + i)}" for i in range(10)]
    ags = [{"id": f"ag{i}", "kind": rng.choice(["border_guard", "customs", "police"]), "country": countries[i % 10],
            "name_en": f"Agency {i}", "name_ru": f"Ведомство {i}"} for i in range(agencies - 20)]
    ags += [{"id": f"obs{i}", "kind": "international_organisation", "observer": True, "endpoint": f"ep-obs{i}",
             "name_en": f"Observer {i}", "name_ru": f"Наблюдатель {i}"} for i in range(20)]
    endpoints = [{"id": f"ep-obs{i}", "agency": f"obs{i}", "url": f"https://obs{i}.example/hook"} for i in range(20)]
    by_country = {c: [a for a in ags if a.get("country") == c] for c in countries}
    post_docs = []
    for j in range(posts // 2):
        a, b = rng.sample(countries, 2)
        segment = "-".join(sorted((a, b)))
        for side, country in ((0, a), (1, b)):
            units = []
            for k, agency in enumerate(rng.sample(by_country[country], 5)):
                uid = f"u{j}-{side}-{k}"
                units.append({"id": uid, "agency": agency["id"], "blo": k == 0, "endpoint": f"ep-{uid}"})
                endpoints.append({"id": f"ep-{uid}", "agency": agency["id"], "url": f"https://{uid}.example/hook"})
            post_docs.append({"id": f"p{j}-{side}", "name_en": f"Post {j}/{side}", "name_ru": f"Пост {j}/{side}",
                              "country": country, "border_segment": segment, "counterpart": f"p{j}-{1 - side}", "units": units})
    agreements = [{"id": f"agr-{a}-{b}", "title": "t", "parties": [a, b], "categories": rng.sample(CATEGORIES, 5),
                   "max_tlp": "TLP:AMBER", "personal_data": rng.random() < 0.3, "valid_from": "2015-01-01",
                   "observers": [f"obs{rng.randrange(20)}"]}
                  for i, a in enumerate(countries) for b in countries[i + 1:]]
    rule_docs = [{
        "id": f"r{n}", "match": {"post": [rng.choice(post_docs)["id"]], "category": rng.sample(CATEGORIES, rng.randint(1, 3))},
        "recipients": rng.sample(["blo_at_post", "units_at_post", "counterparts", "observers"], rng.randint(1, 3)),
        "continue": True,  # every matching rule applies: the naive path must look at all 10,000
    } for n in range(rules)]
    doc = {"directory": {"countries": countries, "agencies": ags, "posts": post_docs, "endpoints": endpoints,
                         "agreements": agreements}, "rules": {"rules": rule_docs}}
    return Compiled(network_from(doc, "generated"))


def demo_alerts(rng: random.Random, n: int) -> list[Alert]:
    return [Alert.model_validate({**rng.choice([SCENARIO, PRECURSORS]), "tlp": rng.choice(["TLP:GREEN", "TLP:AMBER"])})
            for _ in range(n)]


def generated_alerts(net: Compiled, rng: random.Random, n: int) -> list[Alert]:
    posts = list(net.posts.values())
    out = []
    for _ in range(n):
        post = rng.choice(posts)
        sender = rng.choice(post.units)
        other = net.posts[post.counterpart].country
        out.append(Alert(sender_agency=sender.agency, sender_post=post.id, category=rng.choice(CATEGORIES),
                         severity="severe", urgency="expected", certainty="likely", headline="h",
                         tlp=rng.choice([Tlp.GREEN, Tlp.AMBER]),
                         location={"post": post.id, "direction": {"from_country": post.country, "to_country": other}}))
    return out


def measure(net: Compiled, alerts: list[Alert], naive: bool) -> dict:
    times = []
    for a in alerts:
        t0 = time.perf_counter()
        decide(a, Thread(), net, NOW, naive=naive)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"per_s": len(times) / sum(times), "p50_ms": times[len(times) // 2] * 1e3,
            "p99_ms": times[int(len(times) * 0.99) - 1] * 1e3, "mean_ms": statistics.mean(times) * 1e3}


async def handler_polls(label: str, polls: int, batch: int) -> dict:
    """Time `polls` calls of the routing handler on `batch` records each; every alert has its Update in the same poll."""
    import os
    from types import SimpleNamespace

    from sqlalchemy import event

    from services.routing.consumer import RoutingHandler
    from services.routing.state import ActiveNetwork
    from shared import db, topics
    from shared.events import AlertSubmitted, Envelope
    from shared.ids import new_id
    from shared.kafka import make_producer
    from shared.service import Runtime
    from shared.settings import Settings

    run = f"{label}{os.getpid()}"
    s = Settings().model_copy(update={"pg_database": f"blonet_benchrt_{run}", "topic_prefix": f"benchrt{run}.",
                                      "network_dir": REPO / "deploy" / "network"})
    await db.bootstrap(s)
    await db.migrate(s, "routing")
    await topics.create_topics(s)
    rt = Runtime("routing", 0, s)
    rt.engine = db.make_engine(s, "routing", pool_size=2)
    rt.sessions = db.make_sessionmaker(rt.engine)
    rt.producer = make_producer(s)
    await rt.producer.start()
    statements = []
    event.listen(rt.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(1))
    try:
        active = ActiveNetwork(rt)
        await active.load()
        handler = RoutingHandler(rt, active)

        def poll() -> list:
            out = []
            for _ in range(batch // 2):
                original = new_id()
                for aid, changes in ((original, {}), (new_id(), {"msg_type": "update", "references": [str(original)]})):
                    alert = Alert.model_validate({**PRECURSORS, **changes})
                    env = Envelope.wrap(AlertSubmitted(alert=alert, submitted_by="bench"), origin_node="b", alert_id=aid,
                                        thread_id=original)
                    out.append(SimpleNamespace(value=env.to_bytes()))
            return out

        await handler(poll())  # warm: prepared statements, producer metadata
        work = [poll() for _ in range(polls)]
        statements.clear()
        times = []
        for records in work:
            t0 = time.perf_counter()
            await handler(records)
            times.append(time.perf_counter() - t0)
        times.sort()
        return {"records_per_s": polls * batch / sum(times), "p50_ms": times[len(times) // 2] * 1e3,
                "statements_per_poll": len(statements) / polls}
    finally:
        await rt.producer.stop()
        await rt.engine.dispose()
        await topics.delete_topics(s, s.topic_prefix)
        await db.drop_database(s)


def handler_comparison(before: str, polls: int, batch: int) -> None:
    """This checkout's handler and `before`'s, one after the other in this run, with their ratio."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    rows = {}
    stack = {"BLONET_KAFKA_BOOTSTRAP": os.environ.get("BLONET_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),  # the test stack
             "BLONET_PG_PORT": os.environ.get("BLONET_PG_PORT", "15433"), "BLONET_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory() as old:
        subprocess.run(f"git -C {REPO} archive {before} | tar -x -C {old}", shell=True, check=True)
        for label, root in (("before", old), ("after", str(REPO))):
            done = subprocess.run([sys.executable, __file__, "--handler-only", label, "--polls", str(polls), "--batch", str(batch)],
                                  env={**os.environ, **stack, "PYTHONPATH": root}, cwd=root, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
            rows[label] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nrouting handler, polls of {batch} records (each alert with its Update in the same poll), {polls} polls")
    print(f"{'code':<22} {'records/s':>10} {'p50 poll ms':>12} {'statements/poll':>16}")
    for label, ref in (("before", before), ("after", "this checkout")):
        r = rows[label]
        print(f"{label + ' (' + ref[:10] + ')':<22} {r['records_per_s']:>10,.0f} {r['p50_ms']:>12.1f} {r['statements_per_poll']:>16.1f}")
    print(f"ratio: after handles {rows['after']['records_per_s'] / rows['before']['records_per_s']:.2f}× the records/s of before")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--handler", action="store_true", help="also time the Kafka handler, before vs after")
    parser.add_argument("--before", default="main", help="git ref of the code to compare the handler with")
    parser.add_argument("--polls", type=int, default=20)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--handler-only", help=argparse.SUPPRESS)  # internal: one side of --handler, as JSON
    args = parser.parse_args()
    if args.handler_only:
        import asyncio
        import json

        print(json.dumps(asyncio.run(handler_polls(args.handler_only, args.polls, args.batch))))
        return
    rng = random.Random(args.seed)
    demo = Compiled(load_network(REPO / "deploy" / "network"))
    t0 = time.perf_counter()
    large = generated(rng)
    built = time.perf_counter() - t0
    print(f"generated network: {len(large.agencies)} agencies, {len(large.posts)} posts, "
          f"{len(large.network.rules.rules)} rules; validated and compiled in {built:.2f} s")
    print(f"{'network':<10} {'path':<8} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8}")
    for name, net, alerts in (("demo", demo, demo_alerts(rng, args.decisions)),
                              ("large", large, generated_alerts(large, rng, args.decisions))):
        rows = {}
        for path in ("naive", "indexed"):
            rows[path] = measure(net, alerts, naive=path == "naive")
            r = rows[path]
            print(f"{name:<10} {path:<8} {r['per_s']:>12,.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f}")
        print(f"{name:<10} ratio    indexed is {rows['naive']['p99_ms'] / rows['indexed']['p99_ms']:.1f}× faster at p99; "
              f"target p99 < 1 ms: {'met' if rows['indexed']['p99_ms'] < 1 else 'NOT met'}")
    if args.handler:
        handler_comparison(args.before, args.polls, args.batch)


if __name__ == "__main__":
    main()
