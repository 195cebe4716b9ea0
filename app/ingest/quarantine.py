"""Quarantine: JSON bodies from authenticated senders that are no recognizable notification.

Kept, never silently dropped: an operator can list and count them (``ehr-ingest quarantine list``).
The same body delivered again (a sender retrying) increments ``deliveries`` instead of adding a row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from app.db.models import QuarantinedNotification, string_bounds, truncated
from app.ehr.bulk import UnparseableLine
from app.errors import BulkLineUnparseable
from app.fhir import pgsafe

_UPSERT = text(
    """
    INSERT INTO quarantine (facility_id, reason, detail, method, path, content_type, body_sha256, body)
    VALUES (:facility_id, :reason, :detail, :method, :path, :content_type, :body_sha256, CAST(:body AS jsonb))
    ON CONFLICT (facility_id, body_sha256)
    DO UPDATE SET deliveries = quarantine.deliveries + 1, last_received_at = now()
    RETURNING id
    """
)


_BOUNDS = string_bounds(QuarantinedNotification)
DETAIL_MAX = 500
PATH_MAX = 1000


def _text(value: str, limit: int) -> str:
    """A sender's text (the request path, its content type) as a column holds it: no NUL, bounded."""
    return truncated(pgsafe.clean(value), limit)


def storable_json(body: Any, raw: bytes) -> str:
    """The body as JSON text jsonb accepts, decimals as sent. A value JSON and jsonb cannot hold (NaN,
    Infinity: the receiver's decoder refuses them, but a caller may not have used it) is kept as the
    body's text, a JSON string, so that quarantine never fails."""
    try:
        return pgsafe.dumps(body)
    except ValueError:
        return pgsafe.dumps(raw.decode("utf-8", "replace"))


@dataclass(frozen=True)
class Quarantined:
    facility_id: str
    reason: str
    detail: str
    method: str
    path: str
    content_type: str | None
    raw: bytes
    body: Any


async def quarantine(engine: AsyncEngine, item: Quarantined) -> int:
    """Store ``item`` (committed when this returns) and return its quarantine id."""
    params = {
        "facility_id": item.facility_id,
        "reason": _text(item.reason, _BOUNDS["reason"]),
        "detail": _text(item.detail, DETAIL_MAX),
        "method": _text(item.method, _BOUNDS["method"]),
        "path": _text(item.path, PATH_MAX),
        "content_type": _text(item.content_type, _BOUNDS["content_type"]) if item.content_type else None,
        "body_sha256": hashlib.sha256(item.raw).hexdigest(),
        "body": storable_json(item.body, item.raw),
    }
    async with engine.begin() as conn:
        return int((await conn.execute(_UPSERT, params)).scalar_one())


class NdjsonQuarantine:
    """Where a Bulk Data export's unparseable ndjson lines go (``app.ehr.bulk``): one row per file path and
    line number, committed at once (the export goes on; nothing it met is lost). The body is
    ``{"path", "line", "text"}``, the line as text (undecodable bytes replaced); reading the same export
    again counts a delivery instead of adding a row."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __call__(self, line: UnparseableLine) -> None:
        text_ = line.raw.decode("utf-8", "replace")
        body = {"path": line.path, "line": line.line, "text": text_}
        identity = f"{line.path}\n{line.line}\n".encode() + line.raw
        params = {
            "facility_id": line.facility_id,
            "reason": BulkLineUnparseable.reason,
            "detail": f"line {line.line}: {line.error}"[:500],
            "method": "GET",
            "path": line.path[:1000],
            "content_type": "application/fhir+ndjson",
            "body_sha256": hashlib.sha256(identity).hexdigest(),
            "body": pgsafe.dumps(body),
        }
        with self._engine.begin() as conn:
            conn.execute(_UPSERT, params)


def list_quarantined(
    session: Session, *, facility_id: str | None = None, limit: int = 50
) -> list[QuarantinedNotification]:
    query = select(QuarantinedNotification).order_by(QuarantinedNotification.id.desc()).limit(limit)
    if facility_id is not None:
        query = query.where(QuarantinedNotification.facility_id == facility_id)
    return list(session.scalars(query).all())


def count_quarantined(session: Session, *, facility_id: str | None = None) -> int:
    query = select(func.count()).select_from(QuarantinedNotification)
    if facility_id is not None:
        query = query.where(QuarantinedNotification.facility_id == facility_id)
    return int(session.scalar(query) or 0)
