"""The routing decision: a pure function of (alert, directory, rules, time). No I/O, no clock.

Candidates come from the matching route rules and the alert's explicit addressees; policy then
filters them, deny-overrides and default-deny across borders, and shapes each recipient's view.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from services.routing.directory import Agency, Agreement, Directory, Match, Post, Rule, RuleSet, Selector
from shared.alerts import Alert, Tlp
from shared.events import AlertRouted, Denial, Recipient, ViewProfile


@dataclass(frozen=True)
class Candidate:
    agency: Agency
    unit_id: str | None
    endpoint: str
    rule: str
    why: str


def matches(match: Match, alert: Alert, sender: Agency) -> bool:
    """Return whether every non-empty matcher of a rule accepts the alert."""
    checks = [
        (match.category, alert.category), (match.severity, alert.severity), (match.urgency, alert.urgency),
        (match.post, alert.location.post), (match.border_segment, alert.location.border_segment),
        (match.sender_kind, sender.kind),
    ]
    return all(not allowed or value in allowed for allowed, value in checks)


def _unit_candidates(directory: Directory, post: Post | None, rule: Rule, *, blo_only: bool) -> list[Candidate]:
    if post is None:
        return []
    units = [u for u in post.units if u.blo or not blo_only]
    what = "BLO at" if blo_only else "law-enforcement unit at"
    return [Candidate(directory.agency(u.agency), u.id, u.endpoint, rule.id, f"{what} {post.name_en}") for u in units]


def _select(selector: Selector, rule: Rule, alert: Alert, directory: Directory) -> list[Candidate]:
    post = directory.post(alert.location.post)
    if selector is Selector.BLO_AT_POST:
        return _unit_candidates(directory, post, rule, blo_only=True)
    if selector is Selector.UNITS_AT_POST:
        return _unit_candidates(directory, post, rule, blo_only=False)
    if selector is Selector.COUNTERPARTS:
        found = []
        for near in (directory.post(alert.sender_post), post):
            across = directory.post(near.counterpart) if near and near.counterpart else None
            if across:
                found += [
                    Candidate(directory.agency(u.agency), u.id, u.endpoint, rule.id,
                              f"counterpart across the {across.border_segment} border at {across.name_en}")
                    for u in across.units
                ]
        return found
    return [
        Candidate(a, None, a.endpoint, rule.id, "observer of the exchange")
        for a in directory.agencies if a.observer and a.endpoint
    ]


def _addressee_candidates(alert: Alert, directory: Directory) -> list[Candidate]:
    found = []
    for name in alert.addressees:
        units = [(p, u) for p, u in directory.units() if name in (u.id, u.agency)]
        agency = next((a for a in directory.agencies if a.id == name), None)
        if units:
            found += [Candidate(directory.agency(u.agency), u.id, u.endpoint, "addressee", f"named as addressee at {p.name_en}") for p, u in units]
        elif agency and agency.endpoint:
            found.append(Candidate(agency, None, agency.endpoint, "addressee", "named as addressee"))
    return found


def _agreement(directory: Directory, sender: Agency, candidate: Agency, day) -> tuple[Agreement | None, str, str]:
    """Find an agreement that lets the alert cross to the candidate; else (None, code, why)."""
    relevant = [
        ag for ag in directory.agreements
        if sender.country in ag.parties and (candidate.country in ag.parties or candidate.id in ag.observers)
    ]
    if not relevant:
        return None, "no_agreement", f"no sharing agreement between {sender.country} and {candidate.country or candidate.id}"
    active = [ag for ag in relevant if ag.active_on(day)]
    if not active:
        return None, "agreement_inactive", f"agreement {relevant[0].id} is not in force on {day.isoformat()}"
    return active[0], "", ""


def decide(alert: Alert, directory: Directory, rules: RuleSet, ruleset_hash: str, now: datetime) -> AlertRouted:
    """Return who receives the alert, in which view, and who was denied and why."""
    sender = directory.agency(alert.sender_agency)
    candidates: list[Candidate] = []
    for rule in rules.rules:
        if matches(rule.match, alert, sender):
            for selector in rule.recipients:
                candidates += _select(selector, rule, alert, directory)
            if not rule.continue_:
                break
    candidates += _addressee_candidates(alert, directory)
    named = set(alert.addressees)
    day = (alert.effective or now).date()
    route = {alert.location.direction.from_country, alert.location.direction.to_country} if alert.location.direction else None
    sender_unit_ids = {u.id for u in (directory.post(alert.sender_post).units if directory.post(alert.sender_post) else ()) if u.agency == sender.id}

    recipients: dict[str, Recipient] = {}
    denied: dict[tuple[str, str | None], Denial] = {}
    for c in candidates:
        if c.endpoint in recipients or (c.agency.id, c.unit_id) in denied:
            continue

        def deny(code: str, why: str) -> None:
            denied[(c.agency.id, c.unit_id)] = Denial(agency=c.agency.id, unit=c.unit_id, code=code, explanation=why)

        explicit = c.unit_id in named or c.agency.id in named
        cross_border = c.agency.country != sender.country
        if c.unit_id in sender_unit_ids:
            continue  # the originator does not receive its own alert
        if alert.tlp is Tlp.RED and not explicit:
            deny("tlp_red", "TLP:RED goes to explicitly named recipients only")
            continue
        if cross_border and not c.agency.observer and route and c.agency.country not in route and not explicit:
            deny("not_on_route", f"{c.agency.country} is not on the {alert.location.direction.from_country}→{alert.location.direction.to_country} route")
            continue
        redacted: list[str] = []
        if cross_border:
            agreement, code, why = _agreement(directory, sender, c.agency, day)
            if agreement is None:
                deny(code, why)
                continue
            if alert.category not in agreement.categories:
                deny("category_not_covered", f"agreement {agreement.id} does not cover {alert.category}")
                continue
            if alert.tlp.openness < agreement.max_tlp.openness:
                deny("tlp_exceeds_agreement", f"agreement {agreement.id} allows up to {agreement.max_tlp}, the alert is {alert.tlp}")
                continue
            if alert.personal_data and not agreement.personal_data:
                redacted.append("personal_data")
        profile = ViewProfile.SUMMARY if c.agency.observer else ViewProfile.FULL
        if profile is ViewProfile.SUMMARY and alert.personal_data and "personal_data" not in redacted:
            redacted.append("personal_data")
        recipients[c.endpoint] = Recipient(
            agency=c.agency.id, unit=c.unit_id, endpoint=c.endpoint, profile=profile, redacted=redacted,
            rule=c.rule, reason=c.why,
        )
    return AlertRouted(ruleset_hash=ruleset_hash, recipients=list(recipients.values()), denied=list(denied.values()))


SUMMARY_FIELDS = (
    "sender_agency", "msg_type", "category", "severity", "urgency", "certainty",
    "effective", "expires", "location", "headline", "tlp", "handling", "handling_note", "language",
)


def view(alert: Alert, recipient: Recipient, *, alert_id: UUID, thread_id: UUID, sent_at: datetime) -> dict:
    """Return the recipient's view of the alert: what its profile and agreements allow, no more."""
    doc = alert.model_dump(mode="json")
    if recipient.profile is ViewProfile.SUMMARY:
        doc = {k: doc[k] for k in SUMMARY_FIELDS}
    for field in recipient.redacted:
        doc.pop(field, None)
    return {
        "alert_id": str(alert_id), "thread_id": str(thread_id), "sent_at": sent_at.isoformat(),
        "recipient": {"agency": recipient.agency, "unit": recipient.unit, "profile": recipient.profile.value},
        "redacted": recipient.redacted, "alert": doc,
    }
