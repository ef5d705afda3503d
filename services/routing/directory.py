"""The network directory and route rules as data: pydantic models of deploy/network/*.yaml."""
from __future__ import annotations

import hashlib
import json
from datetime import date
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.alerts import Category, Severity, Tlp, Urgency


class AgencyKind(StrEnum):
    BORDER_GUARD = "border_guard"
    CUSTOMS = "customs"
    POLICE = "police"
    DRUG_CONTROL = "drug_control"
    SECURITY_SERVICE = "security_service"
    INTERNATIONAL_ORGANISATION = "international_organisation"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


DEFAULT_ACK_MINUTES = {Urgency.IMMEDIATE: 15, Urgency.EXPECTED: 60, Urgency.FUTURE: 24 * 60}


class Agency(_Strict):
    id: str
    kind: AgencyKind
    country: str | None = Field(None, pattern=r"^[A-Z]{2}$", description="None for an international organisation")
    observer: bool = False
    name_en: str
    name_ru: str
    endpoint: str | None = Field(None, description="the agency's own on-duty endpoint (single point of contact)")
    fallback_endpoint: str | None = Field(None, description="where unacknowledged alerts are escalated")
    ack_deadline_minutes: dict[Urgency, int] = Field(
        default_factory=lambda: dict(DEFAULT_ACK_MINUTES),
        description="how long a recipient has to acknowledge, by urgency; absent urgency: no deadline",
    )


class Unit(_Strict):
    id: str
    agency: str
    blo: bool = Field(False, description="a Border Liaison Office")
    endpoint: str


class Post(_Strict):
    id: str
    name_en: str
    name_ru: str
    country: str = Field(pattern=r"^[A-Z]{2}$")
    border_segment: str = Field(pattern=r"^[A-Z]{2}-[A-Z]{2}$")
    counterpart: str | None = Field(None, description="the post facing this one across the border")
    units: tuple[Unit, ...] = ()


class Channel(StrEnum):
    WEBHOOK = "webhook"
    EMAIL = "email"


class Endpoint(_Strict):
    id: str
    agency: str
    channel: Channel = Channel.WEBHOOK
    url: str | None = Field(None, description="https URL of a webhook endpoint")
    email: str | None = Field(None, description="address of an e-mail endpoint")
    format: str = Field("json", pattern="^(json|cap)$")
    language: str = "ru"

    @model_validator(mode="after")
    def _address_for_channel(self) -> Endpoint:
        if self.channel is Channel.WEBHOOK and not self.url:
            raise ValueError(f"endpoint {self.id}: a webhook endpoint needs a url")
        if self.channel is Channel.EMAIL and not self.email:
            raise ValueError(f"endpoint {self.id}: an e-mail endpoint needs an email address")
        return self


class Agreement(_Strict):
    id: str
    title: str
    parties: tuple[str, ...] = Field(min_length=2, description="countries (ISO alpha-2) bound by it")
    observers: tuple[str, ...] = Field((), description="agencies that receive the summary view")
    categories: tuple[Category, ...]
    max_tlp: Tlp = Field(description="the most restrictive label that may still cross")
    personal_data: bool = False
    onward_sharing: bool = False
    valid_from: date
    valid_to: date | None = None

    def active_on(self, day: date) -> bool:
        return self.valid_from <= day and (self.valid_to is None or day <= self.valid_to)


class Directory(_Strict):
    countries: tuple[str, ...]
    agencies: tuple[Agency, ...]
    posts: tuple[Post, ...]
    endpoints: tuple[Endpoint, ...]
    agreements: tuple[Agreement, ...] = ()

    @model_validator(mode="after")
    def _check_references(self) -> Directory:
        agencies = {a.id for a in self.agencies}
        endpoints = {e.id for e in self.endpoints}
        posts = {p.id for p in self.posts}
        problems = []
        for a in self.agencies:
            if a.country and a.country not in self.countries:
                problems.append(f"agency {a.id}: unknown country {a.country}")
            for ref in (a.endpoint, a.fallback_endpoint):
                if ref and ref not in endpoints:
                    problems.append(f"agency {a.id}: unknown endpoint {ref}")
        for p in self.posts:
            if p.counterpart and p.counterpart not in posts:
                problems.append(f"post {p.id}: unknown counterpart {p.counterpart}")
            for u in p.units:
                if u.agency not in agencies:
                    problems.append(f"unit {u.id}: unknown agency {u.agency}")
                if u.endpoint not in endpoints:
                    problems.append(f"unit {u.id}: unknown endpoint {u.endpoint}")
        for e in self.endpoints:
            if e.agency not in agencies:
                problems.append(f"endpoint {e.id}: unknown agency {e.agency}")
        for ag in self.agreements:
            problems += [f"agreement {ag.id}: unknown observer {o}" for o in ag.observers if o not in agencies]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def agency(self, agency_id: str) -> Agency:
        return next(a for a in self.agencies if a.id == agency_id)

    def post(self, post_id: str | None) -> Post | None:
        return next((p for p in self.posts if p.id == post_id), None)

    def endpoint(self, endpoint_id: str) -> Endpoint:
        return next(e for e in self.endpoints if e.id == endpoint_id)

    def units(self) -> list[tuple[Post, Unit]]:
        return [(p, u) for p in self.posts for u in p.units]


class Selector(StrEnum):
    """Recipients named structurally, resolved against the directory for each alert."""

    BLO_AT_POST = "blo_at_post"  # the BLO at the crossing point the alert concerns
    UNITS_AT_POST = "units_at_post"  # every law-enforcement unit at that crossing point
    COUNTERPARTS = "counterparts"  # units across the border at the sender's and the alert's posts
    OBSERVERS = "observers"  # observer agencies, summary view only


class Match(_Strict):
    category: tuple[Category, ...] = ()
    severity: tuple[Severity, ...] = ()
    urgency: tuple[Urgency, ...] = ()
    post: tuple[str, ...] = ()
    border_segment: tuple[str, ...] = ()
    sender_kind: tuple[AgencyKind, ...] = ()


class Rule(_Strict):
    id: str
    description: str = ""
    match: Match = Match()
    recipients: tuple[Selector, ...]
    continue_: bool = Field(False, alias="continue", description="keep evaluating later rules")


class RuleSet(_Strict):
    rules: tuple[Rule, ...] = Field(min_length=1)


class NetworkConfigError(ValueError):
    """The directory or rule files are invalid; the message names the file and fields."""


def _load(path: Path, model: type[BaseModel]):
    try:
        return model.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise NetworkConfigError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise NetworkConfigError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        lines = [f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise NetworkConfigError(f"{path}: " + "; ".join(lines)) from None


def load_network(network_dir: Path) -> tuple[Directory, RuleSet, str]:
    """Load and validate directory.yaml and rules.yaml; return them with the rule-set hash."""
    directory = _load(network_dir / "directory.yaml", Directory)
    rules = _load(network_dir / "rules.yaml", RuleSet)
    return directory, rules, ruleset_hash(directory, rules)


def ruleset_hash(directory: Directory, rules: RuleSet) -> str:
    """Return the SHA-256 of the canonical JSON of directory and rules: the version decided under."""
    doc = {"directory": directory.model_dump(mode="json"), "rules": rules.model_dump(mode="json", by_alias=True)}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
