"""The console's pure parts: words in both languages, states, filters, origins, trace ids."""
from __future__ import annotations

import asyncio
import contextlib
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request

from services.gateway import ops
from services.gateway.console import session
from services.gateway.console.i18n import WORDS, pick, translate
from shared.tracing import trace_id_of as trace_id
from services.gateway.ops import Filters, overall_state, recipient_state

TEMPLATES = Path(session.__file__).parent / "templates"
STATES = ["accepted", "routed", "delivering", "retrying", "delivered", "failed", "acknowledged", "escalated", "pending"]


def test_every_word_a_template_or_page_uses_exists_in_both_languages():
    sources = [p.read_text() for p in TEMPLATES.glob("*.html")]
    sources += [p.read_text() for p in TEMPLATES.parent.glob("*.py")]
    used = set()
    for text in sources:
        used |= set(re.findall(r"""\bt\(\s*["']([a-z_0-9.]+)["']""", text))
        used |= set(re.findall(r"""translate\([^,]+,\s*["']([a-z_0-9.]+)["']""", text))
        used |= set(re.findall(r"""["']((?:login|error|rules|deliveries|alert|field)\.[a-z_.]+)["']""", text))
    used |= {f"state.{s}" for s in STATES} | {f"last_{k}" for k in ("15m", "1h", "24h", "7d")}
    used = {k for k in used if not k.endswith((".", "_", ".html"))}  # prefixes joined with a value; file names
    missing = sorted(k for k in used if k not in WORDS)
    assert not missing, f"no translation for {missing}"
    for key, (en, ru) in WORDS.items():
        assert en.strip() and ru.strip(), key
        assert set(re.findall(r"{(\w+)}", en)) == set(re.findall(r"{(\w+)}", ru)), f"{key}: placeholders differ"


def test_translate_fills_placeholders_and_falls_back_to_the_key():
    assert translate("ru", "rules.activated_ok", hash="sha256:ab") == "Активирована версия sha256:ab."
    assert translate("en", "no.such.key") == "no.such.key"


@pytest.mark.parametrize("accept, cookie, expected", [
    (None, None, "en"), ("ru-RU,ru;q=0.9,en;q=0.8", None, "ru"), ("de-DE,ru;q=0.5", None, "ru"),
    ("ru", "en", "en"), ("en", "ru", "ru"), ("fr", "xx", "en"),
])
def test_language_is_the_cookie_then_the_browser_then_english(accept, cookie, expected):
    assert pick(accept, cookie) == expected


def _r(**kw) -> dict:
    return {"state": "routed", "ack_status": None, "escalated_at": None, **kw}


def test_a_recipients_state_says_the_most_it_can():
    assert recipient_state(_r(state="delivered")) == "delivered"
    assert recipient_state(_r(state="delivered", escalated_at=1)) == "escalated"
    assert recipient_state(_r(state="delivered", escalated_at=1, ack_status="acting")) == "acknowledged"


@pytest.mark.parametrize("routing, states, expected", [
    (None, [], "accepted"), ({}, [], "routed"), ({}, ["delivered", "failed"], "failed"),
    ({}, ["delivered", "retrying"], "delivering"), ({}, ["delivered", "acknowledged"], "delivered"),
    ({}, ["acknowledged", "acknowledged"], "acknowledged"), ({}, ["routed"], "delivering"),
])
def test_an_alerts_overall_state(routing, states, expected):
    assert overall_state({"routing": routing}, states) == expected


NOW = datetime(2026, 11, 28, 9, tzinfo=timezone.utc)
SUMMARY = {"sender_agency": "kg-sbs", "sender_post": "bor-dobo", "post": "dostuk", "category": "drugs",
           "tlp": "TLP:GREEN", "received_at": NOW, "recipients": [{"agency": "uz-sbs"}, {"agency": "unodc"}]}


@given(agency=st.sampled_from([None, "kg-sbs", "uz-sbs", "tj-bs"]), post=st.sampled_from([None, "dostuk", "bor-dobo", "osh"]),
       category=st.sampled_from([None, "drugs", "weapons"]), tlp=st.sampled_from([None, "TLP:GREEN", "TLP:RED"]),
       minutes=st.sampled_from([None, -5, 5]))
def test_live_filters_match_field_by_field(agency, post, category, tlp, minutes):
    since = NOW + timedelta(minutes=minutes) if minutes is not None else None
    expected = (agency in (None, "kg-sbs", "uz-sbs") and post in (None, "dostuk", "bor-dobo")
                and category in (None, "drugs") and tlp in (None, "TLP:GREEN") and minutes in (None, -5))
    assert Filters(agency, post, category, tlp, since).matches(SUMMARY) is expected


def test_trace_id_is_read_from_a_well_formed_traceparent_only():
    assert trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01") == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in (None, "", "garbage", "00-short-00f067aa0ba902b7-01"):
        assert trace_id(bad) is None


def _request(headers: dict) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "scheme": "http", "server": ("127.0.0.1", 8000), "path": "/console/x",
                    "root_path": "", "query_string": b"", "headers": [(b"host", b"127.0.0.1:8000"), *raw]})


@pytest.mark.parametrize("headers, ok", [
    ({"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}, True),
    ({"Origin": "http://127.0.0.1:8000"}, True),
    ({"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}, False),
    ({"Origin": "http://evil.example"}, False),
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Referer": "http://127.0.0.1:8000/console/deliveries"}, True),
    ({"Referer": "http://127.0.0.1:8000.evil.example/console"}, False),
    ({"Origin": "http://127.0.0.1:80001"}, False),
    ({}, False),
])
def test_state_changing_posts_must_come_from_the_console_itself(headers, ok):
    assert session.same_origin(_request(headers)) is ok


class FakeHub:
    """What ops.sse needs of a FlowHub: a subscription queue and the service's stopping flag."""

    def __init__(self) -> None:
        self.rt = SimpleNamespace(stopping=asyncio.Event(), settings=SimpleNamespace(stream_recheck_seconds=15.0))
        self.queue: asyncio.Queue = asyncio.Queue()

    @contextlib.asynccontextmanager
    async def subscribe(self):
        yield self.queue


async def _collect(stream, limit: float = 5.0) -> list[bytes]:
    out = []

    async def run():
        async for chunk in stream:
            out.append(chunk)

    await asyncio.wait_for(run(), limit)
    return out


async def test_a_stream_sends_only_matching_alerts_and_ends_at_its_deadline():
    hub = FakeHub()
    for s in (SUMMARY, {**SUMMARY, "category": "weapons"}, {**SUMMARY, "sender_agency": "uz-sbs"}):
        hub.queue.put_nowait(s)

    async def allowed():
        return True

    out = await _collect(ops.sse(hub, Filters(category="drugs"), 0.3, allowed, lambda s: s["sender_agency"].encode()))
    assert [c for c in out if not c.startswith(b": keep-alive")] == [b"retry: 1000\n\n", b"kg-sbs", b"uz-sbs"]


async def test_a_stream_ends_once_its_caller_may_no_longer_read_it():
    hub, checks = FakeHub(), []
    hub.rt.settings.stream_recheck_seconds = 0.05

    async def allowed():
        checks.append(1)
        return False  # e.g. the key was revoked after the stream opened

    out = await _collect(ops.sse(hub, Filters(), 60, allowed, lambda s: b"row"), limit=2)
    assert out == [b"retry: 1000\n\n"] and checks == [1]


async def test_a_stream_ends_when_the_service_stops():
    hub = FakeHub()
    hub.rt.stopping.set()

    async def allowed():
        return True

    assert await _collect(ops.sse(hub, Filters(), 60, allowed, lambda s: b"row"), limit=2) == [b"retry: 1000\n\n"]
