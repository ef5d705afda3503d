"""Acknowledgement deadlines and what an escalation sends: pure, time is an argument."""
from datetime import datetime, timedelta, timezone
from uuid import UUID

from services.notifier.escalation import ack_deadline, escalation_rows, urgency_of
from shared.directory import Endpoint

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
MINUTES = {"immediate": 15, "expected": 60}


def test_deadline_by_urgency_from_the_directory_or_the_override():
    assert ack_deadline(urgency="immediate", agency_minutes=MINUTES, override_seconds={}, requested_at=T0) == T0 + timedelta(minutes=15)
    assert ack_deadline(urgency="immediate", agency_minutes=MINUTES, override_seconds={"immediate": 5}, requested_at=T0) == T0 + timedelta(seconds=5)
    assert ack_deadline(urgency="future", agency_minutes=MINUTES, override_seconds={}, requested_at=T0) is None
    assert ack_deadline(urgency=None, agency_minutes=MINUTES, override_seconds={}, requested_at=T0) is None


def test_urgency_is_read_from_the_view():
    assert urgency_of({"alert": {"urgency": "immediate"}}) == "immediate"
    assert urgency_of({"test": 1}) is None


def test_escalation_resends_with_a_new_id_and_adds_the_fallback_once():
    original = {"delivery_id": UUID("0190a000-0000-7000-8000-000000000001"), "request_event_id": UUID(int=1),
                "alert_id": UUID(int=2), "thread_id": UUID(int=2), "agency": "kg-sbs", "body": {"b": 1},
                "traceparent": None, "url": "https://a.example/hook", "endpoint": "ep-a", "format": "json", "language": "ru"}
    fallback = Endpoint(id="ep-duty", agency="kg-sbs", channel="email", email="duty@sbs.example", format="cap", language="en")
    resend, escalate = escalation_rows(original, fallback)
    assert resend["endpoint"] == "ep-a" and resend["delivery_id"] != original["delivery_id"]
    assert escalate["endpoint"] == "ep-duty" and escalate["url"] == "mailto:duty@sbs.example"
    assert (escalate["format"], escalate["language"]) == ("cap", "en")
    assert escalation_rows(original, fallback) == [resend, escalate], "the same ids when a crash repeats it"
    assert len(escalation_rows(original, Endpoint(id="ep-a", agency="kg-sbs", url="https://a.example/hook"))) == 1
