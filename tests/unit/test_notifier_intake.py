"""The notifier's intake skips records that are not its events instead of retrying them forever."""
from types import SimpleNamespace

from services.notifier.consumer import decoded
from shared.events import AckStatus, AlertAcknowledged, DeliveryRequested, Envelope, ViewProfile
from shared.ids import new_id


def record(value: bytes, offset: int = 0) -> SimpleNamespace:
    return SimpleNamespace(topic="t", partition=0, offset=offset, value=value)


def test_garbage_and_foreign_events_are_skipped_valid_requests_kept():
    aid = new_id()
    req = DeliveryRequested(delivery_id=new_id(), endpoint="ep", agency="a", url="https://a.example/", profile=ViewProfile.FULL, body={})
    ack = AlertAcknowledged(agency="a", status=AckStatus.RECEIVED, acknowledged_by="k")
    good = Envelope.wrap(req, origin_node="n", alert_id=aid, thread_id=aid).to_bytes()
    foreign = Envelope.wrap(ack, origin_node="n", alert_id=aid, thread_id=aid).to_bytes()
    found = decoded([record(b"probe deliveries.requested"), record(good, 1), record(foreign, 2), record(b"{}", 3)], DeliveryRequested)
    assert [r.delivery_id for _, r in found] == [req.delivery_id]
