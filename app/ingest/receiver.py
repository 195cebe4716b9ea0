"""The receiver's use case: one HTTP delivery in, one typed ``Outcome`` out.

``Receiver.receive`` takes the facility id from the URL, the ``Delivery`` (method, payload-mode path,
lower-cased headers), the request path and the body as a stream of chunks. It runs these checks in this
order and stops at the first that fails; the HTTP edge (``app.api.endpoints.respond``) maps each outcome
to a status code, ``Retry-After`` and an OperationOutcome in one place:

1. the facility is known and enabled: ``UnknownFacility`` (answered exactly as ``Unauthenticated`` is,
   so that facility ids cannot be enumerated); ``DbUnavailable("facility")`` when the lookup cannot
   reach Postgres, ``Misconfigured`` when its secrets cannot be resolved;
2. a sender check that needs only headers (shared secret) passes, before the body is read:
   ``Unauthenticated``;
3. a declared content type is JSON: ``UnsupportedMediaType``;
4. the body fits the size limit, checked against Content-Length and again while reading: ``TooLarge``;
5. a non-empty body declared a content type: ``UnsupportedMediaType``;
6. a signature over the raw body passes, before any parsing: ``Unauthenticated``;
7. the body is JSON: ``InvalidJson``;
8. the delivery is a notification (its vendor adapter reads any announcing headers first) in a shape
   the facility's vendor sends (``VendorAdapter.notification_shapes``, else ``unexpected_shape``): a
   bodiless delivery that is none is ``Rejected``; a JSON body that is none is kept in quarantine,
   ``Quarantined`` (``DbUnavailable("quarantine")`` when that commit fails);
9. its events and its ledger observation are committed (group commit): ``Accepted``, or
   ``DbUnavailable("commit")``; a body Postgres refuses even in a transaction of its own (the writer
   retries a failed batch one request at a time) is kept in quarantine instead, ``Quarantined`` with
   reason ``unstorable``. A Standard Webhooks message whose ``webhook-id`` is already committed (by any
   receiver process) is a replay: ``Accepted`` with ``replay``, nothing stored. Only then is the
   doorbell rung.

Quarantine is *accepted* (the edge answers 202): the body is committed, retrying it unchanged cannot
help, and a 4xx would make some servers put the whole subscription in ``error`` and stop every later
notification. Logs and metrics are written here, with ids and reason slugs only (never a body or a
header's value).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import psycopg
import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.errors import ConfigurationError, NotificationError, Unstorable
from app.facilities.senders import UNKNOWN_SENDER
from app.facilities.webhooks import FacilityDirectory, ReceiverFacility
from app.fhir import jsonwire, pgsafe
from app.fhir.notifications import Delivery, parse_delivery
from app.ingest.group_commit import WriterStopped
from app.ingest.inbox import Intake, intake_for
from app.ingest.quarantine import Quarantined as QuarantineItem
from app.ingest.quarantine import quarantine
from app.ingest.refusals import RefusalTally
from app.ingest.writer import InboxWriter, WriteResult
from app.metrics import ACK_SECONDS, AUTH_FAILURES, LEDGER_GAPS, QUARANTINED, events, notifications

log = structlog.get_logger("api.hooks")

ACCEPTED_TYPES = frozenset({"application/fhir+json", "application/json"})
COMMIT_TIMEOUT_S = 10.0

# The body as the edge hands it over: a function returning its chunks (Starlette's ``request.stream``).
BodyStream = Callable[[], AsyncIterator[bytes]]


# -- outcomes ---------------------------------------------------------------------------------------
# ``slug`` is the reason code of the answer and the ``outcome`` label of the notifications counter.


@dataclass(frozen=True)
class UnknownFacility:
    slug: ClassVar[str] = "unknown_facility"


@dataclass(frozen=True)
class Misconfigured:
    """The facility exists but its webhook secrets cannot be resolved: ours to fix, the sender retries."""

    reason: str

    @property
    def slug(self) -> str:
        return self.reason


@dataclass(frozen=True)
class DbUnavailable:
    stage: str  # facility | quarantine | commit
    slug: ClassVar[str] = "db_unavailable"


@dataclass(frozen=True)
class Unauthenticated:
    reason: str  # SenderCheck's slug: missing_credentials, bad_signature…
    header: str  # the header the sender must fix (its name, never its value)
    slug: ClassVar[str] = "unauthenticated"


@dataclass(frozen=True)
class UnsupportedMediaType:
    missing: bool  # True: a body without any content type; False: a content type that is not JSON
    slug: ClassVar[str] = "content_type"


@dataclass(frozen=True)
class TooLarge:
    limit: int
    slug: ClassVar[str] = "too_large"


@dataclass(frozen=True)
class InvalidJson:
    detail: str
    slug: ClassVar[str] = "invalid_json"


@dataclass(frozen=True)
class Rejected:
    """A bodiless delivery that is no notification (e.g. a malformed payload-mode path)."""

    reason: str
    detail: str

    @property
    def slug(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Quarantined:
    quarantine_id: int
    reason: str
    detail: str
    slug: ClassVar[str] = "quarantined"


@dataclass(frozen=True)
class Accepted:
    type: str  # the notification type, e.g. event-notification
    stored: int
    duplicates: int
    refused: int
    replay: bool = False  # the sender's message id was committed before (Standard Webhooks)
    slug: ClassVar[str] = "accepted"


Outcome = (
    UnknownFacility
    | Misconfigured
    | DbUnavailable
    | Unauthenticated
    | UnsupportedMediaType
    | TooLarge
    | InvalidJson
    | Rejected
    | Quarantined
    | Accepted
)


class BodyTooLarge(Exception):
    """The body exceeds the limit (raised while reading, before the rest is read)."""


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


async def read_limited(stream: BodyStream, declared: str | None, limit: int) -> bytes:
    """The whole body, or BodyTooLarge as soon as the declared length or the bytes read exceed
    ``limit`` (a sender streaming gigabytes is cut off at the limit)."""
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Labels:
    """The notifications counter's labels, filled in as the checks learn them."""

    facility: str = "-"
    shape: str = "-"
    type: str = "-"


@dataclass
class Receiver:
    engine: AsyncEngine
    writer: InboxWriter
    ring: Callable[[str], None]
    facilities: FacilityDirectory
    max_body_bytes: int
    commit_timeout_s: float = COMMIT_TIMEOUT_S
    #: where a known facility's refusals are counted for feed health (``app.ingest.refusals``)
    refusals: RefusalTally | None = None

    async def receive(self, facility_id: str, delivery: Delivery, body: BodyStream, *, path: str) -> Outcome:
        """Run the checks of the module docstring on one delivery. Never raises for anything a sender
        can cause or for Postgres being unavailable: each is an outcome."""
        started = time.perf_counter()
        labels = _Labels()
        try:
            outcome = await self._receive(facility_id, delivery, body, path, labels)
        finally:
            ACK_SECONDS.observe(time.perf_counter() - started)
        notifications(labels.facility, labels.shape, labels.type, outcome.slug).inc()
        return outcome

    async def _receive(  # noqa: PLR0911 - one return per documented check
        self, facility_id: str, delivery: Delivery, stream: BodyStream, path: str, labels: _Labels
    ) -> Outcome:
        try:
            # Bounded like the commit: a Postgres that stops answering (rather than refusing) is a 503
            # with Retry-After, not a request hanging until the sender gives up.
            async with asyncio.timeout(self.commit_timeout_s):
                facility = await self.facilities.get(facility_id)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            return _unavailable(facility_id, "facility", exc)
        except ConfigurationError as exc:
            log.error("hooks.misconfigured", facility_id=facility_id, reason=exc.reason, detail=exc.detail)
            return Misconfigured(exc.reason)
        if facility is None:
            return _unknown(facility_id, delivery.headers)
        labels.facility = facility.id
        headers = delivery.headers
        now = time.time()
        sender = facility.sender
        # Header-only checks run before the body is read; signatures (step 6) need the raw bytes.
        if (sender is None or not sender.needs_body) and (
            refusal := _authenticate(facility, b"", now, headers)
        ) is not None:
            return self._refused(facility.id, refusal, now)
        content_type = media_type(headers.get("content-type"))
        if content_type and content_type not in ACCEPTED_TYPES:
            return UnsupportedMediaType(missing=False)
        try:
            raw = await read_limited(stream, headers.get("content-length"), self.max_body_bytes)
        except BodyTooLarge:
            return TooLarge(self.max_body_bytes)
        if raw.strip() and not content_type:
            return UnsupportedMediaType(missing=True)
        if (
            sender is not None
            and sender.needs_body
            and (refusal := _authenticate(facility, raw, now, headers)) is not None
        ):
            return self._refused(facility.id, refusal, now)
        try:
            return await self._parse_and_commit(facility, delivery, raw, path, labels)
        except RecursionError:  # JSON nested deeper than the interpreter walks: malformed, not a 500
            return InvalidJson("body is nested too deeply")

    def _refused(self, facility_id: str, refusal: Unauthenticated, now: float) -> Unauthenticated:
        if self.refusals is not None:
            self.refusals.count(facility_id, refusal.reason, now)
        return refusal

    async def _parse_and_commit(
        self, facility: ReceiverFacility, delivery: Delivery, raw: bytes, path: str, labels: _Labels
    ) -> Outcome:
        body: Any = None
        has_body = bool(raw.strip())
        if has_body:
            try:
                body = jsonwire.loads(raw)  # decimals kept exact (app.fhir.jsonwire)
            except ValueError:  # not JSON, not UTF-8/16/32, NaN/Infinity, or an integer past the digit limit
                return InvalidJson("body is not valid JSON")
            if pgsafe.needs_cleaning(raw):
                # Postgres cannot hold NUL or a lone surrogate: one such string would fail the whole batch.
                body = pgsafe.clean(body)
        announcement = facility.adapter.announcement(delivery.headers)
        announced = delivery if announcement is None else replace(delivery, announcement=announcement)
        try:
            if has_body and body is None:  # JSON `null` is a body, not an empty POST
                raise NotificationError("not_a_notification", "the body is JSON null")
            notification = parse_delivery(body, facility.base_url, announced)
            if notification.shape not in facility.adapter.notification_shapes:
                # Only what this facility's vendor sends: another server's format (payload mode,
                # announcing headers) at a facility that never uses it is not to be trusted as data.
                raise NotificationError(
                    "unexpected_shape", f"this facility's vendor sends no {notification.shape} notifications"
                )
        except NotificationError as exc:
            if not has_body:
                return Rejected(exc.reason, exc.detail)
            labels.shape = "unrecognized"
            return await self._quarantine(facility, delivery, raw, body, exc, path)
        labels.shape, labels.type = notification.shape, notification.type
        intake = intake_for(facility.id, notification, event_identity=facility.event_identity)
        if facility.sender is not None and (message := facility.sender.message_key(delivery.headers)):
            intake = replace(intake, message=message)
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
        except Unstorable as exc:  # refused alone, not for a batch it shared: retrying cannot help
            labels.shape = "unstorable"
            return await self._quarantine(facility, delivery, raw, body, exc, path)
        except (SQLAlchemyError, psycopg.Error, OSError, TimeoutError, WriterStopped) as exc:
            return _unavailable(facility.id, "commit", exc)
        _record(facility.id, intake, result)
        if result.stored:
            self.ring(facility.id)
        return Accepted(
            notification.type, result.stored, result.duplicates, len(intake.refused), replay=result.replay
        )

    async def _quarantine(  # noqa: PLR0917 - the request's parts, all needed for the row
        self,
        facility: ReceiverFacility,
        delivery: Delivery,
        raw: bytes,
        body: Any,
        exc: NotificationError,
        path: str,
    ) -> Outcome:
        item = QuarantineItem(
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
            return _unavailable(facility.id, "quarantine", db_exc)
        log.warning("hooks.quarantined", facility_id=facility.id, reason=exc.reason, quarantine_id=qid)
        QUARANTINED.labels(facility.id, exc.reason).inc()
        return Quarantined(qid, exc.reason, exc.detail)


def _record(facility_id: str, intake: Intake, result: WriteResult) -> None:
    """Counters and log lines of a committed notification."""
    events(facility_id, "stored").inc(result.stored)
    events(facility_id, "duplicate").inc(result.duplicates)
    if result.gaps:
        LEDGER_GAPS.labels(facility_id).inc(result.gaps)
    if result.new_epoch:
        log.info(
            "hooks.subscription_new_epoch",
            facility_id=facility_id,
            subscription=intake.observation.subscription,
        )
    if result.replay:
        log.info("hooks.replay", facility_id=facility_id)


def _authenticate(
    facility: ReceiverFacility, body: bytes, now: float, headers: Mapping[str, str]
) -> Unauthenticated | None:
    """None when the sender is authentic, else the outcome; ``body`` is empty for header-only checks."""
    sender = facility.sender
    reason = "webhook_not_configured" if sender is None else sender.check(headers, body, now)
    if reason is None:
        return None
    header = sender.header if sender is not None else "-"
    log.warning("hooks.unauthenticated", facility_id=facility.id, reason=reason, header=header)
    AUTH_FAILURES.labels(facility.id, reason).inc()
    return Unauthenticated(reason, header)


def _unknown(facility_id: str, headers: Mapping[str, str]) -> UnknownFacility:
    """Answered as a wrong secret is, after the same work (a header check, a log line, a count): an
    unauthenticated caller must not be able to tell which facility ids exist. The id has a facility
    id's shape (FacilityDirectory); the counter's label is not the id, whose values are the caller's."""
    UNKNOWN_SENDER.check(headers, b"", time.time())
    log.warning("hooks.unauthenticated", facility_id=facility_id, reason="unknown_facility", header="-")
    AUTH_FAILURES.labels("-", "unknown_facility").inc()
    return UnknownFacility()


def _unavailable(facility_id: str, stage: str, exc: BaseException) -> DbUnavailable:
    log.warning("hooks.database_unavailable", facility_id=facility_id, stage=stage, error=type(exc).__name__)
    return DbUnavailable(stage)
