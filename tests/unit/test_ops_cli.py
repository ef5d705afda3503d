"""The terminal's view of the flow: which lines a change prints, and how refusals read."""
from datetime import datetime, timezone

import pytest
import typer

from services.ops_cli import Flow, parse_since, refusal


def summary(state: str, recipients: dict[str, str], denied: bool = False) -> dict:
    return {
        "alert_id": "a1", "received_at": "2026-11-28T09:14:03+00:00", "sender_agency": "kg-sbs", "sender_post": "bor-dobo",
        "category": "drugs", "severity": "severe", "tlp": "TLP:GREEN", "headline": "Высокий риск", "msg_type": "alert",
        "state": state, "recipients": [
            {"endpoint": e, "agency": e[3:], "unit": None, "profile": "full", "state": s, "attempts": 1,
             "http_status": 503 if s == "retrying" else 200, "error": None, "ack_status": None,
             "updated_at": "2026-11-28T09:14:04+00:00"} for e, s in recipients.items()],
        "denied": [{"agency": "tj-bs", "unit": "tj-bs-kyzyl-art", "code": "not_on_route",
                    "explanation": "TJ is not on the KG→UZ route"}] if denied else [],
    }


def test_only_changes_are_printed_the_alert_first_when_new_and_last_when_its_state_changes():
    flow = Flow()
    lines = [t.plain for t in flow.changes(summary("accepted", {}))]
    assert len(lines) == 1 and "a1  accepted" in lines[0] and "kg-sbs@bor-dobo  drugs/severe  TLP:GREEN" in lines[0]
    lines = [t.plain for t in flow.changes(summary("delivering", {"ep-moi": "delivered", "ep-mof": "retrying"}, denied=True))]
    assert [x.split()[2] for x in lines] == ["delivered", "retrying", "denied", "delivering"]
    assert "attempt 1; HTTP 503" in lines[1] and "tj-bs/tj-bs-kyzyl-art: not_on_route — TJ is not" in lines[2]
    lines = [t.plain for t in flow.changes(summary("delivering", {"ep-moi": "delivered", "ep-mof": "retrying"}, denied=True))]
    assert lines == [], "nothing changed: nothing printed, the denial not again"
    lines = [t.plain for t in flow.changes(summary("delivered", {"ep-moi": "delivered", "ep-mof": "delivered"}, denied=True))]
    assert [x.split()[2] for x in lines] == ["delivered", "delivered"] and "→ ep-mof" in lines[0]


def test_refusals_read_as_one_line_with_the_service_and_its_reason():
    assert refusal("gateway", 401, b'{"code": "unauthorized", "detail": "unknown or revoked API key"}').message == \
        "gateway: the API key was refused (401): unknown or revoked API key"
    assert refusal("routing", 422, b'{"detail": {"problems": ["a", "b"]}}').message == "routing (422): a; b"
    assert [refusal("x", s, b"oops").exit_code for s in (401, 403, 404, 409, 502)] == [2, 2, 1, 1, 3]


def test_since_is_iso_8601_and_utc_without_an_offset():
    assert parse_since("2026-11-28T00:00Z") == datetime(2026, 11, 28, tzinfo=timezone.utc)
    assert parse_since("2026-11-28T06:00+06:00") == datetime(2026, 11, 28, tzinfo=timezone.utc)
    assert parse_since("2026-11-28T00:00") == datetime(2026, 11, 28, tzinfo=timezone.utc)
    with pytest.raises(typer.BadParameter):
        parse_since("yesterday")
