"""Entries: canonical bytes, what they keep of each event, and rejected records."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from demo.scenario import SCENARIO
from services.audit import entry
from shared.alerts import Alert
from shared.events import AlertSubmitted, Envelope
from shared.ids import new_id

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_canonical_bytes_are_jcs_for_the_types_used(doc):
    """For strings, integers, booleans, null, arrays and objects, RFC 8785 equals sorted compact JSON."""
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert entry.canonical(doc) == expected


def submitted_record(**alert_changes) -> bytes:
    alert = Alert.model_validate({**SCENARIO, **alert_changes})
    aid = new_id()
    return Envelope.wrap(AlertSubmitted(alert=alert, submitted_by="key1"), origin_node="n1", alert_id=aid,
                         thread_id=aid).to_bytes()


def test_an_event_entry_keeps_metadata_and_a_digest_never_the_payload():
    raw = submitted_record(personal_data={"names": ["Ivanov Ivan"], "document_numbers": ["AN1234567"]})
    draft = entry.from_record("alerts.submitted", 3, 17, raw)
    env = Envelope.from_bytes(raw)
    nonce = bytes(range(16))
    sealed = entry.seal(draft, 42, datetime(2026, 5, 14, 8, 0, tzinfo=timezone.utc), nonce)
    doc = entry.decode(sealed)
    assert doc["index"] == 42 and doc["format"] == 1 and doc["recorded_at"] == "2026-05-14T08:00:00.000000Z"
    assert doc["event_id"] == str(env.event_id) and doc["type"] == "alert.submitted"
    assert doc["source"] == {"topic": "alerts.submitted", "partition": 3, "offset": 17}
    assert doc["agencies"] == ["kg-sbs"] and doc["summary"]["has_personal_data"] is True
    assert doc["payload"] == {"sha256": entry.payload_digest(nonce, raw), "size": len(raw)}
    for secret in (b"Ivanov", b"AN1234567", SCENARIO["description"].encode()[:30]):
        assert secret not in sealed
    assert draft.payload == raw  # the payload goes to the payload store, whole


def test_a_malformed_record_becomes_a_rejected_entry_with_its_reason():
    for raw, reason in ((b'{"event_id": ', "json"), (b"", "json"), (b'{"event_id": "x"}', "event_id")):
        draft = entry.from_record("alerts.routed", 0, 9, raw)
        assert draft.type == entry.REJECTED and draft.payload == raw
        assert reason in draft.fields["reason"].lower()
        assert draft == entry.from_record("alerts.routed", 0, 9, raw), "a redelivered bad record has the same id"
    assert entry.from_record("alerts.routed", 0, 9, b"x").event_id != entry.from_record("alerts.routed", 0, 10, b"x").event_id


def test_summaries_keep_parties_and_codes_and_no_floats():
    kept = entry.summary("delivery.status", {"delivery_id": "d", "endpoint": "ep", "agency": "uz-bs", "state": "delivered",
                                             "attempt": 1, "http_status": 200, "latency_ms": 3.5, "error": "boom"})
    assert kept == {"delivery_id": "d", "endpoint": "ep", "agency": "uz-bs", "state": "delivered", "attempt": 1,
                    "http_status": 200}
    assert entry.summary("future.event", {"agency": "kz-mof", "note": "free text"}) == {"agency": "kz-mof"}
    assert entry.summary("delivery.status", {"attempt": 1.5}) ["attempt"] == "1.5"


def test_erasure_entries_compress_indexes_into_runs():
    draft = entry.erasure(new_id(), reason="retention", actor="system", indexes=[7, 3, 4, 5, 9])
    assert draft.fields["erased"] == {"count": 5, "indexes": [[3, 5], [7, 7], [9, 9]]}


def test_a_dead_letter_becomes_an_entry_naming_its_source_and_error_not_its_data():
    raw = b'{"headline": "Ivanov\\u0000"}'
    facts = {"group": "t.routing", "topic": "t.alerts.submitted", "partition": "3", "offset": "17",
             "error_class": "ValidationError", "error": "payload.alert.headline: Value error, control character U+0000",
             "alert-id": "01900000-0000-7000-8000-000000000001"}
    draft = entry.from_record("t.routing.deadletter", 1, 4, raw, facts)
    assert draft.type == entry.DEADLETTER and draft.payload == raw
    assert draft.fields["deadletter"] == {"group": "t.routing", "topic": "t.alerts.submitted", "partition": 3,
                                          "offset": 17, "error_class": "ValidationError", "error": facts["error"]}
    assert draft.fields["source"] == {"topic": "t.routing.deadletter", "partition": 1, "offset": 4}
    assert str(draft.alert_id) == facts["alert-id"]
    sealed = entry.seal(draft, 0, datetime(2026, 5, 14, tzinfo=timezone.utc), bytes(16))
    assert b"Ivanov" not in sealed
    again = entry.from_record("t.routing.deadletter", 2, 9, raw, facts)  # the same record dead-lettered again
    assert again.event_id == draft.event_id
    other = entry.from_record("t.routing.deadletter", 1, 5, raw, {**facts, "offset": "18"})
    assert other.event_id != draft.event_id
    assert entry.from_record("t.x", 0, 0, raw, {"group": "g", "partition": "x"}).fields["deadletter"]["partition"] is None
