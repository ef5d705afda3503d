"""Which agreement a view crosses a border under, when several are in force between the two parties.

A recipient across a border is allowed if at least one agreement in force covers the alert's
category, TLP and date. Of those, the legal basis is the one that permits what the alert needs
(its personal data), else the most restrictive. The choice depends only on the agreements and
the message's own content, never on file order, so every message of a thread is decided alike.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from shared.alerts import Alert
from shared.directory import Agreement

ORDER = "fewest categories, then lowest max TLP, then no personal data, then id"


@dataclass(frozen=True)
class Basis:
    """The agreement chosen, how it was chosen, and what it makes the view leave out."""

    agreement: Agreement
    how: str
    redacted: tuple[str, ...]


@dataclass(frozen=True)
class Refusal:
    code: str
    why: str


def restrictiveness(ag: Agreement) -> tuple:
    """Sort key, most restrictive first. A higher max TLP openness lets fewer labels cross."""
    return (len(set(ag.categories)), -ag.max_tlp.openness, ag.personal_data, ag.id)


def _names(ags: Sequence[Agreement]) -> str:
    return f"agreement {ags[0].id}" if len(ags) == 1 else "agreements " + ", ".join(a.id for a in ags)


def choose(agreements: Sequence[Agreement], alert: Alert, day: date) -> Basis | Refusal:
    """Decide over every agreement between the parties (`agreements` must be non-empty)."""
    active = sorted((ag for ag in agreements if ag.active_on(day)), key=lambda ag: ag.id)
    if not active:
        in_file = sorted(agreements, key=lambda ag: ag.id)
        return Refusal("agreement_inactive", f"{_names(in_file)} {'is' if len(in_file) == 1 else 'are'} not in force on {day.isoformat()}")
    by_category = [ag for ag in active if alert.category in ag.categories]
    if not by_category:
        return Refusal("category_not_covered", f"{_names(active)} {'does' if len(active) == 1 else 'do'} not cover {alert.category}")
    covering = [ag for ag in by_category if alert.tlp.openness >= ag.max_tlp.openness]
    if not covering:
        caps = ", ".join(f"{ag.id} allows up to {ag.max_tlp}" for ag in by_category)
        return Refusal("tlp_exceeds_agreement", f"agreement {caps}, the alert is {alert.tlp}")
    needs_personal_data = alert.personal_data is not None
    permitting = [ag for ag in covering if ag.personal_data] if needs_personal_data else []
    pool = permitting or covering
    chosen = min(pool, key=restrictiveness)
    if len(covering) == 1:
        how = "the only agreement in force that covers it"
    elif permitting and len(permitting) == 1:
        how = f"the only one of {len(covering)} covering it that permits its personal data"
    elif permitting:
        how = f"the most restrictive ({ORDER}) of the {len(permitting)} covering it that permit its personal data"
    else:
        how = f"the most restrictive ({ORDER}) of the {len(covering)} covering it"
    redacted = ("personal_data",) if needs_personal_data and not chosen.personal_data else ()
    return Basis(chosen, how, redacted)
