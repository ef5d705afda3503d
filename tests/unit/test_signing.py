"""Webhook signatures are what the Standard Webhooks library verifies."""
from datetime import datetime, timedelta, timezone

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.notifier.delivery import signed_headers
from services.notifier.repository import new_secret
from services.notifier.consumer import url_allowed
from shared.settings import Settings


def test_signature_verifies_with_the_reference_library():
    secret = new_secret()
    body = '{"alert_id": "x"}'
    headers = signed_headers(secret, "msg_1", body, datetime.now(timezone.utc))
    assert Webhook(secret).verify(body, headers) == {"alert_id": "x"}
    assert headers["webhook-signature"].startswith("v1,")


def test_wrong_secret_tampered_body_and_stale_timestamp_are_rejected():
    secret, body = new_secret(), '{"a": 1}'
    now = datetime.now(timezone.utc)
    headers = signed_headers(secret, "msg_2", body, now)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify('{"a": 2}', headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, signed_headers(secret, "msg_2", body, now - timedelta(minutes=10)))


def test_secrets_are_whsec_and_unique():
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b and len(a) > 40


def test_only_https_or_loopback_http_in_development():
    dev, prod = Settings(), Settings(allow_insecure_webhooks=False)
    assert url_allowed(dev, "https://agency.example/hook") and url_allowed(prod, "https://agency.example/hook")
    assert url_allowed(dev, "http://127.0.0.1:8100/inbox/x")
    assert not url_allowed(dev, "http://agency.example/hook")
    assert not url_allowed(dev, "http://127.0.0.1.attacker.example/hook")
    assert not url_allowed(dev, "http://localhost@attacker.example/hook")
    assert not url_allowed(dev, "ftp://127.0.0.1/x") and not url_allowed(dev, "https:///nohost")
    assert not url_allowed(prod, "http://127.0.0.1:8100/inbox/x")


def test_during_a_rotation_both_secrets_sign_and_each_verifies():
    old, new = new_secret(), new_secret()
    body = '{"a": 1}'
    headers = signed_headers([new, old], "msg_3", body, datetime.now(timezone.utc))
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(body, headers) == {"a": 1}, "a receiver still on the old secret"
    assert Webhook(new).verify(body, headers) == {"a": 1}, "a receiver already on the new secret"


def test_mailto_endpoints_are_allowed_only_with_an_address():
    dev = Settings()
    assert url_allowed(dev, "mailto:duty@border.example")
    assert not url_allowed(dev, "mailto:nobody") and not url_allowed(dev, "mailto://host/x")
