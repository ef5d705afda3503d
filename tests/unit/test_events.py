"""Event contracts: envelope round trip, version checks, derived ids."""
import uuid

import pytest

from demo.scenario import SCENARIO
from shared.alerts import Alert
from shared.events import AlertRouted, AlertSubmitted, Envelope
from shared.ids import derived_id, new_id


def submitted() -> Envelope:
    a = Alert.model_validate(SCENARIO)
    aid = new_id()
    return Envelope.wrap(AlertSubmitted(alert=a, submitted_by="k1"), origin_node="n1", alert_id=aid, thread_id=aid,
                         traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")


def test_envelope_round_trips_byte_stable():
    env = submitted()
    again = Envelope.from_bytes(env.to_bytes())
    assert again == env and again.to_bytes() == env.to_bytes()
    assert again.payload_as(AlertSubmitted).alert.headline == SCENARIO["headline"]


def test_payload_of_another_type_is_refused():
    with pytest.raises(ValueError, match="expected alert.routed"):
        submitted().payload_as(AlertRouted)


def test_unknown_schema_version_is_refused():
    env = submitted().model_copy(update={"schema_version": 2})
    with pytest.raises(ValueError, match="v1, got alert.submitted v2"):
        env.payload_as(AlertSubmitted)


def test_caused_event_inherits_trace_and_cause():
    cause = submitted()
    routed = Envelope.wrap(AlertRouted(ruleset_hash="h", recipients=[], denied=[]), origin_node="n1",
                           alert_id=cause.alert_id, thread_id=cause.thread_id, cause=cause)
    assert routed.causation_id == cause.event_id and routed.traceparent == cause.traceparent


def test_ids_are_uuid7_and_derived_ids_deterministic():
    a = new_id()
    assert a.version == 7
    d = derived_id(a, "delivery", "ep-1")
    assert d.version == 7 and d.variant == uuid.RFC_4122
    assert d == derived_id(a, "delivery", "ep-1") != derived_id(a, "delivery", "ep-2")
    assert d.int >> 80 == a.int >> 80, "derived ids keep the cause's timestamp"


def test_unknown_fields_are_refused():
    with pytest.raises(ValueError, match="extra"):
        Alert.model_validate({**SCENARIO, "colour": "red"})


def test_expiry_must_not_precede_effective_but_may_equal_it():
    with pytest.raises(ValueError, match="expires must not be earlier"):
        Alert.model_validate({**SCENARIO, "expires": "2017-05-01T00:00:00+06:00"})
    same = Alert.model_validate({**SCENARIO, "expires": SCENARIO["effective"]})  # valid CAP: in force for an instant
    assert same.expires == same.effective
