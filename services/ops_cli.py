"""`blonet tail`, `status`, `deliveries failed` and `replay`: the operations console in a terminal.

The CLI is a plain HTTP client with an operator's API key. It reads the flow from the
gateway's operator routes (`/v1/ops/...`, the key itself as Bearer). For routing and the
notifier it exchanges the key at `POST /v1/auth/token` for a short-lived token, like any other
caller. It never reads a database, so it works from any machine that can reach the node.

Exit codes: 0 done (a recovery that matched nothing prints why, and is done); 1 refused or not
found, with the reason; 2 no key, or the key was refused (401/403); 3 a service could not be
reached or failed (5xx).
"""
from __future__ import annotations

import contextlib
import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, Literal
from uuid import UUID

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.settings import get_settings

Service = Literal["gateway", "routing", "notifier"]
console = Console(highlight=False, soft_wrap=True)  # lines are grepped and piped: never wrapped
errors = Console(stderr=True, highlight=False, soft_wrap=True)
STREAM_READ_TIMEOUT = 60  # seconds without a byte (the gateway sends a keep-alive every 15 s): reconnect

Key = Annotated[str | None, typer.Option("--key", envvar="BLONET_API_KEY", show_envvar=True,
                                         help="an operator API key (`blonet keys create --role operator`)")]
Gateway = Annotated[str | None, typer.Option("--gateway", help="the gateway's base URL (default: this node's)")]


class OpsError(Exception):
    """A call that did not give what was asked: the one line to print, and the exit code."""

    def __init__(self, message: str, exit_code: int, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.exit_code, self.status = message, exit_code, status


def _detail(raw: bytes) -> str:
    """Return the reason a service gave in an error body (its `detail`), in one line."""
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()[:300]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict) and "problems" in detail:
        detail = "; ".join(detail["problems"])
    return detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)[:300]


def refusal(service: str, status: int, raw: bytes) -> OpsError:
    """Return the error for an HTTP refusal, worded for the operator."""
    detail = _detail(raw)
    if status == 401:
        return OpsError(f"{service}: the API key was refused (401): {detail}", 2, status)
    if status == 403:
        return OpsError(f"{service}: not allowed (403): {detail}", 2, status)
    if status >= 500:
        return OpsError(f"{service} failed ({status}): {detail}", 3, status)
    return OpsError(f"{service} ({status}): {detail}", 1, status)


class Ops:
    """A node's operator APIs: the gateway's with the API key, routing's and the notifier's with a token."""

    def __init__(self, key: str | None, gateway: str | None = None, timeout: float = 15.0) -> None:
        if not key:
            raise OpsError("an operator API key is needed: --key KEY or BLONET_API_KEY", 2)
        settings = get_settings()
        self.key, self.timeout = key, timeout
        self.urls = {s: settings.service_url(s) for s in ("routing", "notifier")}
        self.urls["gateway"] = (gateway or settings.service_url("gateway")).rstrip("/")
        self._token: str | None = None

    def _open(self, service: Service, method: str, path: str, params: dict | None = None, body: dict | None = None,
              timeout: float | None = None):
        query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
        url = f"{self.urls[service]}{path}{'?' + query if query else ''}"
        bearer = self.key if service == "gateway" else self.token()
        headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raise refusal(service, exc.code, exc.read()) from None
        except OSError as exc:  # URLError included: refused, unknown host, timed out
            reason = getattr(exc, "reason", exc)
            raise OpsError(f"cannot reach the {service} at {self.urls[service]}: {reason}", 3) from None

    def call(self, service: Service, method: str, path: str, body: dict | None = None, **params) -> dict | list:
        """Make one call and return its JSON answer; raise OpsError for anything but 2xx."""
        with self._open(service, method, path, params, body) as response:
            return json.loads(response.read())

    def token(self) -> str:
        """Exchange the API key for a token routing and the notifier accept (once per run: it lasts 15 minutes)."""
        if self._token is None:
            self._token = self.call("gateway", "POST", "/v1/auth/token")["access_token"]
        return self._token

    def stream(self, path: str, **params) -> Events:
        """Open a gateway Server-Sent Events stream; once this returns, nothing that happens is missed
        (the gateway subscribes before it sends the opening `retry:` line, which is read here)."""
        events = Events(self._open("gateway", "GET", path, params, timeout=STREAM_READ_TIMEOUT))
        events.wait_open()
        return events


class Events:
    """An open Server-Sent Events stream: iterating yields the data of each `alert` event until it ends."""

    def __init__(self, response) -> None:
        self.response = response

    def close(self) -> None:
        self.response.close()

    def wait_open(self) -> None:
        """Read the stream's opening block (up to its first blank line)."""
        while (line := self.response.readline()) and line.strip():
            pass

    def __iter__(self) -> Iterator[dict]:
        event, data = None, []
        for raw in self.response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:  # a blank line ends an event
                if event == "alert" and data:
                    yield json.loads("\n".join(data))
                event, data = None, []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


def _fail(exc: OpsError) -> typer.Exit:
    errors.print(Text(exc.message, style="red"))
    return typer.Exit(exc.exit_code)


def _when(value: str | None, fmt: str = "%H:%M:%S") -> str:
    """Return a service's ISO time in the terminal's local time."""
    if not value:
        return ""
    return datetime.fromisoformat(value).astimezone().strftime(fmt)


def _full_time(value: str | None) -> str:
    return _when(value, "%Y-%m-%d %H:%M:%S %Z")


# --- the live flow ------------------------------------------------------------------------------

STATE_STYLE = {"accepted": "cyan", "routed": "cyan", "delivering": "yellow", "retrying": "yellow", "delivered": "green",
               "acknowledged": "bold green", "escalated": "magenta", "failed": "bold red", "denied": "red"}


def _recipient_name(r: dict) -> str:
    return f"{r['agency']}/{r['unit']}" if r.get("unit") else r["agency"]


def _counts(summary: dict) -> str:
    states: dict[str, int] = {}
    for r in summary["recipients"]:
        states[r["state"]] = states.get(r["state"], 0) + 1
    parts = [f"{n} {s}" for s, n in sorted(states.items())]
    if summary["denied"]:
        parts.append(f"{len(summary['denied'])} denied")
    return ", ".join(parts) or "no recipients yet"


def alert_line(summary: dict, *, counts: bool = False) -> Text:
    """One line for an alert: when, id, state, sender, what, TLP, headline."""
    sender = summary["sender_agency"] + (f"@{summary['sender_post']}" if summary.get("sender_post") else "")
    what = "/".join(x for x in (summary.get("category"), summary.get("severity")) if x)
    kind = "" if summary.get("msg_type") in (None, "alert") else f" [{summary['msg_type']}]"
    line = Text.assemble(
        f"{_when(summary['received_at'])}  {summary['alert_id']}  ",
        (f"{summary['state']:<12}", STATE_STYLE.get(summary["state"], "")),
        f" {sender}  {what}  {summary.get('tlp') or ''}{kind}  ",
        (summary.get("headline") or "")[:80],
    )
    if counts:
        line.append(f"  ({_counts(summary)})", style="dim")
    return line


def recipient_line(summary: dict, r: dict) -> Text:
    """One line for a recipient's new state, with what the operator needs to know about it."""
    detail = []
    if r["state"] in ("retrying", "failed") or (r.get("http_status") or 0) >= 300:
        detail += [f"attempt {r.get('attempts') or 0}"] + ([f"HTTP {r['http_status']}"] if r.get("http_status") else [])
        detail += [r["error"]] if r.get("error") else []
    if r.get("ack_status"):
        detail.append(f"ack: {r['ack_status']}")
    return Text.assemble(
        f"{_when(r.get('updated_at') or summary['received_at'])}  {summary['alert_id']}    ",
        (f"{r['state']:<12}", STATE_STYLE.get(r["state"], "")),
        f" → {r['endpoint']} ({_recipient_name(r)}, {r.get('profile') or '?'})",
        (f"  {'; '.join(detail)}" if detail else "", "dim"),
    )


def denial_line(summary: dict, d: dict) -> Text:
    return Text.assemble(
        f"{_when(summary['received_at'])}  {summary['alert_id']}    ", (f"{'denied':<12}", "red"),
        f" ✗ {_recipient_name(d)}: {d['code']}", (f" — {d.get('explanation') or d.get('reason') or ''}", "dim"),
    )


class Flow:
    """What the terminal has shown of each alert, so that only changes are printed."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str, dict[str, str], bool]] = {}  # alert → (state, endpoint → state, denials shown)

    def changes(self, summary: dict) -> list[Text]:
        """Return the lines to print for a summary: the alert when new or its overall state changed,
        each recipient whose state changed, and the denials once routed."""
        known = summary["alert_id"] in self.seen
        state, recipients, denials_shown = self.seen.get(summary["alert_id"], (None, {}, False))
        lines = [recipient_line(summary, r) for r in summary["recipients"] if recipients.get(r["endpoint"]) != r["state"]]
        if summary["denied"] and not denials_shown:
            lines += [denial_line(summary, d) for d in summary["denied"]]
        if summary["state"] != state:  # a new alert heads its lines; a new overall state sums them up
            lines.insert(len(lines) if known else 0, alert_line(summary))
        self.remember(summary)
        return lines

    def remember(self, summary: dict) -> None:
        self.seen[summary["alert_id"]] = (summary["state"], {r["endpoint"]: r["state"] for r in summary["recipients"]},
                                          bool(summary["denied"]))


def tail(
    agency: Annotated[str | None, typer.Option(help="alerts sent by, or routed to, this agency")] = None,
    category: Annotated[str | None, typer.Option(help="e.g. drugs, weapons, precursors")] = None,
    post: Annotated[str | None, typer.Option(help="the sender's post or the alert's location, e.g. dostuk")] = None,
    tlp: Annotated[str | None, typer.Option(help="e.g. TLP:AMBER")] = None,
    last: Annotated[int, typer.Option(help="how many recent alerts to list first", min=0, max=500)] = 20,
    once: Annotated[bool, typer.Option("--once", help="list the recent alerts and exit")] = False,
    key: Key = None,
    gateway: Gateway = None,
) -> None:
    """Follow the flow live: a line when an alert is accepted and each time a recipient's state changes."""
    filters = {"agency": agency, "category": category, "post": post, "tlp": tlp}
    flow = Flow()
    try:
        ops = Ops(key, gateway)
        if once:
            for summary in reversed(ops.call("gateway", "GET", "/v1/ops/alerts", **filters, limit=max(last, 1))["alerts"][:last]):
                console.print(alert_line(summary, counts=True))
            return
        connected = False
        while True:
            try:
                # The stream is open (subscribed) before the list is read: no change falls between the two.
                with contextlib.closing(ops.stream("/v1/ops/stream", **filters)) as changes:
                    recent = ops.call("gateway", "GET", "/v1/ops/alerts", **filters, limit=500)["alerts"]
                    for k, summary in enumerate(reversed(recent)):
                        if connected:  # back after a break: print what changed meanwhile
                            for line in flow.changes(summary):
                                console.print(line)
                        else:  # the backlog: the last few, one line each; all remembered, so that a
                            if k >= len(recent) - last:  # reconnect prints only what really changed
                                console.print(alert_line(summary, counts=True))
                            flow.remember(summary)
                    if not connected:
                        errors.print(Text("following the flow; Ctrl-C stops", style="dim"))
                    connected = True
                    for summary in changes:
                        for line in flow.changes(summary):
                            console.print(line)
                time.sleep(1)  # the gateway ends a stream after an hour: open the next one (never in a tight loop)
            except OpsError as exc:
                if not connected or exc.exit_code == 2:
                    raise
                errors.print(Text(f"{exc.message}; retrying in 2 s", style="dim"))
                time.sleep(2)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:  # socket.timeout is a TimeoutError
                errors.print(Text(f"the stream broke ({exc or 'no data'}); reconnecting", style="dim"))
    except OpsError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        errors.print(Text("stopped", style="dim"))


# --- one alert ----------------------------------------------------------------------------------

def _optional(ops: Ops, service: Service, path: str, **params):
    """Return a call's answer, or None if the service has nothing (404) — other failures still stop."""
    try:
        return ops.call(service, "GET", path, **params)
    except OpsError as exc:
        if exc.status == 404:
            return None
        raise


def status(
    alert_id: Annotated[UUID, typer.Argument(help="the alert's id, as the gateway answered it")],
    as_json: Annotated[bool, typer.Option("--json", help="print the gateway's, routing's and the notifier's answers as JSON")] = False,
    key: Key = None,
    gateway: Gateway = None,
) -> None:
    """Show one alert: its routing decision and why, each recipient's deliveries and attempts, the acknowledgements."""
    try:
        ops = Ops(key, gateway)
        summary = ops.call("gateway", "GET", f"/v1/ops/alerts/{alert_id}")
        decisions = _optional(ops, "routing", f"/v1/decisions/{alert_id}") or []
        deliveries = ops.call("notifier", "GET", "/v1/deliveries", alert_id=str(alert_id))
    except OpsError as exc:
        raise _fail(exc) from None
    if as_json:
        print(json.dumps({"alert": summary, "decisions": decisions, "deliveries": deliveries}, indent=2, ensure_ascii=False))
        return
    show_alert(summary)
    for d in decisions:
        show_decision(d)
    if not decisions:
        console.print(Text("routing has not decided on this alert yet", style="yellow"))
    show_deliveries(deliveries)
    show_acknowledgements(summary, deliveries)


def show_alert(s: dict) -> None:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("alert", s["alert_id"]), ("thread", s["thread_id"]), ("received", _full_time(s["received_at"])),
        ("sender", s["sender_agency"] + (f" at {s['sender_post']}" if s.get("sender_post") else "")),
        ("post", s.get("post") or ""), ("what", " / ".join(x for x in (s.get("category"), s.get("severity"), s.get("urgency")) if x)),
        ("TLP", s.get("tlp") or ""), ("type", s.get("msg_type") or "alert"), ("headline", s.get("headline") or ""),
        ("state", Text(s["state"], style=STATE_STYLE.get(s["state"], ""))), ("trace", s.get("trace_id") or ""),
    ]
    for name, value in rows:
        table.add_row(name, value if isinstance(value, Text) else Text(str(value)))
    console.print(table)


def show_decision(d: dict) -> None:
    decision = d["decision"]
    title = f"routing decision ({d['kind']}) under {d['ruleset_hash']}, {_full_time(d['decided_at'])}"
    table = Table("recipient", "endpoint", "view", "rule", "why", title=title, title_justify="left")
    for r in decision["recipients"]:
        view = r["profile"] + (f", without {', '.join(r['redacted'])}" if r.get("redacted") else "")
        table.add_row(_recipient_name(r), r["endpoint"], view, r["rule"], r["reason"])
    for x in decision["denied"]:
        table.add_row(Text(_recipient_name(x), style="red"), "", Text(f"denied: {x['code']}", style="red"), "", x["explanation"])
    console.print(table)
    if decision.get("note"):
        console.print(decision["note"])


def _attempt_text(a: dict) -> str:
    parts = [f"#{a['attempt']}", _when(a["started_at"]), a.get("outcome") or "", f"{a['latency_ms']:.0f} ms"]
    parts += [f"HTTP {a['http_status']}"] if a.get("http_status") else []
    parts += [a.get("reason") or a.get("error") or ""]
    if a.get("response_excerpt"):
        parts.append(repr(a["response_excerpt"][:60]))
    if a.get("next_attempt_at"):
        parts.append(f"next {_when(a['next_attempt_at'])}")
    return "  ".join(p for p in parts if p)


def show_deliveries(deliveries: list[dict]) -> None:
    table = Table("endpoint", "agency", "channel", "state", "attempts", "webhook-id", title="deliveries", title_justify="left")
    for d in deliveries:
        state = d["state"] + (f" (next {_when(d['next_attempt_at'])})" if d.get("next_attempt_at") else "")
        if d.get("escalation"):
            state += f" [{d['escalation']}]"
        log = "\n".join(_attempt_text(a) for a in d["attempt_log"]) or "no attempt yet"
        table.add_row(d["endpoint"], d["agency"], d["channel"], Text(state, style=STATE_STYLE.get(d["state"], "")),
                      log, d["webhook_id"])
    if deliveries:
        console.print(table)
    else:
        console.print(Text("no deliveries (yet) for this alert", style="yellow"))


def show_acknowledgements(summary: dict, deliveries: list[dict]) -> None:
    awaited = {d["agency"]: d.get("ack_state") for d in deliveries if d.get("ack_state")}
    acked = {r["agency"]: r for r in summary["recipients"] if r.get("ack_status")}
    if not awaited and not acked:
        return
    table = Table("agency", "acknowledgement", "comment", "at", title="acknowledgements", title_justify="left")
    for agency in sorted(awaited.keys() | acked.keys()):
        r = acked.get(agency, {})
        state = r.get("ack_status") or awaited.get(agency) or ""
        table.add_row(agency, Text(state, style="green" if r else STATE_STYLE.get(state, "")), r.get("ack_comment") or "",
                      _full_time(r.get("acked_at")))
    console.print(table)


# --- dead letters and replay ----------------------------------------------------------------------

deliveries_cli = typer.Typer(help="Deliveries the notifier gave up on.", no_args_is_help=True)


@deliveries_cli.command("failed")
def deliveries_failed(
    endpoint: Annotated[str | None, typer.Option(help="only this endpoint's")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    key: Key = None,
    gateway: Gateway = None,
) -> None:
    """List the dead letters, newest first: which delivery, to whom, after how many attempts, and why."""
    try:
        found = Ops(key, gateway).call("notifier", "GET", "/v1/deliveries/failed", endpoint=endpoint, limit=limit)
    except OpsError as exc:
        raise _fail(exc) from None
    if not found:
        console.print("no dead letters" + (f" for {endpoint}" if endpoint else ""))
        return
    table = Table("delivery (webhook-id)", "alert", "endpoint", "attempts", "failed at", "why")
    for d in found:
        table.add_row(d["delivery_id"], d["alert_id"], d["endpoint"], str(d["attempts"]), _full_time(d["finished_at"]),
                      d["reason"] or "")
    console.print(table)


def parse_since(value: str) -> datetime:
    """Parse an ISO 8601 time such as 2026-11-28T00:00Z; a time without an offset is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time, e.g. 2026-11-28T00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def replay(
    delivery_id: Annotated[UUID | None, typer.Argument(help="a dead-lettered delivery (see `blonet deliveries failed`)")] = None,
    endpoint: Annotated[str | None, typer.Option(help="replay every delivery to this endpoint that failed since --since")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601, e.g. 2026-11-28T00:00Z (UTC if no offset)")] = None,
    key: Key = None,
    gateway: Gateway = None,
) -> None:
    """Send dead letters again (same webhook-id, a fresh retry schedule): one by id, or an endpoint's since a time."""
    if (delivery_id is None) == (endpoint is None) or (endpoint is not None) != (since is not None):
        raise typer.BadParameter("give a DELIVERY_ID, or --endpoint with --since")
    try:
        ops = Ops(key, gateway)
        if delivery_id:
            ops.call("notifier", "POST", f"/v1/deliveries/{delivery_id}/replay")
            console.print(f"delivery {delivery_id} is queued again (same webhook-id, fresh retry schedule)")
            return
        moment = parse_since(since)
        answer = ops.call("notifier", "POST", f"/v1/endpoints/{endpoint}/recover", {"since": moment.isoformat()})
    except OpsError as exc:
        raise _fail(exc) from None
    if answer["replayed"]:
        n = answer["replayed"]
        console.print(f"{n} {'delivery' if n == 1 else 'deliveries'} to {endpoint} {'is' if n == 1 else 'are'} queued again")
    else:
        console.print(f"nothing replayed: {answer.get('reason') or 'no delivery matched'}")


def install(app: typer.Typer) -> None:
    """Add the operations commands to `blonet`."""
    app.command()(tail)
    app.command()(status)
    app.command()(replay)
    app.add_typer(deliveries_cli, name="deliveries")
