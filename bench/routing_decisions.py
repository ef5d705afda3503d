"""Routing decision benchmark: decisions per second and p99 decision time, indexed vs naive.

Two networks: the demo network, and a generated one of 1,000 agencies, 200 posts and 10,000
rules. Each runs the same alerts through the indexed `decide()` and through the naive path that
evaluates every rule, in the same process and run, and prints both with their ratio.

    .venv/bin/python -m bench.routing_decisions [--decisions 2000] [--seed 7]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
