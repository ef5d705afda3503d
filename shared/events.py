"""Event contracts between services: one versioned envelope and a typed payload per event type.

Every Kafka message value is an `Envelope` serialised as JSON. A payload model declares its
`event_type` and `schema_version`; consumers parse with `envelope.payload_as(Model)`, which
refuses a mismatched type or an unknown major version. Add fields compatibly (optional, with
defaults); anything else is a new schema_version. See docs/events.md.
"""
from __future__ import annotations

import base64
from datetime import datetime, timezone
from enum import StrEnum
from typing import Annotated, ClassVar, TypeVar
from uuid import UUID

import orjson

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from shared import tracing
from shared.alerts import Alert
from shared.ids import new_id

P = TypeVar("P", bound="Payload")


class EventType(StrEnum):
    ALERT_SUBMITTED = "alert.submitted"
    ALERT_ROUTED = "alert.routed"
    DELIVERY_REQUESTED = "delivery.requested"
    DELIVERY_STATUS = "delivery.status"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERT_FORWARDED = "alert.forwarded"
    RULES_CHANGED = "routing.rules_changed"
    OPERATOR_ACTION = "operator.action"


class Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_type: ClassVar[EventType]
    schema_version: ClassVar[int] = 1


class Envelope(BaseModel):
    """The common wrapper of every event on every topic."""

    model_config = ConfigDict(extra="forbid")

    event_id: UUID = Field(description="UUIDv7; derived deterministically for derived events")
    type: EventType
    schema_version: int = Field(ge=1)
    occurred_at: AwareDatetime
    origin_node: str
    alert_id: UUID | None = None
    thread_id: UUID | None = Field(None, description="the original alert of an update/cancel chain")
    causation_id: UUID | None = Field(None, description="the event that caused this one")
    traceparent: str | None = Field(None, description="W3C trace context")
    payload: dict

    @classmethod
    def wrap(
        cls,
        payload: Payload,
        *,
        origin_node: str,
        alert_id: UUID | None,
        thread_id: UUID | None,
        cause: Envelope | None = None,
        event_id: UUID | None = None,
        occurred_at: datetime | None = None,
        traceparent: str | None = None,
    ) -> Envelope:
        """Wrap a payload. Its trace context: `traceparent` if given, else the span handling `cause`
        (or the current span) when tracing is on, else the cause's own (see shared/tracing.py)."""
        return cls(
            event_id=event_id or new_id(),
            type=payload.event_type,
            schema_version=payload.schema_version,
            occurred_at=occurred_at or datetime.now(timezone.utc),
            origin_node=origin_node,
            alert_id=alert_id,
            thread_id=thread_id,
            causation_id=cause.event_id if cause else None,
            traceparent=traceparent or tracing.traceparent_for(cause),
            payload=payload.model_dump(mode="json"),
        )

    def payload_as(self, model: type[P]) -> P:
        """Parse the payload as `model`, refusing another event type or schema version."""
        if self.type != model.event_type or self.schema_version != model.schema_version:
            raise ValueError(
                f"expected {model.event_type} v{model.schema_version}, got {self.type} v{self.schema_version}"
            )
        return model.model_validate(self.payload)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        return cls.model_validate_json(data)


# Bytes in Python, base64 text in JSON (an event's payload is JSON): the CAP original may be in any encoding.
Base64Bytes = Annotated[
    bytes, BeforeValidator(lambda v: base64.b64decode(v, validate=True) if isinstance(v, str) else v),
    PlainSerializer(lambda v: base64.b64encode(v).decode(), return_type=str, when_used="json"),
]


class CapOrigin(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sender: str
    identifier: str
    sent: str = Field(description="as CAP writes it (shared.cap.format_time)")
    signed: bool = False


class SignatureState(StrEnum):
    """What the gateway found of a CAP message's XML signature (docs/api.md, "Signed CAP")."""

    UNSIGNED = "unsigned"
    VERIFIED = "verified"
    INVALID = "invalid"
    UNKNOWN_SIGNER = "unknown_signer"


class CapSignature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: SignatureState
    reason: str | None = Field(None, description="why it is not verified")
    certificate: str | None = Field(None, description="SHA-256 fingerprint of the registered certificate whose key signed it")
    signer: str | None = Field(None, description="that certificate's subject, when verified")


class AlertSubmitted(Payload):
    """An agency's alert, accepted by the gateway (key: thread id)."""

    event_type: ClassVar[EventType] = EventType.ALERT_SUBMITTED
    alert: Alert
    submitted_by: str = Field(description="id of the credential that submitted it")
    # Optional (added for issue 11): the gateway's status projection stores the CAP origin from the
    # event itself, so the accept path writes nothing to the database. Audit keeps neither.
    cap: CapOrigin | None = Field(None, description="CAP submissions: sender, identifier, sent, signed")
    cap_original: Base64Bytes | None = Field(None, description="CAP submissions: the document byte for byte (base64)")
    cap_signature: CapSignature | None = Field(None, description="a CAP submission: its XML signature as checked")
    unresolved_references: list[UUID] = Field(
        [], description="references to the agency's own CAP messages BLOnet never received: the alert starts a thread")


class ViewProfile(StrEnum):
    FULL = "full"  # everything the recipient's agreements allow
    SUMMARY = "summary"  # observers: what, where, when — no narrative, no personal data


class Recipient(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agency: str
    unit: str | None = None
    endpoint: str
    profile: ViewProfile
    redacted: list[str] = Field([], description="fields removed from this recipient's view")
    rule: str = Field(description="the route rule (or 'addressee') that selected it")
    reason: str
    agreement: str | None = Field(None, description="the agreement the view crosses the border under (None: no border)")
    basis: str | None = Field(None, description="how that agreement was chosen among those in force")


class Denial(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agency: str
    unit: str | None = None
    code: str = Field(description="machine-readable reason, e.g. not_on_route, no_agreement")
    explanation: str


class AlertRouted(Payload):
    """Routing's decision for one alert (key: thread id)."""

    event_type: ClassVar[EventType] = EventType.ALERT_ROUTED
    ruleset_hash: str
    recipients: list[Recipient]
    denied: list[Denial]
    kind: str = Field("alert", description="alert, update, cancel or forward: what was decided on")
    forward_id: UUID | None = Field(None, description="the forward decided on, when kind is forward")
    note: str | None = Field(None, description="a sentence about the decision as a whole, e.g. no rule matched")
    unresolved_references: list[UUID] = Field(
        [], description="references BLOnet never received (the sender's own earlier CAP messages): the alert starts a thread")


class DeliveryRequested(Payload):
    """One view of one alert to send to one endpoint (key: endpoint id)."""

    event_type: ClassVar[EventType] = EventType.DELIVERY_REQUESTED
    delivery_id: UUID
    endpoint: str
    agency: str
    unit: str | None = None
    channel: str = Field("webhook", description="webhook or email")
    url: str | None = Field(None, description="the webhook URL (channel webhook)")
    email: str | None = Field(None, description="the address (channel email)")
    format: str = Field("json", description="json or cap: the endpoint's preferred body format")
    language: str | None = Field(None, description="the endpoint's preferred language")
    profile: ViewProfile
    body: dict = Field(description="the recipient's view of the alert, as routing shaped it")
    sign_cap: bool = Field(False, description="format cap: sign the body with the node's CAP key (the endpoint's sign_cap)")


class DeliveryState(StrEnum):
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"  # retry schedule exhausted: dead letter


class DeliveryStatus(Payload):
    """The outcome of a delivery attempt (key: thread id, so an alert's story stays ordered)."""

    event_type: ClassVar[EventType] = EventType.DELIVERY_STATUS
    delivery_id: UUID
    endpoint: str
    agency: str
    state: DeliveryState
    attempt: int
    http_status: int | None = None
    error: str | None = None
    latency_ms: float | None = None
    next_attempt_at: AwareDatetime | None = None


class AckStatus(StrEnum):
    RECEIVED = "received"
    ACTING = "acting"
    NOT_RELEVANT = "not_relevant"


class AlertAcknowledged(Payload):
    """A recipient's acknowledgement of an alert it received (key: thread id).

    The envelope's alert_id is the acknowledged alert. Delivery (a 2xx) is not acknowledgement:
    this is the agency's own act, and what escalation waits for.
    """

    event_type: ClassVar[EventType] = EventType.ALERT_ACKNOWLEDGED
    agency: str
    unit: str | None = None
    status: AckStatus
    comment: str | None = Field(None, max_length=2_000)
    acknowledged_by: str = Field(description="id of the credential that acknowledged")


class AlertForwarded(Payload):
    """A recipient passes an alert on to named units or agencies (topic alerts.submitted, key: thread id).

    The envelope's alert_id is the forwarded alert; routing decides the forward under the
    original's restrictions, so a forward can never reach anyone the original could not.
    """

    event_type: ClassVar[EventType] = EventType.ALERT_FORWARDED
    forward_id: UUID
    agency: str = Field(description="the forwarding agency (a recipient of the alert)")
    unit: str | None = None
    to: list[str] = Field(min_length=1, max_length=100, description="unit or agency ids")
    comment: str | None = Field(None, max_length=2_000)
    forwarded_by: str = Field(description="id of the credential that forwarded")


class OperatorAction(Payload):
    """An operator's (or the system's own) act on delivery state, for the audit trail (topic operations.actions).

    Key: the target (endpoint id or delivery id). Actions: delivery.replay, endpoint.recover,
    endpoint.enable, endpoint.disable, endpoint.rotate_secret, alert.escalate.
    """

    event_type: ClassVar[EventType] = EventType.OPERATOR_ACTION
    action: str
    target: str = Field(description="endpoint id or delivery id")
    actor: str = Field(description="credential id of the operator, or 'notifier' for automatic acts")
    reason: str | None = Field(None, max_length=2_000)
    detail: dict = Field({}, description="what the action touched, e.g. {'replayed': 12, 'since': ...}")


class RulesChanged(Payload):
    """A new network directory and rule set was activated (topic routing.rules).

    Carries the full content, so an auditor can recompute any decision made under it.
    """

    event_type: ClassVar[EventType] = EventType.RULES_CHANGED
    ruleset_hash: str
    previous_hash: str | None = None
    changed_by: str = Field(description="who activated it: a credential id, or cli:<user>")
    source: str = Field(description="api, cli or bootstrap")
    content: dict = Field(description="{directory, rules}, canonical")
