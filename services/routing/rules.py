"""The route-rule language: an ordered tree of matchers naming recipients structurally.

Evaluated in the spirit of Alertmanager's routing tree: siblings are tried in order and the
first match ends the walk of its level unless it says `continue: true`; a matching rule adds
its recipients and denials, then its child `routes` are walked the same way.
"""
from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from shared.alerts import Category, Severity, Urgency
from shared.directory import AgencyKind


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Selector(StrEnum):
    """Recipients named structurally, resolved against the directory for each alert."""

    BLO_AT_POST = "blo_at_post"  # the BLO at the crossing point the alert concerns (the next on the route)
    UNITS_AT_POST = "units_at_post"  # every law-enforcement unit at that crossing point
    COUNTERPARTS = "counterparts"  # units across the border at the sender's and the alert's posts
    OBSERVERS = "observers"  # observer agencies, summary view only


class Match(_Strict):
    """Every non-empty matcher must accept the alert; an empty one accepts anything."""

    category: tuple[Category, ...] = ()
    severity: tuple[Severity, ...] = ()
    urgency: tuple[Urgency, ...] = ()
    post: tuple[str, ...] = ()
    border_segment: tuple[str, ...] = ()
    from_country: tuple[str, ...] = ()
    to_country: tuple[str, ...] = ()
    sender_kind: tuple[AgencyKind, ...] = ()


class Rule(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    description: str = ""
    match: Match = Match()
    recipients: tuple[Selector, ...] = ()
    named: tuple[str, ...] = Field((), description="agency or unit ids added by name")
    deny: tuple[str, ...] = Field((), description="agency or unit ids no alert of this rule may reach")
    deny_reason: str = ""
    continue_: bool = Field(False, alias="continue", description="keep evaluating later siblings")
    routes: tuple[Rule, ...] = Field((), description="child rules, walked when this one matches")


class RuleSet(_Strict):
    rules: tuple[Rule, ...] = Field(min_length=1)

    def walk(self) -> list[Rule]:
        """Return every rule of the tree, depth first."""
        out, stack = [], list(reversed(self.rules))
        while stack:
            rule = stack.pop()
            out.append(rule)
            stack += reversed(rule.routes)
        return out
