"""Routes: ``POST /hooks/{facility_id}``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

Order of checks on a notification: facility known (404) → sender authentic (401, before any parsing)
→ content type (415) → size, enforced while reading (413) → JSON (400) → notification shape (422) →
committed (503 if Postgres cannot commit) → 200. Every error body is an OperationOutcome.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import ConfigurationError, NotificationError
from app.facilities.webhooks import ReceiverFacility
from app.fhir.notifications import parse_notification
from app.fhir.outcomes import operation_outcome
from app.ingest.inbox import entries_for
from app.metrics import ACK_SECONDS, EVENTS, NOTIFICATIONS

router = APIRouter()
log = structlog.get_logger("api.hooks")

FHIR_JSON = "application/fhir+json"
ACCEPTED_TYPES = {"application/fhir+json", "application/json"}
COMMIT_TIMEOUT_S = 10.0


class BodyTooLarge(Exception):
    pass


def _outcome(status: int, code: str, diagnostics: str, reason: str, severity: str = "error") -> JSONResponse:
    return JSONResponse(
        operation_outcome(severity, code, diagnostics, reason=reason),
        status_code=status,
        media_type=FHIR_JSON,
    )


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/hooks/{facility_id}")
async def receive_notification(facility_id: str, request: Request) -> Response:
    started = time.perf_counter()
    try:
        response, ntype, outcome = await _receive(facility_id, request)
    finally:
        ACK_SECONDS.observe(time.perf_counter() - started)
    NOTIFICATIONS.labels(facility_id if outcome != "unknown_facility" else "-", ntype, outcome).inc()
    return response


async def _receive(facility_id: str, request: Request) -> tuple[Response, str, str]:  # noqa: PLR0911 - one return per documented check
    state = request.app.state
    try:
        facility: ReceiverFacility | None = await state.facilities.get(facility_id)
    except SQLAlchemyError:
        log.warning("hooks.database_unavailable", facility_id=facility_id, stage="facility")
        return _unavailable(), "-", "db_unavailable"
    except ConfigurationError as exc:
        log.error("hooks.misconfigured", facility_id=facility_id, reason=exc.reason, detail=exc.detail)
        return (
            _outcome(503, "transient", "receiver misconfigured for this facility", exc.reason),
            "-",
            exc.reason,
        )
    if facility is None:
        return _outcome(404, "not-found", "unknown facility", "unknown_facility"), "-", "unknown_facility"
    header = facility.webhook.header if facility.webhook else "Authorization"
    if not facility.sender_is_authentic(request.headers.get(header)):
        log.warning("hooks.unauthenticated", facility_id=facility_id, header=header)
        return (
            _outcome(401, "security", f"missing or wrong {header}", "unauthenticated"),
            "-",
            "unauthenticated",
        )

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_TYPES:
        return (
            _outcome(415, "not-supported", "send application/fhir+json or application/json", "content_type"),
            "-",
            "content_type",
        )
    try:
        raw = await _read_limited(request, state.settings.max_body_bytes)
    except BodyTooLarge:
        limit = state.settings.max_body_bytes
        return _outcome(413, "too-costly", f"body larger than {limit} bytes", "too_large"), "-", "too_large"
    try:
        body: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _outcome(400, "invalid", "body is not valid JSON", "invalid_json"), "-", "invalid_json"
    try:
        notification = parse_notification(body, facility.base_url)
    except NotificationError as exc:
        log.info("hooks.unrecognized", facility_id=facility_id, reason=exc.reason)
        return _outcome(422, "invalid", exc.detail, exc.reason), "-", exc.reason

    entries, refused = entries_for(facility.id, notification)
    for refusal in refused:
        # No outbound connection is ever made for these; the event number lets on-call find it.
        log.warning(
            "hooks.event_refused",
            facility_id=facility_id,
            reason=refusal.reason,
            event_number=refusal.event_number,
        )
        EVENTS.labels(facility_id, refusal.reason).inc()
    try:
        result = await asyncio.wait_for(state.writer.write(entries), COMMIT_TIMEOUT_S)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.warning(
            "hooks.database_unavailable", facility_id=facility_id, stage="commit", error=type(exc).__name__
        )
        return _unavailable(), notification.type, "db_unavailable"
    EVENTS.labels(facility_id, "stored").inc(result.stored)
    EVENTS.labels(facility_id, "duplicate").inc(result.duplicates)
    if result.stored:
        state.doorbell.ring(facility.id)
    message = (
        f"{notification.type}: {result.stored} stored, {result.duplicates} duplicate, {len(refused)} refused"
    )
    body_out = operation_outcome("information", "informational", message)
    return JSONResponse(body_out, status_code=200, media_type=FHIR_JSON), notification.type, "accepted"


def _unavailable() -> JSONResponse:
    response = _outcome(503, "transient", "ledger unavailable; retry later", "db_unavailable")
    response.headers["Retry-After"] = "5"
    return response


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    try:
        async with asyncio.timeout(2.0), request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError, TimeoutError):
        return JSONResponse({"status": "unavailable", "postgres": "down"}, status_code=503)
    return JSONResponse({"status": "ok", "postgres": "up"})


@router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
