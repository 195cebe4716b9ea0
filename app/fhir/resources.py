"""What the ledger needs from a FHIR resource: its identity, version, lastUpdated and a content hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.errors import UnparseableResource
from app.fhir import jsonwire


def content_hash(resource: dict[str, Any] | None) -> str:
    """A stable hash of the clinical content. ``meta`` is left out: a server re-stamping lastUpdated or
    versionId on identical content does not make a new clinical version."""
    if resource is None:
        return hashlib.sha256(b"<deleted>").hexdigest()
    body = {k: v for k, v in resource.items() if k != "meta"}
    canonical = jsonwire.dumps(body, canonical=True)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def payload_hash(resource: dict[str, Any]) -> str:
    """A hash of the whole resource, meta included: what tells two deliveries of a payload apart."""
    canonical = jsonwire.dumps(resource, canonical=True)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def parse_instant(value: str) -> datetime:
    """FHIR instant/dateTime to an aware datetime (UTC when the value has no zone, as FHIR requires)."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class ResourceMeta:
    resource_type: str
    resource_id: str
    version_id: str | None
    last_updated: datetime | None


def resource_meta(resource: Any, *, expected_type: str | None = None) -> ResourceMeta:
    if not isinstance(resource, dict):
        raise UnparseableResource(detail="body is not a JSON object")
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not isinstance(rtype, str) or not isinstance(rid, str):
        raise UnparseableResource(detail="resource has no resourceType or id")
    if expected_type is not None and rtype != expected_type:
        raise UnparseableResource(detail=f"expected {expected_type}, got {rtype}")
    meta_raw = resource.get("meta")
    meta: dict[str, Any] = meta_raw if isinstance(meta_raw, dict) else {}
    version_id = meta.get("versionId")
    last_updated_raw = meta.get("lastUpdated")
    last_updated = None
    if isinstance(last_updated_raw, str):
        try:
            last_updated = parse_instant(last_updated_raw)
        except ValueError:
            last_updated = None
    return ResourceMeta(rtype, rid, str(version_id) if version_id is not None else None, last_updated)
