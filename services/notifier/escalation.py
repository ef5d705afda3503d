"""Escalation when a recipient does not acknowledge in time: the deadline is pure (time is an
argument); the worker re-sends the alert and sends it to the agency's fallback endpoint."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path

import yaml

from services.notifier import repository
from services.notifier.service import SYSTEM_ACTOR, fallback_id, record_action, resend_id
from shared.directory import Directory, Endpoint
from shared.service import Runtime

log = logging.getLogger(__name__)


def ack_deadline(
    *, urgency: str | None, agency_minutes: dict[str, int], override_seconds: dict[str, float], requested_at: datetime,
) -> datetime | None:
    """Return by when the recipient must acknowledge, or None if this urgency needs no acknowledgement."""
    if urgency in override_seconds:
        return requested_at + timedelta(seconds=override_seconds[urgency])
    if urgency in agency_minutes:
        return requested_at + timedelta(minutes=agency_minutes[urgency])
    return None


def urgency_of(body: dict) -> str | None:
    alert = body.get("alert")
    return alert.get("urgency") if isinstance(alert, dict) else None


@lru_cache(maxsize=4)
def _directory(path: Path, mtime: float) -> Directory:
    return Directory.model_validate(yaml.safe_load(path.read_text()))


def directory(network_dir: Path) -> Directory:
    """Load the network directory (fallback endpoints, ack deadlines), again whenever the file changes."""
    path = network_dir / "directory.yaml"
    return _directory(path, path.stat().st_mtime)


def endpoint_target(e: Endpoint) -> str:
    return f"mailto:{e.email}" if e.email and e.channel == "email" else (e.url or "")


def escalation_rows(original: dict, fallback: Endpoint | None) -> list[dict]:
    """Return the deliveries an escalation adds: the alert again to the same endpoint, and to the fallback."""
    base = {k: original[k] for k in ("request_event_id", "alert_id", "thread_id", "agency", "body", "traceparent",
                                     "url", "endpoint", "format", "language")}
    rows = [{**base, "delivery_id": resend_id(original["delivery_id"]), "state": "pending", "reason": None}]
    if fallback and fallback.id != original["endpoint"]:
        rows.append({**base, "delivery_id": fallback_id(original["delivery_id"], fallback.id),
                     "endpoint": fallback.id, "url": endpoint_target(fallback), "format": fallback.format,
                     "language": fallback.language, "state": "pending", "reason": None})
    return rows


async def escalate_overdue(rt: Runtime) -> int:
    """Escalate every watch past its deadline without an acknowledgement; return how many."""
    now = datetime.now(timezone.utc)
    async with rt.sessions() as session:
        overdue = await repository.claim_overdue_watches(session, now)
        for watch in overdue:
            original = await repository.delivery_row(session, watch["delivery_id"])
            agency = next((a for a in directory(rt.settings.network_dir).agencies if a.id == watch["agency"]), None)
            fallback = None
            if agency and agency.fallback_endpoint:
                fallback = directory(rt.settings.network_dir).endpoint(agency.fallback_endpoint)
            rows = escalation_rows(original, fallback) if original else []
            known = await repository.known_endpoints(session, {r["endpoint"] for r in rows})
            rows = [r for r in rows if r["endpoint"] in known]
            await repository.add_deliveries(session, rows)
            await record_action(
                session, rt.settings, action="alert.escalate", target=watch["agency"], actor=SYSTEM_ACTOR,
                reason=f"not acknowledged by {watch['deadline'].isoformat()}", alert_id=watch["alert_id"],
                detail={"resent_to": [r["endpoint"] for r in rows], "fallback": fallback.id if fallback else None},
            )
        await session.commit()
    for watch in overdue:
        log.warning("escalated unacknowledged alert", extra={"alert_id": str(watch["alert_id"]), "agency": watch["agency"]})
    return len(overdue)


async def escalation_worker(rt: Runtime) -> None:
    """Look for overdue acknowledgements once a second."""
    while not rt.stopping.is_set():
        try:
            await escalate_overdue(rt)
        except Exception:
            log.warning("escalation pass failed; will retry", exc_info=True)
        await asyncio.sleep(1.0)
