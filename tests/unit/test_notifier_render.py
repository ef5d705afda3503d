"""Delivery bodies per endpoint preference: JSON in the endpoint's language, or schema-valid CAP 1.2."""
from datetime import datetime, timezone
from uuid import UUID

import orjson
import pytest
from lxml import etree

from demo.scenario import SCENARIO
from services.notifier.channels import localised, readable, render_body
from shared.alerts import Alert
from shared.cap import parse_cap, schema

ALERT_ID = UUID("0190a000-0000-7000-8000-000000000001")
CREATED = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)


def view(**extra) -> dict:
    alert = Alert.model_validate({**SCENARIO, **extra})
    return {"recipient": {"agency": "kg-moi", "unit": None, "profile": "full"}, "redacted": [],
            "alert": alert.model_dump(mode="json")}


def row(body: dict, **fields) -> dict:
    return {"body": body, "alert_id": ALERT_ID, "created_at": CREATED, "format": "json", "language": None, **fields}


def test_json_is_the_view_as_routing_shaped_it():
    body, content_type = render_body(row(view()), "node")
    assert content_type == "application/json" and orjson.loads(body) == view()


def test_json_takes_the_endpoints_language_when_the_alert_has_it():
    v = view(translations=[{"language": "en", "headline": "Risk at Dostuk"}])
    shown = orjson.loads(render_body(row(v, language="en"), "node")[0])["alert"]
    assert shown["language"] == "en" and shown["headline"] == "Risk at Dostuk"
    assert {t["language"] for t in shown["translations"]} == {v["alert"]["language"]}, "the original stays as a translation"
    assert localised(v, "de") == v, "a language the alert lacks leaves it as it is"
    assert localised(v, "en-GB")["alert"]["headline"] == "Risk at Dostuk", "BCP 47 lookup: en-GB takes the en text"
    assert localised(v, "EN")["alert"]["headline"] == "Risk at Dostuk", "tags match whatever their case"
    assert localised(v, v["alert"]["language"] + "-KG") == v, "the alert's own language, found by lookup, stays as it is"


def test_cap_is_schema_valid_stable_across_retries_and_reads_back():
    body, content_type = render_body(row(view(), format="cap"), "blonet-test")
    assert content_type == "application/cap+xml"
    assert schema().validate(etree.fromstring(body.encode())), schema().error_log
    assert render_body(row(view(), format="cap"), "blonet-test")[0] == body, "the same bytes on every retry"
    assert parse_cap(body.encode()).alert_id == ALERT_ID


def test_the_email_text_reads_as_the_alert():
    text = readable(view())
    assert SCENARIO["headline"] in text and "acknowledge" in text


def test_cap_for_an_endpoint_with_sign_cap_carries_the_nodes_verifiable_signature():
    from shared.capsig import verify
    from shared.events import SignatureState
    from tests.capkeys import NOW, make_key

    node = make_key("blonet-test node")
    body, content_type = render_body(row(view(), format="cap-sig"), "blonet-test", node)
    assert content_type == "application/cap+xml" and parse_cap(body.encode()).signed
    assert verify(body.encode(), (node.certificate_pem.decode(),), NOW).state is SignatureState.VERIFIED
    assert not parse_cap(render_body(row(view(), format="cap"), "blonet-test", node)[0].encode()).signed, "only when asked"
    with pytest.raises(ValueError, match="no CAP signing key"):
        render_body(row(view(), format="cap-sig"), "blonet-test")
