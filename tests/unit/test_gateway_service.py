"""The gateway's pure parts: decoding by content type, submission checks, the rate limiter, the body cap."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from demo.scenario import SCENARIO
from services.gateway.limits import RateLimiter
from shared.bodylimit import BodyLimit
from services.gateway.service import ApiError, Caller, Submission, check_submission, decode_cursor, decode_submission, encode_cursor
from shared.alerts import Alert
from shared.auth import Principal, Role
from shared.cap import render_cap
from shared.ids import new_id

NOW = datetime(2026, 11, 27, tzinfo=timezone.utc)
FUTURE = {**SCENARIO, "effective": "2027-05-15T00:00:00+06:00", "expires": "2027-05-20T23:59:59+06:00"}


def caller(*roles: Role, agency: str = "kg-sbs", posts: frozenset[str] | None = None) -> Caller:
    return Caller(Principal("k1", agency, frozenset(roles or (Role.SUBMIT,))), posts)


def refused(fn, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as err:
        fn(*args, **kwargs)
    return err.value


def test_json_and_cap_decode_to_the_same_alert():
    alert = Alert.model_validate(FUTURE)
    from_json = decode_submission(orjson.dumps(FUTURE), "application/json; charset=utf-8")
    xml = render_cap({"alert": alert.model_dump(mode="json")}, sender="kg-sbs@sbs.gov.kg", identifier="X-1", sent=NOW)
    from_cap = decode_submission(xml, "application/cap+xml")
    assert from_json.alert == from_cap.alert == alert and from_json.cap is None and from_cap.cap.identifier == "X-1"


@pytest.mark.parametrize("body, ctype, status, code", [
    (b"{", "application/json", 422, "json_invalid"),
    (orjson.dumps({**FUTURE, "urgency": "yesterday"}), "application/json", 422, "invalid_alert"),
    (orjson.dumps(FUTURE), "text/plain", 415, "unsupported_media_type"),
    (orjson.dumps(FUTURE), None, 415, "unsupported_media_type"),
    (b"<x/>", "application/cap+xml", 422, "cap_schema_invalid"),
])
def test_undecodable_bodies_are_refused(body, ctype, status, code):
    err = refused(decode_submission, body, ctype)
    assert (err.status, err.code) == (status, code)


@pytest.mark.parametrize("who, alert, code", [
    (caller(Role.RECEIVE), FUTURE, "forbidden"),
    (caller(agency="kg-moi"), FUTURE, "wrong_sender"),
    (caller(posts=frozenset({"dostuk"})), FUTURE, "wrong_post"),
    (caller(), {**FUTURE, "effective": None, "expires": "2026-11-26T00:00:00+00:00"}, "expired"),
])
def test_submission_checks(who, alert, code):
    err = refused(check_submission, Submission(Alert.model_validate(alert), b""), who, now=NOW, reject_expired=True)
    assert err.code == code


def test_the_expiry_check_can_be_switched_off_and_posts_allow_their_own():
    old = Submission(Alert.model_validate({**FUTURE, "effective": None, "expires": "2020-01-01T00:00:00+00:00"}), b"")
    check_submission(old, caller(), now=NOW, reject_expired=False)
    check_submission(Submission(Alert.model_validate(FUTURE), b""), caller(posts=frozenset({"bor-dobo"})), now=NOW, reject_expired=True)


@given(st.uuids())
def test_cursors_round_trip(value):
    assert decode_cursor(encode_cursor(value)) == value


def test_a_foreign_cursor_is_refused():
    assert refused(decode_cursor, "not-a-cursor!").code == "invalid_cursor"
    assert decode_cursor(encode_cursor(new_id())) is not None


def test_rate_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(limit=2, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5) and limiter.take("b") == 0
    now[0] += 0.5
    assert limiter.take("a") == 0 and RateLimiter.retry_after(0.2) == "1" and RateLimiter.retry_after(2.5) == "3"


def test_each_of_n_instances_enforces_its_share_of_the_limit():
    now = [0.0]
    limiter = RateLimiter(limit=10, burst=20, clock=lambda: now[0])
    limiter.share(4)  # four live instances: 2.5 requests/s and bursts of 5 here, 10/s and 20 together
    assert [limiter.take("a") for _ in range(6)] == [0] * 5 + [pytest.approx(0.4)]
    now[0] += 0.4
    assert limiter.take("a") == 0
    limiter.share(100)  # more instances than the burst: still one request at a time, never none
    now[0] += 10
    assert limiter.take("b") == 0 and limiter.take("b") > 0


def test_body_limit_refuses_large_bodies_whatever_content_length_says():
    async def echo(request):
        return Response(str(len(await request.body())))

    client = TestClient(BodyLimit(Starlette(routes=[Route("/", echo, methods=["POST"])]), max_bytes=10))
    assert client.post("/", content=b"x" * 10).text == "10"
    assert client.post("/", content=b"x" * 11).status_code == 413

    def chunks():
        yield b"x" * 6
        yield b"x" * 6

    refused_ = client.post("/", content=chunks())  # no Content-Length: counted while reading
    assert refused_.status_code == 413 and refused_.json()["code"] == "body_too_large"


def test_times_in_keyed_ids_order_them():
    from shared.cap import keyed_uuid7

    a, b = keyed_uuid7(NOW, "x"), keyed_uuid7(NOW + timedelta(seconds=1), "x")
    assert a < b and a == keyed_uuid7(NOW, "x") and a.version == 7
