"""The network directory as data: pydantic models of deploy/network/directory.yaml.

Shared by routing (which decides with it), the notifier (fallback endpoints, ack deadlines) and
the gateway (who may originate), each reading it without importing another service's code.
"""
from __future__ import annotations

from datetime import date
from enum import StrEnum

from cryptography import x509
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

from shared.alerts import Category, Tlp, Urgency


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
    may_originate: bool | None = Field(None, description="whether its keys may submit alerts; unset: every agency but observers")
    cap_senders: tuple[str, ...] = Field((), description="the CAP <sender> values only this agency may use; none: any not listed by another")
    cap_signing_certificates: tuple[str, ...] = Field(
        (), description="PEM certificates whose keys sign this agency's CAP messages; none: signatures are unknown_signer")
    require_signed_cap: bool = Field(False, description="refuse this agency's CAP messages unless their signature is verified")

    @field_validator("cap_signing_certificates")
    @classmethod
    def _pem(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, pem in enumerate(value):
            try:
                x509.load_pem_x509_certificates(pem.encode())
            except ValueError:
                raise ValueError(f"cap_signing_certificates[{i}] is not a PEM certificate") from None
        return value

    @model_validator(mode="after")
    def _signing(self) -> Agency:
        if self.require_signed_cap and not self.cap_signing_certificates:
            raise ValueError(f"agency {self.id}: require_signed_cap needs cap_signing_certificates")
        return self

    @property
    def originates(self) -> bool:
        return self.may_originate if self.may_originate is not None else not self.observer

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # Unset fields are left out, so a directory written before them keeps its version hash.
        doc = handler(self)
        if self.may_originate is None:
            doc.pop("may_originate", None)
        for name in ("cap_senders", "cap_signing_certificates", "require_signed_cap"):
            if not getattr(self, name):
                doc.pop(name, None)
        return doc


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
    in_order: bool = Field(True, description="one request in flight, in order; false: up to BLONET_ENDPOINT_WINDOW at once")
    sign_cap: bool = Field(False, description="CAP deliveries carry the node's XML signature (format cap only)")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        doc = handler(self)  # left out when default, so a directory written before they existed keeps its version hash
        if self.in_order:
            doc.pop("in_order", None)
        if not self.sign_cap:
            doc.pop("sign_cap", None)
        return doc

    @model_validator(mode="after")
    def _address_for_channel(self) -> Endpoint:
        if self.channel is Channel.WEBHOOK and not self.url:
            raise ValueError(f"endpoint {self.id}: a webhook endpoint needs a url")
        if self.channel is Channel.EMAIL and not self.email:
            raise ValueError(f"endpoint {self.id}: an e-mail endpoint needs an email address")
        if self.sign_cap and self.format != "cap":
            raise ValueError(f"endpoint {self.id}: sign_cap needs format cap")
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
            problems += [f"agreement {ag.id}: unknown party {c}" for c in ag.parties if c not in self.countries]
            if ag.valid_to and ag.valid_to < ag.valid_from:
                problems.append(f"agreement {ag.id}: valid_to is before valid_from")
        by_id = {p.id: p for p in self.posts}
        for p in self.posts:
            other = by_id.get(p.counterpart) if p.counterpart else None
            if other and other.counterpart != p.id:
                problems.append(f"post {p.id}: counterpart {other.id} does not name it back (counterparts are pairs)")
            if other and (other.country == p.country or other.border_segment != p.border_segment):
                problems.append(f"post {p.id}: counterpart {other.id} must face it across the same border segment")
        ids = [x.id for x in (*self.agencies, *self.posts, *self.endpoints, *(u for _, u in self.units()))]
        problems += [f"id {i} is used twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
        # Agreements may overlap (routing decides over all in force), but each id names one legal basis.
        senders = [s for a in self.agencies for s in a.cap_senders]
        problems += [f"CAP sender {s} is listed for two agencies" for s in sorted({s for s in senders if senders.count(s) > 1})]
        agreement_ids = [ag.id for ag in self.agreements]
        problems += [f"agreement id {i} is used twice" for i in sorted({i for i in agreement_ids if agreement_ids.count(i) > 1})]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def cap_sender_problem(self, agency_id: str, sender: str) -> str | None:
        """Why `agency_id` may not send CAP as `sender`, or None: another agency's sender, or not one of its own."""
        owner = next((a.id for a in self.agencies if sender in a.cap_senders), None)
        if owner is not None and owner != agency_id:
            return f"CAP sender {sender} belongs to {owner}"
        own = next((a.cap_senders for a in self.agencies if a.id == agency_id), ())
        if own and sender not in own:
            return f"{agency_id} sends CAP only as {', '.join(own)}"
        return None

    def agency(self, agency_id: str) -> Agency:
        return next(a for a in self.agencies if a.id == agency_id)

    def post(self, post_id: str | None) -> Post | None:
        return next((p for p in self.posts if p.id == post_id), None)

    def endpoint(self, endpoint_id: str) -> Endpoint:
        return next(e for e in self.endpoints if e.id == endpoint_id)

    def units(self) -> list[tuple[Post, Unit]]:
        return [(p, u) for p in self.posts for u in p.units]

    def addressable(self) -> frozenset[str]:
        """The ids an alert's addressees or a forward may name: every agency and every unit."""
        return frozenset(a.id for a in self.agencies) | frozenset(u.id for _, u in self.units())
