"""The gateway's HTTP API: thin routes over `service.py` (submit, read, follow, acknowledge, forward)."""

from collections.abc import AsyncIterator
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway import service
from services.gateway.directory import ActiveDirectory
from services.gateway.keycache import KeyCache
from services.gateway.lookup import AlertRows
from services.gateway.limits import RateLimiter, SlotStream, StreamSlots
from services.gateway.ops import FlowHub
from services.gateway.schemas import (
    AckAccepted, AckRequest, Accepted, AlertPage, AlertStatus, ForwardAccepted, ForwardRequest, Problem, Token,
)
from services.gateway.service import ApiError, Caller
from shared import langtag
from shared.alerts import Category, MsgType, Severity, Status
from shared.auth import hash_api_key, issue_token, split_api_key
from shared.cap import MEDIA_TYPE as CAP
from shared.capsig import NodeKey
from shared.metrics import ALERTS_REJECTED
from shared.observability import log_context
from shared.service import Runtime

_bearer = HTTPBearer(auto_error=False, description="an API key from `blonet keys create`")
_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
          415: "unsupported_media_type", 429: "rate_limited", 503: "unavailable"}


def _problems(*codes: int) -> dict:
    return {code: {"model": Problem} for code in codes}


def count_refused_submission(scope: dict, code: str) -> None:
    """Count a refused alert submission by its Problem code; errors of other routes are not submissions."""
    if scope.get("method") == "POST" and scope.get("path") == "/v1/alerts":
        ALERTS_REJECTED.labels(code).inc()


def install_errors(app: FastAPI) -> None:
    """Answer every error with the one Problem shape (code, detail, errors)."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        count_refused_submission(request.scope, exc.code)
        body = {"code": exc.code, "detail": exc.detail, **({"errors": exc.errors} if exc.errors else {})}
        return JSONResponse(jsonable_encoder(body), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODES.get(exc.status_code, "error")
        count_refused_submission(request.scope, code)
        return JSONResponse({"code": code, "detail": str(exc.detail)}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        invalid_json = any(e["type"] == "json_invalid" for e in errors)
        count_refused_submission(request.scope, "json_invalid" if invalid_json else "invalid_request")
        return JSONResponse(jsonable_encoder({
            "code": "json_invalid" if invalid_json else "invalid_request",
            "detail": "the body is not valid JSON" if invalid_json else "the request does not validate", "errors": errors,
        }), 422)


SUBMIT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"$ref": "#/components/schemas/Alert"},
            "examples": {"dostuk": {"summary": "The 2017 Dostuk exercise, first scenario", "value": {
                "sender_agency": "kg-sbs", "sender_post": "bor-dobo", "category": "drugs", "severity": "severe",
                "urgency": "future", "certainty": "likely", "effective": "2027-05-15T00:00:00+06:00",
                "expires": "2027-05-20T23:59:59+06:00",
                "location": {"post": "dostuk", "border_segment": "KG-UZ", "direction": {"from_country": "KG", "to_country": "UZ"}},
                "headline": "Высокий риск наркотрафика через Достук, 15–20 мая", "language": "ru", "tlp": "TLP:AMBER",
                "handling": ["H0"]}}},
        },
        CAP: {
            "schema": {"type": "string", "format": "binary", "description": "a CAP 1.2 <alert> (see docs/api.md for the mapping)"},
        },
    },
}


def authenticator(keys: KeyCache, limiter: RateLimiter):
    """The dependency every API route uses: the caller of a valid, unrevoked API key, within its rate."""

    async def caller(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
        if creds is None:
            raise ApiError(401, "unauthorized", "missing API key: send 'Authorization: Bearer <key>'", headers={"WWW-Authenticate": "Bearer"})
        if split_api_key(creds.credentials) is None:
            raise ApiError(401, "unauthorized", "malformed API key", headers={"WWW-Authenticate": "Bearer"})
        found = await keys.principal(hash_api_key(creds.credentials))
        if found is None:  # the cache forgets a revoked key within a second: it stops working at once
            raise ApiError(401, "unauthorized", "unknown or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        wait = limiter.take(found[0].key_id)
        if wait:
            raise ApiError(429, "rate_limited", "too many requests for this key; slow down",
                           headers={"Retry-After": RateLimiter.retry_after(wait)})
        return Caller(*found)

    return caller


def streamer(slots: StreamSlots):
    """Return how a route answers with Server-Sent Events: in one of the key's stream slots, or 429."""

    def stream(who: Caller, events: AsyncIterator[bytes]) -> StreamingResponse:
        if not slots.take(who.key_id):
            raise ApiError(429, "too_many_streams", f"this key already has {slots.per_key} open streams; close one first",
                           headers={"Retry-After": "15"})
        return SlotStream(events, release=lambda: slots.give_back(who.key_id), media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return stream


def router(rt: Runtime, authenticate, hub: FlowHub, slots: StreamSlots, directory: ActiveDirectory, rows: AlertRows) -> APIRouter:
    api = APIRouter(prefix="/v1")
    stream = streamer(slots)
    node_key = NodeKey.load(rt.settings.cap_signing_key_file, rt.settings.cap_signing_certificate_file)
    Who = Annotated[Caller, Depends(authenticate)]
    IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200,
                                                  description="makes retries safe: same key + same body → the original answer")]
    Traceparent = Annotated[str | None, Header(description="W3C trace context, carried on the events")]

    def answer(result: tuple[int, dict]) -> JSONResponse:
        code, body = result
        return JSONResponse(body, code)

    @api.post(
        "/alerts", status_code=status.HTTP_202_ACCEPTED, response_model=Accepted, openapi_extra={"requestBody": SUBMIT_BODY},
        responses=_problems(401, 403, 409, 413, 415, 422, 429, 503),
    )
    async def submit_alert(request: Request, who: Who, idempotency_key: IdempotencyKey = None, traceparent: Traceparent = None):
        """Submit an alert as BLOnet JSON or CAP 1.2 XML; 202 only once Kafka holds it durably (acks=all)."""
        sub = service.decode_submission(await request.body(), request.headers.get("content-type"), directory.cap_agencies())
        result = await service.submit(rt, rows, who, sub, directory=directory, idempotency_key=idempotency_key, traceparent=traceparent)
        log_context.set({"alert_id": result[1].get("id")})
        return answer(result)

    @api.get("/alerts", response_model=AlertPage, responses=_problems(401, 422, 429))
    async def list_alerts(
        who: Who,
        box: Annotated[Literal["all", "sent", "received"], Query(description="alerts your agency sent, received, or both")] = "all",
        category: Category | None = None, severity: Severity | None = None, msg_type: MsgType | None = None,
        alert_status: Annotated[Status | None, Query(alias="status", description="CAP status, e.g. exercise")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=64, description="next_cursor of the previous page")] = None,
    ) -> AlertPage:
        """List the alerts your agency sent or received, newest first, with cursor pagination."""
        after = service.decode_cursor(cursor)
        filters = {k: v.value for k, v in (("category", category), ("severity", severity), ("msg_type", msg_type),
                                             ("status", alert_status)) if v is not None}
        return await service.list_alerts(rt, rows, who, box=box, filters=filters, after=after, limit=limit)

    @api.get(
        "/alerts/{alert_id}", response_model=AlertStatus, responses={
            **_problems(401, 404, 409, 429),
            200: {"content": {"application/json": {}, CAP: {"schema": {"type": "string"}}},
                  "description": "the status (JSON), or the alert as CAP 1.2 with ?format=cap"}},
    )
    async def alert_status(
        alert_id: UUID, who: Who,
        format: Annotated[Literal["json", "cap"], Query(description="json: status view; cap: the alert as CAP 1.2")] = "json",
        original: Annotated[bool, Query(description="with format=cap: the sender's CAP original, signature intact")] = False,
        language: Annotated[str | None, Query(pattern=langtag.PATTERN, description="with format=cap: one language, by BCP 47 lookup")] = None,
    ):
        """Return the alert's progress as this caller may see it (senders: every recipient and denial)."""
        found = await service.visible_or_404(rt, rows, who, alert_id)
        if format == "cap":
            return Response(service.cap_document(found, original=original, language=language, node_key=node_key), media_type=CAP)
        return Response(service.dumps(await service.status_view(rt, found)), media_type="application/json")

    @api.get(
        "/alerts/{alert_id}/events", responses={**_problems(401, 404, 429), 200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "`event: status` with the status view as data, each time it changes"}},
    )
    async def alert_events(
        alert_id: UUID, who: Who,
        until_seconds: Annotated[float, Query(gt=0, le=3600, description="close the stream after this long")] = 600,
    ) -> StreamingResponse:
        """Follow an alert as Server-Sent Events: a `status` event each time its status view changes.

        At most `max_streams_per_key` open streams per key (429 above); a stream ends soon after its key is revoked."""
        found = await service.visible_or_404(rt, rows, who, alert_id)
        return stream(who, service.follow(rt, rows, hub, who, found, until_seconds))

    @api.post("/alerts/{alert_id}/ack", status_code=202, response_model=AckAccepted,
              responses=_problems(401, 403, 404, 409, 422, 429, 503))
    async def acknowledge(alert_id: UUID, body: AckRequest, who: Who, idempotency_key: IdempotencyKey = None,
                          traceparent: Traceparent = None):
        """Acknowledge an alert your agency received: received, acting or not_relevant, with a comment."""
        return answer(await service.acknowledge(
            rt, rows, who, alert_id, status=body.status, comment=body.comment, unit=body.unit,
            raw=body.model_dump_json().encode(), idempotency_key=idempotency_key, traceparent=traceparent))

    @api.post("/alerts/{alert_id}/forward", status_code=202, response_model=ForwardAccepted,
              responses=_problems(401, 403, 404, 409, 422, 429, 503))
    async def forward(alert_id: UUID, body: ForwardRequest, who: Who, idempotency_key: IdempotencyKey = None,
                      traceparent: Traceparent = None):
        """Pass an alert your agency received on to named units or agencies; routing applies the original's limits."""
        return answer(await service.forward(
            rt, rows, who, alert_id, to=body.to, comment=body.comment, unit=body.unit,
            raw=body.model_dump_json().encode(), idempotency_key=idempotency_key, traceparent=traceparent,
            directory=directory))

    @api.get("/node/cap-certificate", responses={404: {"model": Problem}, 200: {
        "content": {"application/x-pem-file": {"schema": {"type": "string"}}},
        "description": "the PEM certificate whose key signs the CAP this node sends"}})
    async def cap_certificate() -> Response:
        """The node's CAP signing certificate, so receivers can verify the signed CAP it sends (no key needed)."""
        if node_key is None:
            raise ApiError(404, "no_cap_certificate", "this node does not sign the CAP it sends (no signing key configured)")
        return Response(node_key.certificate_pem, media_type="application/x-pem-file")

    @api.post("/auth/token", response_model=Token, responses=_problems(401, 429))
    async def exchange_token(who: Who) -> Token:
        """Exchange an API key for a short-lived token that the other services verify."""
        return Token(access_token=issue_token(rt.settings, who.principal), expires_in=rt.settings.token_ttl_seconds)

    return api
