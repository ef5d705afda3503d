"""Defect 5: a newline in a headline wedged e-mail delivery.

The Subject header was built outside the channel's try: the e-mail library refuses a header with
CR/LF, the worker died, its lease expired and the row was claimed again every ~25 s, never
dead-lettered. Attack: an alert whose headline smuggles a second header (`Bcc:`).
Expected: the header is sanitised (one line, no injected header, no extra recipient) and the
e-mail is delivered; anything a channel still raises is a failed attempt on the normal schedule.
"""
from __future__ import annotations

import pytest

from tests.integration.test_notifier import attempt_log, register, request_deliveries, wait_for_state
from tests.integration.test_notifier_channels import mailbox  # noqa: F401  (the test SMTP server, a fixture)

pytestmark = pytest.mark.stack
INJECTED = "Border closed\r\nBcc: leak@attacker.example\r\nX-Injected: yes"


def view(headline: str) -> dict:
    return {"recipient": {"agency": "kg-moi", "unit": None, "profile": "full"}, "redacted": [],
            "alert": {"headline": headline, "category": "drugs", "severity": "severe"}}


async def test_a_newline_in_the_headline_cannot_inject_headers_nor_wedge_delivery(settings, services, mailbox):
    await register(settings, ["mail-inject"])
    ids = await request_deliveries(settings, ["mail-inject"], channel="email", email="duty@kg-moi.example", url=None,
                                   body=view(INJECTED))
    assert await wait_for_state(settings, ids["mail-inject"], "delivered", timeout=15) == [250]
    (message,) = mailbox.messages
    assert mailbox.recipients == [["duty@kg-moi.example"]], "no recipient smuggled in through the Subject"
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    assert message["Subject"].strip().startswith("BLOnet alert: Border closed")  # a long header is folded


async def test_an_exception_inside_a_channel_is_a_failed_attempt_on_the_schedule(settings, services, mailbox):
    """A view the channel cannot render (here: translations that are not a list) makes it raise; that
    must be an attempt with its reason, retried on the schedule and dead-lettered, not a worker crash
    that leaves the row leased and claimed again forever."""
    await register(settings, ["mail-broken"])
    secret = "Ivanov Ivan, born 1980-01-01"  # personal data: must not reach a log line or the reason
    broken = {"alert": {"headline": secret, "language": "ru", "translations": 5}}
    ids = await request_deliveries(settings, ["mail-broken"], channel="email", email="duty@kg-moi.example", url=None,
                                   language="en", body=broken)
    assert await wait_for_state(settings, ids["mail-broken"], "failed", timeout=20) == [None] * 4
    _, _, reason = await attempt_log(settings, ids["mail-broken"])
    assert reason.startswith("retry schedule exhausted after 4 attempts; last: internal error"), reason
    assert not mailbox.messages, "nothing was sent"
    assert secret not in reason and secret not in services["notifier"].log.read_text(), "nothing logged in clear"
