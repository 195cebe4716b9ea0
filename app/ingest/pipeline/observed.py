"""What the pipeline carries between its stages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.errors import IngestError


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
    # A tombstone's evidence (``app.db.models.Deletion``): ``gone`` for a 410, ``not_found`` for a 404
    # until the caller confirms it.
    deletion: str | None = None
    # Sent by the EHR rather than read from it (a full-resource notification): never trusted to make a
    # tombstoned resource live again (``app.ingest.pipeline.store``).
    from_payload: bool = False


#: What one read came to: the resource (or its tombstone), or why it could not be read.
Outcome = Observed | IngestError
