"""The receiver's use case: from an authenticated HTTP delivery to committed inbox rows and an answer.

Order of checks (the HTTP edge does the first four, which need the request itself):
facility known (404) → shared secret (401, before reading the body) → content type (415) → size,
enforced while reading (413) → body signature (401, before any parsing) → JSON (400) → notification
shape (unrecognizable JSON is quarantined: 202) → committed (503 if Postgres cannot commit) → 200.

Every answer is an OperationOutcome. Quarantine answers **202 Accepted**: the body *is* committed (in
the quarantine table, never dropped), retrying an unchanged body cannot help, and a 4xx would make
some servers put the whole subscription in ``error`` and stop every later notification; the
OperationOutcome says ``processing`` with the reason and the quarantine id so either side can find it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import NotificationError
from app.facilities.webhooks import ReceiverFacility
from app.fhir import pgsafe
from app.fhir.notifications import Delivery, Notification, parse_delivery
from app.fhir.outcomes import operation_outcome
from app.ingest.inbox import intake_for
from app.ingest.quarantine import Quarantined, quarantine
from app.ingest.writer import InboxWriter, WriteResult
from app.metrics import AUTH_FAILURES, LEDGER_GAPS, QUARANTINED, events

log = structlog.get_logger("api.hooks")

ACCEPTED_TYPES = frozenset({"application/fhir+json", "application/json"})
COMMIT_TIMEOUT_S = 10.0
RETRY_AFTER_S = "5"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    outcome: str  # reason slug, or "accepted" / "quarantined"
    shape: str = "-"
    type: str = "-"
    headers: dict[str, str] = field(default_factory=dict)


def error(status: int, code: str, diagnostics: str, reason: str, **labels: str) -> Answer:
    headers = {"Retry-After": RETRY_AFTER_S} if status == 503 else {}
    body = operation_outcome("error", code, diagnostics, reason=reason)
    return Answer(status, body, reason, headers=headers, **labels)


def unavailable(facility_id: str, stage: str, exc: BaseException | None = None, **labels: str) -> Answer:
    log.warning(
        "hooks.database_unavailable",
        facility_id=facility_id,
        stage=stage,
        error=type(exc).__name__ if exc else None,
    )
    return error(503, "transient", "ledger unavailable; retry later", "db_unavailable", **labels)


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def unauthenticated(facility: ReceiverFacility, reason: str) -> Answer:
    # The reason and the header name only: never the header's value or the body.
    header = facility.sender.header if facility.sender else "-"
    log.warning("hooks.unauthenticated", facility_id=facility.id, reason=reason, header=header)
    AUTH_FAILURES.labels(facility.id, reason).inc()
    return error(401, "security", f"sender not authenticated ({reason}); check {header}", "unauthenticated")


@dataclass
class Receiver:
    engine: AsyncEngine
    writer: InboxWriter
    ring: Callable[[str], None]
    commit_timeout_s: float = COMMIT_TIMEOUT_S

    async def receive(
        self, facility: ReceiverFacility, delivery: Delivery, raw: bytes, *, path: str, now: float
    ) -> Answer:
        """Authenticate the signature, parse, commit; ``raw`` is the whole (size-checked) body."""
        try:
            return await self._receive(facility, delivery, raw, path=path, now=now)
        except RecursionError:  # JSON nested deeper than the interpreter walks: malformed, not a 500
            return error(400, "invalid", "body is nested too deeply", "invalid_json")

    async def _receive(
        self, facility: ReceiverFacility, delivery: Delivery, raw: bytes, *, path: str, now: float
    ) -> Answer:
        if facility.sender is not None and facility.sender.needs_body:
            reason = facility.authenticate(delivery.headers, raw, now)
            if reason is not None:
                return unauthenticated(facility, reason)
        body: Any = None
        has_body = bool(raw.strip())
        if has_body:
            try:
                body = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                return error(400, "invalid", "body is not valid JSON", "invalid_json")
            if pgsafe.needs_cleaning(raw):
                # Postgres cannot hold NUL or a lone surrogate: one such string would fail the whole batch.
                body = pgsafe.clean(body)
        try:
            if has_body and body is None:  # JSON `null` is a body, not an empty POST
                raise NotificationError("not_a_notification", "the body is JSON null")
            notification = parse_delivery(body, facility.base_url, delivery)
        except NotificationError as exc:
            if not has_body:
                return error(400, "invalid", exc.detail, exc.reason)
            return await self._quarantine(
                facility=facility, delivery=delivery, raw=raw, body=body, exc=exc, path=path
            )
        return await self._commit(facility, notification)

    async def _commit(self, facility: ReceiverFacility, notification: Notification) -> Answer:
        shape, ntype = notification.shape, notification.type
        intake = intake_for(facility.id, notification, event_identity=facility.event_identity)
        for refusal in intake.refused:
            # No outbound connection is ever made for these; the event number lets on-call find it.
            log.warning(
                "hooks.event_refused",
                facility_id=facility.id,
                reason=refusal.reason,
                event_number=refusal.event_number,
            )
            events(facility.id, refusal.reason).inc()
        try:
            async with asyncio.timeout(self.commit_timeout_s):  # no extra task, unlike wait_for
                result: WriteResult = await self.writer.commit(intake)
        except (SQLAlchemyError, psycopg.Error, OSError, TimeoutError) as exc:
            return unavailable(facility.id, "commit", exc, shape=shape, type=ntype)
        events(facility.id, "stored").inc(result.stored)
        events(facility.id, "duplicate").inc(result.duplicates)
        if result.gaps:
            LEDGER_GAPS.labels(facility.id).inc(result.gaps)
        if result.new_epoch:
            log.info(
                "hooks.subscription_new_epoch",
                facility_id=facility.id,
                subscription=intake.observation.subscription,
            )
        if result.stored:
            self.ring(facility.id)
        message = (
            f"{notification.type}: {result.stored} stored, {result.duplicates} duplicate, "
            f"{len(intake.refused)} refused"
        )
        body = operation_outcome("information", "informational", message)
        return Answer(200, body, "accepted", shape=shape, type=ntype)

    async def _quarantine(
        self,
        *,
        facility: ReceiverFacility,
        delivery: Delivery,
        raw: bytes,
        body: Any,
        exc: NotificationError,
        path: str,
    ) -> Answer:
        item = Quarantined(
            facility_id=facility.id,
            reason=exc.reason,
            detail=exc.detail,
            method=delivery.method,
            path=path,
            content_type=delivery.headers.get("content-type"),
            raw=raw,
            body=body,
        )
        try:
            qid = await asyncio.wait_for(quarantine(self.engine, item), self.commit_timeout_s)
        except (SQLAlchemyError, OSError, TimeoutError) as db_exc:
            return unavailable(facility.id, "quarantine", db_exc)
        log.warning("hooks.quarantined", facility_id=facility.id, reason=exc.reason, quarantine_id=qid)
        QUARANTINED.labels(facility.id, exc.reason).inc()
        diagnostics = f"not a recognizable notification ({exc.detail}); kept as quarantine #{qid}"
        body_out = operation_outcome("warning", "processing", diagnostics, reason=exc.reason)
        return Answer(202, body_out, "quarantined", shape="unrecognized")
