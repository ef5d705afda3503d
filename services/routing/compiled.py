"""A network compiled once per version into lookup tables, so each decision stays cheap.

Rule matching uses one bitset (a Python int) per matcher value per sibling group: the rules a
given alert matches are the AND of a few bitsets, whatever the number of rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from services.routing.network import Network
from services.routing.rules import Match, Rule
from shared.alerts import Alert
from shared.directory import Agency, Agreement, Endpoint, Post, Unit

DIMENSIONS = tuple(Match.model_fields)


def alert_keys(alert: Alert, sender: Agency) -> dict[str, object]:
    """Return the value of each matcher dimension for an alert."""
    direction = alert.location.direction
    return {
        "category": alert.category, "severity": alert.severity, "urgency": alert.urgency,
        "post": alert.location.post, "border_segment": alert.location.border_segment,
        "from_country": direction.from_country if direction else None,
        "to_country": direction.to_country if direction else None, "sender_kind": sender.kind,
    }


def matches(match: Match, keys: dict[str, object]) -> bool:
    """Return whether every non-empty matcher accepts the alert (the plain, unindexed check)."""
    return all(not getattr(match, d) or keys[d] in getattr(match, d) for d in DIMENSIONS)


@dataclass
class RuleGroup:
    """Sibling rules in order, with per-dimension bitset indexes and their children's groups."""

    rules: list[Rule]
    children: list[RuleGroup | None]
    index: dict[str, dict[object, int]] = field(default_factory=dict)
    wildcard: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: tuple[Rule, ...]) -> RuleGroup:
        group = cls(list(rules), [cls.build(r.routes) if r.routes else None for r in rules])
        for d in DIMENSIONS:
            group.index[d], group.wildcard[d] = {}, 0
            for i, rule in enumerate(rules):
                values = getattr(rule.match, d)
                if not values:
                    group.wildcard[d] |= 1 << i
                for v in values:
                    group.index[d][v] = group.index[d].get(v, 0) | 1 << i
        return group

    def matching(self, keys: dict[str, object]) -> int:
        bits = (1 << len(self.rules)) - 1
        for d in DIMENSIONS:
            bits &= self.index[d].get(keys[d], 0) | self.wildcard[d]
            if not bits:
                break
        return bits


def walk_indexed(group: RuleGroup, keys: dict[str, object]) -> list[Rule]:
    """Return the rules that apply to an alert, in tree order, using the indexes."""
    out: list[Rule] = []
    bits = group.matching(keys)
    while bits:
        low = bits & -bits
        i = low.bit_length() - 1
        bits ^= low
        rule = group.rules[i]
        out.append(rule)
        if group.children[i]:
            out += walk_indexed(group.children[i], keys)
        if not rule.continue_:
            break
    return out


def walk_naive(rules: tuple[Rule, ...], keys: dict[str, object]) -> list[Rule]:
    """Return the same as `walk_indexed` by trying every rule: the reference the index is tested against."""
    out: list[Rule] = []
    for rule in rules:
        if matches(rule.match, keys):
            out.append(rule)
            out += walk_naive(rule.routes, keys)
            if not rule.continue_:
                break
    return out


class Compiled:
    """Lookup tables over one network version."""

    def __init__(self, network: Network) -> None:
        d = network.directory
        self.network, self.hash = network, network.hash
        self.agencies: dict[str, Agency] = {a.id: a for a in d.agencies}
        self.posts: dict[str, Post] = {p.id: p for p in d.posts}
        self.endpoints: dict[str, Endpoint] = {e.id: e for e in d.endpoints}
        self.units: dict[str, tuple[Post, Unit]] = {u.id: (p, u) for p, u in d.units()}
        self.units_of_agency: dict[str, list[tuple[Post, Unit]]] = {}
        for p, u in d.units():
            self.units_of_agency.setdefault(u.agency, []).append((p, u))
        self.observers = [a for a in d.agencies if a.observer and a.endpoint]
        self.segment_posts: dict[tuple[str, str], list[Post]] = {}
        for p in d.posts:
            self.segment_posts.setdefault((p.border_segment, p.country), []).append(p)
        self.agreements_of: dict[str, list[Agreement]] = {}
        for ag in d.agreements:
            for party in ag.parties:
                self.agreements_of.setdefault(party, []).append(ag)
        self.root = RuleGroup.build(network.rules.rules)

    @staticmethod
    def agencies_cross(a: Agency, b: Agency) -> bool:
        """Whether passing information from one agency to the other crosses a border."""
        return a.country != b.country

    def agreements_for(self, country: str | None, other: Agency) -> list[Agreement]:
        """Agreements binding `country` and the other agency's country, or naming it an observer."""
        return [ag for ag in self.agreements_of.get(country, ()) if other.country in ag.parties or other.id in ag.observers]
