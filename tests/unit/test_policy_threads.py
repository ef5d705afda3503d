"""Issue 12's adversarial property on `policy.decide` with a thread model.

Random sequences of alert / update / cancel / forward / ack, each from a random agency (observers
and recipients included), over random networks. Whatever the sequence, no message delivers a
field to a recipient whose agreement forbids it, crosses a border without an agreement in force,
or reaches anyone outside the policy's set: what its own content reaches on its own, plus the
thread's recipients when its sender agency owns the thread (a forward: the forwarder's targets).
The model keeps what `routing.consumer.thread_of` rebuilds: the thread's first alert, every
message, and each endpoint's first recipient record.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from uuid import uuid4

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from services.routing.compiled import Compiled
from services.routing.policy import Candidate, Thread, admit, decide, decide_forward, view
from shared.alerts import Alert, Tlp
from shared.directory import Agency
from shared.events import AlertForwarded, AlertRouted, Recipient, ViewProfile
from tests.unit.test_policy_properties import CATEGORIES, COUNTRIES, assert_permitted, networks

NOW = datetime(2020, 6, 1, tzinfo=timezone.utc)


@dataclass
class ThreadModel:
    messages: list[Alert]
    recipients: dict[str, Recipient] = field(default_factory=dict)  # by endpoint, the first record wins

    @property
    def owner(self) -> str:
        return self.messages[0].sender_agency

    def as_thread(self, original: Alert | None = None) -> Thread:
        return Thread(original or self.messages[0], tuple(self.recipients.values()))

    def record(self, decision: AlertRouted) -> None:
        for r in decision.recipients:
            self.recipients.setdefault(r.endpoint, r)


@st.composite
def content(draw, net: Compiled, sender: Agency, kind: str) -> Alert:
    post = draw(st.sampled_from(sorted(net.posts)))
    direction = {"from_country": sender.country, "to_country": draw(st.sampled_from(COUNTRIES))} if sender.country else None
    return Alert(sender_agency=sender.id, sender_post=draw(st.sampled_from([None, post])), msg_type=kind,
                 references=[uuid4()] if kind != "alert" or draw(st.booleans()) else [],
                 category=draw(st.sampled_from(CATEGORIES)), severity="severe", urgency="expected", certainty="likely",
                 effective=datetime(draw(st.integers(2015, 2022)), 1, 1, tzinfo=timezone.utc),
                 location={"post": post, "direction": direction}, headline="h", description="the narrative",
                 tlp=draw(st.sampled_from(list(Tlp))),
                 addressees=draw(st.lists(st.sampled_from(sorted(net.units) + sorted(net.agencies)), max_size=2, unique=True)),
                 personal_data={"names": ["x"]} if draw(st.booleans()) else None,
                 handling=draw(st.sampled_from([[], ["H2"]])), onward_permission=draw(st.booleans()))


def check_views(net: Compiled, message: Alert, decision: AlertRouted, *, exact: bool = True) -> None:
    """No field a recipient's agreement or profile forbids; no border crossed without an agreement in force."""
    sender = net.agencies[message.sender_agency]
    for r in decision.recipients:
        agency = net.agencies[r.agency]
        if agency.country != sender.country:
            assert_permitted(net, message, sender, r, exact=exact)
        body = view(message, r, alert_id=uuid4(), thread_id=uuid4(), sent_at=NOW)["alert"]
        if agency.observer:
            assert r.profile is ViewProfile.SUMMARY and "description" not in body and "personal_data" not in body


def named_endpoints(net: Compiled, name: str) -> set[str]:
    """A unit's endpoint; an agency's on-duty endpoint, else its units'."""
    if name in net.units:
        return {net.units[name][1].endpoint}
    agency = net.agencies.get(name)
    if agency is None:
        return set()
    return {agency.endpoint} if agency.endpoint else {u.endpoint for _, u in net.units_of_agency.get(name, ())}


def endpoints(decision: AlertRouted) -> set[str]:
    return {r.endpoint for r in decision.recipients}


def step(draw, net: Compiled, threads: list[ThreadModel]) -> None:
    """Draw one act from a random agency and check its decision; alerts start or (try to) join threads."""
    kind = draw(st.sampled_from(["alert", "update", "cancel", "forward", "ack"]))
    agency = net.agencies[draw(st.sampled_from(sorted(net.agencies)))]
    if not threads:
        kind = "alert"
    thread = draw(st.sampled_from(threads)) if threads else None
    if kind == "ack":  # acknowledgements go to the gateway's status view, never through routing
        return
    if kind in ("update", "cancel") and draw(st.booleans()):  # half of them from the thread's own sender
        agency = net.agencies[thread.owner]
    if kind == "forward":
        holders = [r for r in thread.recipients.values()]
        holder = draw(st.sampled_from(holders)) if holders and draw(st.integers(0, 3)) else None  # mostly a holder
        by, unit = (holder.agency, holder.unit) if holder else (agency.id, draw(st.sampled_from([None, *sorted(net.units)])))
        to = draw(st.lists(st.sampled_from(sorted(net.units) + sorted(net.agencies)), min_size=1, max_size=3, unique=True))
        original = draw(st.sampled_from(thread.messages))
        fwd = AlertForwarded(forward_id=uuid4(), agency=by, unit=unit, to=to, forwarded_by="k")
        decision = decide_forward(fwd, thread.as_thread(original), net, NOW)
        check_views(net, original, decision, exact=False)
        event("forward delivered" if decision.recipients else "forward refused")
        held = [r for r in thread.recipients.values() if r.agency == by and unit in (None, r.unit)]
        targets = {e for n in to for e in named_endpoints(net, n)}
        assert not decision.recipients or held, "only a holder of the thread forwards it"
        original_sender = net.agencies[original.sender_agency]
        for r in decision.recipients:
            assert r.endpoint in targets, "a forward reaches only the targets it names"
            assert isinstance(admit(original, original_sender, Candidate(net.agencies[r.agency], r.unit, r.endpoint, "p", "p"),
                                    net, NOW, {}), Recipient), "never wider than the original's own policy"
            assert set(held[0].redacted) <= set(r.redacted)
        thread.record(decision)
        return
    message = draw(content(net, agency, kind))
    joins = thread is not None and (kind != "alert" or message.references)
    decision = decide(message, thread.as_thread() if joins else Thread(), net, NOW)
    check_views(net, message, decision)
    if not agency.originates:
        assert not decision.recipients and [d.code for d in decision.denied] == ["may_not_originate"]
    assert not any(r.agency == agency.id and agency.observer for r in decision.recipients), "no observer copy of its own"
    crossing = any(net.agencies[r.agency].country != agency.country for r in decision.recipients)
    owner = "its owner" if joins and agency.id == thread.owner else "another agency"
    event((f"{kind} joining a thread from {owner}" if joins else "a new thread") + (", crossing a border" if crossing else ""))
    allowed = endpoints(decide(message, Thread(), net, NOW))  # what its own content reaches on its own
    if joins and message.sender_agency == thread.owner:
        allowed |= set(thread.recipients)
    assert endpoints(decision) <= allowed, f"{kind} from {agency.id} reached {endpoints(decision) - allowed}"
    if message.tlp is Tlp.RED and kind == "alert" and not joins:
        assert all(r.unit in message.addressees or r.agency in message.addressees for r in decision.recipients)
    if joins:
        thread.messages.append(message)
        thread.record(decision)
    else:
        threads.append(model := ThreadModel([message]))
        model.record(decision)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                   HealthCheck.data_too_large])
@given(networks(), st.data())
def test_random_thread_sequences_stay_within_the_policy(net, data):
    threads: list[ThreadModel] = []
    for _ in range(data.draw(st.integers(2, 8), label="steps")):
        step(data.draw, net, threads)
