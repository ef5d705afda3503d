"""The gateway's service layer: who may do what, and what an accepted request produces.

Routes call these functions; every SQL statement is in `repository.py`; the CAP mapping is the
pure `shared.cap`. A refused request raises `ApiError` before anything is written anywhere.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from uuid import UUID

import orjson
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from services.gateway import repository
from services.gateway.directory import ActiveDirectory, DirectoryUnavailable
from services.gateway.lookup import AlertRows
from services.gateway.ops import FlowHub
from services.gateway.schemas import AlertStatus
from shared import capsig, topics, tracing
from shared.alerts import Alert
from shared.auth import Principal, Role
from shared.cap import (
    CapError, CapMessage, blonet_id, cap_alert_id, format_time, keyed_uuid7, parse_cap, parse_reference, render_cap,
)
from shared.events import (
    AckStatus, AlertAcknowledged, AlertForwarded, AlertSubmitted, CapOrigin, CapSignature, Envelope, Payload, SignatureState,
)
from shared.ids import derived_id, new_id
from shared.kafka import send
from shared.metrics import ALERTS_ACCEPTED
from shared.service import Runtime

log = logging.getLogger(__name__)
JSON = "application/json"
CAP_TYPES = ("application/cap+xml", "application/xml", "text/xml")
RETRY_AFTER = "5"


class ApiError(Exception):
    """A refused request: HTTP status, machine-readable code and a sentence for people."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict | None = None, errors: list | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.errors = status, code, detail, headers, errors


@dataclass(frozen=True)
class Caller:
    principal: Principal
    posts: frozenset[str] | None  # None: the key may submit for any post of its agency

    @property
    def agency(self) -> str:
        return self.principal.agency

    @property
    def key_id(self) -> str:
        return self.principal.key_id

    def has(self, *roles: Role) -> bool:
        return bool(self.principal.roles & set(roles))


@dataclass(frozen=True)
class Submission:
    alert: Alert
    raw: bytes
    cap: CapMessage | None = None


# --- decoding and checking (pure) -------------------------------------------------------------

def decode_submission(body: bytes, content_type: str | None, cap_agencies: dict[str, str] | None = None) -> Submission:
    """Decode a request body as BLOnet JSON or CAP 1.2 XML, by its declared content type
    (`cap_agencies`: the agency the directory lists each CAP sender for)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == JSON:
        try:
            return Submission(alert=Alert.model_validate_json(body), raw=body)
        except ValidationError as exc:
            invalid = any(e["type"] == "json_invalid" for e in exc.errors())
            errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False)]
            raise ApiError(422, "json_invalid" if invalid else "invalid_alert",
                           "the body is not valid JSON" if invalid else "the alert does not validate", errors=errors) from None
    if media in CAP_TYPES:
        try:
            message = parse_cap(body, cap_agencies)
        except CapError as exc:
            raise ApiError(422, exc.code, str(exc)) from None
        return Submission(alert=message.alert, raw=body, cap=message)
    raise ApiError(415, "unsupported_media_type",
                   f"send the alert as {JSON} or application/cap+xml, not {media or 'an undeclared type'}")


def check_submission(sub: Submission, caller: Caller, *, now: datetime, reject_expired: bool) -> None:
    """Refuse what the caller may not submit, or an alert that is already over."""
    alert = sub.alert
    if not caller.has(Role.SUBMIT):
        raise ApiError(403, "forbidden", "this key may not submit alerts (needs role submit)")
    if alert.sender_agency != caller.agency:
        raise ApiError(403, "wrong_sender", f"a key of {caller.agency} cannot submit in the name of {alert.sender_agency}")
    if caller.posts is not None and alert.sender_post not in caller.posts:
        raise ApiError(403, "wrong_post", f"this key submits only for posts {', '.join(sorted(caller.posts))}")
    if reject_expired and alert.expires and alert.expires <= now:
        raise ApiError(422, "expired", f"the alert expired at {alert.expires.isoformat()}; nothing to send")


def check_originator(directory: ActiveDirectory, caller: Caller) -> None:
    """Refuse an agency the directory does not let originate alerts (observers, unless it says so)."""
    if not directory.may_originate(caller.agency):
        raise ApiError(403, "may_not_originate", f"{caller.agency} may not originate alerts (the directory's may_originate; "
                                                 "observers may not unless it is set)")


UNKNOWN_NAME = "not an agency or unit id of the network directory"


def known_names(directory: ActiveDirectory) -> tuple[frozenset[str], frozenset[str]]:
    try:
        return directory.names()
    except DirectoryUnavailable:
        raise ApiError(503, "directory_unavailable", "the network directory is not known yet; try again shortly",
                       headers={"Retry-After": RETRY_AFTER}) from None


def check_names(directory: ActiveDirectory, sub: Submission) -> tuple[Submission, dict[str, int]]:
    """Only directory ids may name addressees and the sender's post: free text there would reach the
    audit log, which keeps entries for good. JSON: an unknown id is a 422 naming the field (never
    quoting it). CAP: a valid message is not refused for it; unknown `<addresses>` and an unknown
    `blonet:sender_post` are dropped, and the answer counts them."""
    alert = sub.alert
    if not alert.addressees and alert.sender_post is None:
        return sub, {}
    agencies_and_units, posts = known_names(directory)
    bad = [i for i, name in enumerate(alert.addressees) if name not in agencies_and_units]
    bad_post = alert.sender_post is not None and alert.sender_post not in posts
    if sub.cap is None:
        errors = [{"loc": ["body", "addressees", i], "msg": UNKNOWN_NAME, "type": "unknown_addressee"} for i in bad]
        if bad_post:
            errors.append({"loc": ["body", "sender_post"], "msg": "not a post id of the network directory", "type": "unknown_post"})
        if errors:
            raise ApiError(422, errors[0]["type"], "addressees and sender_post take ids of the network directory only",
                           errors=errors)
        return sub, {}
    update, dropped = {}, {}
    if bad:
        update["addressees"], dropped["unknown_addressee"] = [n for n in alert.addressees if n in agencies_and_units], len(bad)
    if bad_post:
        update["sender_post"], dropped["unknown_post"] = None, 1
    return (replace(sub, alert=alert.model_copy(update=update)), dropped) if update else (sub, {})


def check_forward_names(directory: ActiveDirectory, to: list[str]) -> None:
    """A forward names directory ids only (its `to` reaches the audit log)."""
    agencies_and_units, _ = known_names(directory)
    errors = [{"loc": ["body", "to", i], "msg": UNKNOWN_NAME, "type": "unknown_addressee"}
              for i, name in enumerate(to) if name not in agencies_and_units]
    if errors:
        raise ApiError(422, "unknown_addressee", "a forward's `to` takes ids of the network directory only", errors=errors)


def request_hash(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()


# --- visibility ---------------------------------------------------------------------------------

@dataclass
class Visible:
    row: dict
    relation: str  # sender, recipient or oversight (operators and auditors)
    mine: list[dict]  # the caller agency's recipient rows (for a recipient)


async def visible(session, caller: Caller, row: dict | None) -> Visible | None:
    """Return the alert (its row, found by `AlertRows.get`) if the caller's agency sent it, received it,
    or oversees; else None."""
    if row is None:
        return None
    alert_id = row["alert_id"]
    if row["sender_agency"] == caller.agency and caller.has(Role.SUBMIT):
        return Visible(row, "sender", [])
    if caller.has(Role.RECEIVE):
        mine = await repository.recipients_of(session, alert_id, caller.agency)
        if mine:
            return Visible(row, "recipient", mine)
    if caller.has(Role.OPERATOR, Role.AUDITOR):
        return Visible(row, "oversight", [])
    return None


def not_visible(alert_id: UUID, caller: Caller) -> ApiError:
    # The same answer for "absent" and "not yours": no probing of other agencies' ids.
    return ApiError(404, "not_found", f"no alert {alert_id} visible to {caller.agency}")


async def visible_or_404(rt: Runtime, rows: AlertRows, caller: Caller, alert_id: UUID) -> Visible:
    row = await rows.get(alert_id)
    async with rt.sessions() as session:
        found = await visible(session, caller, row)
    if found is None:
        raise not_visible(alert_id, caller)
    return found


async def resolve_thread(rt: Runtime, rows: AlertRows, caller: Caller, alert: Alert, unresolved: tuple[UUID, ...] = ()) -> UUID | None:
    """Return the thread a message referencing earlier alerts joins, refusing references the caller never saw.

    Only the sender agency may attach messages to its thread, whatever their msg_type: a message
    joining another agency's thread would reach its recipients as if named explicitly. A
    recipient replies by forward or acknowledgement. `unresolved` references (the agency's own
    CAP messages BLOnet never received, see `resolve_cap`) are skipped: with none resolved, the
    message starts its own thread. A message that such a thread named arrives late: it joins it.
    """
    resolved = [ref for ref in alert.references if ref not in unresolved]
    if not resolved:
        return None
    threads = []
    for ref in resolved:
        row = await rows.get(ref)  # an alert accepted just before, maybe on another instance, counts
        async with rt.sessions() as session:
            seen = await visible(session, caller, row)
        if seen is None:
            raise ApiError(422, "unknown_reference", f"references: unknown alert {ref}")
        if seen.row["sender_agency"] != caller.agency:
            raise ApiError(403, "not_sender", f"only {seen.row['sender_agency']} may add to the thread of alert {ref}; "
                                              "reply by forward or acknowledgement")
        threads.append(seen.row["thread_id"])
    return threads[0]


@dataclass(frozen=True)
class CapResolved:
    sub: Submission
    alert_id: UUID
    unresolved: tuple[UUID, ...]  # references to the agency's own CAP messages BLOnet never received
    linked_thread: UUID | None  # the thread an earlier message started by naming this one, unreceived


async def resolve_cap(rt: Runtime, rows: AlertRows, caller: Caller, sub: Submission, directory: ActiveDirectory) -> CapResolved:
    """Tie a CAP message to the caller's agency: refuse another agency's sender, and give the message
    and its references the ids of what this agency sent as (sender, identifier, sent).

    Ids hash the agency with the triple, so no agency can claim another's; messages stored before
    that keep the ids they have, since a triple resolves to the stored message first. A reference
    BLOnet never received is unresolved (not refused) when its sender is one of the caller's own
    CAP senders in the directory: the message it names gets that same id if it arrives later.
    """
    cap = sub.cap
    problem = directory.cap_sender_problem(caller.agency, cap.sender)
    if problem:
        raise ApiError(403, "wrong_cap_sender", problem)
    async with rt.sessions() as session:
        async def id_of(sender: str, identifier: str, sent: datetime, *, own: bool = False) -> UUID:
            stored = await repository.cap_alert(session, agency=caller.agency, sender=sender, identifier=identifier,
                                                sent=format_time(sent))
            if stored:
                return stored
            # A reference may name an alert BLOnet rendered (urn:uuid:<its id>); a message's own
            # urn:uuid identifier is just an identifier, hashed like any other (no taking an id).
            rendered = None if own else blonet_id(identifier)
            if rendered and await repository.get_alert(session, rendered):
                return rendered
            return cap_alert_id(sender, identifier, sent, caller.agency, blonet_ids=False)

        alert_id = await id_of(cap.sender, cap.identifier, cap.sent, own=True)
        own, references, candidates = directory.own_cap_senders(caller.agency), [], []
        for triple in cap.references:
            sender, identifier, sent = parse_reference(triple)
            ref = await id_of(sender, identifier, sent)
            references.append(ref)
            if sender in own:
                candidates.append(ref)
        # Only an agency that lists its CAP senders can have named this message before it arrived.
        linked = await repository.thread_naming(session, agency=caller.agency, alert_id=alert_id) if own else None
    # Unresolved: not stored, and not accepted just now on this or (waiting, bounded) another instance.
    unresolved = [ref for ref in candidates if await rows.get(ref) is None]
    row = await rows.get(alert_id, wait=False)
    if row and (row["sender_agency"] != caller.agency or (row["cap"] or {}).get("sender", cap.sender) != cap.sender):
        raise ApiError(409, "cap_id_taken", f"alert {alert_id} was sent by another sender; its original stays as it is")
    return CapResolved(replace(sub, alert=sub.alert.model_copy(update={"references": references})), alert_id,
                       tuple(dict.fromkeys(unresolved)), linked)


SIGNATURE_REFUSALS = {
    SignatureState.UNSIGNED: "cap_unsigned", SignatureState.INVALID: "cap_signature_invalid",
    SignatureState.UNKNOWN_SIGNER: "cap_unknown_signer",
}


def check_signature(directory: ActiveDirectory, caller: Caller, sub: Submission, at: datetime) -> CapSignature:
    """Check a CAP message's XML signature against the sender agency's registered certificates (valid at `at`);
    refuse anything but `verified` when the directory requires its CAP messages signed."""
    certificates, required = directory.cap_signing(caller.agency)
    found = capsig.verify(sub.raw, certificates, at)
    if required and found.state is not SignatureState.VERIFIED:
        why = f": {found.reason}" if found.reason else ""
        raise ApiError(422, SIGNATURE_REFUSALS[found.state], f"the directory requires {caller.agency}'s CAP messages to carry a "
                                                             f"signature it verifies; this one is {found.state.value}{why}")
    return found


# --- idempotent production ----------------------------------------------------------------------

Record = Callable[[AsyncSession], Awaitable[None]]
Action = Callable[[UUID], Awaitable[tuple[int, dict, Record | None]]]  # None: nothing to write after Kafka has it


async def idempotent(rt: Runtime, caller: Caller, key: str | None, fingerprint: str, mint: Callable[[], UUID], action: Action) -> tuple[int, dict]:
    """Run `action(id)` once per (agency, key): replay its answer, refuse a changed body or a twin in flight.

    The key is reserved (committed) before anything is produced, with the id the action will
    use; a retry after a crash or a 503 re-uses that id, so downstream dedupe absorbs the repeat.
    The action's own rows (if any) and the key's answer are written in one transaction. Without a
    key, an action that records nothing touches no database at all.
    """
    if key is None:
        code, body, record = await action(mint())
        if record is not None:
            await _settle(rt, record)
        return code, body
    if not 1 <= len(key) <= 200:
        raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key must be 1 to 200 characters")
    stale = timedelta(seconds=rt.settings.accept_timeout_seconds * 3 + 5)
    async with rt.sessions() as session:
        the_id = mint()
        if not await repository.insert_key(session, agency=caller.agency, key=key, request_hash=fingerprint, alert_id=the_id):
            row = await repository.lock_key(session, agency=caller.agency, key=key)
            if row["request_hash"] != fingerprint:
                raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was used with a different request")
            if row["state"] == "done":
                return row["status_code"], row["response"]
            if row["state"] == "in_flight" and row["updated_at"] > datetime.now(timezone.utc) - stale:
                raise ApiError(409, "in_flight", "a request with this Idempotency-Key is still in flight; retry shortly",
                               headers={"Retry-After": "1"})
            await repository.finish_key(session, agency=caller.agency, key=key, state="in_flight", status_code=None, response=None)
            the_id = row["alert_id"]
        await session.commit()
    try:
        code, body, record = await action(the_id)
    except BaseException:
        async with rt.sessions() as session:
            await repository.finish_key(session, agency=caller.agency, key=key, state="failed", status_code=None, response=None)
            await session.commit()
        raise

    async def done(session: AsyncSession) -> None:
        await repository.finish_key(session, agency=caller.agency, key=key, state="done", status_code=code, response=body)

    await _settle(rt, *([record] if record else []), done)
    return code, body


async def _settle(rt: Runtime, *writes: Record) -> None:
    """Write what an accepted request leaves in the status view, after Kafka has it.

    The status consumer writes the same rows from the event, so a failure here only delays them;
    an unfinished key is taken over by the client's retry with the same id. For the same reason
    this commit need not wait for the disk (synchronous_commit off): a crash of PostgreSQL that
    loses it leaves the key in flight, and a retry after the stale window answers with that id.
    """
    try:
        async with rt.sessions() as session:
            await repository.commit_without_waiting(session)
            for write in writes:
                await write(session)
            await session.commit()
    except Exception:
        log.warning("status rows deferred to the consumer", exc_info=True)


async def produce(rt: Runtime, topic: str, key: UUID, env: Envelope) -> None:
    """Produce one event and wait for acks=all; a failure or the deadline means 503, nothing accepted."""
    async def go() -> None:
        ack = await send(rt.producer, rt.settings.topic(topic), str(key), env)
        await ack

    try:
        # The producer itself fails a record at the accept deadline (then it is certain not to
        # land later); the outer guard only bounds a request if the client never answers.
        await asyncio.wait_for(go(), timeout=rt.settings.accept_timeout_seconds + 2)
    except (KafkaError, asyncio.TimeoutError) as exc:
        log.error("not accepted: Kafka unavailable", extra={"error": repr(exc)})
        await rt.recover(exc)  # a producer that lost its sequence would refuse that partition until replaced
        raise ApiError(503, "kafka_unavailable", "Kafka did not confirm the alert in time, so it is not accepted; retry later",
                       headers={"Retry-After": RETRY_AFTER}) from None


_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


def traceparent_or_new(value: str | None) -> str:
    if value and _TRACEPARENT.fullmatch(value):
        return value
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _wrap(rt: Runtime, payload: Payload, *, alert_id: UUID, thread_id: UUID, event_id: UUID, traceparent: str | None) -> Envelope:
    # Tracing on: the request's SERVER span (itself the child of the caller's traceparent, if any).
    # Off: the caller's traceparent, or a new trace id; every hop then carries it unchanged.
    return Envelope.wrap(payload, origin_node=rt.settings.node_id, alert_id=alert_id, thread_id=thread_id,
                         event_id=event_id, traceparent=tracing.current_traceparent() or traceparent_or_new(traceparent))


# --- the three acts: submit, acknowledge, forward -----------------------------------------------

async def submit(rt: Runtime, rows: AlertRows, caller: Caller, sub: Submission, *, directory: ActiveDirectory,
                 idempotency_key: str | None, traceparent: str | None) -> tuple[int, dict]:
    """Accept an alert once: answer only after Kafka holds it durably (acks=all).

    Nothing is written to the database here unless an Idempotency-Key (a CAP message's own
    included) needs it: the status projection stores the row from the event, and until it has,
    `rows` answers for it (services/gateway/lookup.py)."""
    now = datetime.now(timezone.utc)
    check_submission(sub, caller, now=now, reject_expired=rt.settings.reject_expired_alerts)
    check_originator(directory, caller)
    sub, dropped = check_names(directory, sub)
    signature, unresolved, linked = None, (), None
    if sub.cap is not None:
        resolved = await resolve_cap(rt, rows, caller, sub, directory)
        sub, cap_id, unresolved, linked = resolved.sub, resolved.alert_id, resolved.unresolved, resolved.linked_thread
        # A certificate must be valid when the message arrives; replaying old traffic, when it was sent.
        signature = check_signature(directory, caller, sub, now if rt.settings.reject_expired_alerts else sub.cap.sent)
    thread = await resolve_thread(rt, rows, caller, sub.alert, unresolved) or linked
    key = idempotency_key
    if sub.cap is not None:
        key = key or f"cap:{sub.cap.sender},{sub.cap.identifier},{format_time(sub.cap.sent)}"
        mint = lambda: cap_id  # noqa: E731
    elif key is not None:
        mint = lambda: keyed_uuid7(now, "json", caller.agency, key)  # noqa: E731
    else:
        mint = new_id
    cap = None if sub.cap is None else repository.cap_column(
        {"sender": sub.cap.sender, "identifier": sub.cap.identifier, "sent": format_time(sub.cap.sent), "signed": sub.cap.signed},
        signature.model_dump(mode="json"), list(unresolved))

    async def accept(alert_id: UUID) -> tuple[int, dict, None]:
        thread_id = thread or alert_id
        original = sub.raw if sub.cap else None
        origin = cap and CapOrigin(**{k: cap[k] for k in ("sender", "identifier", "sent", "signed")})
        payload = AlertSubmitted(alert=sub.alert, submitted_by=caller.key_id, cap=origin, cap_original=original,
                                 cap_signature=signature, unresolved_references=list(unresolved))
        env = _wrap(rt, payload, alert_id=alert_id, thread_id=thread_id, event_id=derived_id(alert_id, "submitted"),
                    traceparent=traceparent)
        await produce(rt, topics.ALERTS_SUBMITTED.name, thread_id, env)
        ALERTS_ACCEPTED.inc()
        # The status projection stores the row from the event; until then this instance answers for it.
        rows.remember({"alert_id": alert_id, "thread_id": thread_id, "sender_agency": sub.alert.sender_agency,
                       "submitted_by": caller.key_id, "received_at": env.occurred_at, "alert": payload.alert.model_dump(mode="json"),
                       "routing": None, "cap": cap, "cap_original": original, "trace_id": tracing.trace_id_of(env.traceparent)})

        body = {"id": str(alert_id), "thread_id": str(thread_id), "status_url": f"{rt.settings.public_base_url}/v1/alerts/{alert_id}"}
        if cap:
            body["cap"] = cap
        if dropped:
            body["dropped"] = dropped
        return 202, body, None

    return await idempotent(rt, caller, key, request_hash("POST", "/v1/alerts", sub.raw), mint, accept)


async def _as_recipient(rt: Runtime, rows: AlertRows, caller: Caller, alert_id: UUID, act: str,
                        unit: str | None) -> tuple[str | None, UUID]:
    """Check the caller may `act` on the alert as one of its recipients; return (unit, thread id)."""
    if not caller.has(Role.RECEIVE):
        raise ApiError(403, "forbidden", f"this key may not {act} alerts (needs role receive)")
    found = await visible_or_404(rt, rows, caller, alert_id)
    if found.relation != "recipient":
        raise ApiError(403, "not_recipient", f"only a recipient of alert {alert_id} may {act} it")
    if unit is not None and unit not in {r["unit"] for r in found.mine}:
        raise ApiError(422, "unknown_unit", f"{caller.agency} did not receive this alert as unit {unit}")
    return unit, found.row["thread_id"]


async def acknowledge(
    rt: Runtime, rows: AlertRows, caller: Caller, alert_id: UUID, *, status: AckStatus, comment: str | None, unit: str | None,
    raw: bytes, idempotency_key: str | None, traceparent: str | None,
) -> tuple[int, dict]:
    """Record a recipient's acknowledgement as an alert.acknowledged event."""
    unit, thread_id = await _as_recipient(rt, rows, caller, alert_id, "acknowledge", unit)

    async def act(event_id: UUID) -> tuple[int, dict, Record]:
        payload = AlertAcknowledged(agency=caller.agency, unit=unit, status=status, comment=comment, acknowledged_by=caller.key_id)
        env = _wrap(rt, payload, alert_id=alert_id, thread_id=thread_id, event_id=event_id, traceparent=traceparent)
        await produce(rt, topics.ALERTS_ACKNOWLEDGED.name, thread_id, env)
        return 202, {"alert_id": str(alert_id), "event_id": str(event_id), "status": status.value,
                     "acknowledged_at": env.occurred_at.isoformat()}, lambda s: repository.record_ack(s, alert_id, payload, env.occurred_at)

    fingerprint = request_hash("POST", f"/v1/alerts/{alert_id}/ack", raw)
    return await idempotent(rt, caller, idempotency_key, fingerprint, new_id, act)


async def forward(
    rt: Runtime, rows: AlertRows, caller: Caller, alert_id: UUID, *, to: list[str], comment: str | None, unit: str | None,
    raw: bytes, idempotency_key: str | None, traceparent: str | None, directory: ActiveDirectory,
) -> tuple[int, dict]:
    """Pass an alert on to named units or agencies, as an alert.forwarded event routing decides on."""
    check_forward_names(directory, to)
    unit, thread_id = await _as_recipient(rt, rows, caller, alert_id, "forward", unit)

    async def act(forward_id: UUID) -> tuple[int, dict, Record]:
        payload = AlertForwarded(forward_id=forward_id, agency=caller.agency, unit=unit, to=to, comment=comment,
                                 forwarded_by=caller.key_id)
        env = _wrap(rt, payload, alert_id=alert_id, thread_id=thread_id, event_id=derived_id(forward_id, "forwarded"),
                    traceparent=traceparent)
        await produce(rt, topics.ALERTS_SUBMITTED.name, thread_id, env)
        return 202, {"alert_id": str(alert_id), "forward_id": str(forward_id), "to": to,
                     "status_url": f"{rt.settings.public_base_url}/v1/alerts/{alert_id}"}, \
            lambda s: repository.record_forward(s, alert_id, payload, env.occurred_at)

    fingerprint = request_hash("POST", f"/v1/alerts/{alert_id}/forward", raw)
    return await idempotent(rt, caller, idempotency_key, fingerprint, new_id, act)


# --- reading ------------------------------------------------------------------------------------

_RECIPIENT_FIELDS = ("agency", "unit", "endpoint", "profile", "rule", "reason", "state", "attempts", "http_status", "error", "updated_at")


def _ack(r: dict) -> dict | None:
    return {"status": r["ack_status"], "comment": r["ack_comment"], "at": r["acked_at"]} if r.get("ack_status") else None


def _recipient_state(r: dict) -> str:
    return "acknowledged" if r.get("ack_status") else r["state"]


async def status_view(rt: Runtime, found: Visible) -> dict:
    """Return what this caller may see of the alert's progress (shaped as the AlertStatus schema)."""
    return AlertStatus.model_validate(await _status(rt, found)).model_dump(mode="json")


async def _status(rt: Runtime, found: Visible) -> dict:
    row = found.row
    async with rt.sessions() as session:
        rows = found.mine if found.relation == "recipient" else await repository.recipients_of(session, row["alert_id"])
        fwds = await repository.forwards_of(session, row["alert_id"])
    base = {
        "id": row["alert_id"], "thread_id": row["thread_id"], "sender_agency": row["sender_agency"],
        "headline": row["alert"]["headline"], "msg_type": row["alert"].get("msg_type", "alert"),
        "received_at": row["received_at"], "status": "routed" if row["routing"] else "accepted", "relation": found.relation,
    }
    if found.relation == "recipient":
        return {**base, "received": [{"unit": r["unit"], "endpoint": r["endpoint"], "profile": r["profile"], "state": _recipient_state(r),
                              "acknowledgement": _ack(r), "view": r["view"]} for r in rows],
                "forwards": [_forward(f) for f in fwds if f["agency"] == found.mine[0]["agency"]]}
    routing = row["routing"]
    return {
        **base, "ruleset_hash": routing and routing["ruleset_hash"], "cap": row["cap"],
        "recipients": [{**{k: r[k] for k in _RECIPIENT_FIELDS}, "state": _recipient_state(r), "delivery_state": r["state"],
                        "acknowledgement": _ack(r)} for r in rows],
        "denied": routing["denied"] if routing else [],
        "forwards": [_forward(f) for f in fwds],
    }


def _forward(f: dict) -> dict:
    return {"forward_id": f["forward_id"], "agency": f["agency"], "unit": f["unit"], "to": f["to"], "comment": f["comment"],
            "forwarded_at": f["forwarded_at"]}


def cap_document(found: Visible, *, original: bool, language: str | None, node_key: capsig.NodeKey | None = None) -> bytes:
    """Render the alert as the caller may see it as CAP 1.2, signed with the node's key if it has one
    (or the sender's original bytes, its own signature intact)."""
    row = found.row
    if original:
        if found.relation == "recipient" or row["cap_original"] is None:
            raise ApiError(404, "no_original", "no CAP original to return: the alert was not submitted as CAP, or it is not yours")
        return row["cap_original"]
    cap = row["cap"] or {}
    sender = cap.get("sender") or row["sender_agency"]
    identifier = cap.get("identifier") or f"urn:uuid:{row['alert_id']}"
    sent = datetime.fromisoformat(cap["sent"]) if cap.get("sent") else row["received_at"]
    if found.relation == "recipient":
        views = [r["view"] for r in found.mine if r["view"]]
        if not views:
            raise ApiError(409, "view_pending", "your view of this alert is not routed yet; retry shortly", headers={"Retry-After": "1"})
        document = render_cap(views[0], sender=sender, identifier=identifier, sent=sent, language=language)
    else:
        document = render_cap({"alert": row["alert"]}, sender=sender, identifier=identifier, sent=sent, language=language)
    return node_key.sign(document) if node_key else document


def dumps(value: object) -> bytes:
    return orjson.dumps(value, default=str)


async def list_alerts(rt: Runtime, rows: AlertRows, caller: Caller, *, box: str, filters: dict, after: UUID | None,
                      limit: int) -> dict:
    """Return one page of the alerts the caller may read one by one (`visible`): those its agency sent
    if the key may submit, those it received if the key may receive; operators and auditors: all.
    What this instance accepted from the caller's agency is waited for (bounded) until the projection has it."""
    oversight = caller.has(Role.OPERATOR, Role.AUDITOR)
    await rows.caught_up(None if oversight else caller.agency)
    boxes = set() if oversight else {b for b, role in (("sent", Role.SUBMIT), ("received", Role.RECEIVE)) if caller.has(role)}
    if box != "all":
        boxes &= {box}
    async with rt.sessions() as session:
        rows = await repository.list_alerts(
            session, agency=None if oversight else caller.agency, boxes=boxes, sender=caller.has(Role.SUBMIT),
            filters=filters, after=after, limit=limit + 1) if oversight or boxes else []
    items = [{
        "id": r["alert_id"], "thread_id": r["thread_id"], "sender_agency": r["sender_agency"], "received_at": r["received_at"],
        "relation": "sender" if r["sender_agency"] == caller.agency and caller.has(Role.SUBMIT)
        else "oversight" if oversight else "recipient",
        "msg_type": r["alert"].get("msg_type", "alert"), "category": r["alert"]["category"],
        "severity": r["alert"]["severity"], "headline": r["alert"]["headline"],
    } for r in rows[:limit]]
    return {"items": items, "next_cursor": encode_cursor(rows[limit - 1]["alert_id"]) if len(rows) > limit else None}


def decode_cursor(cursor: str | None) -> UUID | None:
    if cursor is None:
        return None
    try:
        return UUID(bytes=base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned") from None


def encode_cursor(alert_id: UUID) -> str:
    return base64.urlsafe_b64encode(alert_id.bytes).rstrip(b"=").decode()


async def follow(rt: Runtime, rows: AlertRows, hub: FlowHub, caller: Caller, found: Visible, until_seconds: float) -> AsyncIterator[bytes]:
    """Yield Server-Sent Events: the status view whenever it changes, until the deadline.

    Driven by the status consumer's NOTIFY (ops.FlowHub), so an idle stream costs no query; every
    `stream_recheck_seconds` it also re-reads the view (a notification lost with a dropped LISTEN
    connection is caught up) and checks that the key is still valid, ending the stream if not.
    """
    loop, recheck = asyncio.get_running_loop(), rt.settings.stream_recheck_seconds
    alert_id = found.row["alert_id"]
    deadline, checked = loop.time() + until_seconds, loop.time()
    last, n = None, 0
    with hub.watch(alert_id) as changed:
        yield b"retry: 1000\n\n"
        while True:
            changed.clear()
            async with rt.sessions() as session:
                if loop.time() - checked >= recheck:
                    key = await repository.get_key(session, caller.key_id)
                    if key is None or key["revoked_at"] is not None:
                        return
                    checked = loop.time()
                now = await visible(session, caller, await rows.get(alert_id, wait=False))
            if now is None:
                return
            current = dumps(await status_view(rt, now))
            if current != last:
                n += 1
                last = current
                yield b"id: %d\nevent: status\ndata: %s\n\n" % (n, current)
            else:
                yield b": keep-alive\n\n"  # also how a closed client is noticed
            left = deadline - loop.time()
            if left <= 0 or rt.stopping.is_set():
                return
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(left, recheck))
            except asyncio.TimeoutError:
                pass


# --- keys ---------------------------------------------------------------------------------------

async def rotate_key(session, key_id: str) -> tuple[str, str] | None:
    """Replace an active key by a new one with the same agency, roles and posts; revoke the old at once."""
    from shared.auth import hash_api_key, new_api_key

    old = await repository.get_key(session, key_id)
    if old is None or old["revoked_at"] is not None:
        return None
    new_id_, key = new_api_key()
    await repository.add_key(session, key_id=new_id_, agency=old["agency"], roles=[Role(r) for r in old["roles"]],
                             key_hash=hash_api_key(key), label=old["label"], posts=old["posts"])
    await repository.revoke_key(session, key_id, replaced_by=new_id_)
    return new_id_, key


async def purge_idempotency_keys(rt: Runtime, every_seconds: float = 3600) -> None:
    """Forget finished Idempotency-Keys older than the retention (at least 24 h), once an hour."""
    keep = timedelta(hours=max(24, rt.settings.idempotency_ttl_hours))
    while not rt.stopping.is_set():
        try:
            async with rt.sessions() as session:
                purged = await repository.purge_keys(session, datetime.now(timezone.utc) - keep)
                await session.commit()
            if purged:
                log.info("idempotency keys purged", extra={"count": purged})
        except Exception:
            log.warning("idempotency key purge failed; next try in an hour", exc_info=True)
        try:
            await asyncio.wait_for(rt.stopping.wait(), every_seconds)
        except asyncio.TimeoutError:
            pass
