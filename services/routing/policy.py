"""The routing decision: a pure function of (alert, thread, network, time). No I/O, no clock.

Candidates come from the matching route rules, the alert's explicit addressees and, for updates
and cancels, everyone who received the thread before. Policy then filters them, deny-overrides
and default-deny across borders, and shapes each recipient's view.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from uuid import UUID

from services.routing.agreements import Basis, Refusal, choose
from services.routing.compiled import Compiled, alert_keys, walk_indexed, walk_naive
from services.routing.rules import Rule, Selector
from shared.alerts import Alert, Handling, MsgType, Tlp
from shared.directory import Agency
from shared.events import AlertForwarded, AlertRouted, Denial, Recipient, ViewProfile

THREAD_RULE = "thread"
ADDRESSEE_RULE = "addressee"


@dataclass(frozen=True)
class Thread:
    """What an alert's thread already did: its original alert and who received any part of it."""

    original: Alert | None = None
    recipients: tuple[Recipient, ...] = ()


@dataclass(frozen=True)
class Candidate:
    agency: Agency
    unit: str | None
    endpoint: str
    rule: str
    why: str
    explicit: bool = False  # named by the sender, or already a recipient of the thread


def _units_at(net: Compiled, post_id: str | None, rule: Rule, *, blo_only: bool) -> list[Candidate]:
    post = net.posts.get(post_id)
    if post is None:
        return []
    what = "BLO at" if blo_only else "law-enforcement unit at"
    return [Candidate(net.agencies[u.agency], u.id, u.endpoint, rule.id, f"{what} {post.name_en}")
            for u in post.units if u.blo or not blo_only]


def _select(selector: Selector, rule: Rule, alert: Alert, net: Compiled) -> list[Candidate]:
    loc = alert.location
    if selector in (Selector.BLO_AT_POST, Selector.UNITS_AT_POST):
        blo_only = selector is Selector.BLO_AT_POST
        if loc.post or not loc.direction:
            return _units_at(net, loc.post, rule, blo_only=blo_only)
        # No post named: the crossing points on the route's border, on the departure side.
        segment = "-".join(sorted((loc.direction.from_country, loc.direction.to_country)))
        posts = net.segment_posts.get((segment, loc.direction.from_country), [])
        return [c for p in posts for c in _units_at(net, p.id, rule, blo_only=blo_only)]
    if selector is Selector.COUNTERPARTS:
        found = []
        for near_id in dict.fromkeys((alert.sender_post, loc.post)):
            near = net.posts.get(near_id)
            across = net.posts.get(near.counterpart) if near and near.counterpart else None
            if across:
                found += [Candidate(net.agencies[u.agency], u.id, u.endpoint, rule.id,
                                    f"counterpart across the {across.border_segment} border at {across.name_en}")
                          for u in across.units]
        return found
    return [Candidate(a, None, a.endpoint, rule.id, "observer of the exchange") for a in net.observers]


def _named(net: Compiled, name: str, rule: str, why: str, explicit: bool) -> list[Candidate]:
    """Resolve an agency or unit id: a unit is itself; an agency is its on-duty endpoint, else its units."""
    if name in net.units:
        post, unit = net.units[name]
        return [Candidate(net.agencies[unit.agency], unit.id, unit.endpoint, rule, f"{why} at {post.name_en}", explicit)]
    agency = net.agencies.get(name)
    if agency is None:
        return []
    if agency.endpoint:
        return [Candidate(agency, None, agency.endpoint, rule, why, explicit)]
    return [Candidate(agency, u.id, u.endpoint, rule, f"{why} at {p.name_en}", explicit) for p, u in net.units_of_agency.get(name, ())]


def _prior(net: Compiled, thread: Thread) -> list[Candidate]:
    return [Candidate(net.agencies[r.agency], r.unit, r.endpoint, THREAD_RULE, "received an earlier message of this thread", True)
            for r in thread.recipients if r.agency in net.agencies]


def _agreement_check(net: Compiled, alert: Alert, sender: Agency, c: Candidate, day: date) -> Basis | Denial:
    """Return the agreement the alert crosses to the candidate under, decided over all in force, else the denial."""
    relevant = net.agreements_for(sender.country, c.agency)
    if not relevant:
        return Denial(agency=c.agency.id, unit=c.unit, code="no_agreement",
                      explanation=f"no sharing agreement between {sender.country} and {c.agency.country or c.agency.id}")
    found = choose(relevant, alert, day)
    if isinstance(found, Refusal):
        return Denial(agency=c.agency.id, unit=c.unit, code=found.code, explanation=found.why)
    return found


def admit(alert: Alert, sender: Agency, c: Candidate, net: Compiled, now: datetime,
          denied_by_rule: dict[str, str]) -> Recipient | Denial:
    """Apply the policy clauses to one candidate, most decisive first; the first denial wins."""
    def deny(code: str, why: str) -> Denial:
        return Denial(agency=c.agency.id, unit=c.unit, code=code, explanation=why)

    for name in (c.unit, c.agency.id):
        if name in denied_by_rule:
            return deny("denied_by_rule", denied_by_rule[name])
    if alert.expires and alert.expires <= now and c.rule != THREAD_RULE:
        return deny("expired", f"the alert expired at {alert.expires.isoformat()}: it reaches no one new")
    if alert.tlp is Tlp.RED and not c.explicit:
        return deny("tlp_red", "TLP:RED goes to explicitly named recipients only")
    cross_border = c.agency.country != sender.country
    direction = alert.location.direction
    if cross_border and not c.agency.observer and direction and not c.explicit \
            and c.agency.country not in (direction.from_country, direction.to_country):
        return deny("not_on_route", f"{c.agency.country} is not on the {direction.from_country}→{direction.to_country} route")
    basis = None
    if cross_border:
        basis = _agreement_check(net, alert, sender, c, (alert.effective or now).date())
        if isinstance(basis, Denial):
            return basis
    redacted = list(basis.redacted) if basis else []
    profile = ViewProfile.SUMMARY if c.agency.observer else ViewProfile.FULL
    if profile is ViewProfile.SUMMARY and alert.personal_data and "personal_data" not in redacted:
        redacted.append("personal_data")
    return Recipient(agency=c.agency.id, unit=c.unit, endpoint=c.endpoint, profile=profile, redacted=redacted,
                     rule=c.rule, reason=c.why, agreement=basis.agreement.id if basis else None,
                     basis=basis.how if basis else None)


def _collect(outcomes: list[Recipient | Denial], kind: str, net: Compiled, note: str | None = None,
             forward_id: UUID | None = None) -> AlertRouted:
    recipients: dict[str, Recipient] = {}
    denied: dict[tuple[str, str | None], Denial] = {}
    for o in outcomes:
        key = (o.agency, o.unit)
        if isinstance(o, Recipient):
            if o.endpoint not in recipients and key not in denied:
                recipients[o.endpoint] = o
        elif key not in denied and not any((r.agency, r.unit) == key for r in recipients.values()):
            denied[key] = o
    if not recipients and note is None:
        note = "no candidate passed the policy: routed to no one"
    return AlertRouted(ruleset_hash=net.hash, recipients=list(recipients.values()), denied=list(denied.values()),
                       kind=kind, forward_id=forward_id, note=note)


def decide(alert: Alert, thread: Thread, net: Compiled, now: datetime, *, naive: bool = False,
           unresolved: tuple[UUID, ...] | list[UUID] = ()) -> AlertRouted:
    """Return who receives the alert, in which view, and who was denied and why.

    `unresolved`: references to the sender's own messages BLOnet never received (the gateway
    accepted them as such). With no earlier message of the thread at hand, the alert starts the
    thread: an update or a cancel is routed by its own content, like an alert, and says so.
    """
    decision = _decide(alert, thread, net, now, naive=naive, starts_thread=bool(unresolved) and not thread.recipients)
    if not unresolved:
        return decision
    said = (f"starts a thread: it references {len(unresolved)} earlier message(s) of {alert.sender_agency} that BLOnet "
            "never received" + (", so it is routed by its own content" if not thread.recipients else ""))
    return decision.model_copy(update={"unresolved_references": list(unresolved),
                                       "note": f"{said}; {decision.note}" if decision.note else said})


def _decide(alert: Alert, thread: Thread, net: Compiled, now: datetime, *, naive: bool, starts_thread: bool) -> AlertRouted:
    kind = alert.msg_type.value
    sender = net.agencies.get(alert.sender_agency)
    if sender is None:
        return _collect([], kind, net, note=f"unknown sender agency {alert.sender_agency}: routed to no one")
    if not sender.originates:  # the gateway refuses it first; a record that got past it reaches no one
        return _collect([Denial(agency=sender.id, code="may_not_originate", explanation=f"{sender.id} may not originate alerts "
                                "(an observer, unless the directory sets may_originate)")], kind, net,
                        note=f"{sender.id} may not originate alerts: routed to no one")
    owner = thread.original.sender_agency if thread.original else sender.id
    if owner != sender.id:  # a recipient replies by forward or ack; its own message may not widen the thread
        return _collect([], kind, net, note=f"only {owner}, the thread's sender agency, may add to its thread: routed to no one")
    prior = _prior(net, thread)
    if alert.msg_type is MsgType.CANCEL and not starts_thread:  # it reaches only those who hold the thread, shaped from its content
        return _collect([admit(alert, sender, c, net, now, {}) for c in prior], kind, net,
                        note=None if prior else "nobody received this thread: nothing to cancel")
    keys = alert_keys(alert, sender)
    rules = walk_naive(net.network.rules.rules, keys) if naive else walk_indexed(net.root, keys)
    denied_by_rule = {name: rule.deny_reason or f"rule {rule.id} denies it" for rule in rules for name in rule.deny}
    # A selector resolves the same whichever rule names it: resolve it once, for the first rule.
    first_rule = {}
    for rule in rules:
        for selector in rule.recipients:
            first_rule.setdefault(selector, rule)
    candidates = prior + [c for selector, rule in first_rule.items() for c in _select(selector, rule, alert, net)]
    candidates += [c for rule in rules for n in rule.named for c in _named(net, n, rule.id, f"named by rule {rule.id}", False)]
    candidates += [c for n in alert.addressees for c in _named(net, n, ADDRESSEE_RULE, "named as addressee", True)]
    # Whoever the sender named is explicit however it was selected; its own unit is not told its own alert.
    named = set(alert.addressees)
    candidates = [replace(c, explicit=True) if c.unit in named or c.agency.id in named else c for c in candidates]
    own = {u.id for u in (net.posts[alert.sender_post].units if alert.sender_post in net.posts else ()) if u.agency == sender.id}
    # The same unit selected by several rules is decided once: the first selection explains it.
    unique = {(c.agency.id, c.unit, c.endpoint, c.explicit, c.rule == THREAD_RULE): c for c in reversed(candidates)}
    candidates = [c for c in reversed(unique.values()) if (c.unit is None or c.unit not in own)
                  and not (c.agency.id == sender.id and c.agency.observer)]  # no observer copy of its own alert
    outcomes = [admit(alert, sender, c, net, now, denied_by_rule) for c in candidates]
    note = None if rules or alert.addressees or prior else "no route rule matched this alert: routed to no one"
    return _collect(outcomes, kind, net, note)


def decide_forward(forward: AlertForwarded, thread: Thread, net: Compiled, now: datetime) -> AlertRouted:
    """Decide a recipient's forward: never wider than what the original allowed, nor than the forwarder's own view."""
    def deny(c: Candidate | None, name: str, code: str, why: str) -> Denial:
        return Denial(agency=c.agency.id if c else name, unit=c.unit if c else None, code=code, explanation=why)

    original = thread.original
    sender = net.agencies.get(original.sender_agency) if original else None
    held = next((r for r in thread.recipients if r.agency == forward.agency and forward.unit in (None, r.unit)), None)
    forwarder = net.agencies.get(forward.agency)
    targets = [(n, c) for n in forward.to for c in (_named(net, n, "forward", f"forwarded by {forward.unit or forward.agency}", False) or [None])]
    if original is None or sender is None or held is None or forwarder is None:
        why = "only a recipient of the alert may forward it"
        return _collect([deny(c, n, "not_a_recipient", why) for n, c in targets], "forward", net, forward_id=forward.forward_id,
                        note=why)
    home = net.units[held.unit][0].id if held.unit in net.units else None
    onward = not net.agencies_cross(forwarder, sender) or any(
        ag.onward_sharing and ag.active_on(now.date()) for ag in net.agreements_for(sender.country, forwarder))
    received = {r.endpoint for r in thread.recipients}
    outcomes: list[Recipient | Denial] = []
    for name, c in targets:
        if c is None:
            outcomes.append(deny(None, name, "unknown_recipient", f"{name} is not in the network directory"))
        elif c.endpoint in received:
            outcomes.append(deny(c, name, "already_received", "already received this alert"))
        elif Handling.H2 in original.handling and not original.onward_permission:
            outcomes.append(deny(c, name, "handling_h2", "H2: not to be disseminated without the originator's permission"))
        elif original.tlp is Tlp.RED:
            outcomes.append(deny(c, name, "tlp_red", "TLP:RED is never passed on"))
        elif original.tlp is Tlp.AMBER_STRICT and c.agency.id != forwarder.id:
            outcomes.append(deny(c, name, "tlp_amber_strict", f"TLP:AMBER+STRICT stays inside {forwarder.id}"))
        elif original.tlp is Tlp.AMBER and c.agency.id != forwarder.id and (c.unit not in net.units or net.units[c.unit][0].id != home):
            outcomes.append(deny(c, name, "tlp_amber", f"TLP:AMBER goes only to {forwarder.id} and the units at its own post"))
        elif not onward:
            outcomes.append(deny(c, name, "no_onward_sharing", f"the agreement with {sender.country} does not allow onward sharing"))
        else:
            admitted = admit(original, sender, c, net, now, {})
            if isinstance(admitted, Recipient):  # never a wider view than the forwarder's own
                profile = ViewProfile.SUMMARY if ViewProfile.SUMMARY in (admitted.profile, held.profile) else ViewProfile.FULL
                redacted = sorted(set(admitted.redacted) | set(held.redacted))
                admitted = admitted.model_copy(update={"profile": profile, "redacted": redacted})
            outcomes.append(admitted)
    return _collect(outcomes, "forward", net, forward_id=forward.forward_id)


SUMMARY_FIELDS = (
    "sender_agency", "msg_type", "references", "category", "severity", "urgency", "certainty",
    "effective", "expires", "location", "headline", "tlp", "handling", "handling_note", "language",
)


def view(alert: Alert, recipient: Recipient, *, alert_id: UUID, thread_id: UUID, sent_at: datetime,
         forwarded_by: dict | None = None) -> dict:
    """Return the recipient's view of the alert: what its profile and agreements allow, no more."""
    doc = alert.model_dump(mode="json")
    if recipient.profile is ViewProfile.SUMMARY:
        doc = {k: doc[k] for k in SUMMARY_FIELDS}
    for field in recipient.redacted:
        doc.pop(field, None)
    body = {
        "alert_id": str(alert_id), "thread_id": str(thread_id), "sent_at": sent_at.isoformat(),
        "recipient": {"agency": recipient.agency, "unit": recipient.unit, "profile": recipient.profile.value},
        "redacted": recipient.redacted, "alert": doc,
    }
    if forwarded_by:
        body["forwarded_by"] = forwarded_by
    return body


def outcomes(decision: AlertRouted) -> dict[str, str]:
    """Return each candidate's outcome in a decision, by unit (or agency) id, as a short phrase."""
    found = {}
    for r in decision.recipients:
        found[r.unit or r.agency] = f"{r.profile.value} view" + (f" without {', '.join(r.redacted)}" if r.redacted else "")
    for d in decision.denied:
        found.setdefault(d.unit or d.agency, f"denied: {d.code}")
    return found


def differences(before: AlertRouted, after: AlertRouted) -> list[dict]:
    """Return every candidate whose outcome differs between two decisions (None: not a candidate)."""
    old, new = outcomes(before), outcomes(after)
    return [{"target": t, "before": old.get(t), "after": new.get(t)}
            for t in sorted(old.keys() | new.keys()) if old.get(t) != new.get(t)]
