"""The notifier's intake reads its own events and refuses anything else, so the consumer dead-letters it."""
from types import SimpleNamespace

import pytest

from services.notifier.consumer import decoded
from shared.events import AckStatus, AlertAcknowledged, DeliveryRequested, Envelope, ViewProfile
from shared.ids import new_id


def record(value: bytes, offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic="t", partition=0, offset=offset, value=value)


AID = new_id()
REQUEST = DeliveryRequested(delivery_id=new_id(), endpoint="ep", agency="a", url="https://a.example/",
                            profile=ViewProfile.FULL, body={})
FOREIGN = Envelope.wrap(AlertAcknowledged(agency="a", status=AckStatus.RECEIVED, acknowledged_by="k"),
                        origin_node="n", alert_id=AID, thread_id=AID).to_bytes()


def test_valid_requests_are_read_in_order():
    good = [Envelope.wrap(REQUEST, origin_node="n", alert_id=AID, thread_id=AID).to_bytes() for _ in range(2)]
    found = decoded([record(good[0]), record(good[1], 1)], DeliveryRequested)
    assert [r.delivery_id for _, r in found] == [REQUEST.delivery_id] * 2


@pytest.mark.parametrize("value", [b"probe deliveries.requested", b"{}", b"\xff\xfe", FOREIGN])
def test_garbage_and_foreign_events_fail_the_batch(value):
    good = Envelope.wrap(REQUEST, origin_node="n", alert_id=AID, thread_id=AID).to_bytes()
    with pytest.raises(ValueError):
        decoded([record(good), record(value, 1)], DeliveryRequested)


def test_signed_cap_is_refused_rather_than_sent_unsigned_while_the_node_has_no_key(tmp_path):
    from services.notifier.consumer import refusal
    from shared.settings import Settings
    from tests.capkeys import make_key

    req = DeliveryRequested(delivery_id=new_id(), endpoint="e1", agency="kg-moi", url="https://example.org/hook", format="cap",
                            profile=ViewProfile.FULL, body={}, sign_cap=True)
    assert "no CAP signing key" in refusal(Settings(), req, {"e1"})
    node = make_key("node")
    (tmp_path / "k.pem").write_bytes(node.key_pem)
    (tmp_path / "c.pem").write_bytes(node.certificate_pem)
    keyed = Settings(cap_signing_key_file=tmp_path / "k.pem", cap_signing_certificate_file=tmp_path / "c.pem")
    assert refusal(keyed, req, {"e1"}) is None
    assert refusal(Settings(), req.model_copy(update={"sign_cap": False}), {"e1"}) is None
