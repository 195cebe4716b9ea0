"""Routes: ``POST /hooks/{facility_id}``, ``PUT|DELETE /hooks/{facility_id}/{resourceType}/{id}`` (payload
mode), ``GET /healthz``, ``GET /readyz``, ``GET /metrics``.

The notification routes (served from ASGI directly, see ``serve_hook``) are glue: they hand the request
to the kernel (``app.ingest.receiver``, whose docstring lists the checks in order) and turn its outcome
into the HTTP answer with ``respond``, the one place that knows status codes, ``Retry-After`` and
OperationOutcome bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import assert_never

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

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
log = structlog.get_logger("api.hooks")

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


# -- the notification routes, served from ASGI directly ----------------------------------------------
# On the hot path the framework's middleware stack (error, telemetry, body-limit and exception
# middleware, routing, Request objects) cost more than everything the route itself does (profiled with
# bench/webhook.py: ~40 % of a request's CPU). The hook routes need none of it: the kernel reads the
# body itself with its own limit, and every outcome, even an unexpected error, is answered here.
# ``hook_route`` recognizes them (``ReceiverApp`` in main.py calls ``serve_hook`` ahead of the stack);
# any other path, or a hook path with another method, goes through FastAPI as before (404, 405).

HOOKS_PREFIX = "/hooks/"


@dataclass(frozen=True)
class HookRoute:
    facility_id: str
    resource_type: str | None = None  # payload mode: PUT|DELETE /hooks/{facility_id}/{Type}/{id}
    resource_id: str | None = None


def hook_route(scope: Scope) -> HookRoute | None:
    """``POST /hooks/{facility_id}`` or ``PUT|DELETE /hooks/{facility_id}/{Type}/{id}``, else None."""
    if scope["type"] != "http" or not (path := scope["path"]).startswith(HOOKS_PREFIX):
        return None
    parts = path[len(HOOKS_PREFIX) :].split("/")
    if not all(parts):
        return None
    method = scope["method"]
    if len(parts) == 1 and method == "POST":
        return HookRoute(parts[0])
    if len(parts) == 3 and method in ("PUT", "DELETE"):
        return HookRoute(*parts)
    return None


class ClientDisconnected(Exception):
    """The sender went away before its body was read: there is no one to answer."""


async def serve_hook(
    receiver: Receiver, route: HookRoute, scope: Scope, receive: Receive, send: Send
) -> None:
    """One notification request, from ASGI messages to the answer."""

    async def body() -> AsyncIterator[bytes]:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            if chunk := message.get("body", b""):
                yield chunk
            if not message.get("more_body", False):
                return

    # Header names arrive lower-cased from ASGI servers; lower() keeps that true for any caller.
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
    delivery = Delivery(scope["method"], route.resource_type, route.resource_id, headers)
    try:
        outcome = await receiver.receive(route.facility_id, delivery, body, path=scope["path"])
    except ClientDisconnected:
        return
    except Exception:  # a bug: answered as one (and logged with its traceback), never a dropped connection
        log.exception("hooks.internal_error", facility_id=route.facility_id)
        response = _error(500, "exception", "internal error", "internal_error")
    else:
        response = _accepted(outcome) if isinstance(outcome, Accepted) else respond(outcome)
    await response(scope, receive, send)


@lru_cache(maxsize=1024)
def _accepted(outcome: Accepted) -> Response:
    """Most answers are one of a few acceptances ("1 stored, 0 duplicate, 0 refused"): rendered once.
    A Starlette response holds its body and headers and can be sent any number of times."""
    return respond(outcome)


class _HookFallback:
    """The hook routes as the router knows them: so that another method on a hook path is a 405, and
    the routes work even where ``ReceiverApp`` does not sit in front (then with the stack's cost)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = hook_route(scope)
        assert route is not None  # the router matched the path and the method
        await serve_hook(scope["app"].state.receiver, route, scope, receive, send)


router.routes += [
    Route("/hooks/{facility_id}", _HookFallback(), methods=["POST"], include_in_schema=False),
    Route(
        "/hooks/{facility_id}/{resource_type}/{resource_id}",
        _HookFallback(),
        methods=["PUT", "DELETE"],
        include_in_schema=False,
    ),
]


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
