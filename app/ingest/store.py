"""Version-guarded writes of fetched resources into the ledger (DESIGN.md rules 2 and 3).

Every write goes through ``store_versions``: the webhook path and, later, the reconciler's backfill.
Concurrent writers converge: the guard lives in the upsert's WHERE clause, not in Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.fhir.resources import content_hash, resource_meta
from app.ingest import queries


@dataclass(frozen=True)
class Observed:
    """A resource as observed at ``fetched_at``; ``resource is None`` means it is gone (tombstone)."""

    facility_id: str
    resource_type: str
    resource_id: str
    resource: dict[str, Any] | None
    fetched_at: datetime
    summary: dict[str, Any] | None = None  # the vendor adapter's normalized fields (views read them)
    issues: list[str] | None = None  # lenient validation findings: paths and error types, never values


@dataclass
class StoreStats:
    applied: int = 0
    unchanged: int = 0
    stale: int = 0
    tombstones: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


def store_versions(session: Session, observed: list[Observed]) -> StoreStats:
    stats = StoreStats()
    for item in observed:
        deleted = item.resource is None
        version_id, last_updated = None, None
        if item.resource is not None:
            meta = resource_meta(item.resource, expected_type=item.resource_type)
            version_id, last_updated = meta.version_id, meta.last_updated
        digest = content_hash(item.resource)
        params = {
            "facility_id": item.facility_id,
            "resource_type": item.resource_type,
            "resource_id": item.resource_id,
            "version_id": version_id,
            "last_updated": last_updated,
            "content_hash": digest,
            "deleted": deleted,
            "resource": json.dumps(item.resource) if item.resource is not None else None,
            "fetched_at": item.fetched_at,
            "normalized": json.dumps(item.summary) if item.summary is not None else None,
            "issues": json.dumps(item.issues) if item.issues else None,
        }
        applied = session.execute(queries.UPSERT_RESOURCE, params).first() is not None
        if applied:
            stats.applied += 1
            stats.tombstones += int(deleted)
            stats.by_type[item.resource_type] = stats.by_type.get(item.resource_type, 0) + 1
        else:
            current = session.execute(queries.CURRENT_HASH, params).first()
            if current is not None and current.content_hash == digest and current.deleted == deleted:
                stats.unchanged += 1
            else:
                stats.stale += 1
        if not deleted or applied:
            version_key = (
                f"deleted|{item.fetched_at.isoformat()}" if deleted else (version_id or f"hash|{digest}")
            )
            session.execute(queries.INSERT_HISTORY, {**params, "version_key": version_key})
    session.flush()
    return stats
