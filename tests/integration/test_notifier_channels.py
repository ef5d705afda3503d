"""The notifier's other shapes of delivery: e-mail to a real local SMTP server, and CAP 1.2 webhooks."""
from __future__ import annotations

import email
import email.policy

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook

from demo.scenario import SCENARIO
from shared.alerts import Alert
from shared.cap import parse_cap
from tests.conftest import port
from tests.integration.test_notifier import attempt_log, register, request_deliveries, wait_for_state

pytestmark = pytest.mark.stack
CAP_PORT = port(401)


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.recipients: list[list[str]] = []  # each message's envelope recipients (RCPT TO)

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture
def mailbox(settings):
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=settings.smtp_port)
    controller.start()
    yield box
    controller.stop()


def view() -> dict:
    return {"recipient": {"agency": "kg-moi", "unit": None, "profile": "full"}, "redacted": [],
            "alert": Alert.model_validate(SCENARIO).model_dump(mode="json")}


async def test_email_arrives_signed_with_a_stable_message_id(settings, services, mailbox):
    secret = (await register(settings, ["mail"]))["ep-test-mail"][0]
    ids = await request_deliveries(settings, ["mail"], channel="email", email="duty@kg-moi.example", url=None, body=view())
    assert await wait_for_state(settings, ids["mail"], "delivered") == [250]
    (message,) = mailbox.messages
    assert message["To"] == "duty@kg-moi.example" and ids["mail"] in message["Message-ID"]
    assert SCENARIO["headline"] in message.get_body(("plain",)).get_content()
    (attachment,) = list(message.iter_attachments())
    body = attachment.get_content().decode()
    headers = {k: message[f"X-{k}"] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")}
    assert Webhook(secret).verify(body, headers)["alert"]["headline"] == SCENARIO["headline"]


async def test_an_unreachable_smtp_server_is_a_failure_with_the_reason(settings, services):
    await register(settings, ["nomail"])
    ids = await request_deliveries(settings, ["nomail"], channel="email", email="x@y.example", url=None)
    assert await wait_for_state(settings, ids["nomail"], "failed") == [None] * 4
    _, _, reason = await attempt_log(settings, ids["nomail"])
    assert reason.startswith("retry schedule exhausted after 4 attempts; last: SMTP"), reason


async def test_cap_endpoints_get_signed_cap_xml(settings, services):
    secret = (await register(settings, ["cap"]))["ep-test-cap"][0]
    got: list[tuple[str, bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        data = await request.read()
        Webhook(secret).verify(data, dict(request.headers), json_parse=False)  # the body is XML
        got.append((request.content_type, data))
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/cap", receive)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", CAP_PORT).start()
    try:
        ids = await request_deliveries(settings, ["cap"], url=f"http://127.0.0.1:{CAP_PORT}/cap", format="cap", body=view())
        await wait_for_state(settings, ids["cap"], "delivered")
    finally:
        await runner.cleanup()
    (content_type, data), = got
    assert content_type == "application/cap+xml"
    assert parse_cap(data).alert.headline == SCENARIO["headline"]
