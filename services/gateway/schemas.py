"""Request and response models of the gateway's HTTP API (they are its OpenAPI schema)."""
from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.alerts import Line, Text
from shared.events import AckStatus, CapSignature, Denial


class Problem(BaseModel):
    """Every error: a machine-readable code, a sentence, and field errors when the body is invalid."""

    code: str = Field(examples=["wrong_sender"])
    detail: str = Field(examples=["a key of kg-sbs cannot submit in the name of kg-customs"])
    errors: list[dict] | None = Field(None, description="per-field problems of an invalid body")


class CapOrigin(BaseModel):
    sender: str
    identifier: str
    sent: str
    signed: bool = Field(description="the CAP document carried an XML signature (kept intact in the original)")
    signature: CapSignature | None = Field(None, description="that signature as checked against the sender agency's registered "
                                           "certificates (absent: accepted before signatures were checked)")
    unresolved_references: list[UUID] = Field([], description="references to the agency's own CAP messages BLOnet never "
                                              "received: this message started its thread")


class Accepted(BaseModel):
    id: UUID
    thread_id: UUID
    status_url: str
    cap: CapOrigin | None = None
    dropped: dict[str, int] | None = Field(None, description="CAP only: names left out because the network directory "
                                           "lacks them, counted by reason (unknown_addressee, unknown_post)")

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "0190a3c1-7d2e-7b4a-9c1e-1f2a3b4c5d6e", "thread_id": "0190a3c1-7d2e-7b4a-9c1e-1f2a3b4c5d6e",
        "status_url": "http://127.0.0.1:8000/v1/alerts/0190a3c1-7d2e-7b4a-9c1e-1f2a3b4c5d6e",
    }]})


class AckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"status": "acting", "comment": "Усиленный контроль на ПП Достук 15–20 мая", "unit": "kg-moi-dostuk"}]})
    status: AckStatus
    comment: Text | None = Field(None, max_length=2_000)
    unit: Line | None = Field(None, max_length=64, description="which of your units acknowledges (default: all of them)")


class AckAccepted(BaseModel):
    alert_id: UUID
    event_id: UUID
    status: AckStatus
    acknowledged_at: datetime


class ForwardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"to": ["kg-moi-dostuk", "kg-customs-dostuk"], "comment": "для исполнения", "unit": "blo-dostuk"}]})
    to: list[Line] = Field(min_length=1, max_length=100, description="unit or agency ids of the network directory")
    comment: Text | None = Field(None, max_length=2_000)
    unit: Line | None = Field(None, max_length=64, description="which of your units forwards")


class ForwardAccepted(BaseModel):
    alert_id: UUID
    forward_id: UUID
    to: list[str]
    status_url: str


class Token(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class Acknowledgement(BaseModel):
    status: AckStatus
    comment: str | None = None
    at: datetime


class RecipientStatus(BaseModel):
    agency: str
    unit: str | None = None
    endpoint: str
    profile: str | None = None
    rule: str | None = None
    reason: str | None = None
    state: str = Field(description="routed, delivered, retrying, failed or acknowledged")
    delivery_state: str
    attempts: int
    http_status: int | None = None
    error: str | None = None
    updated_at: datetime
    acknowledgement: Acknowledgement | None = None


class Received(BaseModel):
    unit: str | None = None
    endpoint: str
    profile: str | None = None
    state: str
    acknowledgement: Acknowledgement | None = None
    view: dict | None = Field(None, description="the view of the alert this recipient was sent")


class Forward(BaseModel):
    forward_id: UUID
    agency: str
    unit: str | None = None
    to: list[str]
    comment: str | None = None
    forwarded_at: datetime


class AlertStatus(BaseModel):
    """The sender's view (recipients, denials with reasons) or a recipient's (only what it received)."""

    id: UUID
    thread_id: UUID
    sender_agency: str
    headline: str
    msg_type: str
    received_at: datetime
    status: str = Field(description="accepted, then routed")
    relation: str = Field(description="sender, recipient or oversight (operator/auditor)")
    ruleset_hash: str | None = None
    cap: CapOrigin | None = None
    recipients: list[RecipientStatus] | None = Field(None, description="sender and oversight only")
    denied: list[Denial] | None = Field(None, description="sender and oversight only")
    received: list[Received] | None = Field(None, description="recipient only: its own view(s)")
    forwards: list[Forward] = []


class AlertSummary(BaseModel):
    id: UUID
    thread_id: UUID
    sender_agency: str
    relation: str
    received_at: datetime
    msg_type: str
    category: str
    severity: str
    headline: str


class AlertPage(BaseModel):
    items: list[AlertSummary]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; absent on the last")
