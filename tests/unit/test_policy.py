"""The routing decision core: the exercise scenario, each policy rule, and invariants."""
from __future__ import annotations

from datetime import datetime, timezone
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demo.scenario import EXPECTED_DENIED, EXPECTED_RECIPIENTS, SCENARIO
from services.routing.directory import load_network
from services.routing.policy import decide, view
from shared.alerts import Alert, Category, Tlp
from shared.events import ViewProfile
from shared.settings import REPO

DIRECTORY, RULES, HASH = load_network(REPO / "deploy" / "network")
NOW = datetime(2017, 5, 10, tzinfo=timezone.utc)


def alert(**changes) -> Alert:
    return Alert.model_validate({**SCENARIO, **changes})


def route(a: Alert):
    return decide(a, DIRECTORY, RULES, HASH, NOW)


def test_scenario_reaches_exactly_the_expected_recipients():
    d = route(alert())
    got = {r.endpoint: (r.agency, r.unit, r.profile.value) for r in d.recipients}
    assert got == EXPECTED_RECIPIENTS
    assert {(x.agency, x.unit): x.code for x in d.denied} == EXPECTED_DENIED
    assert d.ruleset_hash == HASH and HASH.startswith("sha256:")


def test_every_decision_explains_itself():
    d = route(alert())
    assert all(r.reason and r.rule for r in d.recipients)
    tj = d.denied[0]
    assert "TJ" in tj.explanation and "KG→UZ" in tj.explanation


def test_tlp_red_only_to_named_addressees():
    d = route(alert(tlp="TLP:RED", addressees=["blo-dostuk"]))
    assert [r.unit for r in d.recipients] == ["blo-dostuk"]
    assert {x.code for x in d.denied} == {"tlp_red"}


def test_tlp_above_agreement_does_not_cross():
    d = route(alert(tlp="TLP:AMBER+STRICT"))
    denied = {x.unit or x.agency: x.code for x in d.denied}
    assert denied["uz-sbs-dustlik"] == "tlp_exceeds_agreement"
    assert "uz-sbs" not in {r.agency for r in d.recipients}
    assert {"blo-dostuk", "kg-moi-dostuk", "kg-customs-dostuk"} <= {r.unit for r in d.recipients}


def test_category_outside_agreement_does_not_cross():
    # KG–KZ observer arrangement covers drugs and precursors only.
    d = route(alert(category="smuggled_goods"))
    assert {x.agency: x.code for x in d.denied}["kz-mof"] == "category_not_covered"


def test_no_agreement_before_it_was_signed():
    d = route(alert(effective="2014-05-15T00:00:00+06:00", expires="2014-05-20T00:00:00+06:00"))
    assert {x.unit or x.agency: x.code for x in d.denied}["uz-sbs-dustlik"] == "agreement_inactive"


def test_personal_data_is_redacted_across_borders_and_for_observers():
    a = alert(personal_data={"names": ["A. Example"], "vehicle_plates": ["01 KG 123 ABC"]})
    d = route(a)
    by_unit = {r.unit or r.agency: r for r in d.recipients}
    assert by_unit["blo-dostuk"].redacted == []
    assert by_unit["uz-sbs-dustlik"].redacted == ["personal_data"]
    assert by_unit["unodc"].redacted == ["personal_data"]
    ids = dict(alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)
    assert view(a, by_unit["blo-dostuk"], **ids)["alert"]["personal_data"]["names"] == ["A. Example"]
    assert "personal_data" not in view(a, by_unit["uz-sbs-dustlik"], **ids)["alert"]


def test_observers_get_the_summary_view_only():
    a = alert()
    unodc = next(r for r in route(a).recipients if r.agency == "unodc")
    assert unodc.profile is ViewProfile.SUMMARY
    body = view(a, unodc, alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)["alert"]
    assert "description" not in body and "instruction" not in body and body["headline"] == a.headline


def test_the_originator_does_not_receive_its_own_alert():
    d = route(alert(location={"post": "bor-dobo", "border_segment": "KG-TJ",
                              "direction": {"from_country": "KG", "to_country": "TJ"}}))
    assert "blo-bor-dobo" not in {r.unit for r in d.recipients}


alerts = st.builds(
    lambda cat, tlp, post, to, named, pd: alert(
        category=cat, tlp=tlp, addressees=named,
        location={"post": post, "direction": {"from_country": "KG", "to_country": to}},
        personal_data={"names": ["X"]} if pd else None,
    ),
    st.sampled_from(list(Category)), st.sampled_from(list(Tlp)),
    st.sampled_from(["dostuk", "dustlik", "bor-dobo", "kyzyl-art", None]), st.sampled_from(["UZ", "TJ", "KZ"]),
    st.lists(st.sampled_from(["blo-dostuk", "uz-sbs", "tj-bs-kyzyl-art", "unodc", "kg-moi"]), max_size=3, unique=True),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(alerts)
def test_policy_invariants(a: Alert):
    d = route(a)
    endpoints = [r.endpoint for r in d.recipients]
    assert len(endpoints) == len(set(endpoints)), "one delivery per endpoint"
    denied = {(x.agency, x.unit) for x in d.denied}
    assert not denied & {(r.agency, r.unit) for r in d.recipients}, "denied and received are disjoint"
    for r in d.recipients:
        agency = DIRECTORY.agency(r.agency)
        if a.tlp is Tlp.RED:
            assert r.unit in a.addressees or r.agency in a.addressees
        if agency.country != "KG":  # crossed a border: an agreement in force allowed it
            assert any(
                ("KG" in ag.parties and (agency.country in ag.parties or agency.id in ag.observers))
                and ag.active_on(a.effective.date()) and a.category in ag.categories
                and a.tlp.openness >= ag.max_tlp.openness
                for ag in DIRECTORY.agreements
            )
            if a.personal_data:
                assert "personal_data" in r.redacted
        if agency.observer:
            assert r.profile is ViewProfile.SUMMARY
    assert route(a) == d, "a decision is a pure function of its inputs"


@pytest.mark.parametrize("field", ["category", "severity", "urgency", "certainty", "headline"])
def test_alert_requires_core_fields(field):
    doc = dict(SCENARIO)
    del doc[field]
    with pytest.raises(ValueError, match=field):
        Alert.model_validate(doc)
