"""What the pipeline carries between its stages."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from app.db.models import DELETION_NOT_FOUND, DELETION_NOT_FOUND_CONFIRMED
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


def read_after_vanishing(outcome: Observed) -> Observed:
    """The read of a resource a search no longer lists: a 404 then agrees with the search (two
    observations), so it is a confirmed deletion; a 410 or a live body stays as read."""
    if outcome.deletion == DELETION_NOT_FOUND:
        return replace(outcome, deletion=DELETION_NOT_FOUND_CONFIRMED)
    return outcome
