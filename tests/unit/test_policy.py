"""The routing decision core: the exercise scenarios, each policy clause as a table, and invariants."""
from __future__ import annotations

from datetime import date, datetime, timezone
from uuid import uuid4

import pytest

from demo.scenario import EXPECTED_DENIED, EXPECTED_RECIPIENTS, FORWARD_TO, PRECURSORS, SCENARIO, YEAR
from services.routing.agreements import Basis, Refusal, choose
from services.routing.compiled import Compiled
from services.routing.network import load_network, network_from
from services.routing.policy import Thread, decide, decide_forward, differences, view
from shared.alerts import Alert
from shared.directory import Agreement
from shared.events import AlertForwarded, ViewProfile
from shared.settings import REPO

NET = Compiled(load_network(REPO / "deploy" / "network"))
NOW = datetime(2017, 5, 10, tzinfo=timezone.utc)


def alert(base: dict = SCENARIO, **changes) -> Alert:
    return Alert.model_validate({**base, **changes})


def route(a: Alert, thread: Thread = Thread(), net: Compiled = NET, now: datetime = NOW):
    return decide(a, thread, net, now)


def outcome(d) -> dict[str, str]:
    """Map unit-or-agency → 'full', 'summary' or the denial code."""
    got = {(r.unit or r.agency): r.profile.value for r in d.recipients}
    got.update({(x.unit or x.agency): x.code for x in d.denied})
    return got


def forward(to: list[str], agency="kg-sbs", unit="blo-dostuk") -> AlertForwarded:
    return AlertForwarded(forward_id=uuid4(), agency=agency, unit=unit, to=to, forwarded_by="k1")


def test_first_scenario_reaches_exactly_the_expected_recipients():
    d = route(alert())
    assert {r.endpoint: (r.agency, r.unit, r.profile.value) for r in d.recipients} == EXPECTED_RECIPIENTS
    assert {(x.agency, x.unit): x.code for x in d.denied} == EXPECTED_DENIED
    assert d.ruleset_hash == NET.hash and d.kind == "alert" and d.note is None
    assert all(r.reason and r.rule == "trafficking-risk-at-crossing" for r in d.recipients)
    assert "TJ is not on the KG→UZ route" in d.denied[0].explanation


def test_precursor_scenario_from_customs():
    d = route(alert(PRECURSORS))
    assert outcome(d) == {
        "blo-dostuk": "full", "kg-moi-dostuk": "full",  # the child rule adds the units at the post
        "uz-sbs-dustlik": "full", "kg-gknb-bgs": "summary", "kz-mof": "summary", "unodc": "summary",
    }, "customs' own unit is not told its own alert"
    by = {r.unit or r.agency: r for r in d.recipients}
    assert by["blo-dostuk"].redacted == [] and by["uz-sbs-dustlik"].redacted == ["personal_data"]
    assert by["kg-moi-dostuk"].rule == "precursors-found-by-customs"


@pytest.mark.parametrize("changes, expected", [
    # TLP:RED goes to named addressees only
    ({"tlp": "TLP:RED", "addressees": ["blo-dostuk"]},
     {"blo-dostuk": "full", "kg-moi-dostuk": "tlp_red", "kg-customs-dostuk": "tlp_red", "uz-sbs-dustlik": "tlp_red",
      "tj-bs-kyzyl-art": "tlp_red", "kg-gknb-bgs": "tlp_red", "kz-mof": "tlp_red", "unodc": "tlp_red"}),
    # an agreement caps the classification that may cross
    ({"tlp": "TLP:AMBER+STRICT"},
     {"blo-dostuk": "full", "kg-moi-dostuk": "full", "kg-customs-dostuk": "full", "kg-gknb-bgs": "summary",
      "uz-sbs-dustlik": "tlp_exceeds_agreement", "tj-bs-kyzyl-art": "not_on_route", "kz-mof": "tlp_exceeds_agreement",
      "unodc": "tlp_exceeds_agreement"}),
    # the KG–KZ observer arrangement covers drugs and precursors only
    ({"category": "smuggled_goods"},
     {"blo-dostuk": "full", "kg-moi-dostuk": "full", "kg-customs-dostuk": "full", "uz-sbs-dustlik": "full",
      "tj-bs-kyzyl-art": "not_on_route", "kg-gknb-bgs": "summary", "kz-mof": "category_not_covered", "unodc": "summary"}),
    # no agreement was in force before October 2015
    ({"effective": "2014-05-15T00:00:00+06:00", "expires": "2017-05-20T00:00:00+06:00"},
     {"blo-dostuk": "full", "kg-moi-dostuk": "full", "kg-customs-dostuk": "full", "kg-gknb-bgs": "summary",
      "uz-sbs-dustlik": "agreement_inactive", "tj-bs-kyzyl-art": "not_on_route", "kz-mof": "agreement_inactive",
      "unodc": "agreement_inactive"}),
    # an explicit addressee across the border is not filtered by the route, but still needs an agreement
    ({"addressees": ["tj-bs-kyzyl-art"]},
     {**{u: p for u, (_, _, p) in ((v[1] or v[0], v) for v in EXPECTED_RECIPIENTS.values())}, "tj-bs-kyzyl-art": "full"}),
    # TLP:CLEAR and GREEN are as open as the agreements allow
    ({"tlp": "TLP:CLEAR"},
     {**{(v[1] or v[0]): v[2] for v in EXPECTED_RECIPIENTS.values()}, "tj-bs-kyzyl-art": "not_on_route"}),
])
def test_policy_clauses(changes, expected):
    assert outcome(route(alert(**changes))) == expected


def test_expired_alert_reaches_no_one_new():
    d = route(alert(expires="2017-05-01T00:00:00+06:00", effective=None), now=NOW)
    assert set(outcome(d).values()) <= {"expired", "not_on_route"} and not d.recipients
    assert d.note == "no candidate passed the policy: routed to no one"


def test_alert_matching_no_rule_is_routed_to_no_one_and_says_so():
    doc = NET.network.content()
    doc["rules"] = {"rules": [{"id": "drugs-only", "match": {"category": ["drugs"]}, "recipients": ["blo_at_post"]}]}
    small = Compiled(network_from(doc))
    d = route(alert(category="weapons"), net=small)
    assert not d.recipients and not d.denied and d.note == "no route rule matched this alert: routed to no one"


def test_deny_rule_overrides_everything_including_addressees():
    doc = NET.network.content()
    doc["rules"]["rules"][0]["deny"] = ["kg-customs", "unodc"]
    doc["rules"]["rules"][0]["deny_reason"] = "customs are told through their own channel"
    d = route(alert(addressees=["kg-customs-dostuk"]), net=Compiled(network_from(doc)))
    got = outcome(d)
    assert got["kg-customs-dostuk"] == "denied_by_rule" and got["unodc"] == "denied_by_rule"
    assert "their own channel" in next(x.explanation for x in d.denied if x.agency == "kg-customs")


def test_differences_name_each_candidate_whose_outcome_changes():
    doc = NET.network.content()
    doc["rules"]["rules"][0]["deny"] = ["unodc"]
    a = alert(personal_data={"names": ["A. Example"]})
    before, after = route(a), route(a, net=Compiled(network_from(doc)))
    assert differences(before, after) == [
        {"target": "unodc", "before": "summary view without personal_data", "after": "denied: denied_by_rule"}]
    assert differences(before, before) == []


def test_handling_codes_travel_into_every_view():
    a = alert(handling=["H1", "H3"], handling_note="only with the prosecutor's consent")
    for r in route(a).recipients:
        body = view(a, r, alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)["alert"]
        assert body["handling"] == ["H1", "H3"] and body["handling_note"] == "only with the prosecutor's consent"


def test_observers_get_the_summary_view_without_personal_data():
    a = alert(personal_data={"names": ["A. Example"]})
    unodc = next(r for r in route(a).recipients if r.agency == "unodc")
    body = view(a, unodc, alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)["alert"]
    assert unodc.profile is ViewProfile.SUMMARY and unodc.redacted == ["personal_data"]
    assert "description" not in body and "personal_data" not in body and body["headline"] == a.headline


def original_thread(a: Alert | None = None) -> Thread:
    a = a or alert()
    return Thread(a, tuple(route(a).recipients))


def test_update_reaches_everyone_who_received_the_original_and_cancel_only_them():
    thread = original_thread()
    update = alert(msg_type="update", references=[uuid4()], headline="Risk window moved to 17–22 May",
                   addressees=["tj-bs-kyzyl-art"])
    got = outcome(route(update, thread))
    assert {k for k, v in got.items() if v in ("full", "summary")} >= {(v[1] or v[0]) for v in EXPECTED_RECIPIENTS.values()}
    assert got["tj-bs-kyzyl-art"] == "full", "an update may reach someone new where policy now allows it"
    cancel = alert(msg_type="cancel", references=[uuid4()], addressees=["tj-bs-kyzyl-art"])
    d = route(cancel, thread)
    assert {r.endpoint for r in d.recipients} == set(EXPECTED_RECIPIENTS) and d.kind == "cancel"


def test_expired_update_still_reaches_the_thread_but_no_one_new():
    thread = original_thread()
    late = datetime(YEAR, 6, 1, tzinfo=timezone.utc)
    update = alert(msg_type="update", references=[uuid4()], addressees=["kg-moi-kyzyl-kiya"])
    got = outcome(route(update, thread, now=late))
    assert got["kg-moi-kyzyl-kiya"] == "expired" and got["blo-dostuk"] == "full"


def test_dostuk_forwards_to_the_units_at_another_crossing():
    d = decide_forward(forward(FORWARD_TO + ["tj-bs-kyzyl-art"]), original_thread(), NET, NOW)
    assert outcome(d) == {"kg-sbs-kyzyl-kiya": "full", "kg-moi-kyzyl-kiya": "full", "kg-customs-kyzyl-kiya": "full",
                          "tj-bs-kyzyl-art": "not_on_route"}
    assert d.kind == "forward" and all(r.rule == "forward" for r in d.recipients)


@pytest.mark.parametrize("changes, to, code", [
    ({"tlp": "TLP:AMBER"}, "kg-moi-kyzyl-kiya", "tlp_amber"),  # another agency at another post
    ({"tlp": "TLP:AMBER+STRICT"}, "kg-moi-dostuk", "already_received"),
    ({"tlp": "TLP:AMBER+STRICT"}, "kg-moi-kyzyl-kiya", "tlp_amber_strict"),
    ({"tlp": "TLP:RED", "addressees": ["blo-dostuk"]}, "kg-sbs-kyzyl-kiya", "tlp_red"),
    ({"handling": ["H2"]}, "kg-sbs-kyzyl-kiya", "handling_h2"),
    ({}, "nobody-here", "unknown_recipient"),
])
def test_forwarding_clauses(changes, to, code):
    d = decide_forward(forward([to]), original_thread(alert(**changes)), NET, NOW)
    assert outcome(d) == {to: code}


def test_amber_forward_inside_the_own_agency_and_h2_with_permission():
    d = decide_forward(forward(["kg-sbs-kyzyl-kiya"]), original_thread(alert(tlp="TLP:AMBER")), NET, NOW)
    assert outcome(d) == {"kg-sbs-kyzyl-kiya": "full"}
    d = decide_forward(forward(["kg-sbs-kyzyl-kiya"]), original_thread(alert(handling=["H2"], onward_permission=True)), NET, NOW)
    assert outcome(d) == {"kg-sbs-kyzyl-kiya": "full"}


def test_only_a_recipient_may_forward_and_never_wider_than_its_own_view():
    d = decide_forward(forward(["kg-moi-kyzyl-kiya"], agency="tj-bs", unit="tj-bs-kyzyl-art"), original_thread(), NET, NOW)
    assert outcome(d) == {"kg-moi-kyzyl-kiya": "not_a_recipient"}
    # The UZ counterpart got a redacted view and has no onward-sharing right under the KG–UZ agreement.
    a = alert(personal_data={"names": ["X"]})
    d = decide_forward(forward(["uz-sbs"], agency="uz-sbs", unit="uz-sbs-dustlik"), original_thread(a), NET, NOW)
    assert outcome(d) == {"uz-sbs-dustlik": "already_received"}
    # An observer passing its summary on inside its own country keeps it a summary.
    d = decide_forward(forward(["kg-sbs-kyzyl-kiya"], agency="kg-gknb-bgs", unit=None), original_thread(a), NET, NOW)
    r = d.recipients[0]
    assert r.profile is ViewProfile.SUMMARY and "personal_data" in r.redacted


@pytest.mark.parametrize("field", ["category", "severity", "urgency", "certainty", "headline"])
def test_alert_requires_core_fields(field):
    doc = dict(SCENARIO)
    del doc[field]
    with pytest.raises(ValueError, match=field):
        Alert.model_validate(doc)


# --- overlapping agreements: the KG–UZ bilateral protocol and the KG–UZ–TJ trilateral agreement -------

WANTED = {**SCENARIO, "category": "wanted_person", "addressees": ["uz-sbs-dustlik", "tj-bs-kyzyl-art"],
          "personal_data": {"names": ["A. Example"]}}


def basis(d, unit: str) -> tuple[str | None, list[str]]:
    r = next(r for r in d.recipients if r.unit == unit)
    return r.agreement, r.redacted


def test_a_recipient_covered_only_by_the_second_agreement_is_allowed_under_it():
    # kg-uz-blo-2015 comes first in the file and does not cover wanted persons; the trilateral does.
    d = route(alert(WANTED))
    assert basis(d, "uz-sbs-dustlik") == ("kg-uz-tj-wanted-2016", [])
    assert basis(d, "tj-bs-kyzyl-art") == ("kg-uz-tj-wanted-2016", [])
    r = next(r for r in d.recipients if r.unit == "uz-sbs-dustlik")
    assert r.basis == "the only agreement in force that covers it"


def test_the_agreement_that_permits_the_personal_data_is_the_basis():
    d = route(alert(WANTED, category="vehicle_lookout"))
    assert basis(d, "uz-sbs-dustlik") == ("kg-uz-tj-wanted-2016", [])
    assert "permits its personal data" in next(r.basis for r in d.recipients if r.unit == "uz-sbs-dustlik")


def test_without_personal_data_the_most_restrictive_agreement_is_the_basis():
    d = route(alert(WANTED, category="vehicle_lookout", personal_data=None))
    assert basis(d, "uz-sbs-dustlik") == ("kg-uz-tj-wanted-2016", []), "2 categories are fewer than 7"
    assert "most restrictive" in next(r.basis for r in d.recipients if r.unit == "uz-sbs-dustlik")
    # Only the bilateral covers general risks: its ban on personal data shapes the view.
    d = route(alert(WANTED, category="general_risk"))
    assert basis(d, "uz-sbs-dustlik") == ("kg-uz-blo-2015", ["personal_data"])


def test_file_order_of_agreements_does_not_change_any_decision():
    doc = NET.network.content()
    doc["directory"]["agreements"].reverse()
    reversed_net = Compiled(network_from(doc))
    for category in ("wanted_person", "vehicle_lookout", "general_risk", "drugs"):
        for pd in (None, {"names": ["X"]}):
            a = alert(WANTED, category=category, personal_data=pd)
            assert route(a).model_dump(exclude={"ruleset_hash"}) == route(a, net=reversed_net).model_dump(exclude={"ruleset_hash"})


def test_updates_and_cancels_of_the_thread_cross_under_the_same_choice():
    original = alert(WANTED)
    thread = original_thread(original)
    for kind in ("update", "cancel"):
        d = route(alert(WANTED, msg_type=kind, references=[uuid4()]), thread)
        assert basis(d, "uz-sbs-dustlik") == ("kg-uz-tj-wanted-2016", [])


def _ag(id: str, categories: list[str], max_tlp: str = "TLP:AMBER", personal_data: bool = False, **more) -> Agreement:
    return Agreement(id=id, title=id, parties=("KG", "UZ"), categories=categories, max_tlp=max_tlp,
                     personal_data=personal_data, valid_from=date(2015, 1, 1), **more)


@pytest.mark.parametrize("agreements, changes, chosen", [
    ([_ag("b", ["drugs", "weapons"]), _ag("a", ["drugs", "weapons", "precursors"])], {}, "b"),  # fewest categories
    ([_ag("b", ["drugs"], "TLP:AMBER"), _ag("a", ["drugs"], "TLP:GREEN")], {"tlp": "TLP:GREEN"}, "a"),  # fewest labels cross
    ([_ag("a", ["drugs"], personal_data=True), _ag("b", ["drugs"])], {}, "b"),  # no personal data
    ([_ag("b", ["drugs"]), _ag("a", ["drugs"])], {}, "a"),  # then id
    ([_ag("a", ["drugs"]), _ag("b", ["drugs", "weapons"], personal_data=True)], {"personal_data": {"names": ["X"]}}, "b"),
    ([_ag("a", ["drugs"], valid_to=date(2016, 1, 1)), _ag("b", ["drugs", "weapons"])], {}, "b"),  # only those in force
    ([_ag("a", ["weapons"]), _ag("b", ["drugs", "weapons"])], {}, "b"),  # only those covering the category
])
def test_choice_order(agreements, changes, chosen):
    found = choose(agreements, alert(**changes), date(2017, 5, 15))
    assert isinstance(found, Basis) and found.agreement.id == chosen


@pytest.mark.parametrize("agreements, changes, code, words", [
    ([_ag("a", ["drugs"], valid_to=date(2016, 1, 1)), _ag("b", ["drugs"], valid_to=date(2016, 1, 1))], {},
     "agreement_inactive", "agreements a, b are not in force on 2017-05-15"),
    ([_ag("a", ["weapons"]), _ag("b", ["precursors"])], {}, "category_not_covered", "agreements a, b do not cover drugs"),
    ([_ag("a", ["drugs"], "TLP:GREEN"), _ag("b", ["drugs"], "TLP:CLEAR")], {"tlp": "TLP:AMBER"}, "tlp_exceeds_agreement",
     "agreement a allows up to TLP:GREEN, b allows up to TLP:CLEAR, the alert is TLP:AMBER"),
])
def test_refusal_names_every_agreement_considered(agreements, changes, code, words):
    assert choose(agreements, alert(**changes), date(2017, 5, 15)) == Refusal(code, words)


# --- every message of a thread is shaped from its own content; only the sender agency extends its thread ---

def test_a_cancel_is_shaped_by_the_agreement_in_force_from_its_own_content():
    # Issue 12 defect 3: the original has no personal data, so its KG–UZ view was not redacted;
    # the cancel names a person, and the KG–UZ protocol forbids personal data.
    thread = original_thread(alert())
    cancel = alert(msg_type="cancel", references=[uuid4()], personal_data={"names": ["A. Example"]})
    d = route(cancel, thread)
    uz = next(r for r in d.recipients if r.unit == "uz-sbs-dustlik")
    assert uz.redacted == ["personal_data"] and uz.agreement == "kg-uz-blo-2015"
    assert "personal_data" not in view(cancel, uz, alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)["alert"]
    assert {r.endpoint for r in d.recipients} == set(EXPECTED_RECIPIENTS), "a cancel still reaches exactly the thread"
    # A cancel more restricted than the agreement allows does not cross at all.
    d = route(alert(msg_type="cancel", references=[uuid4()], tlp="TLP:AMBER+STRICT"), thread)
    assert outcome(d)["uz-sbs-dustlik"] == "tlp_exceeds_agreement"


@pytest.mark.parametrize("kind", ["alert", "update", "cancel"])
def test_another_agency_cannot_attach_to_a_thread_and_widen_it(kind):
    # Issue 12 defect 4: KG police received the border service's alert; its own TLP:RED message
    # referencing it would otherwise reach every recipient of that thread as if named explicitly.
    thread = original_thread(alert())
    theirs = alert(sender_agency="kg-moi", sender_post="dostuk", msg_type=kind, references=[uuid4()], tlp="TLP:RED")
    assert not route(theirs).recipients, "on its own, TLP:RED naming no one reaches no one"
    d = route(theirs, thread)
    assert not d.recipients
    assert d.note == "only kg-sbs, the thread's sender agency, may add to its thread: routed to no one"


# --- who may originate ---------------------------------------------------------------------------------

def test_an_observer_may_not_originate_unless_the_directory_says_so():
    a = alert(sender_agency="unodc", sender_post=None)
    d = route(a)
    assert not d.recipients and [(x.agency, x.code) for x in d.denied] == [("unodc", "may_not_originate")]
    assert d.note == "unodc may not originate alerts: routed to no one"
    doc = NET.network.content()
    next(x for x in doc["directory"]["agencies"] if x["id"] == "kz-mof")["may_originate"] = True
    d = route(alert(sender_agency="kz-mof", sender_post=None), net=Compiled(network_from(doc)))
    assert "kg-gknb-bgs" in {r.agency for r in d.recipients}, "other observers still get their summary"
    assert "kz-mof" not in {r.agency for r in d.recipients} | {x.agency for x in d.denied}, "never an observer copy of its own"
    # And an agency the directory forbids, though no observer, is refused the same way.
    next(x for x in doc["directory"]["agencies"] if x["id"] == "kg-sbs")["may_originate"] = False
    assert [x.code for x in route(alert(), net=Compiled(network_from(doc))).denied] == ["may_not_originate"]


def test_a_directory_without_may_originate_loads_with_the_same_hash():
    assert all("may_originate" not in a for a in NET.network.content()["directory"]["agencies"])
    assert network_from(NET.network.content()).hash == NET.hash
    assert [a.id for a in NET.network.directory.agencies if not a.originates] == ["kg-gknb-bgs", "kz-mof", "unodc"]


def test_an_update_or_cancel_naming_unreceived_messages_starts_a_thread_routed_by_its_own_content():
    missing = [uuid4()]
    as_alert = route(alert())
    for kind in ("update", "cancel"):
        d = decide(alert(msg_type=kind, references=missing), Thread(), NET, NOW, unresolved=missing)
        assert {r.endpoint for r in d.recipients} == {r.endpoint for r in as_alert.recipients}, kind
        assert d.unresolved_references == missing and d.kind == kind
        assert d.note.startswith("starts a thread: it references 1 earlier message(s) of kg-sbs that BLOnet never received")
    # Without unresolved references a cancel with no thread still reaches no one, and says why.
    lone = route(alert(msg_type="cancel", references=missing))
    assert lone.recipients == [] and lone.note == "nobody received this thread: nothing to cancel" and lone.unresolved_references == []
    # With a thread at hand (some references resolved), its holders decide, as for any cancel.
    holders = Thread(alert(), tuple(as_alert.recipients))
    d = decide(alert(msg_type="cancel", references=[uuid4(), *missing]), holders, NET, NOW, unresolved=missing)
    assert {r.rule for r in d.recipients} == {"thread"} and d.unresolved_references == missing
    assert "routed by its own content" not in d.note
