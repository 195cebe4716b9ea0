"""Routes: ``POST /hooks/{facility_id}``, ``PUT|DELETE /hooks/{facility_id}/{resourceType}/{id}`` (HAPI's
payload mode), ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

The order of checks and the status codes are documented in ``app.ingest.receiver``; this module does
the parts that need the request itself (facility, shared secret, content type, the bounded read).
"""

from __future__ import annotations

import asyncio
import time

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.errors import ConfigurationError
from app.facilities.webhooks import ReceiverFacility
from app.fhir.notifications import Delivery
from app.ingest.receiver import (
    ACCEPTED_TYPES,
    Answer,
    Receiver,
    error,
    media_type,
    unauthenticated,
    unavailable,
)
from app.metrics import ACK_SECONDS, notifications

router = APIRouter()
log = structlog.get_logger("api.hooks")

FHIR_JSON = "application/fhir+json"


class BodyTooLarge(Exception):
    pass


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


# The notification routes are plain Starlette routes: on the hot path FastAPI's per-request dependency
# and parameter machinery costs more than everything else the route does (see bench/webhook.py).
async def receive_notification(request: Request) -> Response:
    return await _answer(request.path_params["facility_id"], request, None, None)


async def receive_payload_mode(request: Request) -> Response:
    params = request.path_params
    return await _answer(params["facility_id"], request, params["resource_type"], params["resource_id"])


router.add_route("/hooks/{facility_id}", receive_notification, methods=["POST"], include_in_schema=False)
router.add_route(
    "/hooks/{facility_id}/{resource_type}/{resource_id}",
    receive_payload_mode,
    methods=["PUT", "DELETE"],
    include_in_schema=False,
)


async def _answer(facility_id: str, request: Request, rtype: str | None, rid: str | None) -> Response:
    started = time.perf_counter()
    try:
        answer = await _receive(facility_id, request, rtype, rid)
    finally:
        ACK_SECONDS.observe(time.perf_counter() - started)
    known = answer.outcome != "unknown_facility"
    notifications(facility_id if known else "-", answer.shape, answer.type, answer.outcome).inc()
    return JSONResponse(answer.body, answer.status, headers=answer.headers or None, media_type=FHIR_JSON)


async def _receive(  # noqa: PLR0911 - one return per documented check
    facility_id: str, request: Request, rtype: str | None, rid: str | None
) -> Answer:
    state = request.app.state
    try:
        facility: ReceiverFacility | None = await state.facilities.get(facility_id)
    except (SQLAlchemyError, OSError) as exc:
        return unavailable(facility_id, "facility", exc)
    except ConfigurationError as exc:
        log.error("hooks.misconfigured", facility_id=facility_id, reason=exc.reason, detail=exc.detail)
        return error(503, "transient", "receiver misconfigured for this facility", exc.reason)
    if facility is None:
        return error(404, "not-found", "unknown facility", "unknown_facility")
    headers = {k.lower(): v for k, v in request.headers.items()}
    now = time.time()
    if facility.sender is None or not facility.sender.needs_body:
        reason = facility.authenticate(headers, b"", now)
        if reason is not None:
            return unauthenticated(facility, reason)
    content_type = media_type(headers.get("content-type"))
    if content_type and content_type not in ACCEPTED_TYPES:
        diagnostics = "send application/fhir+json or application/json"
        return error(415, "not-supported", diagnostics, "content_type")
    limit = state.settings.max_body_bytes
    try:
        raw = await _read_limited(request, limit)
    except BodyTooLarge:
        return error(413, "too-costly", f"body larger than {limit} bytes", "too_large")
    if raw.strip() and not content_type:
        diagnostics = "a body needs Content-Type application/fhir+json or application/json"
        return error(415, "not-supported", diagnostics, "content_type")
    delivery = Delivery(request.method, rtype, rid, headers)
    receiver: Receiver = state.receiver
    return await receiver.receive(facility, delivery, raw, path=request.url.path, now=now)


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
