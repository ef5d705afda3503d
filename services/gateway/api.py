"""The gateway's HTTP API: submit alerts, read their status, exchange a key for a token."""

import asyncio
import logging
import re
import secrets
from datetime import datetime, timezone
from typing import Annotated
from uuid import UUID

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Header, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from services.gateway import repository
from shared import topics
from shared.alerts import Alert
from shared.auth import Principal, Role, hash_api_key, issue_token, split_api_key, unauthorized
from shared.events import AlertSubmitted, Envelope
from shared.ids import new_id
from shared.kafka import send
from shared.observability import log_context
from shared.service import Runtime

log = logging.getLogger(__name__)
_TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_bearer = HTTPBearer(auto_error=False)


class Accepted(BaseModel):
    id: UUID
    status_url: str


class Token(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/v1")

    async def principal(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Principal:
        if creds is None:
            raise unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        if split_api_key(creds.credentials) is None:
            raise unauthorized("malformed API key")
        async with rt.sessions() as session:
            found = await repository.principal_for_key(session, hash_api_key(creds.credentials))
        if found is None:
            raise unauthorized("unknown or revoked API key")
        return found

    Caller = Annotated[Principal, Depends(principal)]

    @api.post("/alerts", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted)
    async def submit_alert(
        alert: Alert, caller: Caller, traceparent: Annotated[str | None, Header()] = None
    ) -> Accepted:
        """Accept an alert; answer only once Kafka holds it durably (acks=all)."""
        if Role.SUBMIT not in caller.roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this key may not submit alerts (needs role submit)")
        if alert.sender_agency != caller.agency:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"a key of {caller.agency} cannot submit in the name of {alert.sender_agency}"
            )
        alert_id = new_id()
        thread_id = alert_id
        if alert.references:
            async with rt.sessions() as session:
                thread_id = await repository.thread_of(session, alert.references[0])
            if thread_id is None:
                raise HTTPException(422, f"references: unknown alert {alert.references[0]}")
        log_context.set({"alert_id": str(alert_id)})
        if not traceparent or not _TRACEPARENT.match(traceparent):
            traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        received_at = datetime.now(timezone.utc)
        env = Envelope.wrap(
            AlertSubmitted(alert=alert, submitted_by=caller.key_id), origin_node=rt.settings.node_id,
            alert_id=alert_id, thread_id=thread_id, occurred_at=received_at, traceparent=traceparent,
        )
        async def produce() -> None:
            ack = await send(rt.producer, rt.settings.topic(topics.ALERTS_SUBMITTED.name), str(thread_id), env)
            await ack

        try:
            # The producer itself fails a record at the accept deadline (then it is certain not to
            # land later); the outer guard only bounds a request if the client never answers.
            await asyncio.wait_for(produce(), timeout=rt.settings.accept_timeout_seconds + 2)
        except (KafkaError, asyncio.TimeoutError) as exc:
            log.error("alert not accepted: Kafka unavailable", extra={"error": repr(exc), "guard": isinstance(exc, asyncio.TimeoutError)})
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                "Kafka did not confirm the alert in time, so it is not accepted; retry later",
                headers={"Retry-After": "5"},
            ) from None
        # The status consumer records it too; doing it now lets an immediate GET find it.
        try:
            async with rt.sessions() as session:
                await repository.record_alert(
                    session, alert_id=alert_id, thread_id=thread_id, sender_agency=alert.sender_agency,
                    submitted_by=caller.key_id, received_at=received_at, alert=alert.model_dump(mode="json"),
                )
                await session.commit()
        except Exception:
            log.warning("status row deferred to the consumer", exc_info=True)
        log.info("alert accepted")
        return Accepted(id=alert_id, status_url=f"{rt.settings.public_base_url}/v1/alerts/{alert_id}")

    @api.get("/alerts/{alert_id}")
    async def alert_status(alert_id: UUID, caller: Caller) -> dict:
        """Return the sender's view of an alert: who it was routed to, who was denied, delivery state."""
        async with rt.sessions() as session:
            found = await repository.alert_status(session, alert_id)
        allowed = found and (found["alert"]["sender_agency"] == caller.agency or caller.roles & {Role.OPERATOR, Role.AUDITOR})
        if not allowed:  # the same answer for "absent" and "not yours": no probing of other agencies' ids
            raise HTTPException(404, f"no alert {alert_id} visible to {caller.agency}")
        row, routing = found["alert"], found["alert"]["routing"]
        return {
            "id": row["alert_id"], "thread_id": row["thread_id"], "sender_agency": row["sender_agency"],
            "headline": row["alert"]["headline"], "received_at": row["received_at"],
            "status": "routed" if routing else "accepted",
            "ruleset_hash": routing and routing["ruleset_hash"],
            "recipients": [
                {k: r[k] for k in ("agency", "unit", "endpoint", "profile", "rule", "reason", "state", "attempts", "http_status", "error", "updated_at")}
                for r in found["recipients"]
            ],
            "denied": routing["denied"] if routing else [],
        }

    @api.post("/auth/token", response_model=Token)
    async def exchange_token(caller: Caller) -> Token:
        """Exchange an API key for a short-lived token that the other services verify."""
        return Token(access_token=issue_token(rt.settings, caller), expires_in=rt.settings.token_ttl_seconds)

    return api


