"""Routes: ``POST /hooks/{facility_id}``, ``PUT|DELETE /hooks/{facility_id}/{resourceType}/{id}`` (payload
mode), ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

The notification routes are glue: they hand the request to the kernel (``app.ingest.receiver``, whose
docstring lists the checks in order) and turn its outcome into the HTTP answer with ``respond``, the one
place that knows status codes, ``Retry-After`` and OperationOutcome bodies.
"""

from __future__ import annotations

import asyncio
from typing import assert_never

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.fhir.notifications import Delivery
from app.fhir.outcomes import operation_outcome
from app.ingest.receiver import (
    Accepted,
    DbUnavailable,
    InvalidJson,
    Misconfigured,
    Outcome,
    Quarantined,
    Receiver,
    Rejected,
    TooLarge,
    Unauthenticated,
    UnknownFacility,
    UnsupportedMediaType,
)

router = APIRouter()

FHIR_JSON = "application/fhir+json"
RETRY_AFTER_S = "5"


def respond(outcome: Outcome) -> Response:  # noqa: PLR0911 - one answer per outcome kind
    """The HTTP answer to a kernel outcome: always an OperationOutcome; every 503 says when to retry."""
    match outcome:
        case Accepted(type=ntype, replay=True):
            message = f"{ntype}: replay of a message already received, nothing stored"
            return _answer(200, operation_outcome("information", "informational", message))
        case Accepted(type=ntype, stored=stored, duplicates=duplicates, refused=refused):
            message = f"{ntype}: {stored} stored, {duplicates} duplicate, {refused} refused"
            return _answer(200, operation_outcome("information", "informational", message))
        case Quarantined(quarantine_id=qid, reason=reason, detail=detail):
            diagnostics = f"not a recognizable notification ({detail}); kept as quarantine #{qid}"
            return _answer(202, operation_outcome("warning", "processing", diagnostics, reason=reason))
        case UnknownFacility() | Unauthenticated():
            # One answer for both, naming neither the reason nor the header (the log line has them):
            # anything more would tell a caller that the facility exists and how it authenticates.
            return _error(401, "security", "sender not authenticated", Unauthenticated.slug)
        case UnsupportedMediaType(missing=missing):
            diagnostics = (
                "a body needs Content-Type application/fhir+json or application/json"
                if missing
                else "send application/fhir+json or application/json"
            )
            return _error(415, "not-supported", diagnostics, outcome.slug)
        case TooLarge(limit=limit):
            return _error(413, "too-costly", f"body larger than {limit} bytes", outcome.slug)
        case InvalidJson(detail=detail):
            return _error(400, "invalid", detail, outcome.slug)
        case Rejected(reason=reason, detail=detail):
            return _error(400, "invalid", detail, reason)
        case DbUnavailable():
            return _error(503, "transient", "ledger unavailable; retry later", outcome.slug)
        case Misconfigured(reason=reason):
            return _error(503, "transient", "receiver misconfigured for this facility", reason)
        case _:
            assert_never(outcome)


def _error(status: int, code: str, diagnostics: str, reason: str) -> Response:
    return _answer(status, operation_outcome("error", code, diagnostics, reason=reason))


def _answer(status: int, body: dict[str, object]) -> Response:
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else None
    return JSONResponse(body, status, headers=headers, media_type=FHIR_JSON)


# The notification routes are plain Starlette routes: on the hot path FastAPI's per-request dependency
# and parameter machinery costs more than everything else the route does (see bench/webhook.py).
async def receive_notification(request: Request) -> Response:
    return await _receive(request, None, None)


async def receive_payload_mode(request: Request) -> Response:
    params = request.path_params
    return await _receive(request, params["resource_type"], params["resource_id"])


async def _receive(request: Request, rtype: str | None, rid: str | None) -> Response:
    headers = {k.lower(): v for k, v in request.headers.items()}
    receiver: Receiver = request.app.state.receiver
    delivery = Delivery(request.method, rtype, rid, headers)
    outcome = await receiver.receive(
        request.path_params["facility_id"], delivery, request.stream, path=request.url.path
    )
    return respond(outcome)


router.add_route("/hooks/{facility_id}", receive_notification, methods=["POST"], include_in_schema=False)
router.add_route(
    "/hooks/{facility_id}/{resource_type}/{resource_id}",
    receive_payload_mode,
    methods=["PUT", "DELETE"],
    include_in_schema=False,
)


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
