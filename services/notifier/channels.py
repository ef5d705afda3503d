"""The two ways a delivery leaves BLOnet: a signed webhook POST, or an e-mail.

Each returns an `Outcome` (and for webhooks a response excerpt); nothing here decides retries.
"""
from __future__ import annotations

import asyncio
import unicodedata
from email.message import EmailMessage
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import aiosmtplib
import orjson

from services.notifier import egress
from services.notifier.retry import RETRY_AFTER_STATUSES, Outcome, parse_retry_after
from shared.cap import MEDIA_TYPE as CAP_MEDIA_TYPE
from shared.cap import render_cap
from shared.capsig import NodeKey
from shared.langtag import lookup
from shared.settings import Settings

EXCERPT_BYTES = 512
TEXT_FIELDS = ("headline", "description", "instruction")


def localised(view: dict, language: str | None) -> dict:
    """Return the view with the alert's text in the endpoint's `language`, picked by BCP 47 lookup
    (`ru-RU` takes a Russian `ru` text) among the alert's own language and its translations."""
    alert = view.get("alert")
    if not language or not isinstance(alert, dict):
        return view
    translations = alert.get("translations") or []
    tag = lookup([alert.get("language") or "", *(t.get("language") or "" for t in translations)], language)
    if tag is None or tag == alert.get("language"):
        return view
    found = next(t for t in translations if t.get("language") == tag)
    own = {k: alert.get(k) for k in ("language", *TEXT_FIELDS)}
    others = [t for t in alert["translations"] if t is not found] + [own]
    return {**view, "alert": {**alert, **{k: v for k, v in found.items() if v is not None}, "translations": others}}


SIGNED_CAP = "cap-sig"  # a delivery's format when its endpoint has sign_cap: CAP with the node's XML signature


def node_key(settings: Settings) -> NodeKey | None:
    """The node's CAP signing key, read once per pair of files (None: not configured)."""
    return _node_key(settings.cap_signing_key_file, settings.cap_signing_certificate_file)


@lru_cache(maxsize=4)
def _node_key(key_file: Path | None, certificate_file: Path | None) -> NodeKey | None:
    return NodeKey.load(key_file, certificate_file)


def render_body(row: dict, node_id: str, key: NodeKey | None = None) -> tuple[str, str]:
    """Return (body, content type) of a delivery in the endpoint's format; the same on every retry."""
    view = localised(row["body"], row.get("language"))
    if row.get("format") in ("cap", SIGNED_CAP) and isinstance(view.get("alert"), dict):
        xml = render_cap(view, sender=node_id, identifier=f"urn:uuid:{row['alert_id']}", sent=row["created_at"],
                         language=row.get("language"))
        if row["format"] == SIGNED_CAP:
            if key is None:
                raise ValueError("signed CAP asked for, but this node has no CAP signing key")
            xml = key.sign(xml)
        return xml.decode(), CAP_MEDIA_TYPE
    return orjson.dumps(view).decode(), "application/json"


async def post_webhook(http: aiohttp.ClientSession, url: str, body: str, headers: dict[str, str]) -> tuple[Outcome, str | None]:
    """POST one signed webhook; redirects are not followed (a 3xx is a failure, as the spec asks)."""
    try:
        async with http.post(url, data=body.encode(), headers=headers, allow_redirects=False) as response:
            excerpt = (await response.content.read(EXCERPT_BYTES)).decode("utf-8", "replace")
            retry_after = parse_retry_after(response.headers.get("Retry-After")) if response.status in RETRY_AFTER_STATUSES else None
            return Outcome(response.status, retry_after=retry_after, location=response.headers.get("Location")), excerpt
    except asyncio.TimeoutError:
        return Outcome(None, error="timeout: no complete answer within the per-attempt limit"), None
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, egress.Refused):  # the name resolved to an internal address at connect time
            return Outcome(None, error=str(exc.os_error)), None
        return Outcome(None, error=f"{type(exc).__name__}: {exc}"[:500]), None
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # refused, unreachable, garbage instead of HTTP
        return Outcome(None, error=f"{type(exc).__name__}: {exc}"[:500]), None


def readable(view: dict) -> str:
    """Return the alert as plain text for a person reading the e-mail."""
    alert = view.get("alert") if isinstance(view.get("alert"), dict) else view
    lines = [str(alert.get(k)) for k in TEXT_FIELDS if alert.get(k)]
    lines += [f"{k}: {alert[k]}" for k in ("category", "severity", "urgency", "tlp") if alert.get(k)]
    return "\n\n".join(lines + ["The signed alert is attached; acknowledge it through BLOnet."])


def email_address(url: str) -> str:
    """Return the address of a `mailto:` endpoint URL."""
    return unquote(urlsplit(url).path)


def one_line(text: str) -> str:
    """Return `text` fit for an e-mail header: every control character (CR and LF included, which would
    start a header of the sender's choosing) becomes a space, and runs of white space one space."""
    return " ".join("".join(" " if unicodedata.category(c) == "Cc" else c for c in text).split())


async def send_email(settings: Settings, row: dict, body: str, headers: dict[str, str]) -> Outcome:
    """Send the alert as an e-mail; the webhook headers ride along so a mail gateway can verify them."""
    address = email_address(row["url"])
    if one_line(address) != address:
        return Outcome(None, error="refused address: the e-mail address holds control characters or spaces")
    message = EmailMessage()
    message["From"] = settings.smtp_sender
    message["To"] = address
    message["Subject"] = one_line(f"BLOnet alert: {_headline(row['body'])}")
    message["Message-ID"] = f"<{row['delivery_id']}@{settings.node_id}>"  # stable across retries, like webhook-id
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        message[f"X-{name}"] = headers[name]
    if "traceparent" in headers:  # the attempt's trace context, as on a webhook
        message["X-traceparent"] = headers["traceparent"]
    message.set_content(readable(localised(row["body"], row.get("language"))))
    subtype = "xml" if headers["content-type"] == CAP_MEDIA_TYPE else "json"
    message.add_attachment(body.encode(), maintype="application", subtype=subtype, filename=f"alert.{subtype}")
    try:
        await aiosmtplib.send(message, hostname=settings.smtp_host, port=settings.smtp_port,
                              start_tls=settings.smtp_starttls, timeout=settings.webhook_timeout_seconds)
        return Outcome(250)
    except aiosmtplib.SMTPResponseException as exc:
        return Outcome(None, error=f"SMTP {exc.code}: {exc.message}"[:500])
    except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
        return Outcome(None, error=f"{type(exc).__name__}: {exc}"[:500])


def _headline(view: dict) -> str:
    alert = view.get("alert") if isinstance(view.get("alert"), dict) else view
    return one_line(str(alert.get("headline") or alert.get("category") or "new alert"))[:150]
