"""Property tests over random networks, rules and alerts: the invariants the policy promises."""
from __future__ import annotations

from datetime import date, datetime, timezone
from uuid import uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.routing.compiled import Compiled, alert_keys, walk_indexed, walk_naive
from services.routing.network import NetworkConfigError, network_from
from services.routing.policy import Candidate, Thread, admit, decide, decide_forward, view
from shared.alerts import Alert, Category, Tlp
from shared.events import AlertForwarded, Recipient, ViewProfile

COUNTRIES = ["AA", "BB", "CC"]
KINDS = ["border_guard", "customs", "police"]
CATEGORIES = [c.value for c in Category]
NOW = datetime(2020, 6, 1, tzinfo=timezone.utc)


@st.composite
def agreement_docs(draw, agencies: list[dict], agreement_id: str) -> dict:
    return {
        "id": agreement_id, "title": "t", "parties": draw(st.lists(st.sampled_from(COUNTRIES), min_size=2, max_size=3, unique=True)),
        "categories": draw(st.lists(st.sampled_from(CATEGORIES), min_size=1, unique=True)),
        "max_tlp": draw(st.sampled_from([t.value for t in Tlp])), "personal_data": draw(st.booleans()),
        "onward_sharing": draw(st.booleans()), "observers": [x["id"] for x in agencies if x["observer"] and draw(st.booleans())],
        "valid_from": str(draw(st.dates(date(2014, 1, 1), date(2019, 1, 1)))),
        **({"valid_to": str(draw(st.dates(date(2021, 1, 2), date(2023, 1, 1))))} if draw(st.booleans()) else {}),
    }


@st.composite
def networks(draw):
    agencies = []
    for i in range(draw(st.integers(2, 6))):
        observer = draw(st.booleans()) and i > 1
        agencies.append({"id": f"ag{i}", "kind": draw(st.sampled_from(KINDS)), "country": draw(st.sampled_from(COUNTRIES)),
                         "observer": observer, "name_en": f"A{i}", "name_ru": f"А{i}",
                         **({"may_originate": draw(st.booleans())} if draw(st.booleans()) else {}),
                         **({"endpoint": f"ep-ag{i}"} if observer else {})})
    endpoints = [{"id": f"ep-ag{i}", "agency": a["id"], "url": f"https://x/{i}"} for i, a in enumerate(agencies) if a["observer"]]
    posts = []
    for j in range(draw(st.integers(1, 3))):  # a pair of facing posts per segment
        a, b = draw(st.lists(st.sampled_from(COUNTRIES), min_size=2, max_size=2, unique=True))
        segment = "-".join(sorted((a, b)))
        for side, country, other in ((0, a, 1), (1, b, 0)):
            units = []
            for k, ag in enumerate(x for x in agencies if x["country"] == country and not x["observer"]):
                if draw(st.integers(0, 3)):  # most agencies staff most posts
                    uid = f"u{j}{side}{k}"
                    units.append({"id": uid, "agency": ag["id"], "blo": draw(st.booleans()), "endpoint": f"ep-{uid}"})
                    endpoints.append({"id": f"ep-{uid}", "agency": ag["id"], "url": f"https://x/{uid}"})
            posts.append({"id": f"p{j}{side}", "name_en": f"P{j}{side}", "name_ru": f"П{j}{side}", "country": country,
                          "border_segment": segment, "counterpart": f"p{j}{other}", "units": units})
    # Bilateral and trilateral agreements, overlapping freely: routing decides over all in force.
    agreements = [draw(agreement_docs(agencies, f"agr{n}")) for n in range(draw(st.integers(1, 5)))]
    names = [a["id"] for a in agencies] + [u["id"] for p in posts for u in p["units"]]

    def rule(depth, i):
        return {"id": f"r{depth}{i}{draw(st.integers(0, 999))}",
                "match": {"category": draw(st.lists(st.sampled_from(CATEGORIES), max_size=2, unique=True)),
                          "to_country": draw(st.lists(st.sampled_from(COUNTRIES), max_size=1))},
                "recipients": draw(st.lists(st.sampled_from(["blo_at_post", "units_at_post", "counterparts", "observers"]), min_size=1, unique=True)),
                "deny": draw(st.lists(st.sampled_from(names), max_size=1)),
                "continue": draw(st.booleans()),
                "routes": [rule(depth + 1, k) for k in range(draw(st.integers(0, 2)))] if depth < 1 else []}

    doc = {"directory": {"countries": COUNTRIES, "agencies": agencies, "posts": posts, "endpoints": endpoints,
                         "agreements": agreements},
           "rules": {"rules": [rule(0, i) for i in range(draw(st.integers(1, 4)))]}}
    try:
        return Compiled(network_from(doc))
    except NetworkConfigError:  # e.g. an id drawn twice: not a network worth testing
        return draw(st.nothing())


@st.composite
def alerts_for(draw, net: Compiled):
    senders = [a for a in net.agencies.values() if a.originates]
    sender = draw(st.sampled_from(senders) if senders else st.nothing())
    posts = [p for p in net.posts.values()]
    post = draw(st.sampled_from(posts))
    to = draw(st.sampled_from(COUNTRIES))
    named = draw(st.lists(st.sampled_from(sorted(net.units) + sorted(net.agencies)), max_size=2, unique=True))
    return Alert(sender_agency=sender.id, sender_post=draw(st.sampled_from([None, post.id])),
                 category=draw(st.sampled_from(CATEGORIES)), severity="severe", urgency="expected", certainty="likely",
                 effective=datetime(draw(st.integers(2015, 2022)), 1, 1, tzinfo=timezone.utc),
                 location={"post": post.id, "direction": {"from_country": sender.country, "to_country": to}},
                 headline="h", tlp=draw(st.sampled_from(list(Tlp))), addressees=named,
                 personal_data={"names": ["x"]} if draw(st.booleans()) else None)


cases = networks().flatmap(lambda net: st.tuples(st.just(net), alerts_for(net)))
PROFILE = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@PROFILE
@given(cases)
def test_indexed_decision_equals_the_naive_walk(case):
    net, alert = case
    sender = net.agencies[alert.sender_agency]
    keys = alert_keys(alert, sender)
    assert [r.id for r in walk_indexed(net.root, keys)] == [r.id for r in walk_naive(net.network.rules.rules, keys)]
    assert decide(alert, Thread(), net, NOW) == decide(alert, Thread(), net, NOW, naive=True)


@PROFILE
@given(cases)
def test_nothing_crosses_a_border_without_a_covering_agreement(case):
    net, alert = case
    sender = net.agencies[alert.sender_agency]
    for r in decide(alert, Thread(), net, NOW).recipients:
        agency = net.agencies[r.agency]
        if agency.country != sender.country:
            assert_permitted(net, alert, sender, r)
        if alert.tlp is Tlp.RED:
            assert r.unit in alert.addressees or r.agency in alert.addressees
        if agency.observer:
            assert r.profile is ViewProfile.SUMMARY


@PROFILE
@given(cases, st.data())
def test_adding_a_deny_rule_never_adds_a_recipient(case, data):
    net, alert = case
    before = {r.endpoint for r in decide(alert, Thread(), net, NOW).recipients}
    doc = net.network.content()
    victim = data.draw(st.sampled_from(sorted(net.agencies)))
    doc["rules"]["rules"].insert(0, {"id": "deny-first", "deny": [victim], "continue": True})
    after = decide(alert, Thread(), Compiled(network_from(doc)), NOW)
    assert {r.endpoint for r in after.recipients} <= before
    assert victim not in {r.agency for r in after.recipients}


@PROFILE
@given(cases, st.data())
def test_forwarding_never_widens(case, data):
    net, alert = case
    original = decide(alert, Thread(), net, NOW)
    if not original.recipients:
        return
    holder: Recipient = data.draw(st.sampled_from(original.recipients))
    to = data.draw(st.lists(st.sampled_from(sorted(net.units) + sorted(net.agencies)), min_size=1, max_size=3, unique=True))
    fwd = AlertForwarded(forward_id=uuid4(), agency=holder.agency, unit=holder.unit, to=to, forwarded_by="k")
    sender = net.agencies[alert.sender_agency]
    for r in decide_forward(fwd, Thread(alert, tuple(original.recipients)), net, NOW).recipients:
        # The original's own policy would have admitted this recipient, had it been a candidate ...
        c = Candidate(net.agencies[r.agency], r.unit, r.endpoint, "probe", "probe")
        assert isinstance(admit(alert, sender, c, net, NOW, {}), Recipient)
        # ... and it sees no more than the forwarder did.
        assert set(holder.redacted) <= set(r.redacted)
        assert holder.profile is ViewProfile.FULL or r.profile is ViewProfile.SUMMARY


def assert_permitted(net: Compiled, alert: Alert, sender, r: Recipient, *, exact: bool = True) -> None:
    """The agreement the recipient names binds both parties, is in force, covers the alert, and shapes the view
    (`exact`: no narrower than it allows either; a forward may be narrower, as the forwarder's own view was)."""
    agency = net.agencies[r.agency]
    named = {ag.id: ag for ag in net.agreements_for(sender.country, agency)}
    assert r.agreement in named, f"{r.agency} received across a border without an agreement"
    ag = named[r.agreement]
    assert ag.active_on((alert.effective or NOW).date()) and alert.category in ag.categories
    assert alert.tlp.openness >= ag.max_tlp.openness
    body = view(alert, r, alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)["alert"]
    if alert.personal_data and not ag.personal_data:
        assert "personal_data" not in body, f"{r.agency} got personal data {ag.id} forbids"
    if exact and alert.personal_data and ag.personal_data and not agency.observer:
        assert "personal_data" in body, "shaping follows the named agreement, no narrower"


def _recipients(alert: Alert, doc: dict) -> set[str]:
    return {r.endpoint for r in decide(alert, Thread(), Compiled(network_from(doc)), NOW).recipients}


@PROFILE
@given(cases, st.data())
def test_adding_an_agreement_never_removes_a_recipient(case, data):
    net, alert = case
    doc = net.network.content()
    agencies = doc["directory"]["agencies"]
    agreements = doc["directory"]["agreements"]
    agreements.insert(data.draw(st.integers(0, len(agreements))), data.draw(agreement_docs(agencies, "added")))
    assert {r.endpoint for r in decide(alert, Thread(), net, NOW).recipients} <= _recipients(alert, doc)


@PROFILE
@given(cases, st.data())
def test_removing_an_agreement_never_adds_a_recipient(case, data):
    net, alert = case
    doc = net.network.content()
    agreements = doc["directory"]["agreements"]
    if not agreements:
        return
    del agreements[data.draw(st.integers(0, len(agreements) - 1))]
    assert _recipients(alert, doc) <= {r.endpoint for r in decide(alert, Thread(), net, NOW).recipients}
